# How each job asks for its resources: memory, time limit, retries under
# slurm.max_runtime, GPUs (the Slurm executor plugin's flags), CPUs, the early SIGTERM;
# and the checks of a profile's Slurm settings. Read by the rules' `resources:`,
# `threads:` and `retries:`; the paths and inputs are in common.smk.
from pathlib import Path

from ltd import budget, checks, sources
from ltd import experiments as ex

SLURM = config["slurm"]  # defaults: config/schema.yaml
MAX_RUNTIME = SLURM["max_runtime"]  # minutes; None: no cap


def training_job(role):
    """The budget's job (ltd.budget) a training rule's {name} runs."""
    return lambda w: budget.Job(ex.ROLE_KEYS[role], ex.Run.parse(role, w.name))


def student_job(kind):
    """The budget's evaluation or validation job of the student a rule's {name} names."""
    return lambda w: budget.Job(kind, ex.Run.parse("students", w.name))


def published_job(w):
    """A published checkpoint's evaluation, priced as a student's of its architecture."""
    e = PUBLISHED[w.name]
    return budget.Job("evaluation", ex.Run("students", e["dataset"], e["arch"], config["seed"], "trades", beta=0.0))


def _runtime(kind, job):
    """A job's time limit in minutes: its configured runtime, or (`runtime: budget`) its
    estimated time (ltd.budget.time_limit); capped at slurm.max_runtime."""
    minutes = ex.resources(config, kind, job.run.dataset)["runtime"]
    if minutes == "budget":
        minutes = budget.time_limit(config, job)
    return minutes if MAX_RUNTIME is None else min(minutes, MAX_RUNTIME)


def res(kind, dataset_fn=None, job_fn=None):
    """A job class's cluster resources (mem_mb, runtime in minutes), from config; a data
    set may override them (ImageNet needs more). mem_mb is per process: a training job's
    torch.distributed processes ask for it each. runtime is capped at slurm.max_runtime:
    a longer job is resubmitted until done (retries())."""
    if job_fn is not None:
        dataset_fn = lambda w: job_fn(w).run.dataset
    if dataset_fn is None:
        minutes = config["resources"][kind]["runtime"]
        return {
            "mem_mb": config["resources"][kind]["mem_mb"],
            "runtime": minutes if MAX_RUNTIME is None else min(minutes, MAX_RUNTIME),
        }

    def mem_mb(w):
        d = dataset_fn(w)
        return ex.resources(config, kind, d)["mem_mb"] * (ex.processes(config, d) if kind == "train" else 1)

    def runtime(w):
        if job_fn is None:  # a job the budget does not price: minutes from the config
            minutes = ex.resources(config, kind, dataset_fn(w))["runtime"]
            return minutes if MAX_RUNTIME is None else min(minutes, MAX_RUNTIME)
        return _runtime(kind, job_fn(w))

    return {"mem_mb": mem_mb, "runtime": runtime}


