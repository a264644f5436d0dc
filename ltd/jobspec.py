"""What one job computes, resolved from the config once.

A rule's ``params.spec`` is its job's spec, built here from the config and the job's run;
the script hands it to the library (a multi-process training job writes it to job.json for
its torchrun workers), so no job re-reads the config. ``params.identity`` is the spec's
``identity``: the settings that define the job's output. Snakemake reruns a job whose
identity changed (it compares params by repr, plain values only, so the spec object itself
is no rerun trigger) and a training checkpoint carries a fingerprint of it, so a
checkpoint of other settings is never continued. Nothing else defines a result: the
machine, the schedule's speed switches and the evaluation's layout change how fast a job
runs, not what it computes.

Every job that computes gets its settings this way, the search's two steps included
(``Search``). Two kinds of job differ, each for a reason of its own: ``soft_labels`` takes
a teacher's logits file and T from its path, because q_T = softmax(z / T) has no other
setting and the path (teacher, T) is what every student that trains on it names (a spec
would only repeat the path); a table (``ltd.jobs.reporting.render_table``) reads the config
itself, as the planner does, because it describes many runs at once (its rows, their
stand-ins and settings in its notes), and its rerun trigger is ``ex.table_identity``,
what it shows besides its evaluations, each of which carries its own run's identity.

Torch-free: Snakemake builds the specs while it plans.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

from . import experiments as ex
from . import methods
from .experiments import Run

# Schedule keys that change no trained weights: speed switches, and the stalled-attack
# alarm, which only warns or stops a run (whose checkpoint then continues to the same weights).
SPEED_KEYS = ("channels_last", "compile", "eval_batch_size")
NOT_IDENTITY_KEYS = (*SPEED_KEYS, "stalled_attacks", "compile_attack")
# train.compile_attack changes x': inductor's compiled forward rounds otherwise than eager
# (CPU fp16 autocast, WRN-10-1: x' differed on 59 % of the pixels, every example; fp32: the
# first loss by 5e-7, docs/performance.md). So a run whose step uses it (the steps of these
# kinds) has it in its identity, as `compile_attack: true`; switched off, the identity is
# what it always was (no finished run reruns).
COMPILED_ATTACK_STEPS = ("trades", "awp", "mart")
# The evaluated model's layout and compilation: speed switches, like the schedule's.
EVALUATION_SPEED_KEYS = ("channels_last", "compile")
# The evaluation settings a validation uses (not n_examples, precision or the test-set AutoAttack).
VALIDATION_KEYS = ("eps", "batch_size", "pgd_steps", "pgd_step_size", "seed", "diagnostics")


@dataclass(frozen=True)
class Machine:
    """Where a job runs (``device``, ``jobs_per_gpu``) and the results folder its
    provenance names (the config's ``run``); never part of an identity."""

    device: str = "auto"
    jobs_per_gpu: int = 1
    results: str = ""


@dataclass(frozen=True)
class Data:
    """A data set as a job loads it: its settings (``section``, defaults laid under), the
    section as the config writes it (``written``: what identities copy) and where its
    files live."""

    name: str
    section: dict[str, Any]
    written: dict[str, Any]
    data_dir: str

    def identity(self, split: str) -> dict[str, Any]:
        return ex.split_identity(self.written, split)

    @classmethod
    def of(cls, section: dict[str, Any], data_dir: str = "") -> "Data":
        """A section as tests and benchmarks write one, taken whole (no defaults laid
        under, none in the config): named for its source, it is its own written form."""
        return cls(str(section.get("source")), section, section, str(data_dir))


@dataclass(frozen=True)
class Source:
    """A data set's source as prepare_data fetches, builds, unpacks or indexes it."""

    data: Data
    machine: Machine

    @property
    def identity(self) -> dict[str, Any]:
        return ex.source_identity(self.data.written)


# What each step of the search reads of `temperature_search` beyond its inputs (the
# substitutes' metrics, the candidates' validations: their own identities hold the rest).
SEARCH_STEPS = {"tmax": ("threshold",), "selection": ("criterion",)}


@dataclass(frozen=True)
class Search:
    """A step of a data set's temperature search (``temperature_search``), one of the jobs
    of Sec. 4.2 that run no model: ``tmax``, T_max from the substitutes (its threshold), or
    ``selection``, the choice among the validated candidates of an ``auto`` row (its
    criterion)."""

    dataset: str
    step: str
    settings: dict[str, Any]
    machine: Machine

    @property
    def identity(self) -> dict[str, Any]:
        return {k: self.settings[k] for k in SEARCH_STEPS[self.step]}


@dataclass(frozen=True)
class Model:
    """A trained model as a job loads it: its name, architecture and data set (its classes)."""

    name: str
    arch: str
    data: Data


class _RunModels:
    """A run's own model and its teacher (same data set; its soft labels or its on-the-fly
    labels come from the teacher), for the specs of jobs that name a run."""

    run: Run
    data: Data

    @property
    def model(self) -> Model:
        return Model(self.run.name, self.run.arch, self.data)

    @property
    def teacher(self) -> Model:
        return Model(self.run.teacher.name, self.run.teacher.arch, self.data)


@dataclass(frozen=True)
class Training(_RunModels):
    """A teacher's, substitute's or student's training: the run (method, arch, T, beta,
    seed, soft-label mode and own precision are in its name), its data, its schedule (the
    role's, with the run's own precision; speed switches included), the method's training
    attack and AWP settings, the students' per-epoch PGD monitor (None: no monitor; its
    best epoch is best.pt) and the torch.distributed processes it runs as."""

    run: Run
    data: Data
    schedule: dict[str, Any]
    attack: dict[str, Any] | None
    awp: dict[str, Any] | None
    monitor: dict[str, Any] | None
    processes: int
    machine: Machine

    @property
    def precision(self) -> str:
        return self.schedule["precision"]

    @property
    def identity(self) -> dict[str, Any]:
        schedule = {k: v for k, v in self.schedule.items() if k not in NOT_IDENTITY_KEYS}
        if self.schedule.get("compile_attack") and methods.get(self.run.method).step in COMPILED_ATTACK_STEPS:
            schedule["compile_attack"] = True
        out: dict[str, Any] = {"run": self.run.name, "data": self.data.identity("train"), "schedule": schedule}
        if self.attack is not None:
            out["attack"] = self.attack
        if self.awp is not None:
            out["awp"] = self.awp
        if self.run.role == "students":
            # best.pt, which tables report, is the monitor's best epoch: a changed monitor
            # (its images, steps, eps) retrains. Added with best.pt's place in the tables
            # (identity change: students trained before it rerun once); `overlap_ok`
            # changes nothing trained and stays out.
            out["monitor"] = self.monitor
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Training":
        return cls(**{**d, "run": Run(**d["run"]), "data": Data(**d["data"]), "machine": Machine(**d["machine"])})


@dataclass(frozen=True)
class Evaluation:
    """A model's evaluation on its data set's test images; ``settings`` are the data set's
    evaluation settings (speed switches included)."""

    model: Model
    settings: dict[str, Any]
    machine: Machine

    @property
    def data(self) -> Data:
        return self.model.data

    @property
    def identity(self) -> dict[str, Any]:
        """Everything besides the model that defines the numbers: the test images and the
        evaluation settings (not ``monitor``, a training setting, nor ``weights``, which is
        in the evaluation's file name)."""
        ev = {k: v for k, v in self.settings.items() if k not in ("monitor", "weights", *EVALUATION_SPEED_KEYS)}
        if ev.get("precision") in ("fp32", "tf32"):  # as the boolean it replaced, in its place (params compare
            # by repr): finished evaluations keep their identity, no rerun; pytorch_default is new
            ev = {("tf32" if k == "precision" else k): (v == "tf32" if k == "precision" else v) for k, v in ev.items()}
        return {"data": self.data.identity("test"), "evaluation": ev}


@dataclass(frozen=True)
class Validation(_RunModels):
    """An ``auto`` candidate's validation (Sec. 4.2, step 2): the student and its teacher on
    the validation images, with the evaluation settings it uses, the method's training
    attack (the Eq. 9 criterion runs it) and the search's AutoAttack attacks."""

    run: Run
    data: Data
    settings: dict[str, Any]
    attack: dict[str, Any]
    search_attacks: list[str]
    machine: Machine

    @property
    def identity(self) -> dict[str, Any]:
        return {"data": self.data.identity("val"), "evaluation": self.settings, "attack": self.attack,
                "search_attacks": self.search_attacks}


@dataclass(frozen=True)
class Logits:
    """A teacher's logits on the un-augmented training images (``batch_size``: a speed setting)."""

    teacher: Model
    batch_size: int
    machine: Machine

    @property
    def identity(self) -> dict[str, Any]:
        return self.teacher.data.identity("train")


def machine(config: dict[str, Any]) -> Machine:
    return Machine(config["device"], int(config["jobs_per_gpu"]), config["run"])


def data(config: dict[str, Any], dataset: str) -> Data:
    return Data(dataset, copy.deepcopy(ex.dataset_cfg(config, dataset)),
                copy.deepcopy(ex.dataset_section(config, dataset)), str(config["data_dir"]))


def source(config: dict[str, Any], dataset: str) -> Source:
    return Source(data(config, dataset), machine(config))


def search(config: dict[str, Any], dataset: str, step: str) -> Search:
    settings = ex.search(config, dataset)
    if settings is None:
        raise ValueError(f"datasets.{dataset}.temperature_search is null: this data set has no T_max search")
    if step not in SEARCH_STEPS:
        raise ValueError(f"unknown search step {step!r}; expected one of {sorted(SEARCH_STEPS)}")
    return Search(dataset, step, copy.deepcopy(settings), machine(config))


def training(config: dict[str, Any], run: Run) -> Training:
    m = methods.get(run.method)
    ev = ex.evaluation(config, run.dataset)
    monitor = ev.get("monitor") or {}
    return Training(
        run=run, data=data(config, run.dataset), schedule=copy.deepcopy(ex.run_schedule(config, run)),
        attack=copy.deepcopy(ex.attack(config, run.dataset, run.method)) if m.attack else None,
        awp=dict(config["awp"]) if m.awp else None,
        # Students' per-epoch PGD accuracy on a few images (ltd.selection: which): the
        # training curves show robust overfitting and (with soft labels at high T) masking
        # as it develops, and its best epoch is best.pt.
        monitor={"n_examples": monitor["n_examples"], "pgd_steps": monitor["pgd_steps"], "eps": ev["eps"],
                 "step_size": ev["pgd_step_size"], "seed": ev["seed"], "split": monitor["split"],
                 "images": monitor["images"]}
        if run.role == "students" and monitor.get("n_examples") else None,
        processes=ex.processes(config, run.dataset), machine=machine(config))


def model(config: dict[str, Any], run: Run) -> Model:
    return Model(run.name, run.arch, data(config, run.dataset))


def evaluation(config: dict[str, Any], model: Model) -> Evaluation:
    return Evaluation(model, copy.deepcopy(ex.evaluation(config, model.data.name)), machine(config))


def student_evaluation(config: dict[str, Any], run: Run) -> Evaluation:
    return evaluation(config, model(config, run))


def validation(config: dict[str, Any], run: Run) -> Validation:
    ev = ex.evaluation(config, run.dataset)
    return Validation(run, data(config, run.dataset), copy.deepcopy({k: v for k, v in ev.items() if k in VALIDATION_KEYS}),
                      copy.deepcopy(ex.attack(config, run.dataset, run.method)),
                      list(ex.search(config, run.dataset)["attacks"]), machine(config))


def logits(config: dict[str, Any], teacher: Run) -> Logits:
    return Logits(model(config, teacher), ex.schedule(config, "teachers", teacher.dataset)["eval_batch_size"],
                  machine(config))


@dataclass(frozen=True)
class Published:
    """A published checkpoint's evaluation: its `published:` entry (name, dataset, arch,
    where it comes from, the numbers its authors reported) and the evaluation of its data set."""

    entry: dict[str, Any]
    evaluation: Evaluation

    @property
    def identity(self) -> dict[str, Any]:
        return {"entry": self.entry, **self.evaluation.identity}


def published(config: dict[str, Any], entry: dict[str, Any]) -> Published:
    checkpoint = Model(entry["name"], entry["arch"], data(config, entry["dataset"]))
    return Published(copy.deepcopy(entry), evaluation(config, checkpoint))
