rule render_table:
    """A table (Markdown, LaTeX, CSV; JSON for the figures): our rows beside the paper's."""
    conda:
        "../envs/report.yaml"
    input:
        unpack(table_inputs),
    output:
        md=f"{R}/tables/{{table}}.md",
        tex=f"{R}/tables/{{table}}.tex",
        csv=report(
            f"{R}/tables/{{table}}.csv", caption="../report/table.rst", category="Tables", labels={"table": "{table}"}
        ),
        json=f"{R}/tables/{{table}}.json",
    params:
        identity=lambda w: ex.table_identity(config, w.table),
    log:
        f"{R}/logs/tables/{{table}}.log",
    script:
        "../workflow_scripts/table.py"


rule figure:
    """Accuracy against the teacher temperature (Table IV) or against beta (V, VI)."""
    conda:
        "../envs/report.yaml"
    input:
        f"{R}/tables/{{table}}.json",
    output:
        png=report(
            f"{R}/figures/{{table}}_{{kind}}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"table": "{table}", "figure": "{kind}"},
        ),
        pdf=f"{R}/figures/{{table}}_{{kind}}.pdf",
    wildcard_constraints:
        kind="temperature|beta",
    log:
        f"{R}/logs/tables/{{table}}_{{kind}}.log",
    script:
        "../workflow_scripts/figure.py"


rule figure_tmax:
    """Step 1 of the temperature search: substitutes' clean accuracy against T."""
    input:
        tmax_json("{dataset}"),
    output:
        png=report(
            f"{R}/figures/tmax_{{dataset}}.png",
            caption="../report/tmax.rst",
            category="Figures",
            labels={"figure": "T_max search", "data set": "{dataset}"},
        ),
        pdf=f"{R}/figures/tmax_{{dataset}}.pdf",
    conda:
        "../envs/report.yaml"
    log:
        f"{R}/logs/tables/tmax_{{dataset}}.log",
    script:
        "../workflow_scripts/figure_tmax.py"


rule curves:
    """Training curves of a table's students (loss, clean and PGD test accuracy, the training
    attack's stalled fraction and accuracy on x' per epoch); each run draws its own too."""
    input:
        lambda w: [run_path(r, "metrics.json") for r in ex.table_students(config, w.table)],
    output:
        png=report(
            f"{R}/figures/{{table}}_curves.png",
            caption="../report/curves.rst",
            category="Training curves",
            labels={"table": "{table}"},
        ),
        pdf=f"{R}/figures/{{table}}_curves.pdf",
    conda:
        "../envs/report.yaml"
    log:
        f"{R}/logs/tables/{{table}}_curves.log",
    script:
        "../workflow_scripts/curves.py"


rule evaluation_report:
    """Every student evaluation with its gradient-masking diagnostics, one row each (a
    student's last epoch, and its best.pt where a table compares that)."""
    conda:
        "../envs/report.yaml"
    input:
        all_evaluations(),
    output:
        md=f"{R}/tables/evaluation_report.md",
        csv=report(
            f"{R}/tables/evaluation_report.csv", caption="../report/evaluation_report.rst", category="Evaluation"
        ),
    log:
        f"{R}/logs/tables/evaluation_report.log",
    script:
        "../workflow_scripts/evaluation_report.py"


# One target rule per configured table: `snakemake table4`.
for _table in TABLES:

    rule:
        name:
            _table
        input:
            table_targets(_table),
        localrule: True
