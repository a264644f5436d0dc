# Published checkpoints (e.g. the LTD authors' RobustBench models), evaluated by the code
# path of our students: `published:` in the config lists {name, dataset, arch, and `path`
# or a RobustBench name found in `robustbench_model_dir`, reported: {clean, autoattack}}.
# Target: `snakemake published`. And the other way: `snakemake exported` writes every
# student in RobustBench's model-zoo layout.
rule evaluate_published:
    """Clean, PGD, AutoAttack and masking diagnostics of a published checkpoint (fp32),
    beside the numbers its authors reported."""
    conda:
        "../envs/torch.yaml"
    input:
        data=lambda w: data_json(published_dataset(w)),
        model=published_model,
    output:
        json=f"{R}/published/{{name}}/autoattack.json",
        md=f"{R}/published/{{name}}/comparison.md",
    params:
        spec=lambda w: published_spec(w.name),
        identity=lambda w: published_spec(w.name).identity,
    threads: config["threads"]
    retries: retries("evaluate")
    resources:
        **gpu_job("evaluate", published_dataset, published_job),
    log:
        f"{R}/logs/evaluate_published/{{name}}.log",
    script:
        "../workflow_scripts/evaluate_published.py"


rule published:
    """Every checkpoint listed under `published:` (none by default)."""
    input:
        [f"{R}/published/{name}/comparison.md" for name in PUBLISHED],


rule export_robustbench:
    """A student's weights as a RobustBench model-zoo file ({"state_dict": ...}, the
    WideResNet's names), checked to load back strictly: results/<run>/robustbench/<name>.pt."""
    conda:
        "../envs/torch.yaml"
    input:
        run_file("students", ex.weights_file("last")),
    output:
        f"{R}/robustbench/{{name}}.pt",
    params:
        model=job_spec("model"),
    resources:
        **res("light"),
    log:
        f"{R}/logs/export/{{name}}.log",
    script:
        "../workflow_scripts/export_robustbench.py"


rule exported:
    """Every student of the configured tables, exported for RobustBench."""
    input:
        lambda w: [f"{R}/robustbench/{r.name}.pt" for r in all_students()],
