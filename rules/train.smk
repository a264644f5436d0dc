# Teachers, substitutes and students: one training script, the role from the rule.
# params.identity is everything that defines the trained model (ltd.experiments):
# editing any of it reruns the run and what depends on it. Besides its outputs a job
# writes history.jsonl (per epoch, as it goes), curves.png/.pdf (when it finishes) and
# TensorBoard files (tensorboard/training/) into its run folder: `tensorboard --logdir
# results/<run>`.


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
        identity=training_identity("teachers"),
    threads: train_threads("teachers")
    retries: retries("train")
    resources:
        **gpu_job("train", training_job("teachers"), n=gpus(dataset_of("teachers"), training=True)),
        cpus_per_task=cpus(train_threads("teachers"), dataset_of("teachers"), training=True),
    log:
        f"{R}/logs/teachers/{{name}}.log",
    script:
        "../workflow_scripts/train.py"


use rule train_teacher as train_substitute with:
    input:
        data=lambda w: data_json(dataset_of("substitutes")(w)),
        soft_labels=soft_labels_of("substitutes"),
    output:
        model=f"{R}/substitutes/{{name}}/model.pt",
        metrics=f"{R}/substitutes/{{name}}/metrics.json",
    params:
        role="substitutes",
        identity=training_identity("substitutes"),
    threads: train_threads("substitutes")
    retries: retries("train")
    resources:
        **gpu_job("train", training_job("substitutes"), n=gpus(dataset_of("substitutes"), training=True)),
        cpus_per_task=cpus(train_threads("substitutes"), dataset_of("substitutes"), training=True),
    log:
        f"{R}/logs/substitutes/{{name}}.log",


use rule train_teacher as train_student with:
    input:
        unpack(student_inputs),
    output:
        model=f"{R}/students/{{name}}/model.pt",
        metrics=f"{R}/students/{{name}}/metrics.json",
        best=f"{R}/students/{{name}}/best.pt",  # the epoch with the best monitored PGD accuracy
    params:
        role="students",
        identity=training_identity("students"),
    threads: train_threads("students")
    retries: retries("train")
    resources:
        **gpu_job("train", training_job("students"), n=gpus(dataset_of("students"), training=True)),
        cpus_per_task=cpus(train_threads("students"), dataset_of("students"), training=True),
    log:
        f"{R}/logs/students/{{name}}.log",
