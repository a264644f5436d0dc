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

from .evaluate import fraction, numeric_precision, predict, tf32_flags
from .files import load_json, save_json

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

    tty = sys.stderr.isatty()
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
                "precision": numeric_precision(device)}
    t0 = time.time()
    # of the module itself: a compiled wrapper (evaluation.compile, a speed switch) resumes its state
    fp = fingerprint_tensors(x, y, model=getattr(model, "_orig_mod", model), extra=settings) if state_path else ""
    state_path = Path(state_path) if state_path else None
    state = _load_state(state_path, fp) if state_path else None
    resumed = sorted(state["done"]) if state else []
    if state is None:
        clean = predict(model, x, batch_size).argmax(1).cpu() == y.cpu()
        state = {"format": STATE_FORMAT, "fingerprint": fp, "settings": settings, "clean_flags": _bits(clean),
                 "robust_flags": _bits(clean), "done": {}, "current": None, "max_perturbation": 0.0,
                 "seconds": 0.0}
    elif state.get("current") or resumed:
        print(f"AutoAttack: resuming from {state_path} (done: {', '.join(resumed) or 'none'}"
              + (f"; {state['current']['attack']} at batch {state['current']['batches_done']}" if state.get("current")
                 else "") + ")", file=sys.stderr, flush=True)
    seconds_before = state["seconds"]

    def save() -> None:
        if state_path is not None:
            state["seconds"] = seconds_before + time.time() - t0
            save_json(state, state_path)

    save()
    robust = _unbits(state["robust_flags"])
    for attack in order:
        if attack in state["done"]:
            continue
        cur = state["current"]
        if cur is None or cur["attack"] != attack:
            cur = state["current"] = {"attack": attack, "pending": torch.nonzero(robust).flatten().tolist(),
                                      "batches_done": 0}
            save()
        pending = cur["pending"]
        t_attack = time.time()
        adversary.attacks_to_run = [attack]
        n_batches = -(-len(pending) // batch_size)
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
            save()
            bar.set_postfix(robust=f"{100 * fraction(robust):.2f}%", refresh=False)
        bar.close()
        state["done"][attack] = {"robust_accuracy": fraction(robust), "flags": _bits(robust),
                                 "skipped": n_batches == 0, "attacked": len(pending),
                                 "seconds": time.time() - t_attack}  # this attempt's share, if resumed
        state["current"] = None
        save()
        print(f"AutoAttack: robust accuracy after {attack}: {100 * fraction(robust):.2f} % "
              f"({time.time() - t0:.1f} s)", file=sys.stderr, flush=True)
    clean = _unbits(state["clean_flags"])
    record = {
        "robust_accuracy": fraction(robust),
        "clean_accuracy": fraction(clean),
        "robust_accuracy_after": {a: state["done"][a]["robust_accuracy"] for a in order},
        # images each attack ran on (the still-robust ones) and its seconds (benchmarks/gpu_check.py)
        "attacked": {a: state["done"][a].get("attacked") for a in order},
        "seconds_per_attack": {a: state["done"][a].get("seconds") for a in order},
        # attacks that had no robust example left to attack (pyautoattack stops there too)
        "skipped": [a for a in order if state["done"][a]["skipped"]],
        "attacks": order,
        **{k: settings[k] for k in ("version", "eps", "norm", "n_examples", "seed", "batch_size", "square_queries",
                                    "pyautoattack")},
        "precision": numeric_precision(device),
        "tf32_flags": tf32_flags() if torch.device(device).type == "cuda" else None,
        "max_perturbation": state["max_perturbation"],
        "resumed_attacks": resumed,
        "seconds": seconds_before + time.time() - t0,
        "seconds_this_attempt": time.time() - t0,
    }
    flags = {a: _unbits(state["done"][a]["flags"]) for a in order}
    return record, flags


def autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> dict:
    """``run_autoattack``'s record alone."""
    return run_autoattack(model, x, y, **kwargs)[0]
