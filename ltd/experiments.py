"""Where config becomes runs.

A run is a small frozen record with a canonical name; the name is also its directory
under ``results/<run>/``, so two tables that name the same run share one job. Rules
never build paths by hand: they ask this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterator

from . import methods, sources
from .methods import ROLE_KEYS, ROLES
from .schema import dataset_defaults

_NUM = r"\d+(?:\.\d+)?"
_NAME_RE = {
    "teachers": re.compile(r"^(?P<dataset>[a-z0-9]+)_(?P<arch>[a-z0-9-]+)_s(?P<seed>\d+)$"),
    "substitutes": re.compile(
        rf"^(?P<dataset>[a-z0-9]+)_(?P<arch>[a-z0-9-]+)_T(?P<temperature>{_NUM})_s(?P<seed>\d+)$"
    ),
    "students": re.compile(
        rf"^(?P<dataset>[a-z0-9]+)_(?P<arch>[a-z0-9-]+)_(?P<method>[a-z-]+)"
        rf"(?:_T(?P<temperature>{_NUM}))?(?P<fly>_fly)?(?:_(?P<precision>fp16-emulated|fp16|bf16|fp32))?"
        rf"_b(?P<beta>{_NUM})_s(?P<seed>\d+)$"
    ),
}
# How a student's soft labels are made (`soft_labels:` of a data set or a table entry):
# precomputed once from the teacher's logits on the un-augmented training images, or on
# the fly by the teacher on the very augmented batch the student sees ("_fly" in names).
SOFT_LABEL_MODES = ("precomputed", "on_the_fly")
# Training precisions (`precision:` of a schedule or a table entry; ltd.runtime runs them):
# fp16 = autocast + GradScaler (the paper's PyTorch 1.11 "mixed precision"), bf16 =
# autocast, fp32 = none; fp16-emulated = CUDA's fp16 autocast emulated in fp32 arithmetic
# (ltd/fp16_emulation.py; runs as asked on the CPU, never a GPU number) + GradScaler. A
# table entry's own precision, where it differs from its data set's, is in its run's name
# ("_bf16", "_fp16-emulated").
EMULATED = "fp16-emulated"
PRECISIONS = ("fp16", "bf16", "fp32", EMULATED)
# Which weights of a student an evaluation takes (`evaluation.weights`, a table's
# `weights`): the last epoch's (model.pt), or those of the epoch with the best monitored
# PGD accuracy (best.pt); each has its own evaluation file.
WEIGHTS = {"last": ("model.pt", "autoattack"), "best": ("best.pt", "autoattack_best")}


def fmt_num(x: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5': the form used in names and labels."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Run:
    """One training run: a teacher, a substitute (soft labels at T, natural data) or a
    student (TRADES-style, optionally with the teacher's soft labels at T)."""

    role: str
    dataset: str
    arch: str
    seed: int
    method: str = "natural"
    temperature: float | None = None
    beta: float | None = None
    soft_label_mode: str | None = None  # a student's (SOFT_LABEL_MODES); None without soft labels
    precision: str | None = None  # a student's own precision (PRECISIONS) over its schedule's; None: the schedule's

    @property
    def name(self) -> str:
        parts = [self.dataset, self.arch]
        if self.role == "students":
            parts.append(self.method)
        if self.temperature is not None:
            parts.append(f"T{fmt_num(self.temperature)}")
        if self.soft_label_mode == "on_the_fly":
            parts.append("fly")
        if self.precision is not None:
            parts.append(self.precision)
        if self.role == "students":
            parts.append(f"b{fmt_num(self.beta)}")
        parts.append(f"s{self.seed}")
        return "_".join(parts)

    @property
    def dir(self) -> str:
        """Directory relative to results/<run>/."""
        return f"{self.role}/{self.name}"

    @property
    def teacher(self) -> "Run":
        return Run("teachers", self.dataset, self.arch, self.seed)

    @property
    def uses_soft_labels(self) -> bool:
        return methods.get(self.method).uses_soft_labels

    @classmethod
    def parse(cls, role: str, name: str) -> "Run":
        if role not in _NAME_RE:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        m = _NAME_RE[role].match(name)
        if not m:
            raise ValueError(f"{name!r} is not a valid {role} run name")
        d = m.groupdict()
        method = d.get("method") or methods.ROLE_METHODS[role][0]
        if method not in methods.ROLE_METHODS[role]:
            raise ValueError(f"unknown method {method!r} in run name {name!r}; {role} train with "
                             f"{', '.join(methods.ROLE_METHODS[role])}")
        problem = methods.temperature_problem(method, d.get("temperature"))
        if problem:
            raise ValueError(f"run name {name!r}: {problem}")
        soft = methods.get(method).uses_soft_labels
        return cls(
            role=role,
            dataset=d["dataset"],
            arch=d["arch"],
            seed=int(d["seed"]),
            method=method,
            temperature=float(d["temperature"]) if d.get("temperature") else None,
            beta=float(d["beta"]) if d.get("beta") else None,
            soft_label_mode=("on_the_fly" if d.get("fly") else "precomputed") if soft and role == "students" else None,
            precision=d.get("precision"),
        )


def arch_label(arch: str) -> str:
    """wrn-34-10 -> WRN-34-10, resnet-50 -> ResNet-50: as the paper writes them."""
    return arch.upper() if arch.startswith("wrn") else arch.replace("resnet", "ResNet").replace("preact-", "PreAct-")


# ---- data sets: one config section each; stand-ins (the demo) rename what runs ----

def stand_in(config: dict[str, Any], kind: str, name: str) -> str:
    """What runs in place of the paper's data set or architecture ``name``."""
    return (config.get("stand_ins") or {}).get(kind, {}).get(name, name)


def dataset_cfg(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A data set's settings: its section over the schema's ``dataset_defaults`` (a new
    dict). Identities copy the section as written (``dataset_section``; ltd/schema.py says why)."""
    return {**dataset_defaults(), **dataset_section(config, name)}


def dataset_section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A data set's section as the config writes it, without the defaults laid under it."""
    try:
        return config["datasets"][name]
    except KeyError:
        raise KeyError(f"datasets.{name}: data set {name!r} is used but not defined under `datasets`") from None


def schedule(config: dict[str, Any], role: str, dataset: str) -> dict[str, Any]:
    """A role's training schedule on a data set: ``train``, then the data set's ``train``,
    then the role's overrides (``teacher``/``substitute``/``student``)."""
    return {**config["train"], **(dataset_cfg(config, dataset).get("train") or {}),
            **(config.get(ROLE_KEYS[role]) or {})}


def run_schedule(config: dict[str, Any], run: "Run") -> dict[str, Any]:
    """A run's own schedule: its role's, with the precision its table entry asked for."""
    sched = schedule(config, run.role, run.dataset)
    return sched if run.precision is None else {**sched, "precision": run.precision}


# ---- the data part of every identity ----
# A job's identity (ltd.jobspec: its rule's `params.identity`) holds the images it uses.
# The keys of a data set's section that define its images, per split. digits carves its
# test set out of one pool, so there test_size changes the training images too.
# A data set's source (what prepare_data fetches, builds or unpacks): a cifarfolder's
# `archive` and its checksum, and the label order `classes`, define its images too.
_SOURCE_KEYS = ("source", "path", "build_from", "archive", "archive_sha256", "classes")
_SPLIT_KEYS = {
    "train": (*_SOURCE_KEYS, "image_size", "val_size", "train_size", "crop_padding", "crop_scale"),
    "val": (*_SOURCE_KEYS, "image_size", "val_size"),
    "test": (*_SOURCE_KEYS, "image_size", "test_size"),
}


def source_identity(section: dict[str, Any]) -> dict[str, Any]:
    """What defines a data set's source (what prepare_data fetches, builds or unpacks),
    from its ``section`` as written (``dataset_section``: a default is no part of it)."""
    return {k: section[k] for k in _SOURCE_KEYS if k in section}


def split_identity(section: dict[str, Any], split: str) -> dict[str, Any]:
    """What defines a split's images (and, for train, their augmentation), from the data
    set's ``section`` as written (``dataset_section``: a default is no part of it)."""
    carved = sources.get(section["source"]).carved_test is not None  # test_size shapes its pool's rest
    keys = _SPLIT_KEYS[split] + (("test_size",) if carved and split != "test" else ())
    return {k: section[k] for k in keys if k in section}


def table_identity(config: dict[str, Any], table: str) -> dict[str, Any]:
    """What a rendered table shows besides its evaluations: its spec (caption, rows,
    columns), the tolerance, the stand-ins its notes name, the weights it evaluates (with
    ``best``, the monitor its notes describe), its rows' training attacks."""
    entries = table_entries(config, table)
    runs = [entry_run(config, e, chosen_t=1.0) for e in entries]
    weights = table_weights(config, table)
    out = {"table": config["tables"][table], "tolerance": config["tolerance"],
           "stand_ins": config.get("stand_ins"), "seeds": seeds(config), "weights": weights,
           "attacks": sorted({repr(attack(config, r.dataset, r.method)) for r in runs if methods.get(r.method).attack})}
    if weights == "best":  # the notes say which images chose the best epoch (overlap_ok changes none of them)
        monitor = evaluation(config, table_dataset(config, table)).get("monitor") or {}
        out["monitor"] = {k: v for k, v in monitor.items() if k != "overlap_ok"}
    return out


def attack(config: dict[str, Any], dataset: str, method: str) -> dict[str, Any]:
    """The training attack of ``method`` on a data set: ``datasets.<d>.attack.<family>``
    for the method's attack family (ltd.methods), else ``attack.default``."""
    family = methods.get(method).attack
    if family is None:
        raise ValueError(f"method {method!r} trains without an attack")
    attacks = dataset_cfg(config, dataset)["attack"]
    if family in attacks:
        return attacks[family]
    if "default" in attacks:
        return attacks["default"]
    raise KeyError(f"datasets.{dataset}.attack: no `{family}` (the training attack of {method}) and no `default`")


def evaluation(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    return {**config["evaluation"], **dataset_cfg(config, dataset)["evaluation"]}


def resources(config: dict[str, Any], kind: str, dataset: str | None = None) -> dict[str, Any]:
    own = (dataset_cfg(config, dataset).get("resources") or {}).get(kind) if dataset else None
    return own or config["resources"][kind]


def processes(config: dict[str, Any], dataset: str) -> int:
    """torch.distributed processes (one per GPU) of a training job on this data set."""
    return int(dataset_cfg(config, dataset)["processes"])


def search(config: dict[str, Any], dataset: str) -> dict[str, Any] | None:
    return dataset_cfg(config, dataset).get("temperature_search")


# ---- runs ----

def teacher(config: dict[str, Any], dataset: str, arch: str) -> Run:
    return Run("teachers", dataset, arch, config["seed"])


def search_teacher(config: dict[str, Any], dataset: str) -> Run:
    """The teacher whose substitutes define T_max for a data set (Sec. 4.2, step 1)."""
    ts = search(config, dataset)
    if ts is None:
        raise ValueError(f"datasets.{dataset}.temperature_search is null: this data set has no T_max search")
    return teacher(config, dataset, ts["arch"])


def substitutes(config: dict[str, Any], dataset: str) -> list[Run]:
    t = search_teacher(config, dataset)
    return [Run("substitutes", t.dataset, t.arch, t.seed, method="soft", temperature=float(x))
            for x in search(config, dataset)["substitute_temperatures"]]


def seeds(config: dict[str, Any]) -> list[int]:
    """The seeds every table row is trained with (``seeds``; default: just ``seed``). Each
    seed is a full replicate: its own teacher, soft labels and students."""
    return list(config["seeds"] or [config["seed"]])


def data_soft_label_mode(config: dict[str, Any], dataset: str) -> str:
    """A data set's soft-label mode (`datasets.<d>.soft_labels`, else `soft_labels`)."""
    return dataset_cfg(config, dataset).get("soft_labels") or config["soft_labels"]


def student(config: dict[str, Any], dataset: str, arch: str, method: str, temperature: float | None,
            beta: float, seed: int | None = None, soft_label_mode: str | None = None,
            precision: str | None = None) -> Run:
    problem = methods.temperature_problem(method, temperature)
    if problem:
        raise ValueError(problem)
    soft = methods.get(method).uses_soft_labels
    t = float(temperature) if soft else None
    seed = config["seed"] if seed is None else seed
    mode = (soft_label_mode or data_soft_label_mode(config, dataset)) if soft else None
    return Run("students", dataset, arch, seed, method=method, temperature=t, beta=float(beta), soft_label_mode=mode,
               precision=precision)


def own_precision(config: dict[str, Any], dataset: str, precision: str | None) -> str | None:
    """A table entry's precision as its run records it: None where it is its data set's
    students' default (the run is the default one, shared with other tables)."""
    return None if precision in (None, schedule(config, "students", dataset)["precision"]) else precision


def with_temperature(run: Run, t: float) -> Run:
    return replace(run, temperature=float(t))


# ---- tables: rows, the runs behind them, the searches they wait for ----

@dataclass(frozen=True)
class Entry:
    """One row of a table, in the paper's names (``dataset``, ``arch``); the run behind
    it may use stand-ins. ``temperature == "auto"``: chosen by the search."""

    dataset: str
    arch: str
    method: str
    temperature: float | str | None
    beta: float
    label: str
    soft_label_mode: str | None = None  # the entry's own where it differs from its data set's; else None
    precision: str | None = None  # the entry's own training precision where it differs from its data set's
    runs_on: str | None = None  # the data set its runs use (stand-ins applied); None: ``dataset``
    trains_in: str | None = None  # the precision its schedule asks for (its own or its data set's)

    @property
    def is_auto(self) -> bool:
        return self.temperature == "auto"

    def matches(self, fields: dict[str, Any]) -> bool:
        """Whether a row of config/paper_results.yaml (``fields``: method, arch,
        temperature, beta, precision — only those the paper states) describes this entry."""
        mine = {"method": self.method, "arch": self.arch, "temperature": self.temperature, "beta": self.beta,
                "precision": self.trains_in}
        return all(mine[k] == (float(v) if k in ("temperature", "beta") else v) for k, v in fields.items())


def table_names(config: dict[str, Any]) -> list[str]:
    """The config's tables; one set to null is left out (an overlay removes a table so:
    config/quick.yaml keeps only Table IV)."""
    return [t for t, spec in config["tables"].items() if spec is not None]


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def table_entries(config: dict[str, Any], table: str) -> list[Entry]:
    """Rows of a table in config order; a list of temperatures or betas expands to one row
    per value. Labels name what varies within the table (architecture, T, beta)."""
    if not config["tables"].get(table):
        raise KeyError(f"tables.{table}: no such table; the config defines {', '.join(table_names(config))}")
    spec = config["tables"][table]
    runs_on = table_dataset(config, table)
    default_mode = data_soft_label_mode(config, runs_on)
    raw = []
    for i, e in enumerate(spec["entries"]):
        where = f"tables.{table}.entries[{i}]"
        arch = e.get("arch", spec.get("arch"))
        if arch is None:
            raise ValueError(f"{where}: no arch (give one here or at tables.{table}.arch)")
        temps = e.get("temperature")
        problem = methods.temperature_problem(e["method"], temps)
        if problem:
            raise ValueError(f"{where}: {problem}")
        soft = methods.get(e["method"]).uses_soft_labels
        # the entry's own soft-label mode and precision: None unless they differ from its data set's
        mode = e.get("soft_labels") if soft else None
        mode = None if mode == default_mode else mode
        precision = own_precision(config, runs_on, e.get("precision"))
        for beta in _as_list(e.get("beta", config["beta"])):
            for t in _as_list(temps):
                t = t if t in (None, "auto") else float(t)
                raw.append((arch, e["method"], t, float(beta), mode, precision))
    show_arch = len({r[0] for r in raw}) > 1
    show_beta = len({r[3] for r in raw}) > 1
    rows = []
    for arch, method, t, beta, mode, precision in raw:
        label = methods.get(method).label
        if show_arch:
            label += f" {arch_label(arch)}"
        if t is not None:
            label += f" T={t if t == 'auto' else fmt_num(t)}"
        if show_beta:
            label += f" β={fmt_num(beta)}"
        made = [p for p in (mode and mode.replace("_", " "), precision) if p]
        if made:  # a row made otherwise than its data set's default
            label += f" ({', '.join(made)})"
        trains_in = precision or schedule(config, "students", runs_on)["precision"]
        rows.append(Entry(spec["dataset"], arch, method, t, beta, label, mode, precision, runs_on, trains_in))
    return rows


def entry_run(config: dict[str, Any], entry: Entry, chosen_t: float | None = None, seed: int | None = None) -> Run:
    """The student run behind a table row (stand-ins applied) for one seed (default:
    ``seed``); ``chosen_t`` resolves an ``auto`` row."""
    t = entry.temperature
    if entry.is_auto:
        if chosen_t is None:
            raise ValueError("an 'auto' entry needs the temperature chosen by the search")
        t = chosen_t
    return student(config, entry.runs_on or stand_in(config, "datasets", entry.dataset),
                   stand_in(config, "archs", entry.arch), entry.method, t, entry.beta, seed, soft_label_mode=entry.soft_label_mode,
                   precision=entry.precision)


def table_dataset(config: dict[str, Any], table: str) -> str:
    """The data set a table's runs use: its stand-in in the demo (``stand_ins.tables`` for
    this table, else ``stand_ins.datasets``)."""
    own = ((config.get("stand_ins") or {}).get("tables") or {}).get(table)
    return own or stand_in(config, "datasets", config["tables"][table]["dataset"])


def table_weights(config: dict[str, Any], table: str) -> str:
    """Which weights a table's evaluations take: its ``weights``, else ``evaluation.weights``
    of its data set (default ``last``). ``best`` needs the training curves' PGD monitor."""
    dataset = table_dataset(config, table)
    ev = evaluation(config, dataset)
    weights = config["tables"][table].get("weights") or ev["weights"]
    if weights == "best" and not (ev.get("monitor") or {}).get("n_examples"):
        raise ValueError(f"tables.{table}: weights `best` are the epoch with the best monitored PGD accuracy, but "
                         f"evaluation.monitor.n_examples is 0 for {dataset!r}: switch the monitor on or write "
                         "weights: last")
    return weights


def shown_weights(config: dict[str, Any], table: str) -> list[str]:
    """The weights a table shows: the ones it compares with the paper (``table_weights``)
    first, then the last epoch's where those are ``best``, so that a robust accuracy that
    peaks before the end of training (robust overfitting) shows in the table."""
    weights = table_weights(config, table)
    return [weights] if weights == "last" else [weights, "last"]


def weights_file(weights: str) -> str:
    """A run's file of ``weights`` (``WEIGHTS``): model.pt (the last epoch) or best.pt."""
    return WEIGHTS[weights][0]


def evaluation_file(weights: str) -> str:
    """A student's evaluation of its ``weights`` (``WEIGHTS``): autoattack.json or autoattack_best.json."""
    return f"{WEIGHTS[weights][1]}.json"


def with_weights(path: str, weights: str) -> str:
    """A last-epoch evaluation's path for other ``weights``: .../autoattack.json -> .../autoattack_best.json."""
    return path.removesuffix(evaluation_file("last")) + evaluation_file(weights)


def search_group(config: dict[str, Any], entry: Entry, seed: int | None = None) -> str:
    """Name of the temperature search an ``auto`` row depends on (one per seed)."""
    probe = entry_run(config, entry, chosen_t=1.0, seed=seed)
    fly = "_fly" if probe.soft_label_mode == "on_the_fly" else ""
    precision = f"_{probe.precision}" if probe.precision else ""
    return f"{probe.dataset}_{probe.arch}_{probe.method}{fly}{precision}_b{fmt_num(probe.beta)}_s{probe.seed}"


_GROUP_RE = re.compile(
    rf"^(?P<dataset>[a-z0-9]+)_(?P<arch>[a-z0-9-]+)_(?P<method>[a-z-]+?)(?P<fly>_fly)?"
    rf"(?:_(?P<precision>fp16-emulated|fp16|bf16|fp32))?_b(?P<beta>{_NUM})_s(?P<seed>\d+)$")


def search_candidates(config: dict[str, Any], group: str) -> list[Run]:
    """Students of the temperature grid for one search group (all of them; the ones at
    or above T_max are dropped once T_max is known)."""
    m = _GROUP_RE.match(group)
    if not m:
        raise ValueError(f"{group!r} is not a search group name")
    ts = search(config, m["dataset"])
    if ts is None:
        raise ValueError(f"an 'auto' temperature on {m['dataset']!r} needs datasets.{m['dataset']}.temperature_search")
    mode = "on_the_fly" if m["fly"] else "precomputed"
    return [student(config, m["dataset"], m["arch"], m["method"], t, float(m["beta"]), int(m["seed"]), mode,
                    m["precision"]) for t in ts["grid"]]


def table_students(config: dict[str, Any], table: str) -> Iterator[Run]:
    """Students a table trains whatever the search finds (the static part of the DAG)."""
    for entry in table_entries(config, table):
        if not entry.is_auto:
            for seed in seeds(config):
                yield entry_run(config, entry, seed=seed)


def table_figures(config: dict[str, Any], table: str) -> list[str]:
    """Figures a table gets: accuracy against T where T varies, against beta where beta does."""
    entries = [e for e in table_entries(config, table) if not e.is_auto]
    kinds = []
    if len({e.temperature for e in entries if e.temperature is not None}) > 1:
        kinds.append("temperature")
    if len({e.beta for e in entries}) > 1:
        kinds.append("beta")
    return kinds
