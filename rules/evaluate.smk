rule evaluate:
    """Clean, PGD and AutoAttack accuracy of a student on the test set (fp32)."""
    conda:
        "../envs/torch.yaml"
    input:
        model=f"{R}/students/{{name}}/model.pt",
    output:
        f"{R}/students/{{name}}/autoattack.json",
        report=f"{R}/students/{{name}}/evaluation_report.csv",
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


def all_students():
    return sorted({r for t in TABLES for r in ex.table_students(config, t)}, key=lambda r: r.name)


rule evaluation_report:
    """Every student's evaluation with its gradient-masking diagnostics, one row each."""
    conda:
        "../envs/report.yaml"
    input:
        [run_path(r, "autoattack.json") for r in all_students()],
    output:
        md=f"{R}/tables/evaluation_report.md",
        csv=report(f"{R}/tables/evaluation_report.csv", caption="../report/evaluation_report.rst",
                   category="Evaluation"),
    log:
        f"{R}/logs/tables/evaluation_report.log",
    script:
        "../workflow_scripts/evaluation_report.py"
