rule evaluate:
    """Clean, PGD and AutoAttack accuracy of a student on the test set (fp32)."""
    input:
        model=f"{R}/students/{{name}}/model.pt",
    output:
        f"{R}/students/{{name}}/autoattack.json",
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=res("evaluate")["mem_mb"],
        runtime=res("evaluate")["runtime"],
    log:
        f"{R}/logs/evaluate/{{name}}.log",
    script:
        "../workflow_scripts/evaluate.py"


rule validate:
    """The temperature-search criteria of a student on the validation split."""
    input:
        model=f"{R}/students/{{name}}/model.pt",
        teacher=run_path(TEACHER, "model.pt"),
    output:
        f"{R}/students/{{name}}/validation.json",
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=res("evaluate")["mem_mb"],
        runtime=res("evaluate")["runtime"],
    log:
        f"{R}/logs/validate/{{name}}.log",
    script:
        "../workflow_scripts/validate.py"
