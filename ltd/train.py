"""The one training loop, for teachers, substitutes and students alike.

What differs between roles is the step function (methods.py). The loop owns the
optimiser (SGD, Nesterov, piecewise-constant LR as in the paper's Appendix A), mixed
precision, a progress bar, a NaN guard, and a checkpoint written atomically at the end
of every epoch with optimiser, scheduler and RNG state, from which it resumes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from . import checkpoint, runtime
from .data import DeviceLoader
from .methods import Step


class NonFiniteLoss(RuntimeError):
    pass


def make_optimizer(model: torch.nn.Module, sched: dict) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(
        model.parameters(),
        lr=sched["lr"],
        momentum=sched["momentum"],
        weight_decay=sched["weight_decay"],
        nesterov=sched["nesterov"],
    )
    # Milestones count finished epochs: "/10 at the end of epoch 80" = from epoch 81 on.
    lr_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=sched["lr_milestones"], gamma=sched["lr_gamma"])
    return opt, lr_sched


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(
    model: torch.nn.Module,
    step: Step,
    loader: DeviceLoader,
    sched: dict,
    *,
    ckpt_path: str | Path,
    device: torch.device,
    fingerprint: str = "",
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    log_path: str | Path | None = None,
    desc: str = "train",
) -> list[dict]:
    """Train for ``sched['epochs']`` epochs, resuming from ``ckpt_path`` if it holds a
    checkpoint of the same ``fingerprint`` (a hash of everything that defines the run;
    a stale checkpoint from other settings is ignored, never silently continued).

    Returns the per-epoch history (also appended as JSON lines to ``log_path``).
    """
    model.to(device)
    opt, lr_sched = make_optimizer(model, sched)
    precision = runtime.effective_precision(device, sched["precision"])
    history: list[dict] = []
    start = 0
    ckpt_path = Path(ckpt_path)
    if ckpt_path.exists():
        state = checkpoint.load(ckpt_path, map_location=device)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            lr_sched.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            history = json.loads(state["history"])
            start = state["epoch"]
            print(f"{desc}: resuming after epoch {start} from {ckpt_path}", file=sys.stderr)
        else:
            print(f"{desc}: ignoring {ckpt_path} (written for other settings)", file=sys.stderr)

    tty = sys.stderr.isatty()
    for epoch in range(start, sched["epochs"]):
        model.train()
        if hasattr(step, "begin_epoch"):  # e.g. AWP switches on after its warm-up epochs
            step.begin_epoch(epoch)
        t0 = time.time()
        totals = {"loss": 0.0, "correct": 0, "n": 0}
        bar = tqdm(
            loader.epoch(epoch),
            total=len(loader),
            desc=f"{desc} epoch {epoch + 1}/{sched['epochs']}",
            leave=tty,
            mininterval=0.5 if tty else 30,
            file=sys.stderr,
        )
        for i, (x, y, q) in enumerate(bar):
            with runtime.autocast(device, precision):
                loss, logits, stats = step(model, x, y, q)
            if not math.isfinite(stats["loss"]):
                raise NonFiniteLoss(
                    f"{desc}: loss is {stats['loss']} at epoch {epoch + 1}, step {i + 1}; "
                    f"the last good checkpoint (after epoch {epoch}) is kept in {ckpt_path}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(step, "after_update"):  # e.g. AWP removes its weight perturbation
                step.after_update(model)
            totals["loss"] += stats["loss"] * len(y)
            totals["correct"] += (logits.argmax(1) == y).sum().item()
            totals["n"] += len(y)
            bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.4f}", acc=f"{totals['correct'] / totals['n']:.3f}",
                            refresh=False)
        bar.close()
        lr = opt.param_groups[0]["lr"]
        lr_sched.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": totals["loss"] / max(totals["n"], 1),
            "train_accuracy": totals["correct"] / max(totals["n"], 1),
            "seconds": time.time() - t0,
        }
        if evaluate is not None:
            record.update(evaluate(model))
        history.append(record)
        checkpoint.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": lr_sched.state_dict(),
                "rng": _rng_state(),
                "epoch": epoch + 1,
                "fingerprint": fingerprint,
                "history": json.dumps(history),
            },
            ckpt_path,
        )
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        print(f"{desc}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
              file=sys.stderr)
    return history
