"""rules/tables.smk: the tables beside the paper's numbers, their figures, the training
curves, the T_max figure and the evaluation report."""

from __future__ import annotations

from pathlib import Path

import yaml

from .. import diagnostics, experiments, figures, table_notes, tables
from ..files import load_json, save_json
from ..provenance import provenance


def render_table(config: dict, table: str, evals: list[str | Path], tmax_path: str | Path | None,
                 paper_path: str | Path, stem: str | Path, last: list[str | Path] = ()) -> None:
    """A table as Markdown, LaTeX, CSV, and JSON (rows with their runs, for the figures).
    ``evals``: the evaluations compared with the paper (each row's seeds together);
    ``last``: where those are best.pt's, the same rows' last-epoch evaluations."""
    spec = config["tables"][table]
    # A table the paper does not have (a user's own): our columns only.
    all_paper = yaml.safe_load(Path(paper_path).read_text())
    paper = all_paper.get(table)
    entries, n_seeds = experiments.table_entries(config, table), len(experiments.seeds(config))
    shown = experiments.shown_weights(config, table)
    needed = [("evaluations", evals)] + ([("last-epoch evaluations", last)] if len(shown) > 1 else [])
    for what, paths in needed:  # a table of `last` weights has no second set
        if len(entries) * n_seeds != len(paths):
            raise ValueError(f"{table} has {len(entries)} rows x {n_seeds} seeds but {len(paths)} {what} were given")

    def by_row(paths):
        loaded = [load_json(p) for p in paths]
        return loaded, [loaded[i * n_seeds:(i + 1) * n_seeds] for i in range(len(entries))]  # each row's seeds

    loaded, results = by_row(evals)
    last_results = by_row(last)[1] if len(shown) > 1 else None
    tmax = load_json(tmax_path) if tmax_path else None
    rows = tables.assemble(entries, results, paper["rows"] if paper else [],
                           tmax if spec.get("tmax_row") else None, tolerance=config["tolerance"], last=last_results)
    dataset = experiments.table_dataset(config, table)
    notes = table_notes.table_notes(config, table, entries, rows, loaded, paper, tmax)
    # the data set as the paper writes it (CIFAR-10), from any paper table on the same data set
    paper_dataset = (paper or next((all_paper[t] for t, other in config["tables"].items()
                                    if t in all_paper and other and other["dataset"] == spec["dataset"]),
                                   {"dataset": spec["dataset"]}))["dataset"]
    caption = table_notes.caption(spec["caption"], dataset, paper_dataset, notes, demo=dataset != spec["dataset"],
                                 paper=paper is not None)
    tables.render(tables.frame(rows, paper=paper is not None, columns=spec.get("columns") or []), caption, stem)
    save_json({"provenance": provenance(config["run"], settings={"table": spec, "tolerance": config["tolerance"]},
                                        evaluations=[str(p) for p in (*evals, *last)]),
               "table": table, "caption": caption, "dataset": dataset, "paper_dataset": paper_dataset,
               "weights": shown,  # the compared weights first; rows' clean_last/robust_last hold the last epoch's
               "tmax": None if tmax is None else tmax["tmax"], "rows": rows},
              Path(stem).with_suffix(".json"))


def render_figure(table_json: str | Path, kind: str, stem: str | Path) -> None:
    """Accuracy against the teacher temperature or against beta, ours beside the paper's."""
    t = load_json(table_json)
    ours = [r for r in t["rows"] if r["source"] == "this run" and r.get("run_role") == "students"
            and not r.get("auto")]
    if kind == "temperature":
        points = [r for r in ours if r["temperature"] is not None]
        baseline = next((r for r in ours if r["temperature"] is None), None)
    else:
        points, baseline = ours, None

    def pts(rows, clean, robust):
        return sorted(({"x": r[kind], "clean": r[clean], "robust": r[robust]} for r in rows
                       if r[clean] is not None), key=lambda p: p["x"])

    # Rows made otherwise than the data set's default (soft labels on the fly, another
    # precision) form their own curve where several vary T or beta alike, else points
    # beside the curve: each curve varies T or beta alone.
    groups: dict[tuple, list[dict]] = {}
    for r in points:
        groups.setdefault((r.get("soft_label_mode"), r.get("own_precision")), []).append(r)
    main = (None, None) if (None, None) in groups else next(iter(groups), (None, None))
    variants, apart = [], []
    for key, rows in groups.items():
        if key == main:
            continue
        made = ", ".join(p for p in (key[0] and key[0].replace("_", " "), key[1]) if p)
        if len(rows) > 1:
            variants.append({"label": made, "points": pts(rows, "clean", "robust")})
        else:
            apart += [{"x": r[kind], "clean": r["clean"], "robust": r["robust"], "label": r["label"]}
                      for r in rows if r["clean"] is not None]
    points = groups.get(main, [])
    name = "this run"
    if any(k[1] for k in groups) and points and points[0].get("trains_in"):  # precisions differ: name the main one's
        name += f", {points[0]['trains_in']}"
    paper = [r for r in points if r["paper_clean"] is not None and r["paper_robust"] is not None]
    figures.accuracy_against(
        kind, pts(points, "clean", "robust"), pts(paper, "paper_clean", "paper_robust"),
        None if baseline is None else {"clean": baseline["clean"], "robust": baseline["robust"],
                                       "label": baseline["label"]},
        t["tmax"] if kind == "temperature" else None,
        f"{t['table']}: accuracy against {'teacher temperature T' if kind == 'temperature' else 'β'} ({t['dataset']})",
        stem, paper_dataset=t["paper_dataset"], apart=apart, variants=variants, name=name)


def render_tmax_figure(tmax_path: str | Path, stem: str | Path) -> None:
    t = load_json(tmax_path)
    figures.substitutes_vs_temperature(t["substitutes"], t["threshold"], t["tmax"],
                                       f"T_max search on {t['dataset']}: substitutes' clean accuracy", stem)


def render_curves(table: str, metrics_paths: list[str | Path], stem: str | Path) -> None:
    """Training curves of a table's students, from each run's own history."""
    runs = [load_json(p) for p in metrics_paths]
    figures.training_curves({m["run"]: m["history"] for m in runs}, f"{table}: training curves", stem)


def render_evaluation_report(evaluations: list[str | Path], stem: str | Path) -> None:
    """All evaluations side by side with their gradient-masking diagnostics (Markdown, CSV)."""
    df = diagnostics.report_frame([load_json(p) for p in evaluations])
    tables.render(df, "Evaluations and gradient-masking diagnostics (accuracies in %).", stem, formats=("md", "csv"))
