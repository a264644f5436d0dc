"""AutoAttack through ``pyautoattack``, resumable: one attack and one batch at a time,
with our own state file (written atomically after every batch), so a killed
evaluation resumes where it stopped.

Why not pyautoattack's own state file: in 0.2.0 it saves the set of finished attacks
at most once a minute (so it is usually missing), it writes ``_attacks_to_run`` as the
string of a Python set (so every resume fails its own "different set of attacks"
check), and a resumed run hits an unbound ``y_adv`` as soon as an attack succeeds. The
batches and seeds here are pyautoattack's own (still-robust examples in index order,
``batch_size`` at a time; each attack re-seeds from ``seed``), so the result equals a
single uninterrupted ``run_standard_evaluation``.

Reported robust accuracy is never computed under autocast (bf16 logits make gradient
attacks weaker and the number optimistic); the record states what the matmuls and
convolutions ran in ("fp32", "pytorch_default" or "tf32": ``evaluation.precision``).
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .evaluate import fraction, predict
from .files import load_json, save_json
from .runtime import tf32_flags, tf32_mode

STATE_FORMAT = "ltd-autoattack-state/1"


def _check_fp32(model: torch.nn.Module, device: torch.device | str) -> None:
    kind = torch.device(device).type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        raise RuntimeError("AutoAttack must not run under autocast: the reported number is fp32")
    bad = {str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
    if bad:
        raise RuntimeError(f"the evaluated model has {sorted(bad)} parameters; reported numbers need fp32")


def fingerprint_tensors(*tensors: torch.Tensor, model: torch.nn.Module | None = None, extra=None) -> str:
    """sha256 over the bytes of tensors (and a model's state dict): a state file only
    resumes the evaluation of the same model on the same data with the same settings."""
    h = hashlib.sha256(repr(extra).encode())
    items = list(tensors)
    if model is not None:
        for k, v in model.state_dict().items():
            h.update(k.encode())
            items.append(v)
    for t in items:
        t = t.detach()
        for chunk in torch.split(t.reshape(-1), 1 << 24):
            h.update(chunk.cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


def _bits(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def _unbits(s: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in s], dtype=torch.bool)


def _load_state(path: Path, fp: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = load_json(path)
    except (OSError, ValueError) as e:
        print(f"AutoAttack state {path} unreadable ({e}); starting over", file=sys.stderr)
        return None
    if state.get("format") != STATE_FORMAT or state.get("fingerprint") != fp:
        print(f"AutoAttack state {path} belongs to another model, data or settings; starting over",
              file=sys.stderr)
        return None
    return state


def make_adversary(model: torch.nn.Module, *, eps: float, version: str, attacks: list[str] | None,
                   square_queries: int | None, seed: int, device, n_classes: int):
    """pyautoattack's AutoAttack with the settings of ``version``. ``version='custom'``
    runs ``attacks`` with the standard version's settings (one restart, at most 9 target
    classes), for cheap demo evaluations."""
    from pyautoattack import AutoAttack

    if version == "custom":
        if not attacks:
            raise ValueError("evaluation.autoattack.attacks: list the attacks for version 'custom'")
        adversary = AutoAttack(model, attacks=list(attacks), version="custom", eps=eps, norm="Linf",
                               seed=seed, device=device)
        adversary.apgd.n_restarts = 1
        adversary.fab.n_restarts = 1
        adversary.apgd_targeted.n_target_classes = min(9, n_classes - 1)
        adversary.fab.n_target_classes = min(9, n_classes - 1)
    else:
        adversary = AutoAttack(model, version=version, eps=eps, norm="Linf", seed=seed, device=device)
    if square_queries:
        adversary.square.n_queries = square_queries
    return adversary


def run_autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    version: str = "standard",
    attacks: list[str] | None = None,
    square_queries: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    state_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Linf AutoAttack; the robust accuracy is the per-example worst case over attacks.

    Returns the record and, per attack, the per-example robust flags after it (the
    worst case over it and the attacks before it). With ``state_path`` the progress is
    saved after every batch and a rerun continues from it.
    """
    import pyautoattack

    model.eval()
    _check_fp32(model, device)
    n_classes = predict(model, x[:2], 2).shape[1]
    adversary = make_adversary(model, eps=eps, version=version, attacks=attacks, square_queries=square_queries,
                               seed=seed, device=device, n_classes=n_classes)
    adversary.verbose = False
    order = list(adversary.attacks_to_run)
    settings = {"eps": eps, "norm": "Linf", "version": version, "attacks": order, "seed": seed,
                "batch_size": batch_size, "square_queries": adversary.square.n_queries if "square" in order else None,
                "n_examples": len(y), "pyautoattack": pyautoattack.__version__,
                # a state file resumes only under the same numerics (TF32 on/off changes results)
                "precision": tf32_mode(device)}
    # of the module itself: a compiled wrapper (evaluation.compile, a speed switch) resumes its state
    fp = fingerprint_tensors(x, y, model=getattr(model, "_orig_mod", model), extra=settings) if state_path else ""
    run_state = _Progress(Path(state_path) if state_path else None, fp, settings,
                          lambda: predict(model, x, batch_size).argmax(1).cpu() == y.cpu())
    robust = _unbits(run_state.state["robust_flags"])
    for attack in order:
        if attack not in run_state.state["done"]:
            _one_attack(attack, adversary, model, x, y, robust, run_state, batch_size, progress)
    flags = {a: _unbits(run_state.state["done"][a]["flags"]) for a in order}
    return _record(run_state, robust, order, settings, device), flags


