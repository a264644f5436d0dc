# LTD reproduction workflow. Targets: all (default), table1 ... table6, simulation.
# Plan first: snakemake -n all. Config: config/config.yaml (the paper's settings); the
# offline demo adds --configfile config/demo.yaml. Every output goes under results/<run>/.
import atexit

from snakemake.utils import min_version, validate

from ltd import checks, config_errors, scope

min_version("9.0")


configfile: "config/config.yaml"


# Before any job: wrong units, the schema (its error in one line naming the key), then
# what the schema cannot see (ltd/checks.py), judged for what the requested targets run
# (SCOPE: `snakemake table4` needs no ImageNet nor 4 GPUs for it). A job's own Snakemake
# (on a Slurm node) runs what the planning Snakemake checked: only the units and the schema.
checks.units(config)
with config_errors.schema_errors():
    validate(config, "config/schema.yaml")


ARGS = scope.command_line() if workflow.is_main_process else None
# --lint runs nothing: the whole config, without its files
TARGETS = ARGS.targets if ARGS and not ARGS.lint else None
SCOPE = scope.requested(config, TARGETS) if workflow.is_main_process else scope.Scope(files=False)
checks.check(config, gpus=checks.resource_limit(workflow.global_resources.get("gpu")), scope=SCOPE)
checks.warn(checks.warnings(config, SCOPE), "the config runs, but:")
# Data not on disk yet (an ImageNet tree, a published checkpoint): a plan (-n) or the
# budget works without it and lists every job, then warns once (at exit: Snakemake has no
# hook after a dry run); a real run stops before its first job (onstart: real runs only).
MISSING = checks.missing_data(config, SCOPE)
if MISSING:
    atexit.register(checks.warn, MISSING, checks.MISSING_HEADER)


onstart:
    if MISSING:
        atexit.unregister(checks.warn)
        raise checks.MissingData(MISSING)


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/resources.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/temperature.smk"
include: "rules/evaluate.smk"
include: "rules/published.smk"
include: "rules/tables.smk"
include: "rules/simulation.smk"
include: "rules/budget.smk"


check_site_slurm_extra()
check_slurm_logdir(ARGS)
check_report(ARGS)


localrules:
    all,
    download_data,
    tmax,
    select_temperature,
    resolve_auto,
    render_table,
    figure,
    figure_tmax,
    curves,
    simulation,
    published,
    exported,
    evaluation_report,
    budget_estimate,
    budget,


rule all:
    default_target: True
    input:
        [table_targets(t) for t in TABLES],
        rules.simulation.output,
        rules.evaluation_report.output,
