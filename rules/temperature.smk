rule soft_labels:
    """q_T = softmax(z_teacher / T) for every training image."""
    input:
        f"{R}/teachers/{{name}}/train_logits.pt",
    output:
        f"{R}/soft_labels/{{name}}/T{{T}}.pt",
    resources:
        mem_mb=res("light")["mem_mb"],
        runtime=res("light")["runtime"],
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
        data=DATA_JSON,
        soft_labels=soft_labels_of("substitutes"),
    output:
        model=f"{R}/substitutes/{{name}}/model.pt",
        metrics=f"{R}/substitutes/{{name}}/metrics.json",
    params:
        role="substitutes",
    log:
        f"{R}/logs/substitutes/{{name}}.log",


rule tmax:
    """Step 1 of the search: T_max from the substitutes' clean accuracy."""
    input:
        [run_path(s, "metrics.json") for s in ex.substitutes(config)],
    output:
        f"{R}/temperature/{TEACHER.name}/tmax.json",
    log:
        f"{R}/logs/temperature/tmax.log",
    script:
        "../workflow_scripts/tmax.py"


checkpoint select_temperature:
    """Step 2: the best grid T below T_max on the validation split. A checkpoint: which
    student an `auto` table row evaluates is known only after it ran."""
    input:
        tmax=rules.tmax.output[0],
        validations=lambda w: [run_path(s, "validation.json") for s in ex.search_candidates(config, w.group)],
    output:
        f"{R}/temperature/{{group}}/selection.json",
    log:
        f"{R}/logs/temperature/{{group}}.selection.log",
    script:
        "../workflow_scripts/select_temperature.py"
