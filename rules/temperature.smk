rule soft_labels:
    """q_T = softmax(z_teacher / T) for every training image."""
    conda:
        "../envs/torch.yaml"
    input:
        f"{R}/teachers/{{name}}/train_logits.pt",
    output:
        f"{R}/soft_labels/{{name}}/T{{T}}.pt",
    resources:
        **res("light", dataset_of("teachers")),
    log:
        f"{R}/logs/soft_labels/{{name}}_T{{T}}.log",
    script:
        "../workflow_scripts/soft_labels.py"


def soft_labels_of(role):
    def f(w):
        run = ex.Run.parse(role, w.name)
        return f"{R}/soft_labels/{run.teacher.name}/T{ex.fmt_num(run.temperature)}.pt"

    return f


use rule train_teacher as train_substitute with:
    input:
        data=lambda w: data_json(dataset_of("substitutes")(w)),
        soft_labels=soft_labels_of("substitutes"),
    output:
        model=f"{R}/substitutes/{{name}}/model.pt",
        metrics=f"{R}/substitutes/{{name}}/metrics.json",
    params:
        role="substitutes",
    threads: train_threads("substitutes")
    resources:
        gpu=gpus(dataset_of("substitutes"), training=True),
        **res("train", dataset_of("substitutes")),
    log:
        f"{R}/logs/substitutes/{{name}}.log",


rule tmax:
    """Step 1 of the search: T_max from the substitutes' clean accuracy."""
    conda:
        "../envs/report.yaml"
    input:
        lambda w: [run_path(s, "metrics.json") for s in ex.substitutes(config, w.dataset)],
    output:
        tmax_json("{dataset}"),
    log:
        f"{R}/logs/temperature/{{dataset}}.tmax.log",
    script:
        "../workflow_scripts/tmax.py"


def search_dataset(w):
    return ex.search_candidates(config, w.group)[0].dataset


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
    log:
        f"{R}/logs/temperature/{{group}}.selection.log",
    script:
        "../workflow_scripts/select_temperature.py"
