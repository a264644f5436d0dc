"""Which images choose a student's best epoch (best.pt), and whether they are ones its
evaluation reports on.

The per-epoch PGD monitor (``evaluation.monitor``) picks best.pt. A best epoch chosen on
the images its AutoAttack then evaluates is biased upward (a selection on the test set);
chosen on other images (the last ``n`` test images while the evaluation takes the first
``N``, or the validation split held out of training) it is not. The plan refuses a table
whose best epoch would be chosen on evaluated images unless the config says so
(``monitor.overlap_ok``: the paper config, which evaluates all 10,000 CIFAR test images,
as the authors' best checkpoint was most likely chosen), and every table's notes say which
images chose the epoch. Torch-free: the plan checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import experiments as ex
from .budget import split_sizes


@dataclass(frozen=True)
class Images:
    """Positions ``start`` to ``stop`` (exclusive) of a data set's ``split``."""

    split: str
    start: int
    stop: int

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def overlap(self, other: "Images") -> int:
        if self.split != other.split:
            return 0
        return max(0, min(self.stop, other.stop) - max(self.start, other.start))

    def describe(self, total: int) -> str:
        """'the last 1,000 of the 10,000 test images (9,001-10,000)', as a reader counts
        them; ``total``: the split's size."""
        where = "validation images (held out of training)" if self.split == "val" else f"{self.split} images"
        n = len(self)
        if n == total:
            return f"all {n:,} {where}"
        if self.start == 0:
            return f"the first {n:,} {where}"
        if self.stop == total:
            return f"the last {n:,} of the {total:,} {where} ({self.start + 1:,}-{self.stop:,})"
        return f"{where} {self.start + 1:,}-{self.stop:,} of {total:,}"


def monitor(config: dict[str, Any], dataset: str) -> dict[str, Any] | None:
    """A data set's students' monitor (``evaluation.monitor``, its schema defaults filled);
    None where it is off (``n_examples: 0``): then best.pt is the last epoch."""
    m = ex.evaluation(config, dataset).get("monitor") or {}
    return m if m.get("n_examples") else None


def _split_size(config: dict[str, Any], dataset: str, split: str) -> int | None:
    try:
        return split_sizes(config, dataset)[split]
    except FileNotFoundError:  # a folder not there yet: the plan's file checks say so
        return None


def chosen_on(config: dict[str, Any], dataset: str) -> Images | None:
    """The images the monitor chooses the best epoch on: the first or the last
    ``n_examples`` of its split (all of it if smaller); None without a monitor, or where
    the split's size is not known yet (a folder not yet unpacked)."""
    m = monitor(config, dataset)
    if m is None:
        return None
    total = _split_size(config, dataset, m["split"])
    if total is None:
        return None
    n = min(m["n_examples"], total)
    return Images(m["split"], total - n, total) if m["images"] == "last" else Images(m["split"], 0, n)


def evaluated(config: dict[str, Any], dataset: str) -> Images | None:
    """The test images a student's evaluation reports on: the first ``n_examples``."""
    total = _split_size(config, dataset, "test")
    if total is None:
        return None
    return Images("test", 0, min(ex.evaluation(config, dataset)["n_examples"], total))


def _monitor_key(config: dict[str, Any], dataset: str) -> str:
    """Where the data set's monitor is written: its own evaluation section, or the default."""
    own = "monitor" in (ex.dataset_section(config, dataset).get("evaluation") or {})
    return f"datasets.{dataset}.evaluation.monitor" if own else "evaluation.monitor"


def problems(config: dict[str, Any], tables: list[str]) -> list[str]:
    """What stops the plan for ``tables`` that evaluate best.pt: a best epoch chosen on the
    evaluated images without ``overlap_ok``, or on a validation split that is empty."""
    out: list[str] = []
    best = [t for t in tables if ex.table_dataset(config, t) in config["datasets"] and _weights(config, t) == "best"]
    for dataset in sorted({ex.table_dataset(config, t) for t in best}):
        m, key = monitor(config, dataset), _monitor_key(config, dataset)
        if m is None:
            out.append(f"{key}.n_examples is 0 for {dataset!r}, but best.pt (the epoch with the best monitored "
                       f"PGD accuracy) is what {_tables(config, best, dataset)}: switch the monitor on, or write "
                       "weights: last (evaluation.weights or the table's own)")
            continue
        if m["split"] == "val" and not ex.dataset_cfg(config, dataset)["val_size"]:
            out.append(f"{key}.split = val: datasets.{dataset}.val_size is 0, so no images are held out to choose "
                       "the best epoch on; write e.g. val_size: 1000, or split: test")
            continue
        chosen, ev = chosen_on(config, dataset), evaluated(config, dataset)
        if chosen is None or ev is None:
            continue
        shared, total = chosen.overlap(ev), _split_size(config, dataset, "test")
        if shared and not m["overlap_ok"]:
            fix = (f"write {key}.images: last with n_examples <= {total - len(ev)}"
                   if total - len(ev) > 0 else
                   f"hold images out of training (datasets.{dataset}.val_size) and write {key}.split: val")
            out.append(f"{key}: the best epoch (best.pt, which {_tables(config, best, dataset)}) would be "
                       f"chosen on {chosen.describe(_split_size(config, dataset, m['split']))}, {shared:,} of which "
                       f"are among {ev.describe(total)} that its AutoAttack evaluates: a selection on the evaluated "
                       f"images; {fix}, or write "
                       f"{key}.overlap_ok: true to report it so (the tables' notes then say so)")
    return out


def _tables(config: dict[str, Any], tables: list[str], dataset: str) -> str:
    """'table4 reports' / 'tables table1, table4 report': the tables on ``dataset``."""
    on = [t for t in tables if ex.table_dataset(config, t) == dataset]
    return f"{on[0]} reports" if len(on) == 1 else f"tables {', '.join(on)} report"


def _weights(config: dict[str, Any], table: str) -> str:
    return config["tables"][table].get("weights") or ex.evaluation(config, ex.table_dataset(config, table))["weights"]


def note(config: dict[str, Any], dataset: str) -> str:
    """Which images chose the best epoch, for a table's notes: disjoint from the evaluated
    ones, or not (``overlap_ok``)."""
    m, chosen, ev = monitor(config, dataset), chosen_on(config, dataset), evaluated(config, dataset)
    if m is None:
        return "no monitor: best.pt is the last epoch"
    if chosen is None or ev is None:  # sizes unknown (a folder not there): what the config says
        return (f"chosen by PGD-{m['pgd_steps']} accuracy on the {m['images']} {m['n_examples']:,} "
                f"{m['split']} images")
    text = f"chosen by PGD-{m['pgd_steps']} accuracy on {chosen.describe(_split_size(config, dataset, m['split']))}"
    shared, total = chosen.overlap(ev), _split_size(config, dataset, "test")
    if not shared:
        return text + f", disjoint from {ev.describe(total)} evaluated"
    return (text + f", {shared:,} of them among {ev.describe(total)} evaluated: this number is selected on its own "
            "test images (evaluation.monitor.overlap_ok), as the authors' best checkpoint most likely was, and the "
            "(last) columns carry no selection")
