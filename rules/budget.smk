rule budget:
    """The compute budget of this config (ltd/budget.py): training and evaluation jobs
    per table and in total, and GPU-hours estimated from counted FLOPs at the assumed
    `budget:` GPU peak and MFU. Estimated, not measured; runs nothing else."""
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
