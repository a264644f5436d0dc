"""The workflow's jobs: one module per stage, named for the stage of the rule file that runs it
(not as the library module of that stage: ``ltd.train`` is the loop, ``ltd.jobs.training``
the job; grep and imports tell them apart).

    rules/data.smk         -> ltd.jobs.preparation         prepare a data set, record its splits
    rules/train.smk        -> ltd.jobs.training            teachers, substitutes, students (torchrun)
    rules/temperature.smk  -> ltd.jobs.temperature_search  teacher logits, soft labels, T_max, `auto`
    rules/evaluate.smk     -> ltd.jobs.evaluation          a student's AutoAttack evaluation
    rules/published.smk    -> ltd.jobs.published           published checkpoints: evaluate, export
    rules/tables.smk       -> ltd.jobs.reporting           tables, figures, curves, evaluation report

The workflow scripts only unpack Snakemake's objects and call these, so the demo, the
tests and a 120-epoch GPU run go through the same code; only the config differs.
``ltd.jobs.common`` holds what several stages share (as rules/common.smk does).
The training job's monitor and its finished run's files are ``ltd.jobs.monitor`` and
``ltd.jobs.training_outputs``.
"""
