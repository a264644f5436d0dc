"""Where config becomes runs.

A run is a small frozen record with a canonical name; the name is also its directory
under ``results/<run>/``, so two tables that name the same run share one job. Rules
never build paths by hand: they ask this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterator

ROLES = ("teachers", "substitutes", "students")

# Display names of the student methods, as the paper writes them.
METHOD_LABELS = {"trades": "TRADES", "trades-ltd": "TRADES+LTD"}
LTD_METHODS = {"trades-ltd"}

_NUM = r"\d+(?:\.\d+)?"
_NAME_RE = {
    "teachers": re.compile(r"^(?P<dataset>[a-z0-9]+)_(?P<arch>[a-z0-9-]+)_s(?P<seed>\d+)$"),
    "substitutes": re.compile(
        rf"^(?P<dataset>[a-z0-9]+)_(?P<arch>[a-z0-9-]+)_T(?P<temperature>{_NUM})_s(?P<seed>\d+)$"
    ),
    "students": re.compile(
        rf"^(?P<dataset>[a-z0-9]+)_(?P<arch>[a-z0-9-]+)_(?P<method>[a-z-]+)"
        rf"(?:_T(?P<temperature>{_NUM}))?_b(?P<beta>{_NUM})_s(?P<seed>\d+)$"
    ),
}


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

    @property
    def name(self) -> str:
        parts = [self.dataset, self.arch]
        if self.role == "students":
            parts.append(self.method)
        if self.temperature is not None:
            parts.append(f"T{fmt_num(self.temperature)}")
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
        return self.role == "substitutes" or self.method in LTD_METHODS

    @classmethod
    def parse(cls, role: str, name: str) -> "Run":
        if role not in _NAME_RE:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        m = _NAME_RE[role].match(name)
        if not m:
            raise ValueError(f"{name!r} is not a valid {role} run name")
        d = m.groupdict()
        method = d.get("method") or ("soft" if role == "substitutes" else "natural")
        if role == "students" and method not in METHOD_LABELS:
            raise ValueError(f"unknown method {method!r} in run name {name!r}")
        if role == "students" and (method in LTD_METHODS) != (d.get("temperature") is not None):
            raise ValueError(f"run name {name!r}: a temperature goes with LTD methods only")
        return cls(
            role=role,
            dataset=d["dataset"],
            arch=d["arch"],
            seed=int(d["seed"]),
            method=method,
            temperature=float(d["temperature"]) if d.get("temperature") else None,
            beta=float(d["beta"]) if d.get("beta") else None,
        )


@dataclass(frozen=True)
class Entry:
    """One row of a table: a student, or a student whose T is chosen by the search
    (``temperature == "auto"``)."""

    method: str
    temperature: float | str | None
    beta: float

    @property
    def label(self) -> str:
        label = METHOD_LABELS[self.method]
        if self.temperature is not None:
            t = self.temperature if self.temperature == "auto" else fmt_num(self.temperature)
            label += f" T={t}"
        return label

    @property
    def is_auto(self) -> bool:
        return self.temperature == "auto"


def base(config: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": config["dataset"]["name"], "arch": config["arch"], "seed": config["seed"]}


def teacher(config: dict[str, Any]) -> Run:
    return Run("teachers", **base(config))


def substitutes(config: dict[str, Any]) -> list[Run]:
    temps = config["temperature_search"]["substitute_temperatures"]
    return [Run("substitutes", temperature=float(t), **base(config)) for t in temps]


def student(config: dict[str, Any], method: str, temperature: float | None, beta: float) -> Run:
    if method in LTD_METHODS and temperature is None:
        raise ValueError(f"method {method!r} needs a temperature")
    t = float(temperature) if method in LTD_METHODS else None
    return Run("students", method=method, temperature=t, beta=float(beta), **base(config))


def table_entries(config: dict[str, Any], table: str) -> list[Entry]:
    """Rows of a table in config order; a list of temperatures expands to one row each."""
    spec = config["tables"][table]
    rows: list[Entry] = []
    for e in spec["entries"]:
        beta = e.get("beta", config["trades"]["beta"])
        temps = e.get("temperature")
        if e["method"] not in LTD_METHODS:
            if temps is not None:
                raise ValueError(f"tables.{table}: method {e['method']!r} takes no temperature")
            rows.append(Entry(e["method"], None, beta))
            continue
        if temps is None:
            raise ValueError(f"tables.{table}: method {e['method']!r} needs a temperature")
        for t in temps if isinstance(temps, list) else [temps]:
            rows.append(Entry(e["method"], t if t == "auto" else float(t), beta))
    return rows


def entry_run(config: dict[str, Any], entry: Entry, chosen_t: float | None = None) -> Run:
    """The student run behind a table row; ``chosen_t`` resolves an ``auto`` row."""
    t = entry.temperature
    if entry.is_auto:
        if chosen_t is None:
            raise ValueError("an 'auto' entry needs the temperature chosen by the search")
        t = chosen_t
    return student(config, entry.method, t, entry.beta)


def search_group(config: dict[str, Any], entry: Entry) -> str:
    """Name of the temperature search an ``auto`` row depends on."""
    probe = student(config, entry.method, 1.0, entry.beta)
    return f"{probe.dataset}_{probe.arch}_{probe.method}_b{fmt_num(probe.beta)}_s{probe.seed}"


def search_candidates(config: dict[str, Any], group: str) -> list[Run]:
    """Students of the temperature grid for one search group (all of them; the ones at
    or above T_max are dropped once T_max is known)."""
    m = re.match(rf"^(?P<prefix>.+_(?P<method>[a-z-]+))_b(?P<beta>{_NUM})_s\d+$", group)
    if not m:
        raise ValueError(f"{group!r} is not a search group name")
    grid = config["temperature_search"]["grid"]
    return [student(config, m["method"], t, float(m["beta"])) for t in grid]


def table_students(config: dict[str, Any], table: str) -> Iterator[Run]:
    """Students a table trains whatever the search finds (the static part of the DAG)."""
    for entry in table_entries(config, table):
        if not entry.is_auto:
            yield entry_run(config, entry)


def schedule(config: dict[str, Any], role: str) -> dict[str, Any]:
    """The training schedule of a role: ``train`` with the role's overrides."""
    key = {"teachers": "teacher", "substitutes": "substitute", "students": "student"}[role]
    return {**config["train"], **(config.get(key) or {})}


def with_temperature(run: Run, t: float) -> Run:
    return replace(run, temperature=float(t))
