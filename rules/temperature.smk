# The temperature search of Sec. 4.2 and the soft labels: teacher logits (once per
# teacher), q_T per temperature, T_max from the substitutes (step 1), the validation of
# an `auto` row's candidates and the choice among them (step 2).


rule teacher_logits:
    """The teacher's logits on the un-augmented training images, computed once."""
    conda:
        "../envs/torch.yaml"
    input:
        model=run_file("teachers", ex.weights_file("last")),
    output:
        run_file("teachers", "train_logits.pt"),
    params:
        spec=job_spec("logits", "teachers"),
        identity=job_identity("logits", "teachers"),
    threads: config["threads"]
    resources:
        **gpu_job("light", dataset_of("teachers"), signal=False),
    log:
        f"{R}/logs/teachers/{{name}}.logits.log",
    script:
        "../workflow_scripts/teacher_logits.py"


rule soft_labels:
    """q_T = softmax(z_teacher / T) for every training image."""
    conda:
        "../envs/torch.yaml"
    input:
        run_file("teachers", "train_logits.pt"),
    output:
        f"{R}/soft_labels/{{name}}/T{{T}}.pt",
    resources:
        **res("light", dataset_of("teachers")),
    log:
        f"{R}/logs/soft_labels/{{name}}_T{{T}}.log",
    script:
        "../workflow_scripts/soft_labels.py"


rule tmax:
    """Step 1 of the search: T_max from the substitutes' clean accuracy."""
    conda:
        "../envs/report.yaml"
    input:
        lambda w: [run_path(s, "metrics.json") for s in ex.substitutes(config, w.dataset)],
    output:
        tmax_json("{dataset}"),
    params:
        spec=lambda w: dataset_spec("tmax", w.dataset),
        identity=lambda w: dataset_spec("tmax", w.dataset).identity,
    log:
        f"{R}/logs/temperature/{{dataset}}.tmax.log",
    script:
        "../workflow_scripts/tmax.py"


rule validate:
    """The temperature-search criteria of a candidate student on the validation split."""
    conda:
        "../envs/torch.yaml"
    input:
        model=run_file("students", ex.weights_file("last")),
        teacher=lambda w: run_path(ex.Run.parse("students", w.name).teacher, ex.weights_file("last")),
    output:
        run_file("students", "validation.json"),
    params:
        spec=job_spec("validate"),
        identity=job_identity("validate"),
    threads: config["threads"]
    resources:
        **gpu_job("evaluate", dataset_of("students"), student_job("validation"), signal=False),
    log:
        f"{R}/logs/validate/{{name}}.log",
    script:
        "../workflow_scripts/validate.py"


checkpoint select_temperature:
    """Step 2: the best grid T below T_max on the validation split. A checkpoint: which
    student an `auto` table row evaluates is known only after it ran."""
    conda:
        "../envs/report.yaml"
    input:
        tmax=lambda w: tmax_json(search_dataset(w)),
        validations=lambda w: [run_path(s, "validation.json") for s in ex.search_candidates(config, w.group)],
    output:
        f"{R}/temperature/{{group}}/selection.json",
    params:
        spec=lambda w: dataset_spec("selection", search_dataset(w)),
        identity=lambda w: dataset_spec("selection", search_dataset(w)).identity,
    log:
        f"{R}/logs/temperature/{{group}}.selection.log",
    script:
        "../workflow_scripts/select_temperature.py"


rule resolve_auto:
    """An `auto` row's result, under a path known before the search ran: only this
    rule waits for the checkpoint, so a dry run still lists every other job."""
    conda:
        "../envs/report.yaml"
    input:
        evaluation=selected_evaluation,
        selection=f"{R}/temperature/{{group}}/selection.json",
    output:
        f"{R}/temperature/{{group}}/autoattack.json",
    log:
        f"{R}/logs/temperature/{{group}}.resolve.log",
    script:
        "../workflow_scripts/resolve_auto.py"