class _Progress:
    """An AutoAttack run's resumable state: clean and robust flags, the attacks done, the
    one under way (its pending images and batches done), saved as JSON after every batch
    to ``path`` (none: kept in memory) and continued from there by a rerun of the same
    fingerprint."""

    def __init__(self, path: Path | None, fp: str, settings: dict, clean_flags):
        self.path, self.t0 = path, time.time()
        self.state = _load_state(path, fp) if path else None
        self.resumed = sorted(self.state["done"]) if self.state else []
        if self.state is None:
            clean = clean_flags()
            self.state = {"format": STATE_FORMAT, "fingerprint": fp, "settings": settings, "clean_flags": _bits(clean),
                          "robust_flags": _bits(clean), "done": {}, "current": None, "max_perturbation": 0.0,
                          "seconds": 0.0}
        elif self.state.get("current") or self.resumed:
            cur = self.state.get("current")
            print(f"AutoAttack: resuming from {path} (done: {', '.join(self.resumed) or 'none'}"
                  + (f"; {cur['attack']} at batch {cur['batches_done']}" if cur else "") + ")",
                  file=sys.stderr, flush=True)
        self.seconds_before = self.state["seconds"]
        self.save()

    def save(self) -> None:
        if self.path is not None:
            self.state["seconds"] = self.seconds_before + time.time() - self.t0
            save_json(self.state, self.path)


def _one_attack(attack: str, adversary, model, x, y, robust: torch.Tensor, p: _Progress, batch_size: int,
                progress: bool) -> None:
    """``attack`` on the images still robust (``robust`` updated in place), batch by batch
    as pyautoattack runs it, the state saved after each batch."""
    state = p.state
    cur = state["current"]
    if cur is None or cur["attack"] != attack:
        cur = state["current"] = {"attack": attack, "pending": torch.nonzero(robust).flatten().tolist(),
                                  "batches_done": 0}
        p.save()
    pending = cur["pending"]
    t_attack = time.time()
    adversary.attacks_to_run = [attack]
    n_batches = -(-len(pending) // batch_size)
    tty = sys.stderr.isatty()
    # these jobs run for hours: a bar per attack (in the log, refreshed every 30 s)
    bar = tqdm(range(cur["batches_done"], n_batches), total=n_batches, initial=cur["batches_done"],
               desc=f"AutoAttack {attack}", unit="batch", file=sys.stderr, leave=tty,
               mininterval=0.5 if tty else 30, disable=not progress)
    for b in bar:
        idx = torch.tensor(pending[b * batch_size:(b + 1) * batch_size], dtype=torch.long)
        xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
        # pyautoattack's own loop on exactly the batch it would attack (all still robust)
        x_adv, _ = adversary.run_standard_evaluation(xb, yb, batch_size=len(idx))
        with torch.no_grad():
            fooled = (predict(model, x_adv, batch_size).argmax(1) != yb).cpu()
            if fooled.any():
                pert = (x_adv - xb).abs().flatten(1).amax(1).cpu()[fooled].max().item()
                state["max_perturbation"] = max(state["max_perturbation"], pert)
        robust[idx[fooled]] = False
        cur["batches_done"] = b + 1
        state["robust_flags"] = _bits(robust)
        p.save()
        bar.set_postfix(robust=f"{100 * fraction(robust):.2f}%", refresh=False)
    bar.close()
    state["done"][attack] = {"robust_accuracy": fraction(robust), "flags": _bits(robust),
                             "skipped": n_batches == 0, "attacked": len(pending),
                             "seconds": time.time() - t_attack}  # this attempt's share, if resumed
    state["current"] = None
    p.save()
    print(f"AutoAttack: robust accuracy after {attack}: {100 * fraction(robust):.2f} % "
          f"({time.time() - p.t0:.1f} s)", file=sys.stderr, flush=True)


def _record(p: _Progress, robust: torch.Tensor, order: list[str], settings: dict, device) -> dict:
    """The result: robust and clean accuracy, per attack what it left, attacked and took."""
    done = p.state["done"]
    return {
        "robust_accuracy": fraction(robust),
        "clean_accuracy": fraction(_unbits(p.state["clean_flags"])),
        "robust_accuracy_after": {a: done[a]["robust_accuracy"] for a in order},
        # images each attack ran on (the still-robust ones) and its seconds (what a device check reads)
        "attacked": {a: done[a].get("attacked") for a in order},
        "seconds_per_attack": {a: done[a].get("seconds") for a in order},
        # attacks that had no robust example left to attack (pyautoattack stops there too)
        "skipped": [a for a in order if done[a]["skipped"]],
        "attacks": order,
        **{k: settings[k] for k in ("version", "eps", "norm", "n_examples", "seed", "batch_size", "square_queries",
                                    "pyautoattack")},
        "precision": tf32_mode(device),
        "tf32_flags": tf32_flags() if torch.device(device).type == "cuda" else None,
        "max_perturbation": p.state["max_perturbation"],
        "resumed_attacks": p.resumed,
        "seconds": p.seconds_before + time.time() - p.t0,
        "seconds_this_attempt": time.time() - p.t0,
    }


def autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> dict:
    """``run_autoattack``'s record alone."""
    return run_autoattack(model, x, y, **kwargs)[0]
