# Config -> targets. Paths and run records come from ltd.experiments; no rule builds a
# run path by hand. Planning imports no torch (ltd.experiments, ltd.methods, ltd.files
# are torch-free), so `snakemake -n all` stays fast on a login node.
from functools import lru_cache
from pathlib import Path

from ltd import checks, jobspec
from ltd import experiments as ex
from ltd.files import load_json

R = f"results/{config['run']}"
ON_CPU = config["device"] == "cpu"
TABLES = ex.table_names(config)


def run_path(run, filename):
    return f"{R}/{run.dir}/{filename}"


def run_file(role, filename):
    """``filename`` of the run a rule's {name} wildcard names (a pattern for input: and
    output:); run_path is the same file of a run known by its record."""
    return f"{R}/{role}/{{name}}/{filename}"


def data_json(dataset):
    """A data set's source, fetched; its splits are each job's params (ltd.experiments)."""
    return f"{R}/data/{dataset}.json"


def tmax_json(dataset):
    return f"{R}/temperature/{dataset}/tmax.json"


def dataset_of(role):
    """The data set of the run a job's {name} wildcard names."""
    return lambda w: ex.Run.parse(role, w.name).dataset


def check_report(args):
    """--report renders a finished run: where the requested tables are not made yet,
    Snakemake's own error ("marked for report but does not exist") would not say that
    the run comes first."""
    if args is None or not getattr(args, "report", None):
        return
    missing = [f for f in (f"{R}/tables/{t}.md" for t in sorted(SCOPE.tables)) if not Path(f).exists()]
    if not missing:
        return
    first = (
        "`make demo` (`make demo-all` for REPORT_TARGETS=all)"
        if config["run"] == "demo"
        else "the same command without --report"
    )
    raise checks.ConfigError(
        [
            f"--report shows the results of a finished run, and {', '.join(missing[:3])}"
            f"{f' (and {len(missing) - 3} more)' if len(missing) > 3 else ''} is not made yet: run {first} first"
        ]
    )


# ---- input functions of the rules (kept here, as the Snakemake linter asks) ----


@lru_cache(maxsize=None)
def _spec(kind, role, name):
    """A job's spec (ltd.jobspec), built once per job: its params `spec` and `identity`."""
    run = ex.Run.parse(role, name)
    build = {
        "train": jobspec.training,
        "evaluate": jobspec.student_evaluation,
        "validate": jobspec.validation,
        "logits": jobspec.logits,
        "model": jobspec.model,
    }[kind]
    return build(config, run)


def job_spec(kind, role="students"):
    """The rule's params.spec: what its job computes (ltd.jobspec), resolved from the config."""
    return lambda w: _spec(kind, role, w.name)


def job_identity(kind, role="students"):
    """The rule's params.identity: its spec's identity, Snakemake's rerun trigger."""
    return lambda w: _spec(kind, role, w.name).identity


@lru_cache(maxsize=None)
def dataset_spec(kind, dataset):
    """The spec of a data set's job (ltd.jobspec: its source; a step of its temperature
    search, `tmax` or `selection`), built once per data set for the params of its rules."""
    if kind == "source":
        return jobspec.source(config, dataset)
    return jobspec.search(config, dataset, kind)


def soft_label_file_of(role):
    def f(w):
        run = ex.Run.parse(role, w.name)
        return f"{R}/soft_labels/{run.teacher.name}/T{ex.fmt_num(run.temperature)}.pt"

    return f


def training_inputs(role):
    """A training job's data; and its soft labels, or, made on the fly, its teacher."""

    def inputs(w):
        run = ex.Run.parse(role, w.name)
        out = {"data": data_json(run.dataset)}
        if run.soft_label_mode == "on_the_fly":
            out["teacher"] = run_path(run.teacher, ex.weights_file("last"))
        elif run.uses_soft_labels:
            out["soft_label_file"] = soft_label_file_of(role)(w)
        return out

    return inputs


