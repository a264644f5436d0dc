# Config -> targets. Paths and run records come from ltd.experiments; no rule builds a
# run path by hand. Planning imports no torch (ltd.experiments, ltd.methods, ltd.files
# are torch-free), so `snakemake -n all` stays fast on a login node.
from ltd import experiments as ex
from ltd.files import load_json

R = f"results/{config['run']}"
ON_CPU = config["device"] == "cpu"
TABLES = ex.table_names(config)


def run_path(run, filename):
    return f"{R}/{run.dir}/{filename}"


def data_json(dataset):
    # ancient(): the splits' identity is in each job's params, so re-preparing a data set
    # (e.g. another test_size) reruns only the jobs whose params changed, not every run.
    return ancient(f"{R}/data/{dataset}.json")


def tmax_json(dataset):
    return f"{R}/temperature/{dataset}/tmax.json"


def run_of(role):
    """The run a job's {name} wildcard names."""
    return lambda w: ex.Run.parse(role, w.name)


def dataset_of(role):
    """The data set of the run a job's {name} wildcard names."""
    return lambda w: ex.Run.parse(role, w.name).dataset


SLURM = config.get("slurm") or {}
MAX_RUNTIME = SLURM.get("max_runtime")  # minutes; None: no cap


def _capped(minutes):
    return minutes if MAX_RUNTIME is None else min(minutes, MAX_RUNTIME)


def res(kind, dataset_fn=None):
    """A job class's cluster resources (mem_mb, runtime in minutes), from config; a data
    set may override them (ImageNet needs more). runtime is capped at slurm.max_runtime:
    a longer job is resubmitted until done (retries())."""
    if dataset_fn is None:
        r = config["resources"][kind]
        return {"mem_mb": r["mem_mb"], "runtime": _capped(r["runtime"])}
    return {
        "mem_mb": lambda w: ex.resources(config, kind, dataset_fn(w))["mem_mb"],
        "runtime": lambda w: _capped(ex.resources(config, kind, dataset_fn(w))["runtime"]),
    }


def retries(kind):
    """Resubmissions of the jobs of class `kind` under slurm.max_runtime. One per time limit
    its longest runtime (over the data sets) spans beyond the first, one because an
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
    longest = max(ex.resources(config, kind, d)["runtime"] for d in [None, *config["datasets"]])
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
        minutes = _capped(ex.resources(config, kind, dataset_fn(w))["runtime"])
        return f"--signal=TERM@{min(lead, minutes * 30)}"

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
    (`workers`, default 8; ltd/data.py), in-memory ones use none."""
    d = ex.dataset_cfg(config, dataset)
    return d.get("workers", 8) if d.get("source") == "imagefolder" else 0


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


# Run names are parsed back into runs by the scripts; keep wildcards within one path part.
wildcard_constraints:
    name="[^/]+",
    T="[0-9.]+",
    group="[^/]+_s[0-9]+",
    dataset="[a-z0-9]+",
    table="table[0-9]+",
