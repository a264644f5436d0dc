"""Config checks the schema cannot express, run while the DAG is built, before any job.

A config that passes them and the schema runs to the end: every problem that would
otherwise surface after hours of training (an `auto` row without a validation split, a
method the registry does not know, a job that asks for more GPUs than a node has, an
eps written in pixel units) stops the plan with the key and what to write instead.

``units`` runs before the schema (its message says what the number probably meant,
which "90 is greater than the maximum of 1" does not); ``check`` after it.
No torch here: planning stays fast.
"""

from __future__ import annotations

from typing import Any, Iterator

from . import experiments as ex
from . import methods
from .archs import check_arch
from .sources import DIGITS_POOL, DIGITS_TEST_SIZE, SIZES, folder_problem


class ConfigError(ValueError):
    """One or more config problems, each naming its key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the config cannot run to the end:\n" + "\n".join(f"  - {p}" for p in problems))


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _evaluations(config: dict) -> Iterator[tuple[str, dict]]:
    yield "evaluation", config.get("evaluation") or {}
    for name, ds in (config.get("datasets") or {}).items():
        if isinstance(ds, dict):
            yield f"datasets.{name}.evaluation", ds.get("evaluation") or {}


def units(config: dict) -> None:
    """Numbers of the right type in the wrong unit: an L_inf budget or step above 1
    (images are in [0, 1]: 8 meant 8/255), a fraction above 1 (90 meant 0.9)."""
    problems = []

    def pixel(key: str, v: Any) -> None:
        if _number(v) and v > 1:
            problems.append(f"{key} = {v:g}: images are in [0, 1], so this covers more than the whole range; "
                            f"for {v:g}/255 write {v / 255!r}")

    def fraction(key: str, v: Any) -> None:
        if _number(v) and v > 1:
            problems.append(f"{key} = {v:g} is a fraction in [0, 1], not a percentage; for {v:g} % write {v / 100:g}")

    for name, ds in (config.get("datasets") or {}).items():
        if not isinstance(ds, dict):
            continue
        for family, a in (ds.get("attack") or {}).items():
            if isinstance(a, dict):
                for k in ("eps", "step_size"):
                    pixel(f"datasets.{name}.attack.{family}.{k}", a.get(k))
        ts = ds.get("temperature_search")
        if isinstance(ts, dict):
            fraction(f"datasets.{name}.temperature_search.threshold", ts.get("threshold"))
    for where, ev in _evaluations(config):
        if isinstance(ev, dict):
            for k in ("eps", "pgd_step_size"):
                pixel(f"{where}.{k}", ev.get(k))
            for k, v in (ev.get("diagnostics") or {}).items():
                if k in ("near_zero_robust", "high_clean", "pgd_gap", "zero_gradient"):
                    fraction(f"{where}.diagnostics.{k}", v)
    _raise(problems)


def _train_pool(ds: dict) -> int | None:
    """Training images before the validation split is held out (None: not known here)."""
    src = ds["source"]
    if src == "digits":
        return DIGITS_POOL - ds.get("test_size", DIGITS_TEST_SIZE)
    return SIZES[src]["train"] if src in SIZES and src != "imagefolder" else None


def resource_limit(value: Any) -> int | None:
    """A ``--resources`` limit as Snakemake holds it (a number, or an object with ``value``)."""
    value = getattr(value, "value", value)
    return int(value) if _number(value) else None


def check(config: dict, gpus: int | None = None) -> None:
    """Cross-field checks over the whole config (after the schema). ``gpus``: the GPUs
    the run may use at once (``--resources gpu=N``), if given."""
    problems: list[str] = []
    datasets = config["datasets"]
    for kind in ("datasets", "archs"):
        for old, new in ((config.get("stand_ins") or {}).get(kind) or {}).items():
            if kind == "datasets" and new not in datasets:
                problems.append(f"stand_ins.datasets.{old} = {new!r}: no such data set under `datasets` "
                                f"(defined: {', '.join(datasets)})")
            if kind == "archs":
                try:
                    check_arch(new)
                except ValueError as e:
                    problems.append(f"stand_ins.archs.{old}: {e}")

    in_use = ex.datasets_in_use(config)  # an unused data set (quick.yaml's ImageNet) runs no job
    for name, ds in datasets.items():
        pool = _train_pool(ds)
        if pool is not None and ds.get("val_size", 0) >= pool:
            problems.append(f"datasets.{name}.val_size = {ds['val_size']} leaves no training images (of {pool}); "
                            f"write a smaller number")
        n = ex.processes(config, name)
        per_node = config.get("gpus_per_node")
        if config["device"] != "cpu" and name in in_use:
            for limit, what in ((gpus, "--resources gpu"), (per_node, "gpus_per_node")):
                if limit is not None and n > limit:
                    problems.append(f"datasets.{name}.processes = {n}: a training job holds one GPU per process, "
                                    f"but {what} = {limit}; write processes <= {limit} (batch_size is global, "
                                    "so the recipe is unchanged)")
        sched = ex.schedule(config, "students", name)
        if sched["batch_size"] < n:
            problems.append(f"datasets.{name}: batch_size {sched['batch_size']} < processes {n}; each process needs "
                            "a slice of every batch")

    # image files a data set in use reads (a cifarfolder: its folder or its archive)
    problems += [p for p in (folder_problem(name, datasets[name]) for name in in_use) if p]

    awp_datasets: set[str] = set()
    for table in ex.table_names(config):  # a table set to null (an overlay leaves it out) has none
        spec = config["tables"][table]
        where = f"tables.{table}"
        dataset = ex.stand_in(config, "datasets", spec["dataset"])
        if dataset not in datasets:
            problems.append(f"{where}.dataset = {spec['dataset']!r}"
                            + (f" (stand-in {dataset!r})" if dataset != spec["dataset"] else "")
                            + f": no such data set under `datasets` (defined: {', '.join(datasets)})")
            continue
        search = ex.search(config, dataset)
        if spec.get("tmax_row") and search is None:
            problems.append(f"{where}.tmax_row: data set {dataset!r} has no temperature_search to report T_max from; "
                            "remove tmax_row or define datasets.{dataset}.temperature_search")
        for i, e in enumerate(spec["entries"]):
            key = f"{where}.entries[{i}]"
            m = methods.METHODS.get(e["method"])
            if m is None or m.role != "students":
                problems.append(f"{key}.method = {e['method']!r}: not a student method of the registry "
                                f"(ltd/methods.py): {', '.join(methods.STUDENT_METHODS)}")
                continue
            if m.awp:
                awp_datasets.add(dataset)
            temps = e.get("temperature")
            temps = temps if isinstance(temps, list) else [temps]
            if m.soft_labels and temps == [None]:
                problems.append(f"{key}: {e['method']} learns from soft labels: give a `temperature` (or `auto`)")
            if not m.soft_labels and temps != [None]:
                problems.append(f"{key}: {e['method']} uses one-hot labels: remove `temperature` "
                                f"(its LTD variant: {next((n for n, o in methods.METHODS.items() if o.base == e['method']), 'none')})")
            try:
                check_arch(ex.stand_in(config, "archs", e.get("arch", spec.get("arch")) or ""))
            except ValueError as err:
                problems.append(f"{key}.arch (or {where}.arch): {err}")
            attacks = datasets[dataset].get("attack") or {}
            if m.attack not in attacks and "default" not in attacks:
                problems.append(f"datasets.{dataset}.attack: no `{m.attack}` (the training attack of {e['method']}, "
                                f"{key}) and no `default`; add one, e.g. {m.attack}: {{eps: 0.031, step_size: 0.007, "
                                "steps: 10}")
            if "auto" in temps:
                if search is None:
                    problems.append(f"{key}: temperature `auto` needs datasets.{dataset}.temperature_search "
                                    "(it is null); give temperatures instead, or define the search")
                if datasets[dataset].get("val_size", 0) <= 0:
                    problems.append(f"{key}: temperature `auto` is chosen on a validation split, but "
                                    f"datasets.{dataset}.val_size is {datasets[dataset].get('val_size', 0)}; "
                                    "write e.g. val_size: 5000 (held out of the training images)")

    if awp_datasets and config["awp"]["gamma"] > 0:
        epochs = min(ex.schedule(config, "students", d)["epochs"] for d in awp_datasets)
        if config["awp"]["warmup_epochs"] > epochs:
            problems.append(f"awp.warmup_epochs = {config['awp']['warmup_epochs']} > the {epochs} epochs of AWP "
                            f"students: AWP would never switch on; write at most {epochs}")

    for name in datasets:
        aa = ex.evaluation(config, name)["autoattack"]
        where = f"evaluation.autoattack (for datasets.{name})"
        if aa["version"] == "custom" and not aa.get("attacks"):
            problems.append(f"{where}.attacks: version `custom` runs the attacks listed here; list some "
                            "(e.g. [apgd-ce, apgd-t])")
        if aa["version"] != "custom" and aa.get("attacks"):
            problems.append(f"{where}.attacks: listed, but version `{aa['version']}` fixes its own attacks; "
                            "remove them or write version: custom")

    for i, e in enumerate(config.get("published") or []):
        if e["dataset"] not in datasets:
            problems.append(f"published[{i}].dataset = {e['dataset']!r}: no such data set under `datasets`")
        elif not e.get("path") and datasets[e["dataset"]]["source"] not in ("cifar10", "cifar100"):
            problems.append(f"published[{i}]: a RobustBench name is looked up for CIFAR data sets only; give `path`")
    _raise(problems)