def retries(kind):
    """Resubmissions of the jobs of class `kind` under slurm.max_runtime. One per time limit
    its longest runtime (over the jobs the requested targets run) spans beyond the first,
    one because an allocation yields a bit less than its limit (start-up, an early SIGTERM),
    one spare for a failure (preemption, node failure), so ceil(runtime / max_runtime) + 1.
    None (the profile's `retries`) when nothing is capped.

    Only the Snakemake that submits the jobs retries them: a rule's retries reach the
    Snakemake each job runs inside its allocation too (the Slurm job step), which would
    start the job again in the same allocation after SIGTERM, past its time limit."""
    if MAX_RUNTIME is None:
        return None
    if not workflow.is_main_process:
        return 0
    # Over the data sets the requested targets use only (SCOPE, Snakefile): an unused
    # ImageNet entry's week would otherwise set thousands of retries for every job, each a
    # resubmission of a job that keeps failing.
    minutes = [ex.resources(config, kind, d)["runtime"] for d in [None, *sorted(SCOPE.data)]]
    if "budget" in minutes:  # the longest estimate among the jobs of this class
        kinds = {"train": ("teacher", "substitute", "student"), "evaluate": ("evaluation", "validation")}[kind]
        minutes = [m for m in minutes if m != "budget"] + [
            budget.time_limit(config, j)
            for j in budget.job_tables(config)
            if j.kind in kinds and j.run.dataset in SCOPE.data
        ]
    n = -(-max(minutes, default=0) // MAX_RUNTIME)
    return n + 1 if n > 1 else None


# ---- how a GPU job asks Slurm for its GPUs (slurm.gpu_request, gpu_type) ----
GPU_REQUEST = SLURM["gpu_request"]
GPU_TYPE = SLURM["gpu_type"]
GPU_TYPE_AS_CONSTRAINT = SLURM["gpu_type_as_constraint"]


def gpu_resources(n):
    """The plugin's resources (snakemake-executor-plugin-slurm 2.8) that ask for `n` GPUs
    (a number or a function of the wildcards), one Slurm flag only:
    gpus: `gpu` (--gpus=N, with `gpu_model` --gpus=<type>:N); gres: `gres` (--gres=gpu:N or
    gpu:<type>:N); gpus-per-node: --gpus-per-node=[<type>:]N in slurm_extra (slurm_extra()).
    A GPU type as a node feature instead: `constraint` (-C <type>).

    `gpu` is also what the local scheduler counts (--resources gpu=N) and what a job's
    script reads to lock its GPUs: the job's own Snakemake (in its allocation) always
    has it; the submitting one only on the `gpus` route (the plugin turns any `gpu` into
    --gpus, which the other routes must not get as a second GPU flag)."""
    if ON_CPU:
        return {"gpu": 0}
    out = {}
    typed = GPU_TYPE and not GPU_TYPE_AS_CONSTRAINT
    if GPU_REQUEST == "gpus" or not workflow.is_main_process:
        out["gpu"] = n
        if typed and GPU_REQUEST == "gpus":
            out["gpu_model"] = GPU_TYPE
    if GPU_REQUEST == "gres" and workflow.is_main_process:
        prefix = f"gpu:{GPU_TYPE}:" if typed else "gpu:"
        out["gres"] = (lambda w: f"{prefix}{n(w)}") if callable(n) else f"{prefix}{n}"
    if GPU_TYPE and GPU_TYPE_AS_CONSTRAINT:
        out["constraint"] = GPU_TYPE
    return out


def slurm_extra(kind=None, dataset_fn=None, job_fn=None, gpus_fn=None):
    """The rule's `slurm_extra`: the site's own flags (config slurm.extra), then
    --gpus-per-node on that route, then, for the long jobs (`kind`), sbatch
    --signal=TERM@<slurm.signal_seconds> (at most half the job's limit). Training
    checkpoints on it; AutoAttack is killed by it with its state saved after the last
    batch. Either way the job ends before its limit: one that finished past it would be
    marked TIMEOUT, and Snakemake would delete its complete outputs and run it again.
    Merged here because a rule's slurm_extra replaces the profile's (a slurm_extra under
    set-resources would drop the signal: check_site_slurm_extra() refuses it)."""
    site = SLURM["extra"] or ""
    lead = SLURM["signal_seconds"] if kind else 0
    per_node = GPU_REQUEST == "gpus-per-node" and gpus_fn is not None and not ON_CPU and workflow.is_main_process
    if not (site or lead or per_node):
        return {}

    def extra(w):
        flags = [site] if site else []
        if per_node:
            typed = f"{GPU_TYPE}:" if GPU_TYPE and not GPU_TYPE_AS_CONSTRAINT else ""
            flags.append(f"--gpus-per-node={typed}{gpus_fn(w) if callable(gpus_fn) else gpus_fn}")
        if lead:
            job = job_fn(w) if job_fn else None
            limit = (
                _runtime(kind, job)
                if job
                else min(ex.resources(config, kind, dataset_fn(w))["runtime"], MAX_RUNTIME or float("inf"))
            )
            flags.append(f"--signal=TERM@{int(min(lead, limit * 30))}")
        return " ".join(flags)

    return {"slurm_extra": extra}


def gpu_job(kind, dataset_fn, job_fn=None, threads=None, training=False, signal=True):
    """Everything a GPU job asks for: its GPUs (gpu_resources: one per torch.distributed
    process for `training`, else one), memory and time limit (res: from the budget's
    estimate of `job_fn`'s job where the config says `runtime: budget`), slurm_extra (with
    the early SIGTERM if `signal`) and its CPUs (cpus: `threads`, default the config's,
    plus loader workers)."""
    n = gpus(dataset_fn, training)
    return {
        **gpu_resources(n),
        **res(kind, dataset_fn, job_fn),
        **slurm_extra(kind if signal else None, dataset_fn, job_fn, n),
        "cpus_per_task": cpus(config["threads"] if threads is None else threads, dataset_fn, training),
    }


def check_site_slurm_extra():
    """A profile's set-resources slurm_extra replaces a rule's own (the --signal that ends
    a job before its limit): refuse it, naming the config key that merges."""
    over = workflow.resource_settings.overwrite_resources or {}
    bad = [r.name for r in workflow.rules if "slurm_extra" in r.resources and "slurm_extra" in over.get(r.name, {})]
    if bad:
        raise checks.ConfigError(
            [
                f"set-resources: {', '.join(sorted(bad))}: a `slurm_extra` there replaces the rule's own "
                f"({'--signal=TERM@... ' if SLURM['signal_seconds'] else ''}"
                f"{'--gpus-per-node ' if GPU_REQUEST == 'gpus-per-node' else ''}flags), so the job would run past its "
                "limit and lose its outputs; put the site's sbatch flags in the config's `slurm: extra:` instead "
                "(added to every job's slurm_extra)"
            ]
        )


def check_slurm_logdir(args):
    """Slurm's job logs belong to this run: profiles/slurm derives its slurm-logdir from
    the run the command line selects (ltd/run_name.py); a --slurm-logdir of another run's
    folder (or a derivation that missed how this config was loaded) stops the plan."""
    want = Path(R) / "logs" / "slurm"
    got = getattr(args, "slurm_logdir", None)
    if args is None or getattr(args, "executor", None) != "slurm" or got is None or Path(got) == want:
        return
    raise checks.ConfigError(
        [
            f"run = {config['run']!r}, but Slurm would write its job logs to {got} (--slurm-logdir, or the "
            f"profile's slurm-logdir); leave --slurm-logdir out (the profile derives it from `run:`) or write "
            f"--slurm-logdir {want}, so that they stay with this run's results"
        ]
    )


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
    """DataLoader worker processes per process: a streamed source decodes with them
    (`workers`, its schema default laid under by dataset_cfg; ltd/data.py), in-memory ones use none."""
    d = ex.dataset_cfg(config, dataset)
    return d["workers"] if sources.get(d["source"]).streamed else 0


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
