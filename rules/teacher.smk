rule train_teacher:
    """Natural training on one-hot labels (the teacher of LTD)."""
    conda:
        "../envs/torch.yaml"
    input:
        data=lambda w: data_json(dataset_of("teachers")(w)),
    output:
        model=f"{R}/teachers/{{name}}/model.pt",
        metrics=f"{R}/teachers/{{name}}/metrics.json",
    params:
        role="teachers",
    threads: train_threads("teachers")
    resources:
        gpu=gpus(dataset_of("teachers"), training=True),
        **res("train", dataset_of("teachers")),
    log:
        f"{R}/logs/teachers/{{name}}.log",
    script:
        "../workflow_scripts/train.py"


rule teacher_logits:
    """The teacher's logits on the un-augmented training images, computed once."""
    conda:
        "../envs/torch.yaml"
    input:
        model=f"{R}/teachers/{{name}}/model.pt",
    output:
        f"{R}/teachers/{{name}}/train_logits.pt",
    threads: config["threads"]
    resources:
        gpu=gpus(),
        **res("light", dataset_of("teachers")),
    log:
        f"{R}/logs/teachers/{{name}}.logits.log",
    script:
        "../workflow_scripts/teacher_logits.py"
