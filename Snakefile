# LTD reproduction workflow. Targets: all (default), table1 ... table6, simulation.
# Plan first: snakemake -n all. Config: config/config.yaml (the paper's settings); the
# offline demo adds --configfile config/demo.yaml. Every output goes under results/<run>/.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


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
