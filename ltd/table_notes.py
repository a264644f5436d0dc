"""The notes under a table's caption: which images and attacks, how our rows were trained
(schedule, precision), which weights were evaluated and which images chose them, the
stalled columns, stand-ins, marks, seeds; and the caption they end. One place for every
sentence a rendered table says about itself (ltd.jobs.reporting renders it, ltd.tables lays
out its rows)."""

from __future__ import annotations

from . import experiments, fp16_emulation, methods, selection, sources, tables
from .attacks import STALLED_BELOW


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


def caption(caption: str, dataset: str, paper_dataset: str, notes: list[str], demo: bool = False,
            paper: bool = True) -> str:
    """A table's caption: its own text, the offline demo's warning where it stands in, then its notes.
    ``paper``: whether the table has paper columns (a table the paper lacks has none)."""
    text = caption
    if demo:
        text += f". OFFLINE DEMO: computed on the '{dataset}' data set, NOT on {paper_dataset}"
        if paper:
            text += f"; the paper columns are the paper's {paper_dataset} numbers, for reference only"
    return text + "".join(f". {n}" for n in notes) + "."
