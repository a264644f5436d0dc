"""The workflow's jobs: one module per stage, named as the rule file that runs it.

    rules/data.smk         -> ltd.jobs.data         prepare a data set, record its splits
    rules/train.smk        -> ltd.jobs.train        teachers, substitutes, students (torchrun)
    rules/temperature.smk  -> ltd.jobs.temperature  teacher logits, soft labels, T_max, `auto`
    rules/evaluate.smk     -> ltd.jobs.evaluate     a student's AutoAttack evaluation
    rules/published.smk    -> ltd.jobs.published    published checkpoints: evaluate, export
    rules/tables.smk       -> ltd.jobs.tables       tables, figures, curves, evaluation report

The workflow scripts only unpack Snakemake's objects and call these, so the demo, the
tests and a 120-epoch GPU run go through the same code; only the config differs.
``ltd.jobs.common`` holds what several stages share (as rules/common.smk does).
"""
