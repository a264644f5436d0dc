"""What a config costs: jobs per table and in total, and GPU-hours from counted FLOPs.

    GPU-hours of a job = FLOPs / (mfu x peak) / 3600   (mfu and peak: the job's precision)
    training FLOPs     = forward FLOPs per image (arch, image size; ltd.flops, counted)
                         x forward-equivalents per image of one step of the method
                         x training images x epochs
                         (+ the per-epoch clean test pass: test images x epochs x 1 forward)
    evaluation FLOPs   = forward FLOPs per image x test images x forward-equivalents per
                         image of clean + PGD + AutoAttack (``evaluation_forward_equivalents``)
    teacher logits     = forward FLOPs per image x training images (one forward each)

Forward-equivalents per step come from the method registry (ltd.methods: each method
declares its cost; tests/test_methods.py checks every declaration against FLOPs counted
on the step itself); AWP's proxy pass counts only for the epochs after its warm-up; a
student whose soft labels are made on the fly adds its teacher's forward (1).
Training runs under bf16 autocast on a GPU, so it is divided by ``peak_tflops`` (dense
bf16); evaluation runs in full fp32 with TF32 off (ltd/runtime.py, ltd/evaluate.py), so
it is divided by ``fp32_peak_tflops`` (as are the teacher-logit and validation jobs,
also fp32); a schedule with ``precision: fp32`` trains at that peak too.

Jobs come from ltd.experiments exactly as the workflow plans them: a table's students
(its rows; an ``auto`` row adds its whole search grid, an upper bound: the candidates at
or above T_max are dropped once it is known), the teachers of its LTD students, the
teacher and substitutes of its data set's T_max search, one AutoAttack evaluation per
row and shown weights (two where a table compares best.pt with the paper and shows the
last epoch beside it: ltd.experiments.shown_weights), the teacher-logit pass of each teacher (its soft labels serve LTD students and
substitutes), a validation per candidate of an ``auto`` row. A run two tables share is
listed under both tables, and counted once in the total. The settings (GPU peaks, MFU)
are the config's ``budget:`` section.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from . import experiments as ex
from . import methods, sources
from . import throughput as tl
from .experiments import Run
from .sources import sizes

# ---- data sets ------------------------------------------------------------------------

def _built(cfg: dict) -> bool:
    return sources.get(cfg["source"]).buildable and bool(cfg.get("build_from"))


def _source_cfg(config: dict, dataset: str) -> dict:
    """The data set's section; for one built from an in-memory source (the demo's
    imagefolder), that source's section (it fixes the number of images and classes)."""
    cfg = ex.dataset_cfg(config, dataset)
    if _built(cfg):
        return {**cfg["build_from"], "val_size": 0}
    return cfg


def split_sizes(config: dict, dataset: str) -> dict[str, int]:
    """Images per split (ltd.sources.split_sizes), the source's counted where not fixed; an
    imagefolder built from an in-memory source splits that source's train and test images."""
    cfg = ex.dataset_cfg(config, dataset)
    if _built(cfg):
        built = sources.split_sizes(_source_cfg(config, dataset))
        return sources.split_sizes(cfg, {"train": built["train"], "test": built["test"]})
    return sources.split_sizes(cfg, sizes(cfg))


def train_images(config: dict, dataset: str) -> int:
    return split_sizes(config, dataset)["train"]


def test_images(config: dict, dataset: str) -> int:
    return split_sizes(config, dataset)["test"]


def image_size(config: dict, dataset: str) -> int:
    return sources.image_size(ex.dataset_cfg(config, dataset))


def num_classes(config: dict, dataset: str) -> int:
    return sizes(_source_cfg(config, dataset))["classes"]


def assumed_accuracy(config: dict, dataset: str) -> tuple[float, float]:
    """(clean, robust): how many test images AutoAttack keeps attacking (its source's record)."""
    return sources.get(_source_cfg(config, dataset)["source"]).accuracy


