"""Tables: the run's numbers beside the paper's, as Markdown, LaTeX (booktabs) and CSV.

Our columns hold only what this run computed; the paper's values come from
config/paper_results.yaml and are labelled as such.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tabulate import tabulate

from .checkpoint import write_text

COLUMNS = ["Row", "Clean (ours)", "AA (ours)", "Clean (paper)", "AA (paper)", "Δ Clean", "Δ AA"]


def build(rows: list[dict], paper: dict[str, list]) -> pd.DataFrame:
    """``rows``: dicts with label, clean, robust (fractions; robust may be None).
    ``paper``: label -> [clean %, AA %] (either may be None)."""
    out = []
    for r in rows:
        clean = 100 * r["clean"]
        robust = None if r.get("robust") is None else 100 * r["robust"]
        p_clean, p_robust = paper.get(r.get("paper_label", r["label"]), [None, None])
        out.append({
            "Row": r["label"],
            "Clean (ours)": clean,
            "AA (ours)": robust,
            "Clean (paper)": p_clean,
            "AA (paper)": p_robust,
            "Δ Clean": None if p_clean is None else clean - p_clean,
            "Δ AA": None if p_robust is None or robust is None else robust - p_robust,
        })
    return pd.DataFrame(out, columns=COLUMNS)


def caption_for(caption: str, dataset: str, paper_dataset: str, notes: list[str]) -> str:
    text = caption
    if dataset != paper_dataset:
        text += (f". Computed on the '{dataset}' data set, NOT on {paper_dataset}: the "
                 f"paper columns are the paper's {paper_dataset} numbers, for reference only")
    return text + "".join(f". {n}" for n in notes) + "."


def render(df: pd.DataFrame, caption: str, stem: str | Path) -> None:
    """Write ``stem``.md, .tex and .csv (accuracies in %)."""
    stem = Path(stem)
    cells = df.astype(object).where(df.notna(), None)
    md = tabulate(cells.values.tolist(), headers=list(df.columns), tablefmt="github",
                  floatfmt=".2f", missingval="–")
    write_text(f"{caption}\n\n{md}\n", stem.with_suffix(".md"))
    tex = tabulate(cells.values.tolist(), headers=list(df.columns), tablefmt="latex_booktabs",
                   floatfmt=".2f", missingval="--")
    write_text("\\begin{table}\n\\centering\n\\caption{" + _tex_escape(caption) + "}\n" + tex
               + "\n\\end{table}\n", stem.with_suffix(".tex"))
    write_text(df.to_csv(index=False, float_format="%.2f"), stem.with_suffix(".csv"))


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s
