"""Gradient-masking diagnostics of an evaluated model.

A robust accuracy is only trusted when the signs of gradient masking are absent (the
paper, Sec. 5.1: black-box beating white-box signals masking; its T = 15 and 20 rows,
94.7 % clean and 0.00 % AutoAttack, are what a masked or collapsed model looks like).
Four checks, each stored with its numbers, its threshold and whether it fired:

* ``pgd_gap``: PGD accuracy minus AutoAttack accuracy. A large gap means the plain PGD
  attack is much weaker than AutoAttack on this model (a masking sign; a sound model
  shows a gap of a few points).
* ``black_box``: Square (black-box, score-based, no gradients) alone against APGD-CE
  (white-box) alone on the same first ``square_n_examples`` images. Flagged when the
  black-box accuracy is lower than the white-box one: gradients mislead the white-box
  attack.
* ``near_zero_robust``: robust accuracy at most ``near_zero_robust`` while clean
  accuracy is at least ``high_clean`` (the paper's T = 15, 20 rows).
* ``zero_gradients``: the fraction of evaluated images whose input gradient of the
  cross-entropy is exactly zero (or not finite) exceeds ``zero_gradient``; gradient
  attacks cannot move from such points (saturated softmax, constant outputs).

A fifth check reads the student's training (``training``, from its metrics.json):
``stalled_training`` fires when at least ``stalled_training`` of the evaluated epoch's
training attacks stalled (moved fewer than ``ltd.attacks.STALLED_BELOW``, half, of their
pixels from the random start: fp16 underflow is usually partial, so a few pixels may move
while most stay). Then a near-zero robust accuracy is no
masking at evaluation: the attack failed during training (in fp16 its input gradient
underflowed) and the model was trained naturally. ``cause`` says which of the two the
flags point to.

``assess`` and the ``*_check`` functions are pure (numbers in, verdicts out);
``input_gradients`` and ``square_vs_apgd`` compute the numbers they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .loaders import batches

CHECKS = ("pgd_gap", "black_box", "near_zero_robust", "zero_gradients", "stalled_training")  # evaluation.diagnostics
STALLED_TRAINING = 0.5  # `diagnostics.stalled_training` where a config leaves it out


# ---- pure checks ----

def pgd_gap_check(pgd_accuracy: float, autoattack_accuracy: float, threshold: float) -> dict:
    gap = pgd_accuracy - autoattack_accuracy
    return {"pgd_accuracy": pgd_accuracy, "autoattack_accuracy": autoattack_accuracy, "gap": gap,
            "threshold": threshold, "flagged": gap > threshold}


def black_box_check(square_accuracy: float, apgd_ce_accuracy: float, **numbers: Any) -> dict:
    """Flagged when Square alone leaves fewer images robust than APGD-CE alone (same images)."""
    return {"square_accuracy": square_accuracy, "apgd_ce_accuracy": apgd_ce_accuracy,
            "difference": square_accuracy - apgd_ce_accuracy, **numbers,
            "flagged": square_accuracy < apgd_ce_accuracy}


def near_zero_check(clean_accuracy: float, robust_accuracy: float, near_zero: float, high_clean: float) -> dict:
    return {"clean_accuracy": clean_accuracy, "robust_accuracy": robust_accuracy,
            "near_zero_robust": near_zero, "high_clean": high_clean,
            "flagged": robust_accuracy <= near_zero and clean_accuracy >= high_clean}


def zero_gradient_check(zero_fraction: float, nonfinite_fraction: float, threshold: float, **numbers: Any) -> dict:
    bad = zero_fraction + nonfinite_fraction
    return {"zero_fraction": zero_fraction, "nonfinite_fraction": nonfinite_fraction, **numbers,
            "threshold": threshold, "flagged": bad > threshold}


def stalled_training_check(stalled: float, threshold: float, **numbers: Any) -> dict:
    return {"stalled": stalled, **numbers, "threshold": threshold, "flagged": stalled >= threshold}


MEANING = {
    "pgd_gap": "PGD is much weaker than AutoAttack on this model",
    "black_box": "black-box Square beats white-box APGD-CE: gradients mislead the attack",
    "near_zero_robust": "robust accuracy near zero with high clean accuracy",
    "zero_gradients": "input gradients are zero or not finite on many images",
    "stalled_training": "the training attack stalled (x' moved fewer than half of its pixels from its random start): the "
                        "model was trained "
                        "naturally, so its robustness failed during training, not at evaluation",
}
MASKING = ("pgd_gap", "black_box", "zero_gradients")  # signs that the evaluation's gradients mislead


def cause(flags: list[str]) -> str | None:
    """What the flags point to: the attack failed during training (its x' barely moved),
    or the model masks gradients at evaluation (or, near-zero robustness alone, neither
    is shown)."""
    if "stalled_training" in flags:
        return "attack failed during training"
    if any(f in MASKING for f in flags):
        return "masked at evaluation"
    return "robustness near zero" if flags else None


def assess(*, clean: float, robust: float, pgd: float | None, thresholds: dict,
           black_box: dict | None = None, gradients: dict | None = None, training: dict | None = None) -> dict:
    """All checks from their numbers. ``black_box``: {square_accuracy, apgd_ce_accuracy,
    ...} or None (not run); ``gradients``: {zero_fraction, nonfinite_fraction, ...} or None;
    ``training``: the evaluated epoch's training numbers (``stalled``, ``adv_accuracy``,
    ...; ltd.jobs.evaluation.training_summary) or None (not a student of ours)."""
    t = thresholds
    stalled = (training or {}).get("stalled")
    checks: dict[str, dict | None] = {
        "pgd_gap": None if pgd is None else pgd_gap_check(pgd, robust, t["pgd_gap"]),
        "black_box": None if black_box is None else black_box_check(**black_box),
        "near_zero_robust": near_zero_check(clean, robust, t["near_zero_robust"], t["high_clean"]),
        "zero_gradients": None if gradients is None else zero_gradient_check(threshold=t["zero_gradient"],
                                                                             **gradients),
        "stalled_training": None if stalled is None else stalled_training_check(
            stalled, t.get("stalled_training", STALLED_TRAINING), moved=training.get("moved"),
            adv_accuracy=training.get("adv_accuracy"), epoch=training.get("epoch"),
            precisions=training.get("precisions")),
    }
    flags = [k for k in CHECKS if checks[k] is not None and checks[k]["flagged"]]
    return {"thresholds": t, **checks, "flags": flags, "flagged": bool(flags), "cause": cause(flags),
            "not_run": [k for k in CHECKS if checks[k] is None],
            "summary": "; ".join(MEANING[k] for k in flags) or "no sign of gradient masking"}


# ---- the numbers ----

def input_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict:
    """Fractions of images whose input gradient of the cross-entropy is all zero / not finite."""
    model.eval()
    zero = nonfinite = 0
    for s in batches(x, batch_size):
        xb = x[s].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xb).float()
            if not logits.requires_grad:  # the output does not depend on the input at all
                zero += len(xb)
                continue
            g, = torch.autograd.grad(F.cross_entropy(logits, y[s], reduction="sum"), xb, allow_unused=True)
        if g is None:
            zero += len(xb)
            continue
        g = g.flatten(1)
        finite = torch.isfinite(g).all(1)
        nonfinite += (~finite).sum().item()
        zero += ((g.abs().sum(1) == 0) & finite).sum().item()
    n = max(len(x), 1)
    return {"zero_fraction": zero / n, "nonfinite_fraction": nonfinite / n, "n_examples": len(x)}


def square_vs_apgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, n_examples: int,
                   queries: int, seed: int, batch_size: int, device, apgd_ce_flags: torch.Tensor | None = None,
                   state_stem: str | Path | None = None) -> dict:
    """Square alone (``queries`` per image) and APGD-CE alone on the first ``n_examples``
    images. ``apgd_ce_flags``: per-example robust flags after APGD-CE when the main
    AutoAttack run started with it (reused, not recomputed). ``state_stem``: resumable
    state files ``<stem>_square.json`` / ``<stem>_apgd-ce.json``."""
    from .autoattack import run_autoattack
    from .evaluate import fraction

    n = min(n_examples, len(y))
    xs, ys = x[:n], y[:n]

    def state(name: str) -> Path | None:
        return None if state_stem is None else _state_file(state_stem, name)

    sq, sq_flags = run_autoattack(model, xs, ys, eps=eps, version="custom", attacks=["square"], square_queries=queries,
                                  batch_size=batch_size, seed=seed, state_path=state("square"), device=device)
    if apgd_ce_flags is not None:
        wb_flags, source = apgd_ce_flags[:n], "first attack of the main AutoAttack run"
    else:
        _, f = run_autoattack(model, xs, ys, eps=eps, version="custom", attacks=["apgd-ce"], batch_size=batch_size,
                              seed=seed, state_path=state("apgd-ce"), device=device)
        wb_flags, source = f["apgd-ce"], "separate APGD-CE run"
    bb_flags = sq_flags["square"]
    return {"square_accuracy": fraction(bb_flags), "apgd_ce_accuracy": fraction(wb_flags),
            "n_examples": n, "square_queries": queries,
            # images only Square fooled / only APGD-CE fooled
            "square_only_successes": int((~bb_flags & wb_flags).sum()),
            "apgd_ce_only_successes": int((bb_flags & ~wb_flags).sum()),
            "apgd_ce_source": source, "seconds": sq["seconds"]}


def run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, clean: float, robust: float,
        pgd: float | None, eps: float, seed: int, batch_size: int, device, cfg: dict,
        apgd_ce_flags: torch.Tensor | None = None, state_stem: str | Path | None = None,
        training: dict | None = None) -> dict:
    """The diagnostics of one evaluation (what ``jobs.evaluate_run`` stores under ``diagnostics``)."""
    t = cfg
    bb = None
    if t["square_n_examples"] > 0:
        bb = square_vs_apgd(model, x, y, eps=eps, n_examples=t["square_n_examples"], queries=t["square_queries"],
                            seed=seed, batch_size=batch_size, device=device, apgd_ce_flags=apgd_ce_flags,
                            state_stem=state_stem)
    grads = input_gradients(model, x, y, batch_size)
    return assess(clean=clean, robust=robust, pgd=pgd, thresholds=t, black_box=bb, gradients=grads,
                  training=training)


def _state_file(state_stem: str | Path, attack: str) -> Path:
    return Path(f"{state_stem}_{attack}.json")


def state_files(state_stem: str | Path) -> list[Path]:
    return [_state_file(state_stem, name) for name in ("square", "apgd-ce")]


# ---- report columns ----

def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def report_row(result: dict) -> dict:
    """One evaluation as flat report columns (accuracies in %), for tables and CSVs."""
    aa, d = result["autoattack"], result.get("diagnostics") or {}
    pgd = (result.get("pgd") or {}).get("accuracy")
    tr = result.get("training") or {}
    # a student's last epoch or its best.pt (both may be reported), with the epoch
    weights = tr.get("weights") and f"{tr['weights']} ({tr.get('epoch')}/{tr.get('epochs')})"
    row = {"Run": result["run"], "Weights": weights, "eps": f"{aa['eps']:.6g}", "n": aa["n_examples"],
           "Precision": aa.get("precision"),
           "Clean": _pct(result["clean_accuracy"]),
           f"PGD-{(result.get('pgd') or {}).get('steps', '')}".rstrip("-"): _pct(pgd),
           "AA": _pct(result["robust_accuracy"])}
    for a in aa["attacks"]:
        row[f"after {a.upper()}"] = _pct(aa["robust_accuracy_after"].get(a))
    bb, g = d.get("black_box"), d.get("zero_gradients")
    row.update({
        "PGD − AA": None if pgd is None else _pct(pgd - result["robust_accuracy"]),
        "Square alone": _pct(bb["square_accuracy"]) if bb else None,
        "APGD-CE alone": _pct(bb["apgd_ce_accuracy"]) if bb else None,
        "Zero-grad": _pct(g["zero_fraction"] + g["nonfinite_fraction"]) if g else None,
        "Trained in": "/".join(tr.get("precisions") or []) or None,
        "Stalled (train)": _pct(tr.get("stalled")),
        "x' acc. (train)": _pct(tr.get("adv_accuracy")),
        "Masking flags": ", ".join(d.get("flags", [])) or ("none" if d else "not run"),
        "Cause": d.get("cause"),
    })
    return row


def report_frame(results: list[dict]):
    """Report rows of several evaluations as a DataFrame (columns: the union, in order)."""
    import pandas as pd

    rows = [report_row(r) for r in results]
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    return pd.DataFrame(rows, columns=cols)
