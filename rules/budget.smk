rule budget_estimate:
    """The compute budget of this config (ltd/budget.py): training and evaluation jobs
    per table and in total, and GPU-hours estimated from counted FLOPs at the assumed
    `budget:` GPU peak and MFU, with every job's cost. Estimated, not measured."""
    conda:
        "../envs/torch.yaml"
    input:
        # the measured rates and launch cost it prices with (ltd/throughput.py)
        config["budget"]["calibration"],
    output:
        f"{R}/budget.md",
    params:
        # rerun when anything that changes the estimate changes
        settings=lambda w: {
            k: config.get(k)
            for k in (
                "budget",
                "train",
                "teacher",
                "substitute",
                "student",
                "awp",
                "datasets",
                "evaluation",
                "stand_ins",
                "tables",
            )
        },
    localrule: True
    log:
        f"{R}/logs/budget.log",
    script:
        "../workflow_scripts/budget.py"


rule budget:
    """`snakemake budget`: prints the budget (budget.md without its list of jobs) each time
    it is asked for, also when budget.md is up to date: a target rule with no output is always
    executed (Snakemake's own rule), so no --forcerun is needed."""
    conda:
        "../envs/report.yaml"
    input:
        rules.budget_estimate.output,
    localrule: True
    log:
        f"{R}/logs/budget_print.log",
    script:
        "../workflow_scripts/print_budget.py"
