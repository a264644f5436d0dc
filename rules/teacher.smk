rule train_teacher:
    """Natural training on one-hot labels (the teacher of LTD)."""
    input:
        data=DATA_JSON,
    output:
        model=f"{R}/teachers/{{name}}/model.pt",
        metrics=f"{R}/teachers/{{name}}/metrics.json",
    params:
        role="teachers",
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=res("train")["mem_mb"],
        runtime=res("train")["runtime"],
    log:
        f"{R}/logs/teachers/{{name}}.log",
    script:
        "../workflow_scripts/train.py"


rule teacher_logits:
    """The teacher's logits on the un-augmented training images, computed once."""
    input:
        model=f"{R}/teachers/{{name}}/model.pt",
    output:
        f"{R}/teachers/{{name}}/train_logits.pt",
    threads: config["threads"]
    resources:
        gpu=GPU,
        mem_mb=res("light")["mem_mb"],
        runtime=res("light")["runtime"],
    log:
        f"{R}/logs/teachers/{{name}}.logits.log",
    script:
        "../workflow_scripts/teacher_logits.py"