# ---- counted FLOPs --------------------------------------------------------------------

# Counted by ltd.flops for the paper's models (tests/test_budget.py counts them again):
# Slurm time limits come from the budget while the DAG is planned, which imports no torch.
COUNTED_FORWARD_FLOPS = {
    ("wrn-34-10", 32, 10): 13317812736, ("wrn-34-10", 32, 100): 13317927936,
    ("wrn-34-20", 32, 10): 53163713536, ("wrn-34-20", 32, 100): 53163943936,
    ("resnet-50", 224, 1000): 8178368512, ("wrn-50-2", 224, 1000): 22796042240,
    ("preact-resnet18", 32, 10): 1110845440, ("preact-resnet18", 32, 100): 1110937600,  # quick.yaml
}


@functools.lru_cache(maxsize=None)
def forward_flops(arch: str, size: int, classes: int) -> int:
    """FLOPs of one forward of ``arch`` on one image (ltd.flops, meta device)."""
    if (arch, size, classes) in COUNTED_FORWARD_FLOPS:
        return COUNTED_FORWARD_FLOPS[arch, size, classes]
    from .flops import model_forward_flops

    return model_forward_flops(arch, size, classes)


def awp_epochs(sched: dict, awp: dict) -> int:
    """Epochs with AWP on (ltd.steps.AWPStep: from 1-based epoch ``warmup_epochs``)."""
    if not awp["gamma"]:
        return 0
    return max(0, sched["epochs"] - max(0, int(awp["warmup_epochs"]) - 1))


def autoattack_plan(ev: dict, classes: int) -> list[tuple[str, float, str]]:
    """(attack, forward-equivalents per attacked image, which images) of an AutoAttack
    run, as pyautoattack runs it (one restart and min(9, classes - 1) target classes
    in 'standard' and in ltd's 'custom'; 5 restarts in 'plus'; EOT 20 in 'rand').

    Per iteration: APGD forward + input gradient (2); FAB-T forward + ``.backward()``
    (2: the evaluated model's weights are frozen, ltd.jobs.common.load_model, so the
    backward computes input gradients only) + a forward to check the new point (1);
    untargeted FAB a forward and one input-gradient backward per class; Square one
    forward per query.
    ``which``: 'correct' (APGD-CE, the first attack: all clean-correct images) or
    'robust' (the later attacks run on the images still robust: about the final robust
    accuracy, a slight under-estimate)."""
    aa = ev["autoattack"]
    version = aa["version"]
    targets = min(9, classes - 1)
    queries = aa.get("square_queries") or 5000

    def apgd(restarts=1, eot=1):
        return restarts * (2 * eot * (100 + 1) + 1)

    fab_t = 3 * 100 + 2
    fab = (2 + classes) * 100 + 2
    square = queries + 2
    if version == "standard":
        plan = [("apgd-ce", apgd()), ("apgd-t", targets * apgd()), ("fab-t", targets * fab_t), ("square", square)]
    elif version == "plus":
        plan = [("apgd-ce", apgd(5)), ("apgd-dlr", apgd(5)), ("fab", 5 * fab), ("square", square),
                ("apgd-t", targets * apgd()), ("fab-t", targets * fab_t)]
    elif version == "rand":
        plan = [("apgd-ce", apgd(1, 20)), ("apgd-dlr", apgd(1, 20))]
    else:
        costs = {"apgd-ce": apgd(), "apgd-dlr": apgd(), "apgd-t": targets * apgd(), "fab": fab,
                 "fab-t": targets * fab_t, "square": square}
        plan = [(a, costs[a]) for a in aa.get("attacks") or []]
    return [(name, float(c), "correct" if i == 0 else "robust") for i, (name, c) in enumerate(plan)]


