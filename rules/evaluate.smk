rule evaluate:
    """Clean, PGD and AutoAttack accuracy of a student on the test set (fp32)."""
    conda:
        "../envs/torch.yaml"
    input:
        model=f"{R}/students/{{name}}/model.pt",
    output:
        f"{R}/students/{{name}}/autoattack.json",
    threads: config["threads"]
    resources:
        gpu=gpus(),
        **res("evaluate", dataset_of("students")),
    log:
        f"{R}/logs/evaluate/{{name}}.log",
    script:
        "../workflow_scripts/evaluate.py"


rule validate:
    """The temperature-search criteria of a student on the validation split."""
    conda:
        "../envs/torch.yaml"
    input:
        model=f"{R}/students/{{name}}/model.pt",
        teacher=lambda w: run_path(ex.Run.parse("students", w.name).teacher, "model.pt"),
    output:
        f"{R}/students/{{name}}/validation.json",
    threads: config["threads"]
    resources:
        gpu=gpus(),
        **res("evaluate", dataset_of("students")),
    log:
        f"{R}/logs/validate/{{name}}.log",
    script:
        "../workflow_scripts/validate.py"
