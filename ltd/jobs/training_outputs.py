"""What a finished training run leaves in its run folder besides what the loop wrote
(history.jsonl, TensorBoard files): model.pt, students' best.pt where no monitor chose
one, metrics.json and its curves; its checkpoint removed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .. import checkpoint, data, distributed
from ..experiments import weights_file
from ..files import save_json
from ..jobspec import Training
from ..models import count_parameters
from ..provenance import provenance
from .monitor import Monitor, best_epoch


def finish(spec: Training, model: torch.nn.Module, history: list[dict], monitor: Monitor, out_dir: Path, *,
           ckpt: Path, precision: str, device: torch.device, t0: float) -> dict:
    """Write the finished run's files (rank 0 only), remove its checkpoint ``ckpt`` and
    return its metrics."""
    run = spec.run
    checkpoint.save(model.state_dict(), out_dir / weights_file("last"))
    if run.role == "students" and spec.monitor is None:  # no monitor, no best epoch: best.pt is the last one
        checkpoint.save(model.state_dict(), out_dir / weights_file("best"))
    out = metrics(spec, model, history, clean=monitor.final_clean(model, history), precision=precision,
                  device=device, t0=t0)
    save_json(out, out_dir / "metrics.json")
    ckpt.unlink(missing_ok=True)  # the job is complete; model.pt is what later rules read
    draw_curves(run.name, history, out_dir / "curves")
    return out


def metrics(spec: Training, model: torch.nn.Module, history: list[dict], *, clean: float, precision: str,
            device: torch.device, t0: float) -> dict:
    """metrics.json: the run, its final clean accuracy, its settings, every epoch and where it came from."""
    run = spec.run
    gpus = distributed.world_size() if device.type == "cuda" else 0
    return {
        "run": run.name, "role": run.role, "method": run.method, "temperature": run.temperature,
        "beta": run.beta, "dataset": run.dataset, "arch": run.arch, "parameters": count_parameters(model),
        "clean_accuracy": clean, "epochs": len(history),
        "schedule": spec.schedule, "attack": spec.attack, "awp": spec.awp, "soft_labels": run.soft_label_mode,
        "precision": precision,
        "best": {**best_epoch(history), "monitor": spec.monitor} if run.role == "students" else None,
        "processes": distributed.world_size(),
        "train_seconds_this_attempt": time.time() - t0,
        "history": history,
        "provenance": provenance(spec.machine.results, device, gpus=gpus, wall_seconds=time.time() - t0,
                                 seed=run.seed, precision=precision, settings=spec.identity,
                                 splits=data.describe(spec.data, ("train",))),
    }


def draw_curves(name: str, history: list[dict], stem: Path) -> None:
    """The run's own training curves, drawn as it finishes (a table's curves wait for all
    its runs). A figure that fails to draw never fails the finished training."""
    try:
        from .. import figures

        figures.training_curves({name: history}, f"{name}: training curves", stem)
    except Exception as e:  # noqa: BLE001 - a figure is not worth a finished run
        print(f"{name}: the training curves could not be drawn: {e!r}", file=sys.stderr)
