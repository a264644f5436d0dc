rule evaluate:
    """Clean, PGD and AutoAttack accuracy of a student on the test set (fp32, or TF32 with
    evaluation.precision), with its gradient-masking diagnostics. params.identity: everything
    besides the model that defines the numbers (test images, evaluation settings)."""
    conda:
        "../envs/torch.yaml"
    input:
        model=f"{R}/students/{{name}}/model.pt",
    output:
        f"{R}/students/{{name}}/autoattack.json",
        report=f"{R}/students/{{name}}/evaluation_report.csv",
    params:
        identity=lambda w: ex.evaluation_identity(config, dataset_of("students")(w)),
    threads: config["threads"]
    retries: retries("evaluate")
    resources:
        gpu=gpus(),
        cpus_per_task=cpus(config["threads"], dataset_of("students")),
        **res("evaluate", dataset_of("students")),
        **stop_signal("evaluate", dataset_of("students")),
    log:
        f"{R}/logs/evaluate/{{name}}.log",
    script:
        "../workflow_scripts/evaluate.py"
