"""rules/tables.smk: the tables beside the paper's numbers, their figures, the training
curves, the T_max figure and the evaluation report."""

from __future__ import annotations

from pathlib import Path

import yaml

from .. import diagnostics, experiments, figures, fp16_emulation, methods, selection, sources, tables
from ..attacks import STALLED_BELOW
from ..files import load_json, save_json
from ..provenance import provenance


def _fmt_attack(a: dict) -> str:
    return f"eps={a['eps']:.5f}, {a['steps']} steps of {a['step_size']:.5f}"


def training_attack_note(config: dict, entries: list) -> str | None:
    """Which training attack the table's rows used, per method family."""
    families: dict[str, list[str]] = {}
    for e in entries:
        run = experiments.entry_run(config, e, chosen_t=1.0)
        a = _fmt_attack(experiments.attack(config, run.dataset, run.method))
        label = methods.get(methods.get(e.method).base or e.method).label
        families.setdefault(a, [])
        if label not in families[a]:
            families[a].append(label)
    if not families:
        return None
    return "Training attack: " + "; ".join(f"{', '.join(labels)} rows {a}" for a, labels in families.items())


def _schedule_text(s: dict) -> str:
    ms = [str(m) for m in s["lr_milestones"] if m < s["epochs"]]
    decay = f" (x{s['lr_gamma']:g} after epoch{'s' if len(ms) > 1 else ''} {', '.join(ms)})" if ms else ""
    return (f"{s['epochs']} epochs, batch {s['batch_size']}, SGD lr {s['lr']:g}{decay}, momentum {s['momentum']:g}"
            f"{', Nesterov' if s['nesterov'] else ''}, weight decay {s['weight_decay']:g}")


def recipe_notes(rows: list[dict], loaded: list[dict], paper_rows: list[dict], entries: list) -> list[str]:
    """How our rows were trained (the schedule each evaluation's run recorded) and, for the
    paper's baseline rows, how the numbers beside them were obtained (paper_results.yaml)."""
    schedules: dict[str, list[str]] = {}
    for r in rows:
        if r.get("run_role") != "students":
            continue
        s = next((e.get("training") or {} for e in loaded if e["run"] == r["run"]), {}).get("schedule")
        if s:
            schedules.setdefault(_schedule_text(s), []).append(r["label"])
    notes = []
    baselines = any(not methods.get(e.method).uses_soft_labels for e in entries)
    ours = "Our rows, baselines included," if baselines else "Our rows"
    if len(schedules) == 1:
        notes.append(f"{ours} are trained with this config's schedule: {next(iter(schedules))}")
    elif schedules:
        notes.append("Our rows are trained with: " + "; ".join(f"{t} ({', '.join(ls)})" for t, ls in schedules.items()))
    methods_ran = {e.method for e in entries}
    for p in paper_rows:
        if p.get("recipe") and (p.get("ours") or {}).get("method") in methods_ran:
            notes.append(f"The paper's {methods.get(p['ours']['method']).label} row: {p['recipe']}")
    return notes


def weights_note(config: dict, dataset: str, weights: str) -> str:
    """Which weights our columns hold, which of them the paper's are compared with, and
    (best.pt) which images chose the epoch."""
    if weights == "last":
        return "Evaluated: each run's last epoch (model.pt), compared with the paper's"
    return ("Ours (compared with the paper's, Δ): each run's epoch with the best monitored PGD accuracy (best.pt, "
            "at \"Epoch (ours)\"), as the authors evaluated a best checkpoint (their criterion is unstated; this one "
            f"is our reading: README, \"Comparable rows\"), {selection.note(config, dataset)}. (last): the same runs' last epoch "
            "(model.pt), evaluated alike and not compared: where it is below ours, the robust accuracy peaked "
            "before the end of training (robust overfitting)")


