rule evaluate:
    """Clean, PGD and AutoAttack accuracy of a student's last epoch (model.pt), or its best
    (best.pt, evaluate_best), on the test set (fp32, or TF32 as
    evaluation.precision says), with its gradient-masking diagnostics and what its training
    recorded (metrics.json: precision, stalled attacks). params.spec: what the job computes
    (ltd.jobspec.Evaluation); params.identity: everything besides the model that defines
    the numbers (test images, evaluation settings)."""
    conda:
        "../envs/torch.yaml"
    input:
        model=run_file("students", ex.weights_file("last")),
        metrics=run_file("students", "metrics.json"),
    output:
        run_file("students", ex.evaluation_file("last")),
        report=run_file("students", "evaluation_report.csv"),
    params:
        spec=job_spec("evaluate"),
        identity=job_identity("evaluate"),
        weights="last",
    threads: config["threads"]
    retries: retries("evaluate")
    resources:
        **gpu_job("evaluate", dataset_of("students"), student_job("evaluation")),
    log:
        f"{R}/logs/evaluate/{{name}}.log",
    script:
        "../workflow_scripts/evaluate.py"


# A table with `weights: best` (the paper config's) compares best.pt with the paper: the
# epoch with the best monitored PGD accuracy (ltd.experiments.WEIGHTS; its images:
# ltd.selection), in its own files beside the last epoch's, which the table shows too.
# Its identity is the last epoch's evaluation's: the monitor that chose best.pt is in the
# student's training identity (best.pt is written by the training job).
use rule evaluate as evaluate_best with:
    input:
        model=run_file("students", ex.weights_file("best")),
        metrics=run_file("students", "metrics.json"),
    output:
        run_file("students", ex.evaluation_file("best")),
        report=run_file("students", "evaluation_report_best.csv"),
    params:
        spec=job_spec("evaluate"),
        identity=job_identity("evaluate"),
        weights="best",
    log:
        f"{R}/logs/evaluate/{{name}}.best.log",


# An `auto` row of such a table: the chosen student's best-epoch evaluation.
use rule resolve_auto as resolve_auto_best with:
    input:
        evaluation=lambda w: ex.with_weights(selected_evaluation(w), "best"),
        selection=f"{R}/temperature/{{group}}/selection.json",
    output:
        f"{R}/temperature/{{group}}/autoattack_best.json",
    log:
        f"{R}/logs/temperature/{{group}}.resolve_best.log",
