"""rules/evaluate.smk: a model's clean, PGD and AutoAttack accuracy with its
gradient-masking diagnostics (students here; published checkpoints through the same
``evaluate_model``). A student's evaluation also carries what its training recorded
(``training``: precision, stalled attacks, accuracy on x', which epoch's weights), so the
report can tell a model masked at evaluation from one whose training attack stalled.
Event files for TensorBoard go to ``tensorboard/<evaluation>`` beside the output."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import data, diagnostics, evaluate, runtime, tables
from ..autoattack import run_autoattack
from ..board import Board
from ..files import load_json, save_json
from ..jobspec import Evaluation
from ..provenance import provenance
from .common import load_model, split_tensors

# What of a run's schedule the tables state as its recipe.
RECIPE_KEYS = ("epochs", "batch_size", "lr", "lr_milestones", "lr_gamma", "momentum", "weight_decay", "nesterov",
               "precision")


def training_summary(metrics: dict, weights: str) -> dict:
    """What a student's training recorded, for its evaluation: the precision(s) its epochs
    ran in, its schedule, the evaluated epoch (``weights``: last, or best.pt's, with the
    monitor that chose it) and that epoch's training-attack numbers (stalled fraction, mean
    moved-pixel fraction, accuracy on x', KL term)."""
    history = metrics["history"]
    epoch = history[-1]["epoch"] if weights == "last" else metrics["best"]["epoch"]
    h = next(r for r in history if r["epoch"] == epoch)
    return {"weights": weights, "epoch": epoch, "epochs": metrics["epochs"],
            # the monitor that chose best.pt (its images: ltd.selection); None for the last epoch
            "chosen_by": (metrics.get("best") or {}).get("monitor") if weights == "best" else None,
            "precisions": sorted({r["precision"] for r in history if r.get("precision")}),
            "schedule": {k: metrics["schedule"][k] for k in RECIPE_KEYS if k in metrics["schedule"]},
            "stalled": h.get("train_stalled"), "moved": h.get("train_moved"), "adv_accuracy": h.get("train_adv_accuracy"),
            "robust": h.get("train_robust"), "skipped_steps": sum(r.get("train_skipped_steps", 0) for r in history)}


def evaluate_run(spec: Evaluation, model_path: str | Path, out: str | Path, *, state_path: str | Path,
                 device: torch.device, metrics_path: str | Path | None = None, weights: str = "last") -> dict:
    """Clean accuracy, PGD, AutoAttack and the gradient-masking diagnostics on the first
    ``n_examples`` test images, of the student's ``weights`` at ``model_path``;
    ``metrics_path``: its metrics.json (its training numbers go into the result and the
    diagnostics)."""
    model = load_model(spec.model, model_path, device)
    training = training_summary(load_json(metrics_path), weights) if metrics_path else None
    return evaluate_model(spec, model, out, state_path=state_path, device=device, model_path=model_path,
                          training=training)


def evaluate_model(spec: Evaluation, model: torch.nn.Module, out: str | Path, *, state_path: str | Path,
                   device: torch.device, model_path: str | Path | None = None, extra: dict | None = None,
                   training: dict | None = None) -> dict:
    """The evaluation of any model (our students, published checkpoints) as ``spec`` says:
    writes ``out`` (JSON) and its one-row report beside it (``report_stem``). AutoAttack
    and the diagnostics' Square/APGD-CE runs resume from their state files. ``training``:
    ``training_summary`` of the model."""
    t_start = time.time()
    ev = spec.settings
    state_path = Path(state_path)
    stem = state_path.with_suffix("")
    stale = [state_path, *diagnostics.state_files(stem)]
    if model_path is not None:
        for f in stale:
            if f.exists() and f.stat().st_mtime < Path(model_path).stat().st_mtime:
                f.unlink()  # left by an evaluation of an older model: never resume from it
    model = evaluate.evaluation_model(model.to(device), channels_last=ev["channels_last"],
                                      compile=ev["compile"])
    runtime.allow_tf32(device, ev["precision"])  # recorded as the result's precision
    bs = ev["batch_size"]
    x, y = split_tensors(spec.data, "test", device, bs, n=ev.get("n_examples"))
    result = {"run": spec.model.name, "dataset": spec.data.name, "n_examples": len(y), "eps": ev["eps"], "norm": "Linf",
              "precision": runtime.tf32_mode(device), "precision_setting": ev["precision"],
              "layout": evaluate.layout(model), **(extra or {}),
              **({"training": training} if training else {}),
              "clean_accuracy": evaluate.clean_accuracy(model, x, y, bs)}
    t0 = time.time()
    result["pgd"] = {"steps": ev["pgd_steps"], "step_size": ev["pgd_step_size"], "eps": ev["eps"],
                     "accuracy": evaluate.pgd_accuracy(model, x, y, eps=ev["eps"],
                                                       step_size=ev["pgd_step_size"], steps=ev["pgd_steps"],
                                                       batch_size=bs, seed=ev["seed"]), "seconds": time.time() - t0}
    aa = ev["autoattack"]
    record, flags = run_autoattack(
        model, x, y, eps=ev["eps"], version=aa["version"], attacks=aa.get("attacks") or None,
        square_queries=aa.get("square_queries"), batch_size=bs, seed=ev["seed"], state_path=state_path,
        device=device)
    result["autoattack"] = record
    result["robust_accuracy"] = record["robust_accuracy"]
    result["precision"] = record["precision"]
    result["diagnostics"] = diagnostics.run(
        model, x, y, clean=result["clean_accuracy"], robust=result["robust_accuracy"],
        pgd=result["pgd"]["accuracy"], eps=ev["eps"], seed=ev["seed"], batch_size=bs, device=device,
        cfg=ev["diagnostics"], state_stem=stem,
        apgd_ce_flags=flags["apgd-ce"] if record["attacks"][0] == "apgd-ce" else None, training=training)
    result["report"] = diagnostics.report_row(result)
    result["provenance"] = provenance(spec.machine.results, device, gpus=int(device.type == "cuda"),
                                      wall_seconds=time.time() - t_start, seed=ev["seed"],
                                      precision=record["precision"], settings=spec.identity,
                                      splits=data.describe(spec.data, ("test",)))
    save_json(result, out)
    tables.render(diagnostics.report_frame([result]), "", report_stem(out), formats=("csv",))
    _board(result, Path(out))
    for f in stale:
        f.unlink(missing_ok=True)
    return result


def report_stem(out: str | Path) -> Path:
    """The one-row CSV report beside an evaluation: evaluation_report(.csv) for
    autoattack.json, evaluation_report_best for autoattack_best.json."""
    out = Path(out)
    return out.with_name("evaluation_report" + out.stem.removeprefix("autoattack"))


def _board(result: dict, out: Path) -> None:
    """The evaluation's numbers as TensorBoard scalars (``tensorboard/<out stem>``): at
    step 1 the accuracies, at step k the robust accuracy after AutoAttack's k-th attack."""
    with Board(out.parent / "tensorboard" / out.stem, purge_step=0) as board:
        aa = result["autoattack"]
        board.scalars("evaluation", {"clean_accuracy": result["clean_accuracy"],
                                     "pgd_accuracy": result["pgd"]["accuracy"],
                                     "autoattack_accuracy": result["robust_accuracy"]}, 1)
        for k, attack in enumerate(aa["attacks"], start=1):
            board.scalars("evaluation", {"robust_accuracy_after_attack": aa["robust_accuracy_after"].get(attack)}, k)
        board.text("evaluation/diagnostics", result["diagnostics"]["summary"], 1)
