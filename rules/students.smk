def student_inputs(w):
    run = ex.Run.parse("students", w.name)
    inputs = {"data": data_json(run.dataset)}
    if run.uses_soft_labels:
        inputs["soft_labels"] = soft_labels_of("students")(w)
    return inputs


use rule train_teacher as train_student with:
    input:
        unpack(student_inputs),
    output:
        model=f"{R}/students/{{name}}/model.pt",
        metrics=f"{R}/students/{{name}}/metrics.json",
    params:
        role="students",
    threads: train_threads("students")
    resources:
        gpu=gpus(dataset_of("students"), training=True),
        **res("train", dataset_of("students")),
    log:
        f"{R}/logs/students/{{name}}.log",