def evaluation_forward_equivalents(ev: dict, classes: int, accuracy: tuple[float, float]) -> dict[str, float]:
    """Forward-equivalents per test image of an evaluation job (ltd.jobs.evaluate_run):
    clean accuracy (1), PGD-k (k x 2 + 1), AutoAttack's clean pass (1) and its attacks
    on the images they run on (``accuracy`` = assumed (clean, robust))."""
    clean, robust = accuracy
    out = {"clean": 1.0, "pgd": 2.0 * ev["pgd_steps"] + 1, "autoattack": 1.0}
    for name, cost, which in autoattack_plan(ev, classes):
        out["autoattack"] += cost * (clean if which == "correct" else robust)
    out["total"] = out["clean"] + out["pgd"] + out["autoattack"]
    return out


# ---- evaluation precision and jobs per GPU ---------------------------------------------

# AutoAttack jobs' (peak, MFU) keys per evaluation.precision. pytorch_default runs the
# convolutions (all of a WRN's FLOPs but its last layer's) in TF32: priced as TF32 unless
# budget.mfu.eval_pytorch_default holds its own measured MFU.
EVAL_PRECISION_KEYS = {"fp32": ("fp32_peak_tflops", "eval_fp32"),
                       "pytorch_default": ("tf32_peak_tflops", "eval_pytorch_default"),
                       "tf32": ("tf32_peak_tflops", "eval_tf32")}


def eval_peak_mfu(s: dict, precision: str) -> tuple[float, float]:
    """(peak TFLOP/s, MFU) of an evaluation in ``precision``, from the budget section ``s``."""
    peak_key, mfu_key = EVAL_PRECISION_KEYS[precision]
    return s[peak_key], s["mfu"].get(mfu_key) or s["mfu"]["eval_tf32"]


def jobs_per_gpu_throughput(config: dict) -> float:
    """Aggregate throughput of ``jobs_per_gpu`` jobs sharing a GPU, relative to one job per
    GPU (budget.jobs_per_gpu_throughput, measured by the retired benchmarks/gpu_check.py for
    k = 1, 2, 3); 1.0, the one-job figures, where none was measured for this k."""
    k = int(config["jobs_per_gpu"])
    measured = config["budget"]["jobs_per_gpu_throughput"]
    return float(measured[k - 1]) if k <= len(measured) else 1.0


def with_evaluation_precision(config: dict, precision: str) -> dict:
    """``config`` with every evaluation section (the defaults and each data set's) in ``precision``."""
    import copy

    out = copy.deepcopy(config)
    out["evaluation"]["precision"] = precision
    for ds in out["datasets"].values():
        if isinstance(ds.get("evaluation"), dict) and "precision" in ds["evaluation"]:
            ds["evaluation"]["precision"] = precision
    return out


# ---- jobs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    kind: str  # teacher | substitute | student | logits | evaluation | validation
    run: Run
    group: str | None = None  # an `auto` row's evaluation: of the candidate its search picks
    weights: str = "last"  # an evaluation's: the last epoch's (model.pt) or best.pt's

    @property
    def name(self) -> str:
        name = f"{self.kind}:{self.group} (auto)" if self.group else f"{self.kind}:{self.run.name}"
        return name + (f" ({self.weights})" if self.weights != "last" else "")


@dataclass
class Cost:
    job: Job
    arch: str
    dataset: str
    method: str
    forward_gflop: float  # per image
    forward_equivalents: float  # per image per step (training) or per image (evaluation)
    images: int
    epochs: int
    flop: float
    peak_tflops: float
    gpu_hours: float
    processes: int = 1
    notes: list[str] = field(default_factory=list)
    step: str = ""  # what runs, priced per image and forward-equivalent: "<method> <precision>" or "attack <precision>"
    seconds_per_fe: float = 0.0  # that rate (for AWP, of its AWP-on epochs)
    basis: str = ""  # what priced it (ltd.throughput.Rate): measured, or the model, FLOP- or launch-bound
    rate: str = ""  # the measured row or the model's numbers


