"""Figures (matplotlib, PNG and PDF)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_vs_temperature(points: list[dict], paper: list[dict], baseline: dict | None,
                            tmax: float | None, title: str, stem: str | Path, paper_dataset: str = "CIFAR-10") -> None:
    """``points``/``paper``: dicts with T, clean, robust (in %); ``baseline``: the TRADES
    row (clean, robust) drawn as horizontal lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ts = [p["T"] for p in points]
    ax.plot(ts, [p["clean"] for p in points], "o-", color="tab:blue", label="clean (this run)")
    ax.plot(ts, [p["robust"] for p in points], "s-", color="tab:red", label="AutoAttack (this run)")
    if paper:
        pts = [p["T"] for p in paper]
        ax.plot(pts, [p["clean"] for p in paper], "o--", color="tab:blue", alpha=0.4, label=f"clean (paper, {paper_dataset})")
        ax.plot(pts, [p["robust"] for p in paper], "s--", color="tab:red", alpha=0.4, label=f"AutoAttack (paper, {paper_dataset})")
    if baseline:
        ax.axhline(baseline["clean"], color="tab:blue", lw=0.8, ls=":", label="TRADES clean (this run)")
        ax.axhline(baseline["robust"], color="tab:red", lw=0.8, ls=":", label="TRADES AA (this run)")
    if tmax is not None:
        ax.axvline(tmax, color="k", lw=0.8, ls="-.", label=f"T_max = {tmax:g}")
    ax.set_xscale("log")
    ticks = sorted({p["T"] for p in points + paper} | ({tmax} if tmax else set()))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("teacher temperature T")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ext in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(ext), dpi=150)
    plt.close(fig)
