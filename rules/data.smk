rule prepare_data:
    """Download (CIFAR, once, before parallel jobs), build (digits; the demo's ImageFolder
    tree) or index (ImageNet) a data set and record its fixed splits."""
    conda:
        "../envs/torch.yaml"
    output:
        f"{R}/data/{{dataset}}.json",
    params:
        identity=lambda w: {s: ex.data_identity(config, w.dataset, s) for s in ("train", "val", "test")},
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    resources:
        **res("light"),
    script:
        "../workflow_scripts/prepare_data.py"
