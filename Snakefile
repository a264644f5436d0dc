# LTD reproduction workflow. Targets: all (default), table1 ... table6, simulation.
# Plan first: snakemake -n all. Config: config/config.yaml (the paper's settings); the
# offline demo adds --configfile config/demo.yaml. Every output goes under results/<run>/.
from snakemake.utils import min_version, validate

from ltd import checks

min_version("9.0")


configfile: "config/config.yaml"


# Before any job: wrong units, the schema, then what the schema cannot see (ltd/checks.py).
checks.units(config)
validate(config, "config/schema.yaml")
checks.check(config, gpus=checks.resource_limit(workflow.global_resources.get("gpu")))


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/temperature.smk"
include: "rules/evaluate.smk"
include: "rules/published.smk"
include: "rules/tables.smk"
include: "rules/simulation.smk"
include: "rules/budget.smk"


localrules: all, tmax, select_temperature, resolve_auto, render_table, figure, figure_tmax, curves, simulation, published, exported, evaluation_report, budget


rule all:
    default_target: True
    input:
        [table_targets(t) for t in TABLES],
        rules.simulation.output,
        rules.evaluation_report.output,
