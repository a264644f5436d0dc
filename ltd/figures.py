"""Figures (matplotlib, PNG and PDF)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402

XLABELS = {"temperature": "teacher temperature T", "beta": "β (weight of the robust term)"}


def accuracy_against(kind: str, points: list[dict], paper: list[dict], baseline: dict | None, tmax: float | None,
                     title: str, stem: str | Path, paper_dataset: str = "CIFAR-10") -> None:
    """Clean and AutoAttack accuracy (%) against T or beta. ``points``/``paper``: dicts
    with x, clean, robust; ``baseline``: a row drawn as horizontal lines (TRADES in
    Table IV); ``tmax``: a vertical line at T_max."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [p["x"] for p in points]
    ax.plot(xs, [p["clean"] for p in points], "o-", color="tab:blue", label="clean (this run)")
    ax.plot(xs, [p["robust"] for p in points], "s-", color="tab:red", label="AutoAttack (this run)")
    if paper:
        pxs = [p["x"] for p in paper]
        ax.plot(pxs, [p["clean"] for p in paper], "o--", color="tab:blue", alpha=0.4, label=f"clean (paper, {paper_dataset})")
        ax.plot(pxs, [p["robust"] for p in paper], "s--", color="tab:red", alpha=0.4,
                label=f"AutoAttack (paper, {paper_dataset})")
    if baseline:
        name = baseline.get("label", "baseline")
        ax.axhline(baseline["clean"], color="tab:blue", lw=0.8, ls=":", label=f"{name} clean (this run)")
        ax.axhline(baseline["robust"], color="tab:red", lw=0.8, ls=":", label=f"{name} AA (this run)")
    ticks = sorted({p["x"] for p in points + paper})
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
    """``stem``.png and ``stem``.pdf, then free the figure."""
    fig.tight_layout()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ext in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(ext), dpi=150)
    plt.close(fig)
