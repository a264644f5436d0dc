"""Tables: the run's numbers beside the paper's, as Markdown, LaTeX (booktabs) and CSV.

Our columns hold only what this run computed; the paper's values come from
config/paper_results.yaml and are labelled as such.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from . import methods
from .experiments import Run, arch_label, fmt_num
from .files import write_text

COLUMNS = ["Row", "Source", "Clean (ours)", "AA (ours)", "Clean (paper)", "AA (paper)", "Δ Clean", "Δ AA"]
SPREAD = ["± Clean", "± AA", "Seeds"]
# Beside ours (best.pt where a table compares those with the paper): the epoch they are,
# and the same runs' last epoch, evaluated alike, so that robust overfitting shows.
LAST = ["Epoch (ours)", "Clean (last)", "AA (last)"]
LAST_SPREAD = ["± Clean (last)", "± AA (last)"]
MARK = "†"  # a difference beyond the configured tolerance
# A table's optional `columns`: our rows' training numbers (the last epoch, ``training``
# of each evaluation: what ltd.jobs.evaluation copied from the run's metrics.json).
TRAINING_COLUMNS = {"precision": "Precision", "stalled": "Stalled % (train)", "adv_accuracy": "x' acc. % (train)",
                    "robust": "KL (train)"}


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single seed)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _row(label: str, source: str, clean=None, robust=None, paper_clean=None, paper_robust=None, **extra) -> dict:
    return {"label": label, "source": source, "run": None, "clean": clean, "robust": robust,
            "paper_clean": paper_clean, "paper_robust": paper_robust,
            "d_clean": _diff(clean, paper_clean), "d_robust": _diff(robust, paper_robust), **extra}


def _training(results: list[dict]) -> dict:
    """A row's training numbers from its seeds' evaluations (``training``, the last epoch):
    the precision(s) its epochs ran in, and the means of the attack's statistics."""
    ts = [r.get("training") or {} for r in results]
    out: dict = {"precision": "/".join(sorted({p for t in ts for p in t.get("precisions", [])})) or None}
    for key in ("stalled", "adv_accuracy", "robust"):
        values = [t[key] for t in ts if t.get(key) is not None]
        out[key] = statistics.fmean(values) if len(values) == len(ts) else None
    return out


def _epochs(results: list[dict]) -> str | None:
    """The evaluated epoch of a row's seeds, as "12/30" ("12, 14/30" for two seeds)."""
    ts = [r.get("training") or {} for r in results]
    if not all(t.get("epoch") for t in ts):
        return None
    return ", ".join(str(t["epoch"]) for t in ts) + f"/{ts[0]['epochs']}"


def _last(results: list[dict]) -> dict:
    """A row's last-epoch numbers (%, mean and spread over its seeds)."""
    clean, clean_sd = _mean_std([_pct(r["clean_accuracy"]) for r in results])
    robust, robust_sd = _mean_std([_pct(r["robust_accuracy"]) for r in results])
    return {"clean_last": clean, "robust_last": robust, "clean_last_sd": clean_sd, "robust_last_sd": robust_sd,
            "runs_last": [r["run"] for r in results]}


def assemble(entries: list, results: list[list[dict]], paper_rows: list[dict], tmax: dict | None = None,
             tolerance: dict | None = None, last: list[list[dict]] | None = None) -> list[dict]:
    """Rows of a table in the paper's order (accuracies in %).

    ``entries``/``results``: our rows (experiments.Entry) and, per row, the evaluation
    JSONs of its seeds (mean and standard deviation when there are several), of the
    weights compared with the paper; ``last``: where those are best.pt's, the same rows'
    last-epoch evaluations (``clean_last``, ``robust_last``; never compared).
    ``paper_rows``: config/paper_results.yaml's rows of this table. A paper row ``ours``
    takes the first unused entry it matches; ``reported`` rows are other papers' numbers
    (no run of ours); ``substitute`` is the T_max row, filled from ``tmax`` (the T_max
    search's result) when given. Entries no paper row matches (an ``auto`` row, say)
    follow at the end; a paper row of ours that nothing ran shows as "not run".
    ``tolerance`` (percentage points, keys clean/autoattack) sets ``beyond_tolerance``.
    """
    used: set[int] = set()
    rows: list[dict] = []

    def ours(i: int, paper: dict | None) -> dict:
        e, rs = entries[i], results[i]
        label = e.label
        if e.is_auto:
            chosen = sorted({fmt_num(Run.parse("students", r["run"]).temperature) for r in rs}, key=float)
            label += f" (chose {', '.join(chosen)})"
        clean, clean_sd = _mean_std([_pct(r["clean_accuracy"]) for r in rs])
        robust, robust_sd = _mean_std([_pct(r["robust_accuracy"]) for r in rs])
        p_clean, p_robust = (paper["clean"], paper["autoattack"]) if paper else (None, None)
        beside = {} if last is None else {"epoch": _epochs(rs), **_last(last[i])}
        return _row(label, "this run", clean, robust, p_clean, p_robust, **beside, run=rs[0]["run"],
                    runs=[r["run"] for r in rs], run_role="students", clean_sd=clean_sd, robust_sd=robust_sd,
                    seeds=len(rs), temperature=None if e.is_auto else e.temperature, beta=e.beta, auto=e.is_auto,
                    soft_label_mode=e.soft_label_mode, own_precision=e.precision, trains_in=e.trains_in, training=_training(rs))

    for p in paper_rows:
        if "reported" in p:
            rows.append(_row(p["model"], f"reported {p['reported']}", paper_clean=p["clean"],
                             paper_robust=p["autoattack"]))
        elif p.get("substitute"):
            if tmax is None or tmax["tmax"] is None:
                continue
            acc = _pct(next(s["clean_accuracy"] for s in tmax["substitutes"] if s["T"] == tmax["tmax"]))
            label = f"Substitute T={fmt_num(tmax['tmax'])} (T_max)"
            if tmax["tmax"] != p["temperature"]:
                label += f"; paper: T={fmt_num(p['temperature'])}"
            rows.append(_row(label, "this run", acc, None, p["clean"], None, run_role="substitutes",
                             temperature=tmax["tmax"]))
        else:
            i = next((i for i, e in enumerate(entries) if i not in used and not e.is_auto and e.matches(p["ours"])), None)
            if i is None:
                f = p["ours"]
                parts = [methods.METHODS[f["method"]].label if f.get("method") in methods.METHODS else "LTD",
                         arch_label(f.get("arch", ""))]
                parts += [f"{'T' if k == 'temperature' else 'β'}={fmt_num(v)}" for k, v in f.items()
                          if k in ("temperature", "beta")]
                rows.append(_row(" ".join(p for p in parts if p), "not run", paper_clean=p["clean"],
                                 paper_robust=p["autoattack"]))
                continue
            used.add(i)
            rows.append(ours(i, p))
    rows += [ours(i, None) for i in range(len(entries)) if i not in used]
    for r in rows:
        r["beyond_tolerance"] = bool(tolerance) and any(
            d is not None and abs(d) > tolerance[k] for d, k in ((r["d_clean"], "clean"), (r["d_robust"], "autoattack")))
    return rows


