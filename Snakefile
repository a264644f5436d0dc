# LTD reproduction workflow. Targets: table4 (default), budget-free dry run: snakemake -n table4
# Config: config/config.yaml (the paper's CIFAR-10 settings); the offline demo adds
# --configfile config/demo.yaml. Every output goes under results/<run>/.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/teacher.smk"
include: "rules/temperature.smk"
include: "rules/students.smk"
include: "rules/evaluate.smk"
include: "rules/tables.smk"


localrules: all, table4, tmax, select_temperature, resolve_auto


rule all:
    input:
        rules.table4.output,
