"""Figures (matplotlib, PNG and PDF)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402

XLABELS = {"temperature": "teacher temperature T", "beta": "β (weight of the robust term)"}


def accuracy_against(kind: str, points: list[dict], paper: list[dict], baseline: dict | None, tmax: float | None,
                     title: str, stem: str | Path, paper_dataset: str = "CIFAR-10", apart: list[dict] = (),
                     variants: list[dict] = (), name: str = "this run") -> None:
    """Clean and AutoAttack accuracy (%) against T or beta. ``points``/``paper``: dicts
    with x, clean, robust; ``baseline``: a row drawn as horizontal lines (TRADES in
    Table IV); ``tmax``: a vertical line at T_max; ``apart``: rows made otherwise (dicts
    with x, clean, robust, label), hollow markers off the curve; ``variants``: other
    curves of rows made otherwise ({label, points}: e.g. another training precision),
    dashed. ``name``: the main curve's legend (what its rows have in common)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [p["x"] for p in points]
    ax.plot(xs, [p["clean"] for p in points], "o-", color="tab:blue", label=f"clean ({name})")
    ax.plot(xs, [p["robust"] for p in points], "s-", color="tab:red", label=f"AutoAttack ({name})")
    for style, v in zip(("^-.", "v:", "D-."), variants):
        vx = [p["x"] for p in v["points"]]
        ax.plot(vx, [p["clean"] for p in v["points"]], style, color="tab:cyan", label=f"clean ({v['label']})")
        ax.plot(vx, [p["robust"] for p in v["points"]], style, color="tab:orange", label=f"AutoAttack ({v['label']})")
    if paper:
        pxs = [p["x"] for p in paper]
        ax.plot(pxs, [p["clean"] for p in paper], "o--", color="tab:blue", alpha=0.4, label=f"clean (paper, {paper_dataset})")
        ax.plot(pxs, [p["robust"] for p in paper], "s--", color="tab:red", alpha=0.4,
                label=f"AutoAttack (paper, {paper_dataset})")
    if baseline:
        name = baseline.get("label", "baseline")
        ax.axhline(baseline["clean"], color="tab:blue", lw=0.8, ls=":", label=f"{name} clean (this run)")
        ax.axhline(baseline["robust"], color="tab:red", lw=0.8, ls=":", label=f"{name} AA (this run)")
    for i, p in enumerate(apart):
        marker = "DPv^<>"[i % 6]
        ax.plot([p["x"]], [p["clean"]], marker, mfc="none", color="tab:blue", label=f"{p['label']}: clean")
        ax.plot([p["x"]], [p["robust"]], marker, mfc="none", color="tab:red", label=f"{p['label']}: AA")
    ticks = sorted({p["x"] for p in [*points, *paper, *apart, *(q for v in variants for q in v["points"])]})
    if tmax is not None:
        ax.axvline(tmax, color="k", lw=0.8, ls="-.", label=f"T_max = {tmax:g}")
        ticks = sorted(set(ticks) | {tmax})
    if kind == "temperature":
        ax.set_xscale("log")  # the grid 1 ... 20 and T_max = 50 span decades
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(XLABELS[kind])
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    save(fig, stem)


def save(fig, stem: str | Path) -> None:
    """``stem``.png and ``stem``.pdf, each written whole (a temporary file renamed), then
    free the figure."""
    fig.tight_layout()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        for ext in (".png", ".pdf"):
            fd, tmp = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=ext, dir=stem.parent)
            os.close(fd)
            try:
                fig.savefig(tmp, dpi=150)
                os.replace(tmp, stem.with_suffix(ext))
            finally:
                Path(tmp).unlink(missing_ok=True)
    finally:
        plt.close(fig)


def substitutes_vs_temperature(subs: list[dict], threshold: float, tmax: float | None, title: str,
                               stem: str | Path) -> None:
    """Step 1 of the temperature search: the substitutes' clean accuracy (%) against T,
    the threshold line and the T_max it gives."""
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    ts = [s["T"] for s in subs]
    ax.plot(ts, [100 * s["clean_accuracy"] for s in subs], "o-", color="tab:blue", label="substitute, clean (this run)")
    ax.axhline(100 * threshold, color="tab:red", lw=0.8, ls="--", label=f"threshold {100 * threshold:g} %")
    if tmax is not None:
        ax.axvline(tmax, color="k", lw=0.8, ls="-.", label=f"T_max = {tmax:g}")
    ax.set_xscale("log")
    ax.set_xticks(ts, [f"{t:g}" for t in ts])
    ax.minorticks_off()
    ax.set_xlabel("teacher temperature T of the soft labels")
    ax.set_ylabel("clean accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    save(fig, stem)


# Panels of the training curves: history key, axis label, scale (100: a fraction shown in %).
CURVES = [("train_loss", "training loss", 1), ("test_accuracy", "clean test accuracy (%)", 100),
          ("test_pgd_accuracy", "PGD test accuracy (%)", 100),
          ("train_adv_accuracy", "training accuracy on x' (%)", 100),
          ("train_stalled", "stalled training attacks (%)", 100), ("train_robust", "KL term (training)", 1)]


def training_curves(histories: dict[str, list[dict]], title: str, stem: str | Path) -> None:
    """Per run and epoch, from the runs' own histories: training loss, clean and (students)
    PGD test accuracy, and for adversarial training its attack's accuracy on x', the
    fraction of stalled attacks (x' moved fewer than half of its pixels) and the KL term."""
    panels = [p for p in CURVES if any(p[0] in r for h in histories.values() for r in h)]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (key, label, scale) in zip(axes.flat, panels):
        for name, h in histories.items():
            pts = [(r["epoch"], r[key]) for r in h if key in r]
            ax.plot([e for e, _ in pts], [scale * v for _, v in pts], marker=".", lw=1, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=9)
    save(fig, stem)