def train_rate(config: dict, run: Run, sched: dict, awp_on: bool) -> tl.Rate:
    """Seconds per image and forward-equivalent of ``run``'s training step (AWP on or off),
    in the schedule's precision on the budget's GPU (ltd.throughput: measured, or the model)."""
    s = config["budget"]
    method = methods.get(run.method)
    step_method = run.method
    if method.awp and not awp_on:  # AWP off (its warm-up): the step is TRADES(+LTD)'s (ltd.steps.AWPStep)
        step_method = {"awp": "trades", "awp-ltd": "trades-ltd"}[run.method]
    size, classes = image_size(config, run.dataset), num_classes(config, run.dataset)
    fwd = forward_flops(run.arch, size, classes)
    fp32 = sched["precision"] == "fp32"
    precisions = ("fp32",) if fp32 else (sched["precision"], *(p for p in tl.AUTOCAST if p != sched["precision"]))
    peak, mfu = (s["fp32_peak_tflops"], s["mfu"]["eval_fp32"]) if fp32 else (s["peak_tflops"], s["mfu"]["train"])
    rate = tl.measured(config, run.arch, size, precisions, step_method, fwd, peak)
    if rate is not None and rate.own:
        return rate
    steps = int(ex.attack(config, run.dataset, run.method)["steps"]) if method.attack else 0
    kind = "trades" if method.awp and not awp_on else method.step
    fe = methods.forward_equivalents(run.method, steps, awp_on=awp_on)
    batch = max(1, int(sched["batch_size"]) // ex.processes(config, run.dataset))  # per GPU
    modelled = tl.model(config, fwd, peak, mfu, tl.launches(run.arch, kind, steps) / fe, batch)
    return tl.measured_or_floor(rate, modelled)


def eval_rate(config: dict, run: Run, precision: str, batch: int | None = None) -> tl.Rate:
    """Seconds per image and forward-equivalent of an evaluation's forward + input
    gradient of ``run``'s model in ``precision`` (fp32, tf32, pytorch_default), in
    batches of ``batch`` (default the evaluation's)."""
    s = config["budget"]
    size, classes = image_size(config, run.dataset), num_classes(config, run.dataset)
    fwd = forward_flops(run.arch, size, classes)
    peak, mfu = eval_peak_mfu(s, precision)
    precisions = (precision, "tf32") if precision == "pytorch_default" else (precision,)
    rate = tl.measured(config, run.arch, size, precisions, tl.ATTACK, fwd, peak)
    if rate is not None and rate.own:
        return rate
    batch = batch or int(ex.evaluation(config, run.dataset)["batch_size"])
    return tl.model(config, fwd, peak, mfu, tl.launches(run.arch, tl.ATTACK, 1) / 2, batch)


def job_cost(config: dict, job: Job) -> Cost:
    run = job.run
    size, classes = image_size(config, run.dataset), num_classes(config, run.dataset)
    fwd = forward_flops(run.arch, size, classes)
    notes: list[str] = []
    if job.kind in TRAINING:
        role = methods.ROLE_OF_KEY[job.kind]
        sched = ex.schedule(config, role, run.dataset)
        epochs, n = int(sched["epochs"]), train_images(config, run.dataset)
        method = methods.get(run.method)
        steps = int(ex.attack(config, run.dataset, run.method)["steps"]) if method.attack else 0
        fe = methods.forward_equivalents(run.method, steps, awp_on=False)
        rate = train_rate(config, run, sched, awp_on=False)
        on = awp_epochs(sched, config["awp"]) if method.awp else 0
        seconds = (epochs - on) * fe * rate.seconds  # per training image
        if method.awp:  # the proxy pass only for the epochs after AWP's warm-up
            fe_on = methods.forward_equivalents(run.method, steps, awp_on=True)
            notes.append(f"AWP on for {on} of {epochs} epochs ({fe_on:.2f} vs {fe:.2f} fwd-eq)")
            rate_on = train_rate(config, run, sched, awp_on=True)
            seconds += on * fe_on * rate_on.seconds
            fe = (on * fe_on + (epochs - on) * fe) / epochs
            rate = rate_on if on else rate
        if run.soft_label_mode == "on_the_fly":  # the teacher (same architecture) labels every augmented image
            fe += 1.0
            seconds += epochs * rate.seconds
            notes.append("soft labels on the fly: +1 teacher forward per image")
        # The training curves (ltd.jobs.monitor.Monitor), in TF32 after every epoch: the clean
        # test pass; for students the PGD monitor on its images (2 FE per PGD step, + 1)
        curves = test_images(config, run.dataset)
        monitor = ex.evaluation(config, run.dataset).get("monitor") or {}
        if job.kind == "student" and monitor.get("n_examples"):
            curves += int(monitor["n_examples"]) * (2 * int(monitor["pgd_steps"]) + 1)
            notes.append(f"monitor: PGD-{monitor['pgd_steps']} on {monitor['n_examples']} test images per epoch")
        curve_rate = eval_rate(config, run, "tf32", int(sched["eval_batch_size"]))
        flop = fwd * (fe * n + curves) * epochs
        seconds = seconds * n + curves * epochs * curve_rate.seconds
        procs = ex.processes(config, run.dataset)
        peak = config["budget"]["fp32_peak_tflops" if sched["precision"] == "fp32" else "peak_tflops"]
        step = f"{run.method} {sched['precision']}"
    else:
        ev = ex.evaluation(config, run.dataset)
        acc = assumed_accuracy(config, run.dataset)
        if job.kind == "logits":  # rule teacher_logits: one forward per training image
            n, fe = train_images(config, run.dataset), 1.0
        elif job.kind == "evaluation":
            n = min(int(ev["n_examples"]), test_images(config, run.dataset))
            fe = evaluation_forward_equivalents(ev, classes, acc)["total"]
            notes.append(f"AutoAttack {ev['autoattack']['version']}, assumed clean {acc[0]:.0%} / robust {acc[1]:.0%}")
        else:  # validation: clean, PGD, the search's AutoAttack, Eq. 9 on the validation split
            n = split_sizes(config, run.dataset)["val"]
            steps = int(ex.attack(config, run.dataset, run.method)["steps"])
            search_aa = {**ev, "autoattack": {"version": "custom", "attacks": ex.search(config, run.dataset)["attacks"]}}
            fe = evaluation_forward_equivalents(search_aa, classes, acc)["total"] + 1 + 2 * steps + 1
        epochs, flop, procs = 1, fwd * fe * n, 1
        # evaluation.precision switches the AutoAttack jobs (only) from strict fp32 to TF32
        precision = ev["precision"] if job.kind == "evaluation" else "fp32"
        rate = eval_rate(config, run, precision)
        seconds = fe * n * rate.seconds
        peak = eval_peak_mfu(config["budget"], precision)[0]
        step = f"{tl.ATTACK} {precision}"
    throughput = jobs_per_gpu_throughput(config)
    if throughput != 1.0:
        notes.append(f"jobs_per_gpu: {throughput:g}x the aggregate rate of one job per GPU (measured)")
    gpu_hours = seconds / 3600 / throughput
    return Cost(job, run.arch, run.dataset, run.method, fwd / 1e9, fe, n, epochs, flop, peak, gpu_hours, procs, notes,
                step, rate.seconds, rate.basis, rate.how)


def table_jobs(config: dict, table: str) -> list[Job]:
    """The training and evaluation jobs behind one table, as the workflow plans them."""
    jobs: list[Job] = []

    def add(job: Job) -> None:
        if job not in jobs:
            jobs.append(job)

    dataset = ex.table_dataset(config, table)
    shown = ex.shown_weights(config, table)  # each an AutoAttack of every row
    students: list[Run] = []
    for entry in ex.table_entries(config, table):
        if entry.is_auto:
            group = ex.search_group(config, entry)
            candidates = ex.search_candidates(config, group)
            students += candidates
            for c in candidates:
                add(Job("validation", c))
            # the evaluation of whichever candidate the search picks (priced as the first),
            # counted apart from any row that names the same T: an upper bound
            for weights in shown:
                add(Job("evaluation", candidates[0], group=group, weights=weights))
        else:
            run = ex.entry_run(config, entry)
            students.append(run)
            for weights in shown:
                add(Job("evaluation", run, weights=weights))
    for run in students:
        add(Job("student", run))
        if run.uses_soft_labels:
            add(Job("teacher", run.teacher))
            if run.soft_label_mode != "on_the_fly":  # precomputed soft labels come from the teacher's logits
                add(Job("logits", run.teacher))
    if ex.search(config, dataset) is not None:  # the table reports its data set's T_max
        add(Job("teacher", ex.search_teacher(config, dataset)))
        add(Job("logits", ex.search_teacher(config, dataset)))
        for sub in ex.substitutes(config, dataset):
            add(Job("substitute", sub))
    return jobs


KINDS = ("student", "teacher", "substitute", "evaluation", "validation", "logits")
COUNT_COLUMNS = {**methods.ROLE_OF_KEY, "evaluation": "evaluations", "validation": "validations",
                 "logits": "teacher logits"}
TRAINING = tuple(methods.ROLE_OF_KEY)  # the training jobs' kinds: the roles' keys


def job_tables(config: dict) -> dict[Job, list[str]]:
    """Every job of the config, with the tables that need it (config order)."""
    out: dict[Job, list[str]] = {}
    for table in ex.table_names(config):
        for job in table_jobs(config, table):
            out.setdefault(job, []).append(table)
    return out


def estimate(config: dict):
    """Per table and in total: job counts and estimated GPU-hours (training, evaluation).

    A table's row counts every job it needs, shared ones included (``shared``: how many
    of them another table needs too); the last row, ``total``, counts each job once."""
    import pandas as pd

    costs = {job: job_cost(config, job) for job in job_tables(config)}
    owners = job_tables(config)

    def row(label: str, jobs: list[Job], shared: int | None) -> dict:
        r: dict[str, Any] = {"table": label}
        for kind in KINDS:
            r[COUNT_COLUMNS[kind]] = sum(j.kind == kind for j in jobs)
        r["shared"] = shared
        train = sum(costs[j].gpu_hours for j in jobs if j.kind in TRAINING)
        evaluate = sum(costs[j].gpu_hours for j in jobs if j.kind not in TRAINING)
        r.update({"train GPU-h": train, "eval GPU-h": evaluate, "total GPU-h": train + evaluate})
        return r

    rows = []
    for table in ex.table_names(config):
        jobs = table_jobs(config, table)
        rows.append(row(table, jobs, sum(len(owners[j]) > 1 for j in jobs)))
    rows.append(row("total", list(costs), sum(len(t) > 1 for t in owners.values())))
    return pd.DataFrame(rows)


# ---- job sizing: a Slurm job's time limit from its estimate (rules/resources.smk) ----

def time_limit(config: dict, job: Job) -> int:
    """Minutes a job asks Slurm for under ``runtime: budget``: its estimated wall time
    (GPU-hours over its GPUs) x ``slurm.budget_safety``, plus ``slurm.budget_startup`` minutes
    (start-up, data loading, the last checkpoint), rounded up to 10 minutes. A natural
    CIFAR teacher then asks for about an hour, a TRADES+LTD student for 5 h, instead of
    every job for the same 48 h. The estimate assumes the ``budget:`` GPU: on a slower one
    raise the safety factor (or write minutes)."""
    s = config["slurm"]
    c = job_cost(config, job)
    minutes = c.gpu_hours / c.processes * 60 * s["budget_safety"] + s["budget_startup"]
    return int(-(-minutes // 10) * 10)
