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

import sys
from pathlib import Path
from typing import Any, Iterator

from . import experiments as ex
from . import methods, selection, sources
from .archs import check_arch
from .config_errors import ConfigError
from .scope import Scope, requested
from .sources import split_sizes


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
        if isinstance(ev, dict) and "tf32" in ev:  # renamed: the schema's own message would not say to what
            problems.append(f"{where}.tf32 is now {where}.precision: write precision: "
                            f"{'tf32' if ev['tf32'] else 'fp32'} (or pytorch_default: TF32 convolutions only)")
        if isinstance(ev, dict):
            for k in ("eps", "pgd_step_size"):
                pixel(f"{where}.{k}", ev.get(k))
            for k, v in (ev.get("diagnostics") or {}).items():
                if k in ("near_zero_robust", "high_clean", "pgd_gap", "zero_gradient"):
                    fraction(f"{where}.diagnostics.{k}", v)
    _raise(problems)


def resource_limit(value: Any) -> int | None:
    """A ``--resources`` limit as Snakemake holds it (a number, or an object with ``value``)."""
    value = getattr(value, "value", value)
    return int(value) if _number(value) else None


def _schedule_key(config: dict, role: str, dataset: str, key: str) -> str:
    """The config key that sets a schedule value of a role on a data set (most specific first)."""
    role_key = ex.ROLE_KEYS[role]
    if key in (config.get(role_key) or {}):
        return f"{role_key}.{key}"
    if key in (ex.dataset_cfg(config, dataset).get("train") or {}):
        return f"datasets.{dataset}.train.{key}"
    return f"train.{key}"


def _milestones(config: dict, role: str, dataset: str) -> list[str]:
    """LR milestones after the last epoch never fire: the run would train another schedule
    than the one written. A milestone at the last epoch has no effect either; it is accepted
    because the paper writes ImageNet's schedule so ("/10 at 50 and 90" of 90 epochs)."""
    sched = ex.schedule(config, role, dataset)
    late = [m for m in sched["lr_milestones"] if m > sched["epochs"]]
    if not late:
        return []
    return [f"{_schedule_key(config, role, dataset, 'lr_milestones')} = {sched['lr_milestones']}: "
            f"{', '.join(map(str, late))} lie(s) beyond the {sched['epochs']} epochs "
            f"({_schedule_key(config, role, dataset, 'epochs')}) of the {role} on {dataset}, so that decay never "
            f"happens; write milestones <= {sched['epochs']} or more epochs"]