def training_outputs(role):
    """The weights and metrics of a run; a student also keeps its best epoch (best.pt: the
    best monitored PGD accuracy, what a table with `weights: best` compares with the paper)."""
    out = {"model": run_file(role, ex.weights_file("last")), "metrics": run_file(role, "metrics.json")}
    if role == "students":
        out["best"] = run_file(role, ex.weights_file("best"))
    return out


def search_dataset(w):
    return ex.search_candidates(config, w.group)[0].dataset


def selected_evaluation(w):
    """The AutoAttack result of the student the search chose (known after the checkpoint)."""
    sel = checkpoints.select_temperature.get(group=w.group).output[0]
    group = ex.search_candidates(config, w.group)[0]
    return run_path(ex.with_temperature(group, load_json(sel)["temperature"]), "autoattack.json")


PUBLISHED = {e["name"]: e for e in (config.get("published") or [])}


def published_dataset(w):
    """The data set a published checkpoint is evaluated on, as its entry writes it."""
    return PUBLISHED[w.name]["dataset"]


@lru_cache(maxsize=None)
def published_spec(name):
    """A published checkpoint's evaluation (ltd.jobspec.Published): params.spec, and its
    identity params.identity."""
    return jobspec.published(config, PUBLISHED[name])


def published_model(w):
    """Its checkpoint. One not on disk yet is left out, so that a plan still lists its
    evaluation (Snakemake's MissingInputException would stop the plan without saying where
    the file comes from): ltd.checks.missing_data names it, and a real run stops first."""
    path = checks.published_file(config, PUBLISHED[w.name])
    return str(path) if path.is_file() else []


def table_evaluations(table, weights=None):
    """AutoAttack results behind a table's rows, in row order, each row's seeds together,
    of `weights` (default: those the table compares with the paper; autoattack.json: last
    epoch, autoattack_best.json: best.pt)."""
    paths, evaluation = [], ex.evaluation_file(weights or ex.table_weights(config, table))
    for entry in ex.table_entries(config, table):
        for seed in ex.seeds(config):
            if entry.is_auto:
                paths.append(f"{R}/temperature/{ex.search_group(config, entry, seed)}/{evaluation}")
            else:
                paths.append(run_path(ex.entry_run(config, entry, seed=seed), evaluation))
    return paths


def table_inputs(w):
    """A table's evaluations (`evals`: the weights compared with the paper; `last`: the
    last epoch's beside them, where those are best.pt's), the paper's numbers, its T_max."""
    compared, *beside = ex.shown_weights(config, w.table)
    inputs = {"evals": table_evaluations(w.table, compared), "paper": "config/paper_results.yaml"}
    if beside:
        inputs["last"] = table_evaluations(w.table, "last")
    dataset = ex.table_dataset(config, w.table)
    if ex.search(config, dataset) is not None:
        inputs["tmax"] = tmax_json(dataset)  # a table of a searched data set reports its T_max
    return inputs


def all_students():
    return sorted({r for t in TABLES for r in ex.table_students(config, t)}, key=lambda r: r.name)


def all_evaluations():
    """Every student evaluation a table shows (the last epoch's; best.pt's where a table
    compares those), for the evaluation report."""
    paths = {
        run_path(r, ex.evaluation_file(w))
        for t in TABLES
        for w in ex.shown_weights(config, t)
        for r in ex.table_students(config, t)
    }
    return sorted(paths)


def table_targets(table):
    stem = f"{R}/tables/{table}"
    kinds = ex.table_figures(config, table) + ["curves"]
    figs = [f"{R}/figures/{table}_{kind}.{ext}" for kind in kinds for ext in ("png", "pdf")]
    dataset = ex.table_dataset(config, table)
    if ex.search(config, dataset) is not None:
        figs += [f"{R}/figures/tmax_{dataset}.{ext}" for ext in ("png", "pdf")]
    return [f"{stem}.{ext}" for ext in ("md", "tex", "csv")] + figs


# Run names are parsed back into runs by the scripts; keep wildcards within one path part.
wildcard_constraints:
    name="[^/]+",
    T="[0-9.]+",
    group="[^/]+_s[0-9]+",
    dataset="[a-z0-9]+",
    table="table[0-9]+",
