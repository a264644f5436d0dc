# Published checkpoints (e.g. the LTD authors' RobustBench models), evaluated by the code
# path of our students: `published:` in the config lists {name, path, dataset, arch,
# reported: {clean, autoattack}}; without `path` the optional robustbench package fetches
# the model by name. Target: `snakemake published`.
PUBLISHED = {e["name"]: e for e in (config.get("published") or [])}


def published_inputs(w):
    e = PUBLISHED[w.name]
    inputs = {"data": data_json(e["dataset"])}
    if e.get("path"):
        inputs["model"] = e["path"]
    return inputs


rule evaluate_published:
    """Clean, PGD, AutoAttack and masking diagnostics of a published checkpoint (fp32),
    beside the numbers its authors reported."""
    conda:
        "../envs/torch.yaml"
    input:
        unpack(published_inputs),
    output:
        json=f"{R}/published/{{name}}/autoattack.json",
        md=f"{R}/published/{{name}}/comparison.md",
    threads: config["threads"]
    resources:
        gpu=gpus(),
        **res("evaluate", lambda w: PUBLISHED[w.name]["dataset"]),
    log:
        f"{R}/logs/evaluate_published/{{name}}.log",
    script:
        "../workflow_scripts/evaluate_published.py"


rule published:
    """Every checkpoint listed under `published:` (none by default)."""
    input:
        [f"{R}/published/{name}/comparison.md" for name in PUBLISHED],
