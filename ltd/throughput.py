"""How fast a GPU runs each architecture's steps: the rates ``ltd.budget`` prices jobs with.

Each (architecture, image size, precision, step) is priced in seconds per image of one
forward-equivalent (FE: ltd.methods' unit of a step's cost), by one of two:

* **measured**: a row of the calibration file (``budget.calibration``, default
  ``config/calibration.yaml``) that a GPU measured for that architecture, image size and
  precision: its images per second (or MFU) of that step. The step's own row where there
  is one; else the slowest per-FE rate measured for that architecture in that precision
  (a convolution's FLOP rate carries over between methods, the slowest is the safe side),
  but never below the step's own launch floor (below: a step with more launches per FE).
* **model**, where no GPU measured the architecture: the FLOP rate of the budget's
  reference MFU (``budget.mfu``: WRN-34-10's, measured) at the GPU's peak, capped by a
  launch-bound floor: a step cannot take less than its kernel launches
  (``COUNTED_LAUNCHES``, counted by ltd.launches) times the host's cost per launch
  (the calibration's ``launch_seconds``), shared by the images of one batch. A small
  network (PreAct ResNet-18 at batch 128: a TRADES step of ~2,250 launches, ~14 ms of
  FLOPs at MFU 0.27) is bound by the host, not by the GPU's arithmetic.

``snakemake budget`` prints which of the two priced each row. Torch-free: the workflow
prices jobs while it plans.

The calibration file: ``launch_seconds`` {value, device, date, source} and ``rows``, each
{arch, image_size, precision, step, batch_size, img_per_s (with forward_equivalents) or
mfu, device, date, source}: ``precision`` bf16 | fp16 (autocast training) | fp32 | tf32 |
pytorch_default; ``step`` a method (a training step, as ltd.train runs it) or ``attack``
(an evaluation's forward + input gradient, the unit of AutoAttack's and PGD's cost).
``img_per_s``: images per second of that step (``attack``: of forward + input gradient,
2 FE); ``mfu``: its model-FLOP utilisation of the precision's peak. A device check writes
its measured rows there, naming the device and the date.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import methods
from .schema import ROOT

ATTACK = "attack"  # the step of evaluation jobs: forward + input gradient, 2 FE
AUTOCAST = ("bf16", "fp16")  # training precisions with the same peak on the GPUs priced (Hopper)
ROW_KEYS = {"arch", "image_size", "precision", "step", "batch_size", "img_per_s", "forward_equivalents", "mfu",
            "device", "date", "source"}
PRECISIONS = ("bf16", "fp16", "fp32", "tf32", "pytorch_default")

# Kernel launches of one step, counted by ltd.launches on the meta device (torch 2.14.1;
# tests/test_budget.py counts them again): (arch, step kind) -> (launches of the step
# without its attack, launches per attack iteration). A step kind is ltd.methods' ``step``
# (AWP with its proxy pass on), or "attack": one eval-mode forward + input gradient.
# The counts depend on the layers, not on the width or image size (wrn-34-20 = wrn-34-10).
COUNTED_LAUNCHES = {
    ("preact-resnet18", "natural"): (459, 0), ("preact-resnet18", "trades"): (801, 145),
    ("preact-resnet18", "awp"): (1441, 145), ("preact-resnet18", "pgd"): (586, 159),
    ("preact-resnet18", "mart"): (742, 141), ("preact-resnet18", "attack"): (0, 134),
    ("wrn-34-10", "natural"): (781, 0), ("wrn-34-10", "trades"): (1340, 243), ("wrn-34-10", "awp"): (2428, 243),
    ("wrn-34-10", "pgd"): (985, 271), ("wrn-34-10", "mart"): (1218, 239), ("wrn-34-10", "attack"): (0, 232),
    ("wrn-34-20", "natural"): (781, 0), ("wrn-34-20", "trades"): (1340, 243), ("wrn-34-20", "awp"): (2428, 243),
    ("wrn-34-20", "pgd"): (985, 271), ("wrn-34-20", "mart"): (1218, 239), ("wrn-34-20", "attack"): (0, 232),
    ("resnet-50", "natural"): (1240, 0), ("resnet-50", "trades"): (2089, 365), ("resnet-50", "awp"): (3784, 365),
    ("resnet-50", "pgd"): (1549, 415), ("resnet-50", "mart"): (1884, 361), ("resnet-50", "attack"): (0, 354),
    ("wrn-50-2", "natural"): (1240, 0), ("wrn-50-2", "trades"): (2089, 365), ("wrn-50-2", "awp"): (3784, 365),
    ("wrn-50-2", "pgd"): (1549, 415), ("wrn-50-2", "mart"): (1884, 361), ("wrn-50-2", "attack"): (0, 354),
    # the offline demo's stand-ins (config/demo.yaml)
    # (WRN-10-1's first block has no shortcut convolution: 16 channels in and out)
    ("wrn-10-1", "natural"): (222, 0), ("wrn-10-1", "trades"): (405, 73), ("wrn-10-1", "awp"): (710, 73),
    ("wrn-10-1", "pgd"): (293, 77), ("wrn-10-1", "mart"): (392, 69), ("wrn-10-1", "attack"): (0, 62),
    ("wrn-10-2", "natural"): (229, 0), ("wrn-10-2", "trades"): (416, 75), ("wrn-10-2", "awp"): (736, 75),
    ("wrn-10-2", "pgd"): (301, 79), ("wrn-10-2", "mart"): (402, 71), ("wrn-10-2", "attack"): (0, 64),
    ("wrn-10-4", "natural"): (229, 0), ("wrn-10-4", "trades"): (416, 75), ("wrn-10-4", "awp"): (736, 75),
    ("wrn-10-4", "attack"): (0, 64),
    ("resnet-14", "natural"): (424, 0), ("resnet-14", "trades"): (733, 125), ("resnet-14", "attack"): (0, 114),
    ("wrn-14-2", "natural"): (424, 0), ("wrn-14-2", "trades"): (733, 125), ("wrn-14-2", "attack"): (0, 114),
}


@functools.lru_cache(maxsize=None)
def _counts(arch: str, kind: str) -> tuple[int, int]:
    if (arch, kind) in COUNTED_LAUNCHES:
        return COUNTED_LAUNCHES[arch, kind]
    from .launches import launch_counts  # torch: an architecture the cache does not hold

    return launch_counts(arch, kind)


def launches(arch: str, kind: str, attack_steps: int) -> int:
    """Kernel launches of one step of ``kind`` (ltd.methods' step, or ``ATTACK``: one
    iteration), from ``COUNTED_LAUNCHES`` or, for another architecture, counted now."""
    base, per_step = _counts(arch, kind)
    return base + (1 if kind == ATTACK else attack_steps) * per_step


def calibration_path(config: dict) -> Path:
    """``budget.calibration``: relative to the working directory (the workflow's), else to
    the clone's root (where config/ is)."""
    path = Path(config["budget"]["calibration"])
    if path.is_absolute() or path.exists():
        return path
    return ROOT / path if (ROOT / path).exists() else path


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    launch = data.get("launch_seconds")
    if not isinstance(launch, dict) or not isinstance(launch.get("value"), (int, float)) or launch["value"] <= 0:
        raise ValueError(f"{path}: launch_seconds must be {{value: <seconds per kernel launch, > 0>, device, date, "
                         f"source}}, got {launch!r}")
    for i, row in enumerate(data.get("rows") or []):
        where = f"{path}: rows[{i}]"
        if not isinstance(row, dict) or set(row) - ROW_KEYS:
            raise ValueError(f"{where}: unknown keys {sorted(set(row) - ROW_KEYS) if isinstance(row, dict) else row}; "
                             f"a row has {sorted(ROW_KEYS)}")
        missing = {"arch", "image_size", "precision", "step", "device", "date", "source"} - set(row)
        if missing:
            raise ValueError(f"{where}: missing {sorted(missing)}")
        if row["precision"] not in PRECISIONS:
            raise ValueError(f"{where}: precision {row['precision']!r} is not one of {PRECISIONS}")
        if row["step"] != ATTACK:
            methods.get(row["step"])  # a method's name, or ValueError naming the methods
        if "img_per_s" in row and "forward_equivalents" not in row and row["step"] != ATTACK:
            raise ValueError(f"{where}: img_per_s needs the step's forward_equivalents")
        if not any(isinstance(row.get(k), (int, float)) and row[k] > 0 for k in ("img_per_s", "mfu")):
            raise ValueError(f"{where}: needs img_per_s or mfu (> 0)")
    return data


def calibration(config: dict) -> dict:
    """The calibration file of ``config`` (checked: ValueError naming the bad row)."""
    path = calibration_path(config)
    if not path.is_file():
        raise FileNotFoundError(f"budget.calibration: {path} is not a file (the measured throughput the budget "
                                "prices jobs with, config/calibration.yaml in the clone)")
    return _read(str(path), path.stat().st_mtime)


@dataclass(frozen=True)
class Rate:
    """Seconds per image per forward-equivalent of one (arch, precision, step), and what priced it."""

    seconds: float
    basis: str  # "measured" | "model, FLOP-bound" | "model, launch-bound"
    how: str  # the row or the model's numbers, for the budget's notes
    own: bool = True  # measured: the step's own row (False: another step's rate per FE)


def _row_seconds(row: dict, fwd_flop: float, peak: float) -> float:
    if "img_per_s" in row:
        fe = 2.0 if row["step"] == ATTACK else float(row["forward_equivalents"])
        return 1.0 / (row["img_per_s"] * fe)
    return fwd_flop / (row["mfu"] * peak * 1e12)


def _describe(row: dict) -> str:
    rate = f"{row['img_per_s']:g} img/s" if "img_per_s" in row else f"MFU {row['mfu']:g}"
    return f"{row['step']} {row['precision']} {rate} on {row['device']}, {row['date']} ({row['source']})"


def measured(config: dict, arch: str, image_size: int, precisions: tuple[str, ...], step: str, fwd_flop: float,
             peak: float) -> Rate | None:
    """The measured rate of ``step`` (a method, or ``ATTACK``) for ``arch`` at ``image_size``
    in one of ``precisions`` (the first preferred), or None where no row measured it."""
    rows = [r for r in calibration(config).get("rows") or [] if r["arch"] == arch
            and r["image_size"] == image_size and r["precision"] in precisions
            and (r["step"] == ATTACK) == (step == ATTACK)]
    if not rows:
        return None
    own = [r for r in rows if r["step"] == step]
    if own:
        row = min(own, key=lambda r: precisions.index(r["precision"]))
        return Rate(_row_seconds(row, fwd_flop, peak), "measured", _describe(row))
    row = max(rows, key=lambda r: _row_seconds(r, fwd_flop, peak))  # the slowest measured per FE: the safe side
    return Rate(_row_seconds(row, fwd_flop, peak), "measured", f"{_describe(row)}; its rate per FE for {step}",
                own=False)


def model(config: dict, fwd_flop: float, peak: float, mfu: float, launches_per_fe: float, batch: int) -> Rate:
    """The model's rate: the FLOP rate at ``mfu`` of ``peak``, capped by the launch floor
    (``launches_per_fe`` kernel launches per forward-equivalent of a batch of ``batch``)."""
    cost = calibration(config)["launch_seconds"]["value"]
    flop_s, launch_s = fwd_flop / (mfu * peak * 1e12), launches_per_fe * cost / batch
    numbers = (f"FLOPs at MFU {mfu:g} of {peak:g} TFLOP/s: {1e6 * flop_s:.1f} us; {launches_per_fe:.0f} launches "
               f"x {1e6 * cost:g} us / batch {batch}: {1e6 * launch_s:.1f} us (per image and FE)")
    if launch_s > flop_s:
        return Rate(launch_s, "model, launch-bound", numbers)
    return Rate(flop_s, "model, FLOP-bound", numbers)


def measured_or_floor(measured_rate: Rate | None, modelled: Rate) -> Rate:
    """The model's rate where nothing was measured; another step's measured rate per FE,
    unless this step's launch floor is slower (it has more launches per FE)."""
    if measured_rate is None:
        return modelled
    if modelled.basis == "model, launch-bound" and modelled.seconds > measured_rate.seconds:
        return Rate(modelled.seconds, "model, launch-bound",
                    f"{modelled.how}; above the measured {measured_rate.how}", own=False)
    return measured_rate
