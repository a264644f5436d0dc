"""Tables: the run's numbers beside the paper's, as Markdown, LaTeX (booktabs) and CSV.

Our columns hold only what this run computed; the paper's values come from
config/paper_results.yaml and are labelled as such.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tabulate import tabulate

from .checkpoint import write_text
from .experiments import METHOD_LABELS, Run, arch_label, fmt_num

COLUMNS = ["Row", "Source", "Clean (ours)", "AA (ours)", "Clean (paper)", "AA (paper)", "Δ Clean", "Δ AA"]


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def assemble(entries: list, results: list[dict], paper_rows: list[dict], tmax: dict | None = None) -> list[dict]:
    """Rows of a table in the paper's order (accuracies in %).

    ``entries``/``results``: our rows (experiments.Entry) and their evaluation JSONs.
    ``paper_rows``: config/paper_results.yaml's rows of this table. A paper row ``ours``
    takes the first unused entry it matches; ``reported`` rows are other papers' numbers
    (no run of ours); ``substitute`` is the T_max row, filled from ``tmax`` (the T_max
    search's result) when given. Entries no paper row matches (an ``auto`` row, say)
    follow at the end; a paper row of ours that nothing ran shows as "not run".
    """
    used: set[int] = set()
    rows: list[dict] = []

    def ours(i: int, paper: dict | None) -> dict:
        e, r = entries[i], results[i]
        label = e.label
        if e.is_auto:
            label += f" (chose {fmt_num(Run.parse('students', r['run']).temperature)})"
        clean, robust = _pct(r["clean_accuracy"]), _pct(r["robust_accuracy"])
        p_clean, p_robust = (paper["clean"], paper["autoattack"]) if paper else (None, None)
        return {"label": label, "source": "this run", "run": r["run"], "run_role": "students",
                "temperature": None if e.is_auto else e.temperature, "beta": e.beta, "auto": e.is_auto,
                "clean": clean, "robust": robust, "paper_clean": p_clean, "paper_robust": p_robust,
                "d_clean": _diff(clean, p_clean), "d_robust": _diff(robust, p_robust)}

    for p in paper_rows:
        if "reported" in p:
            rows.append({"label": p["model"], "source": f"reported {p['reported']}", "run": None,
                         "clean": None, "robust": None, "paper_clean": p["clean"], "paper_robust": p["autoattack"],
                         "d_clean": None, "d_robust": None})
        elif p.get("substitute"):
            if tmax is None or tmax["tmax"] is None:
                continue
            acc = _pct(next(s["clean_accuracy"] for s in tmax["substitutes"] if s["T"] == tmax["tmax"]))
            t = f"{tmax['tmax']:g}"
            label = f"Substitute T={t} (T_max)" + ("" if tmax["tmax"] == p["temperature"] else f"; paper: T={p['temperature']:g}")
            rows.append({"label": label, "source": "this run", "run": None, "run_role": "substitutes",
                         "temperature": tmax["tmax"], "clean": acc, "robust": None, "paper_clean": p["clean"],
                         "paper_robust": None, "d_clean": _diff(acc, p["clean"]), "d_robust": None})
        else:
            i = next((i for i, e in enumerate(entries) if i not in used and not e.is_auto and e.matches(p["ours"])), None)
            if i is None:
                f = p["ours"]
                parts = [METHOD_LABELS.get(f.get("method"), "LTD"), arch_label(f.get("arch", ""))]
                parts += [f"{'T' if k == 'temperature' else 'β'}={fmt_num(v)}" for k, v in f.items()
                          if k in ("temperature", "beta")]
                rows.append({"label": " ".join(p for p in parts if p), "source": "not run",
                             "run": None, "clean": None, "robust": None, "paper_clean": p["clean"],
                             "paper_robust": p["autoattack"], "d_clean": None, "d_robust": None})
                continue
            used.add(i)
            rows.append(ours(i, p))
    rows += [ours(i, None) for i in range(len(entries)) if i not in used]
    return rows


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"Row": r["label"], "Source": r["source"], "Clean (ours)": r["clean"],
                          "AA (ours)": r["robust"], "Clean (paper)": r["paper_clean"],
                          "AA (paper)": r["paper_robust"], "Δ Clean": r["d_clean"], "Δ AA": r["d_robust"]}
                         for r in rows], columns=COLUMNS)


def caption_for(caption: str, dataset: str, paper_dataset: str, notes: list[str], demo: bool = False) -> str:
    text = caption
    if demo:
        text += (f". OFFLINE DEMO: computed on the '{dataset}' data set, NOT on {paper_dataset}; the "
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