def precision_note(rows: list[dict]) -> str | None:
    """The precision our rows trained in (as their epochs recorded it)."""
    by: dict[str, list[str]] = {}
    for r in rows:
        p = (r.get("training") or {}).get("precision")
        if p:
            by.setdefault(p, []).append(r["label"])
    if not by:
        return None
    amp = {"fp16": "fp16 (autocast + loss scaler)", "bf16": "bf16 (autocast)", "fp32": "fp32",
           fp16_emulation.PRECISION: f"{fp16_emulation.LABEL}, with a loss scaler"}
    if len(by) == 1:
        return f"Training precision: {amp.get(next(iter(by)), next(iter(by)))}"
    return "Training precision: " + "; ".join(f"{amp.get(p, p)}: {', '.join(ls)}" for p, ls in by.items())


def table_notes(config: dict, table: str, entries: list, rows: list[dict], loaded: list[dict], paper: dict | None,
                tmax: dict | None) -> list[str]:
    """The notes under a table's caption: the T_max search, the evaluation, the images,
    the training attacks, recipes and precisions, the evaluated weights, the stalled
    columns, the stand-ins, the marks, the seeds."""
    spec, n_seeds = config["tables"][table], len(experiments.seeds(config))
    dataset = experiments.table_dataset(config, table)
    notes = []
    if tmax is not None:
        subs = ", ".join(f"T={experiments.fmt_num(s['T'])}: {100 * s['clean_accuracy']:.2f} %"
                         for s in tmax["substitutes"])
        found = "none below it" if tmax["tmax"] is None else f"T_max = {experiments.fmt_num(tmax['tmax'])}"
        notes.append(f"T_max search: substitutes {subs}; threshold {100 * tmax['threshold']:.1f} %, {found}")
    aa = loaded[0]["autoattack"]
    precision = "/".join(sorted({r["precision"] for r in loaded}))  # as each evaluation recorded it
    notes.append(f"AutoAttack {aa['version']} ({', '.join(aa['attacks'])}), Linf eps={aa['eps']:.5f}, "
                 f"{aa['n_examples']} test images, {precision}")
    notes.append(sources.describe_note(experiments.dataset_cfg(config, dataset)))  # which images: the source
    attack_note = training_attack_note(config, entries)
    if attack_note:
        notes.append(attack_note)
    notes += recipe_notes(rows, loaded, paper["rows"] if paper else [], entries)
    precision = precision_note(rows)
    if precision:
        notes.append(precision)
    notes.append(weights_note(config, dataset, experiments.table_weights(config, table)))
    if {"stalled", "adv_accuracy"} & set(spec.get("columns") or []):
        notes.append(f"Stalled: the fraction of the evaluated epoch's training attacks that moved fewer than "
                     f"{100 * STALLED_BELOW:.0f} % of their pixels from the random start (input gradient exactly "
                     "zero at every step on most pixels, as fp16 underflow gives; a working fp32 attack moves nearly "
                     "all); x' acc.: training accuracy on those x'")
    stand_ins = [f"{new} for {old}" for kind in ("datasets", "archs")
                 for old, new in (config.get("stand_ins") or {}).get(kind, {}).items()
                 if old in {spec["dataset"], *(e.arch for e in entries)}
                 and not (kind == "datasets" and new != dataset)]
    if dataset != experiments.stand_in(config, "datasets", spec["dataset"]):  # this table's own stand-in
        stand_ins.insert(0, f"{dataset} for {spec['dataset']}")
    if stand_ins:
        notes.append("Stand-ins: " + ", ".join(stand_ins))
    if any(r["beyond_tolerance"] for r in rows):
        tol = config["tolerance"]
        notes.append(f"{tables.MARK}: differs from the paper by more than {tol['clean']:g} (clean) or "
                     f"{tol['autoattack']:g} (AutoAttack) percentage points")
    if n_seeds > 1:
        notes.append(f"Ours: mean over {n_seeds} seeds, ± the sample standard deviation")
    if paper is None:
        notes.append("Not a table of the paper: no paper columns")
    return notes


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
    notes = table_notes(config, table, entries, rows, loaded, paper, tmax)
    # the data set as the paper writes it (CIFAR-10), from any paper table on the same data set
    paper_dataset = (paper or next((all_paper[t] for t, other in config["tables"].items()
                                    if t in all_paper and other and other["dataset"] == spec["dataset"]),
                                   {"dataset": spec["dataset"]}))["dataset"]
    caption = tables.caption_for(spec["caption"], dataset, paper_dataset, notes, demo=dataset != spec["dataset"],
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