def robustbench_file(model_dir: str | Path, name: str, dataset: str, threat_model: str = "Linf") -> Path:
    """Where ``robustbench.utils.load_model(model_name=name, dataset=dataset,
    threat_model=threat_model, model_dir=model_dir)`` keeps a model-zoo file."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def published_file(config: dict, entry: dict) -> Path:
    """A `published:` entry's checkpoint: its ``path``, else the RobustBench model-zoo file
    of ``robustbench_name`` (default: ``name``) in ``robustbench_model_dir`` (CIFAR only)."""
    if entry.get("path"):
        return Path(entry["path"])
    source = ex.dataset_cfg(config, entry["dataset"])["source"]
    return robustbench_file(config["robustbench_model_dir"], entry.get("robustbench_name", entry["name"]), source)


def missing_checkpoint(name: str, path: str | Path, dataset_source: str | None = None,
                       robustbench_name: str | None = None, model_dir: str | None = None) -> str:
    """What to do about a published checkpoint that is not on disk (one message for the
    plan and for the job that would load it)."""
    msg = f"checkpoint {name!r} is not at {path}."
    if robustbench_name is None:
        return msg + " Copy the file there, or correct its `path:`."
    return (msg + f" It is RobustBench's model {robustbench_name!r} ({dataset_source}, Linf), which "
            f"robustbench.utils.load_model(model_name={robustbench_name!r}, dataset={dataset_source!r}, "
            f"threat_model='Linf', model_dir={model_dir!r}) downloads to exactly that file (pip install "
            "git+https://github.com/RobustBench/robustbench; its model zoo, robustbench/model_zoo/"
            f"{dataset_source}.py, gives the download link). On a machine without internet, fetch it elsewhere and "
            "copy it there, or give the entry a `path:` to the file.")


def _needed_by(config: dict, scope: Scope, dataset: str) -> str:
    """Which requested tables read ``dataset``: "table3 needs", "table2 and table6 need"."""
    tables = [t for t in sorted(scope.tables)
              if ex.stand_in(config, "datasets", config["tables"][t]["dataset"]) == dataset]
    if not tables:
        return "the requested targets need"
    return (" and ".join([", ".join(tables[:-1]), tables[-1]]) if len(tables) > 1 else tables[0]) \
        + (" need" if len(tables) > 1 else " needs")


def missing_data(config: dict, scope: Scope) -> list[str]:
    """What the jobs of ``scope`` read that is not on disk and no rule makes, each naming
    the tables that need it, the key and the layout expected: ImageFolder trees (unless
    built from another source, as the demo's), a cifarfolder's folder or archive, and
    published checkpoints. A plan lists the jobs all the same (the Snakefile warns once);
    a real run stops before its first job. Empty where ``scope`` runs no job (the budget)."""
    if not scope.files:
        return []
    problems = []
    for name in sorted(scope.data):
        ds = config["datasets"].get(name)
        check = sources.get(ds["source"]).problem if ds else None
        problem = check(name, ds) if check else None  # its files (their I/O once)
        if problem:
            problems.append(f"{_needed_by(config, scope, name)} {problem}")
    for i, e in enumerate(config.get("published") or []):
        if e["name"] not in scope.published or e["dataset"] not in config["datasets"]:
            continue
        path = published_file(config, e)
        if path.is_file():
            continue
        if e.get("path"):
            problems.append(f"target published needs published[{i}].path: " + missing_checkpoint(e["name"], path))
        else:
            problems.append(f"target published needs published[{i}] (in robustbench_model_dir): " + missing_checkpoint(
                e["name"], path, config["datasets"][e["dataset"]]["source"], e.get("robustbench_name", e["name"]),
                config["robustbench_model_dir"]))
    return problems


MISSING_HEADER = "data these targets read is not on disk yet (a run stops before its first job until it is there):"


class MissingData(ConfigError):
    """Data a real run reads that is not on disk yet (``missing_data``)."""

    def __init__(self, problems: list[str]):
        ValueError.__init__(self, "data these targets read is not on disk yet:\n"
                            + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


def warn(lines: list[str], header: str) -> None:
    """A warning block on stderr after what Snakemake printed so far (its stdout first)."""
    if lines:
        sys.stdout.flush()
        print(f"Warning: {header}\n" + "\n".join(f"  - {line}" for line in lines), file=sys.stderr, flush=True)


def check(config: dict, gpus: int | None = None, scope: Scope | None = None) -> None:
    """Cross-field checks (after the schema) of what ``scope`` runs (default: the whole
    config). ``gpus``: the GPUs the run may use at once (``--resources gpu=N``), if given.
    The stand-ins are checked whatever the scope. Files on disk are ``missing_data``'s."""
    if scope is None:
        scope = requested(config, None)
    in_scope = [name for name in config["datasets"] if name in scope.data]
    problems = _stand_in_problems(config)
    for name in in_scope:
        problems += _dataset_problems(config, name, gpus, scope)
    table_problems, awp_datasets, roles = _table_problems(config, scope)
    problems += table_problems
    # best.pt chosen on the images its AutoAttack evaluates (ltd/selection.py)
    problems += selection.problems(config, [t for t in ex.table_names(config) if t in scope.tables])
    if awp_datasets and config["awp"]["gamma"] > 0:
        epochs = min(ex.schedule(config, "students", d)["epochs"] for d in awp_datasets)
        if config["awp"]["warmup_epochs"] > epochs:
            problems.append(f"awp.warmup_epochs = {config['awp']['warmup_epochs']} > the {epochs} epochs of AWP "
                            f"students: AWP would never switch on; write at most {epochs}")
    for dataset in sorted(roles):
        for role in methods.ROLES:
            if role in roles[dataset]:
                problems += _milestones(config, role, dataset) + _batch_problems(config, role, dataset)
    for name in in_scope:
        problems += _autoattack_problems(config, name)
    problems += _published_problems(config, scope)
    _raise(problems)


def _stand_in_problems(config: dict) -> list[str]:
    problems, datasets = [], config["datasets"]
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
    return problems


def _dataset_problems(config: dict, name: str, gpus: int | None, scope: Scope) -> list[str]:
    """A data set's splits, and its training processes against the GPUs and the batch."""
    problems, ds = [], ex.dataset_cfg(config, name)
    sizes = split_sizes(ds)  # a file source's counts are not read here: None
    if sizes["train"] is not None and sizes["train"] <= 0:
        problems.append(f"datasets.{name}.val_size = {ds['val_size']} leaves no training images "
                        f"(of {sizes['train'] + ds['val_size']}); write a smaller number")
    n = ex.processes(config, name)
    per_node = config["gpus_per_node"]
    k = int(config["jobs_per_gpu"])  # --resources gpu counts slots, k per GPU: GPUs = gpu // k
    devices = (gpus, "--resources gpu") if k == 1 or gpus is None else \
        (gpus // k, f"--resources gpu / jobs_per_gpu = {gpus} / {k}")
    if config["device"] != "cpu" and name in scope.train:
        for limit, what in (devices, (per_node, "gpus_per_node")):
            if limit is not None and n > limit:
                problems.append(f"datasets.{name}.processes = {n}: a training job holds one GPU per process, "
                                f"but {what} = {limit}; write processes <= {limit} (batch_size is global, "
                                "so the recipe is unchanged)")
    sched = ex.schedule(config, "students", name)
    if sched["batch_size"] < n:
        problems.append(f"datasets.{name}: batch_size {sched['batch_size']} < processes {n}; each process needs "
                        "a slice of every batch")
    return problems


def _table_problems(config: dict, scope: Scope) -> tuple[list[str], set[str], dict[str, set[str]]]:
    """The requested tables' data sets, rows and searches; also the data sets AWP students
    train on and, per data set, the roles trained on it (whose schedules are checked)."""
    problems: list[str] = []
    datasets = config["datasets"]
    awp_datasets: set[str] = set()
    roles: dict[str, set[str]] = {}
    attacks: dict[str, str] = {}  # the training attacks in use (their keys) -> the first row using each
    for table in ex.table_names(config):  # a table set to null (an overlay leaves it out) has none
        if table not in scope.tables:
            continue
        spec = config["tables"][table]
        where = f"tables.{table}"
        dataset = ex.stand_in(config, "datasets", spec["dataset"])
        if dataset not in datasets:
            problems.append(f"{where}.dataset = {spec['dataset']!r}"
                            + (f" (stand-in {dataset!r})" if dataset != spec["dataset"] else "")
                            + f": no such data set under `datasets` (defined: {', '.join(datasets)})")
            continue
        search = ex.search(config, dataset)
        roles.setdefault(dataset, set()).update(("teachers", "substitutes") if search is not None else ())
        if spec.get("tmax_row") and search is None:
            problems.append(f"{where}.tmax_row: data set {dataset!r} has no temperature_search to report T_max from; "
                            "remove tmax_row or define datasets.{dataset}.temperature_search")
        for i, e in enumerate(spec["entries"]):
            m = methods.METHODS.get(e["method"])
            if m is not None and m.role == "students":
                if m.awp:
                    awp_datasets.add(dataset)
                roles[dataset].update(("students", "teachers") if m.uses_soft_labels else ("students",))
            problems += _entry_problems(config, f"{where}.entries[{i}]", e, spec, dataset, search)
            if m is not None and m.attack:
                attacks.setdefault(_attack_key(config, dataset, m.attack), f"{e['method']}, {where}.entries[{i}]")
    problems += [p for key, row in attacks.items() for p in _attack_problems(config, key, row)]
    return problems, awp_datasets, roles


def _entry_problems(config: dict, key: str, e: dict, spec: dict, dataset: str, search) -> list[str]:
    """One table row: its method, temperature, architecture, training attack and search."""
    m = methods.METHODS.get(e["method"])
    if m is None or m.role != "students":
        return [f"{key}.method = {e['method']!r}: not a student method of the registry "
                f"(ltd/methods.py): {', '.join(methods.STUDENT_METHODS)}"]
    problems = []
    temps = e.get("temperature")
    problem = methods.temperature_problem(e["method"], temps)
    if problem:
        problems.append(f"{key}: {problem}")
    temps = temps if isinstance(temps, list) else [temps]
    try:
        check_arch(ex.stand_in(config, "archs", e.get("arch", spec.get("arch")) or ""))
    except ValueError as err:
        problems.append(f"{key}.arch (or {key.rsplit('.', 1)[0]}.arch): {err}")
    ds = ex.dataset_cfg(config, dataset)
    attacks = ds.get("attack") or {}
    if m.attack not in attacks and "default" not in attacks:
        problems.append(f"datasets.{dataset}.attack: no `{m.attack}` (the training attack of {e['method']}, "
                        f"{key}) and no `default`; add one, e.g. {m.attack}: {{eps: 0.031, step_size: 0.007, "
                        "steps: 10}")
    if "auto" in temps:
        if search is None:
            problems.append(f"{key}: temperature `auto` needs datasets.{dataset}.temperature_search "
                            "(it is null); give temperatures instead, or define the search")
        if ds["val_size"] <= 0:
            problems.append(f"{key}: temperature `auto` is chosen on a validation split, but "
                            f"datasets.{dataset}.val_size is {ds['val_size']}; "
                            "write e.g. val_size: 5000 (held out of the training images)")
    return problems


def _attack_key(config: dict, dataset: str, family: str) -> str | None:
    """The key of the training attack a method family uses on a data set (None: none)."""
    attacks = ex.dataset_cfg(config, dataset).get("attack") or {}
    name = family if family in attacks else "default" if "default" in attacks else None
    return name and f"datasets.{dataset}.attack.{name}"


# What a training attack that cannot move would need instead (the paper's CIFAR values).
_ATTACK_FIX = {"eps": ("allows no perturbation", "eps > 0 (the paper: 8/255 = 0.031)"),
               "step_size": ("never moves the image", "step_size > 0 (the paper: 2/255 = 0.007)"),
               "steps": ("never moves the image", "steps >= 1 (the paper: 10)")}


def _attack_problems(config: dict, key: str | None, row: str) -> list[str]:
    """A training attack that cannot move (eps, step size or steps of 0) would leave every
    image at its random start: adversarial training would silently become (nearly)
    natural training. The schema allows 0: no attack section is used by every config."""
    if key is None:
        return []
    _, dataset, _, name = key.split(".")
    a = ex.dataset_cfg(config, dataset)["attack"][name]
    return [f"{key}.{k} = {a[k]}: the training attack of {row} {why}, so the run would train on (nearly) clean "
            f"images; write {fix}" for k, (why, fix) in _ATTACK_FIX.items() if a[k] <= 0]


def _batch_problems(config: dict, role: str, dataset: str) -> list[str]:
    """A batch larger than the training set makes every epoch one step on all of it:
    another recipe than the one written (its step count, its LR schedule)."""
    n = split_sizes(ex.dataset_cfg(config, dataset))["train"]  # unknown (None) for file sources
    bs = ex.schedule(config, role, dataset)["batch_size"]
    if n is None or n <= 0 or bs <= n:
        return []
    return [f"{_schedule_key(config, role, dataset, 'batch_size')} = {bs} is larger than the {n} training images of "
            f"datasets.{dataset} (the {role}): every epoch would be a single step; write batch_size <= {n}"]


def warnings(config: dict, scope: Scope) -> list[str]:
    """What runs as asked but not as written (the Snakefile prints these once): an
    evaluation of more images than the test split has uses them all."""
    out = []
    used = {ex.stand_in(config, "datasets", config["tables"][t]["dataset"]) for t in scope.tables} | set(scope.data)
    for name in sorted(d for d in used if d in config["datasets"]):
        test = split_sizes(ex.dataset_cfg(config, name))["test"]
        n = ex.evaluation(config, name)["n_examples"]
        if test is not None and n > test:
            key = (f"datasets.{name}.evaluation.n_examples" if "n_examples" in
                   (config["datasets"][name].get("evaluation") or {}) else "evaluation.n_examples")
            out.append(f"{key} = {n} (for datasets.{name}) is more than its {test} test images: its evaluations "
                       f"use all {test}; write n_examples: {test} to say so")
    return out


def _autoattack_problems(config: dict, name: str) -> list[str]:
    aa = ex.evaluation(config, name)["autoattack"]
    where = f"evaluation.autoattack (for datasets.{name})"
    if aa["version"] == "custom" and not aa.get("attacks"):
        return [f"{where}.attacks: version `custom` runs the attacks listed here; list some "
                "(e.g. [apgd-ce, apgd-t])"]
    if aa["version"] != "custom" and aa.get("attacks"):
        return [f"{where}.attacks: listed, but version `{aa['version']}` fixes its own attacks; "
                "remove them or write version: custom"]
    return []


def _published_problems(config: dict, scope: Scope) -> list[str]:
    problems, datasets = [], config["datasets"]
    for i, e in enumerate(config.get("published") or []):
        if e["name"] not in scope.published:
            continue
        if e["dataset"] not in datasets:
            problems.append(f"published[{i}].dataset = {e['dataset']!r}: no such data set under `datasets`")
        elif not e.get("path") and not sources.get(datasets[e["dataset"]]["source"]).robustbench:
            problems.append(f"published[{i}]: a RobustBench name is looked up for CIFAR data sets only; give `path`")
    return problems
