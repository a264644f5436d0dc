# Config -> targets. Paths and run records come from ltd.experiments; no rule builds a
# run path by hand. Planning imports no torch (ltd.experiments, ltd.methods, ltd.files
# are torch-free), so `snakemake -n all` stays fast on a login node.
from ltd import experiments as ex
from ltd.files import load_json
from ltd.sources import LOADER_WORKERS

R = f"results/{config['run']}"
ON_CPU = config["device"] == "cpu"
TABLES = ex.table_names(config)


def run_path(run, filename):
    return f"{R}/{run.dir}/{filename}"


def data_json(dataset):
    """A data set's source, fetched; its splits are each job's params (ltd.experiments)."""
    return f"{R}/data/{dataset}.json"


def tmax_json(dataset):
    return f"{R}/temperature/{dataset}/tmax.json"


def dataset_of(role):
    """The data set of the run a job's {name} wildcard names."""
    return lambda w: ex.Run.parse(role, w.name).dataset


SLURM = config.get("slurm") or {}
MAX_RUNTIME = SLURM.get("max_runtime")  # minutes; None: no cap


def _runtime(kind, dataset=None):
    """A job's time limit in minutes: its configured runtime, capped at slurm.max_runtime."""
    minutes = ex.resources(config, kind, dataset)["runtime"]
    return minutes if MAX_RUNTIME is None else min(minutes, MAX_RUNTIME)


def res(kind, dataset_fn=None):
    """A job class's cluster resources (mem_mb, runtime in minutes), from config; a data
    set may override them (ImageNet needs more). runtime is capped at slurm.max_runtime:
    a longer job is resubmitted until done (retries())."""
    if dataset_fn is None:
        return {"mem_mb": config["resources"][kind]["mem_mb"], "runtime": _runtime(kind)}
    return {
        "mem_mb": lambda w: ex.resources(config, kind, dataset_fn(w))["mem_mb"],
        "runtime": lambda w: _runtime(kind, dataset_fn(w)),
    }


def retries(kind):
    """Resubmissions of the jobs of class `kind` under slurm.max_runtime. One per time limit
    its longest runtime (over the data sets in use) spans beyond the first, one because an
    allocation yields a bit less than its limit (start-up, an early SIGTERM), one spare for
    a failure (preemption, node failure), so ceil(runtime / max_runtime) + 1. None (the
    profile's `retries`) when nothing is capped.

    Only the Snakemake that submits the jobs retries them: a rule's retries reach the
    Snakemake each job runs inside its allocation too (the Slurm job step), which would
    start the job again in the same allocation after SIGTERM, past its time limit."""
    if MAX_RUNTIME is None:
        return None
    if not workflow.is_main_process:
        return 0
    # Over the data sets in use only: an unused ImageNet entry's week would otherwise set
    # thousands of retries for every job, each a resubmission of a job that keeps failing.
    longest = max(ex.resources(config, kind, d)["runtime"] for d in [None, *ex.datasets_in_use(config)])
    n = -(-longest // MAX_RUNTIME)
    return n + 1 if n > 1 else None


def stop_signal(kind, dataset_fn):
    """sbatch --signal=TERM@<slurm.signal_seconds> (at most half the job's limit) for the
    long jobs, as their rule's `slurm_extra` (a slurm_extra in the profile's
    default-resources does not reach them). Training checkpoints on it; AutoAttack is
    killed by it with its state saved after the last batch. Either way the job ends before
    its limit: one that finished past it would be marked TIMEOUT, and Snakemake would
    delete its complete outputs and run it again."""
    lead = SLURM.get("signal_seconds", 0)
    if not lead:
        return {}

    def extra(w):
        return f"--signal=TERM@{min(lead, _runtime(kind, dataset_fn(w)) * 30)}"

    return {"slurm_extra": extra}


def gpus(dataset_fn=None, training=False):
    """GPUs a job holds: none on the CPU; a training job on a data set with `processes`
    holds one per torch.distributed process."""
    if ON_CPU:
        return 0
    if training and dataset_fn is not None:
        return lambda w: ex.processes(config, dataset_fn(w))
    return 1


def train_threads(role):
    """CPU threads: a distributed job on the CPU runs `processes` processes."""
    if not ON_CPU:
        return config["threads"]
    return lambda w: config["threads"] * ex.processes(config, dataset_of(role)(w))


def loader_workers(dataset):
    """DataLoader worker processes per process: image-file data sets decode with them
    (`workers`, default ltd.sources.LOADER_WORKERS; ltd/data.py), in-memory ones use none."""
    d = ex.dataset_cfg(config, dataset)
    return d.get("workers", LOADER_WORKERS) if d.get("source") == "imagefolder" else 0


def cpus(threads, dataset_fn, training=False):
    """CPUs of a Slurm job (resource cpus_per_task -> --cpus-per-task), from the config
    whatever machine Snakemake runs on (its --cores caps `threads`, which stays for the
    local scheduler): the job's threads plus the loader workers of each of its processes
    (`processes` for training). ImageNet training: 4 threads + 4 x 8 workers = 36."""

    def n(w):
        t = threads(w) if callable(threads) else threads
        d = dataset_fn(w)
        return t + (ex.processes(config, d) if training else 1) * loader_workers(d)

    return n


# ---- input functions of the rules (kept here, as the Snakemake linter asks) ----

def training_identity(role):
    return lambda w: ex.training_identity(config, ex.Run.parse(role, w.name))


def soft_labels_of(role):
    def f(w):
        run = ex.Run.parse(role, w.name)
        return f"{R}/soft_labels/{run.teacher.name}/T{ex.fmt_num(run.temperature)}.pt"

    return f


def student_inputs(w):
    """Its data; and its soft labels, or, made on the fly, its teacher."""
    run = ex.Run.parse("students", w.name)
    inputs = {"data": data_json(run.dataset)}
    if run.labels == "on_the_fly":
        inputs["teacher"] = run_path(run.teacher, "model.pt")
    elif run.uses_soft_labels:
        inputs["soft_labels"] = soft_labels_of("students")(w)
    return inputs


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


def published_model(w):
    e = PUBLISHED[w.name]
    if e.get("path"):
        return e["path"]
    ds = ex.dataset_cfg(config, e["dataset"])
    # the layout robustbench.load_model uses: <model_dir>/<dataset>/Linf/<name>.pt
    return f"{config['robustbench_model_dir']}/{ds['source']}/Linf/{e.get('robustbench_name', e['name'])}.pt"


def table_evaluations(table):
    """AutoAttack results behind a table's rows, in row order, each row's seeds together,
    of the weights the table evaluates (autoattack.json: last epoch; autoattack_best.json)."""
    paths, evaluation = [], ex.evaluation_file(ex.table_weights(config, table))
    for entry in ex.table_entries(config, table):
        for seed in ex.seeds(config):
            if entry.is_auto:
                paths.append(f"{R}/temperature/{ex.search_group(config, entry, seed)}/{evaluation}")
            else:
                paths.append(run_path(ex.entry_run(config, entry, seed=seed), evaluation))
    return paths


def table_inputs(w):
    inputs = {"evals": table_evaluations(w.table), "paper": "config/paper_results.yaml"}
    dataset = ex.table_dataset(config, w.table)
    if ex.search(config, dataset) is not None:
        inputs["tmax"] = tmax_json(dataset)  # a table of a searched data set reports its T_max
    return inputs


def all_students():
    return sorted({r for t in TABLES for r in ex.table_students(config, t)}, key=lambda r: r.name)


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
