rule prepare_data:
    """Download (CIFAR, once, before parallel jobs), build (the demo's ImageFolder tree)
    or index (ImageNet) a data set's source. Its splits are each job's own params."""
    conda:
        "../envs/torch.yaml"
    output:
        f"{R}/data/{{dataset}}.json",
    params:
        spec=lambda w: dataset_spec("source", w.dataset),
        identity=lambda w: dataset_spec("source", w.dataset).identity,
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    resources:
        **res("light", lambda w: w.dataset),
    script:
        "../workflow_scripts/prepare_data.py"


# Downloads run where Snakemake itself runs (a local rule): Slurm's compute nodes often
# have no internet access, the login node has.
DOWNLOADED = [d for d, c in config["datasets"].items() if sources.get(c["source"]).downloaded]


use rule prepare_data as download_data with:
    wildcard_constraints:
        dataset="|".join(DOWNLOADED) or "(?!)",


ruleorder: download_data > prepare_data
