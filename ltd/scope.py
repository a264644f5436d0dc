"""What a Snakemake call's targets make (``Scope``): the config checks judge only that, so
that `snakemake table4` needs no ImageNet, nor four GPUs for ImageNet's training jobs.
No torch: the Snakefile computes it while it plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Iterable

from . import experiments as ex


@dataclass(frozen=True)
class Scope:
    """What a Snakemake call's targets make. ``tables``: tables whose rows are planned
    (their methods, schedules, searches are checked); ``train``: data sets whose training
    jobs run (processes against the GPUs); ``data``: data sets whose images are read
    (their files must exist); ``published``: checkpoints evaluated (their files must
    exist); ``files``: whether jobs run at all (the budget only prices them)."""

    tables: frozenset = frozenset()
    train: frozenset = frozenset()
    data: frozenset = frozenset()
    published: frozenset = frozenset()
    files: bool = True

    def __or__(self, other: "Scope") -> "Scope":
        return Scope(self.tables | other.tables, self.train | other.train, self.data | other.data,
                     self.published | other.published, self.files or other.files)


def _tables_scope(config: dict, tables: Iterable[str], run: bool = True) -> Scope:
    """Tables planned and (``run``) made; not made (the budget prices them), they need
    neither GPUs nor data."""
    tables = frozenset(t for t in tables if t in ex.table_names(config))  # null: left out
    used = frozenset(ex.table_dataset(config, t) for t in tables)  # stand-ins, a table's own included
    return Scope(tables, used, used, frozenset(), True) if run else Scope(tables, files=False)


def _published_scope(config: dict, names: Iterable[str]) -> Scope:
    entries = [e for e in config.get("published") or [] if e["name"] in set(names)]
    return Scope(data=frozenset(e["dataset"] for e in entries), published=frozenset(e["name"] for e in entries))


def everything(config: dict) -> Scope:
    """The whole config: every table and every published checkpoint."""
    return _tables_scope(config, config["tables"]) | _published_scope(config, [e["name"] for e in
                                                                              config.get("published") or []])


def _dataset_scope(config: dict, dataset: str, train: bool = True) -> Scope:
    """A run's or a data set's own target: the tables on that data set are the ones it serves."""
    tables = [t for t in ex.table_names(config)
              if ex.stand_in(config, "datasets", config["tables"][t]["dataset"]) == dataset]
    return Scope(frozenset(tables), frozenset([dataset]) if train else frozenset(), frozenset([dataset]))


# Target rules (Snakefile, rules/*.smk) and what they make; a table's own rule is its name.
_ALL_TABLES = ("all", "evaluation_report", "exported")


def _target(config: dict, target: str) -> Scope:
    if target in _ALL_TABLES:
        return _tables_scope(config, config["tables"])
    if target in config["tables"]:
        return _tables_scope(config, [target])
    if target == "published":
        return _published_scope(config, [e["name"] for e in config.get("published") or []])
    if target == "budget":  # prices every table's jobs, runs none
        return _tables_scope(config, config["tables"], run=False)
    if target == "simulation":
        return Scope()
    parts = PurePath(target).parts
    if len(parts) >= 3 and parts[:2] == ("results", str(config["run"])):
        kind, rest = parts[2], parts[3:]
        stem = rest[0].split(".")[0] if rest else ""
        try:
            if kind == "budget.md":
                return _tables_scope(config, config["tables"], run=False)
            if kind == "tables" and stem == "evaluation_report":
                return _tables_scope(config, config["tables"])
            if kind in ("tables", "figures") and stem.split("_")[0] in config["tables"]:
                return _tables_scope(config, [stem.split("_")[0]])
            if kind == "figures" and stem.startswith("tmax_"):
                return _dataset_scope(config, stem[len("tmax_"):])
            if kind in ("students", "teachers", "substitutes") and rest:
                return _dataset_scope(config, ex.Run.parse(kind, rest[0]).dataset)
            if kind in ("soft_labels", "robustbench") and rest:
                role = "teachers" if kind == "soft_labels" else "students"
                return _dataset_scope(config, ex.Run.parse(role, stem).dataset)
            if kind == "temperature" and rest:  # temperature/<data set>/ or temperature/<search group>/
                return _dataset_scope(config, rest[0].split("_")[0])
            if kind == "data" and stem in config["datasets"]:
                return _dataset_scope(config, stem, train=False)
            if kind == "published" and rest:
                return _published_scope(config, [rest[0]])
        except ValueError:  # not a run name: judge the whole config
            pass
    return everything(config)


def command_line() -> Any:
    """This call's command line as Snakemake reads it (profiles included), or None where
    Snakemake was not started from one (its API). Snakemake hands the targets to the
    workflow (workflow.dag_settings) only after reading the Snakefile, and the executor's
    settings later still, so the Snakefile reads both here with Snakemake's own parser."""
    import contextlib
    import io
    import sys

    if "snakemake" not in sys.argv[0] or Path(sys.argv[0]).name not in ("snakemake", "__main__.py"):
        return None
    from snakemake.cli import parse_args

    with contextlib.redirect_stderr(io.StringIO()):  # it says again which profiles it reads
        return parse_args(sys.argv[1:])[1]


def requested(config: dict, targets: Iterable[str] | None = ()) -> Scope:
    """The scope of a Snakemake call's targets (none: the default target, ``all``). A target
    this cannot place (another rule, a path elsewhere) stands for the whole config;
    ``targets=None`` (not known: Snakemake's API) for the whole config without its files."""
    if targets is None:
        s = everything(config)
        return Scope(s.tables, s.train, s.data, s.published, files=False)
    scope = Scope(files=False)
    for target in list(targets) or ["all"]:
        scope |= _target(config, target)
    return scope