PAPER_COLUMNS = ["Clean (paper)", "AA (paper)", "Δ Clean", "Δ AA"]


def frame(rows: list[dict], paper: bool = True, columns: list[str] = ()) -> pd.DataFrame:
    """The table's cells; "±" columns only where some row has several seeds; no paper
    columns for a table the paper does not have; ``columns``: TRAINING_COLUMNS to add;
    the LAST columns where the rows carry a last epoch beside the compared one."""
    spread = any((r.get("seeds") or 1) > 1 for r in rows)
    last = any("clean_last" in r for r in rows)
    out = []
    for r in rows:
        cells = {"Row": r["label"] + (f" {MARK}" if r.get("beyond_tolerance") else ""), "Source": r["source"],
                 "Clean (ours)": r["clean"], "AA (ours)": r["robust"], "Clean (paper)": r["paper_clean"],
                 "AA (paper)": r["paper_robust"], "Δ Clean": r["d_clean"], "Δ AA": r["d_robust"]}
        training = r.get("training") or {}
        for c in columns:
            v = training.get(c)
            cells[TRAINING_COLUMNS[c]] = 100 * v if c in ("stalled", "adv_accuracy") and v is not None else v
        if last:
            cells.update({"Epoch (ours)": r.get("epoch"), "Clean (last)": r.get("clean_last"),
                          "AA (last)": r.get("robust_last")})
        if spread:
            cells.update({"± Clean": r.get("clean_sd"), "± AA": r.get("robust_sd"), "Seeds": r.get("seeds")})
            if last:
                cells.update({"± Clean (last)": r.get("clean_last_sd"), "± AA (last)": r.get("robust_last_sd")})
        out.append(cells)
    names = [c for c in COLUMNS if paper or c not in PAPER_COLUMNS]
    names = (names[:4] + (LAST if last else []) + [TRAINING_COLUMNS[c] for c in columns] + names[4:]
             + (SPREAD[:2] + (LAST_SPREAD if last else []) + SPREAD[2:] if spread else []))
    return pd.DataFrame(out, columns=names)


def render(df: pd.DataFrame, caption: str, stem: str | Path, formats: tuple[str, ...] = ("md", "tex", "csv")) -> None:
    """Write ``stem``.md, .tex and/or .csv (accuracies in %)."""
    stem = Path(stem)
    cells = df.astype(object).where(df.notna(), None)
    if "md" in formats:
        md = tabulate(cells.values.tolist(), headers=list(df.columns), tablefmt="github",
                      floatfmt=".2f", missingval="–")
        write_text(f"{caption}\n\n{md}\n", stem.with_suffix(".md"))
    if "tex" in formats:
        tex = tabulate(cells.values.tolist(), headers=list(df.columns), tablefmt="latex_booktabs",
                       floatfmt=".2f", missingval="--")
        write_text("\\begin{table}\n\\centering\n\\caption{" + _tex_escape(caption) + "}\n" + tex
                   + "\n\\end{table}\n", stem.with_suffix(".tex"))
    if "csv" in formats:
        write_text(df.to_csv(index=False, float_format="%.2f"), stem.with_suffix(".csv"))


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s
