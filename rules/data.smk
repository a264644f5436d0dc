rule prepare_data:
    """Download (CIFAR, once, before parallel jobs) or build (digits) the data set and
    record its fixed splits."""
    output:
        f"{R}/data/{{dataset}}.json",
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    resources:
        mem_mb=res("light")["mem_mb"],
        runtime=res("light")["runtime"],
    script:
        "../workflow_scripts/prepare_data.py"
