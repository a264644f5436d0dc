"""rules/evaluate.smk: a model's clean, PGD and AutoAttack accuracy with its
gradient-masking diagnostics (students here; published checkpoints through the same
``evaluate_model``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import data, diagnostics, evaluate, experiments, runtime, tables
from ..autoattack import run_autoattack
from ..experiments import Run
from ..files import save_json
from ..provenance import provenance
from .common import load_model, split_tensors


def evaluate_run(config: dict, run: Run, model_path: str | Path, out: str | Path, *, state_path: str | Path,
                 device: torch.device) -> dict:
    """Clean accuracy, PGD, AutoAttack and the gradient-masking diagnostics on the first
    ``n_examples`` test images."""
    model = load_model(config, run, model_path, device)
    return evaluate_model(config, run.dataset, run.name, model, out, state_path=state_path, device=device,
                          model_path=model_path)


def evaluate_model(config: dict, dataset: str, name: str, model: torch.nn.Module, out: str | Path, *,
                   state_path: str | Path, device: torch.device, model_path: str | Path | None = None,
                   extra: dict | None = None) -> dict:
    """The evaluation of any model (our students, published checkpoints) on a data set of
    the config: writes ``out`` (JSON) and ``evaluation_report.csv`` beside it. AutoAttack
    and the diagnostics' Square/APGD-CE runs resume from their state files."""
    t_start = time.time()
    ev = experiments.evaluation(config, dataset)
    state_path = Path(state_path)
    stem = state_path.with_suffix("")
    stale = [state_path, *diagnostics.state_files(stem)]
    if model_path is not None:
        for f in stale:
            if f.exists() and f.stat().st_mtime < Path(model_path).stat().st_mtime:
                f.unlink()  # left by an evaluation of an older model: never resume from it
    model = evaluate.evaluation_model(model.to(device), channels_last=ev.get("channels_last", False),
                                      compile=ev.get("compile", False))
    runtime.allow_tf32(device, ev["precision"])  # recorded as the result's precision
    bs = ev["batch_size"]
    x, y = split_tensors(config, dataset, "test", device, bs, n=ev.get("n_examples"))
    result = {"run": name, "dataset": dataset, "n_examples": len(y), "eps": ev["eps"], "norm": "Linf",
              "precision": evaluate.numeric_precision(device), "precision_setting": ev["precision"],
              "layout": evaluate.layout(model), **(extra or {}),
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
        apgd_ce_flags=flags["apgd-ce"] if record["attacks"][0] == "apgd-ce" else None)
    result["report"] = diagnostics.report_row(result)
    result["provenance"] = provenance(config, device, gpus=int(device.type == "cuda"),
                                      wall_seconds=time.time() - t_start, seed=ev["seed"],
                                      precision=record["precision"],
                                      settings=experiments.evaluation_identity(config, dataset),
                                      splits=data.describe(experiments.dataset_cfg(config, dataset),
                                                           config["data_dir"], ("test",)))
    save_json(result, out)
    tables.render(diagnostics.report_frame([result]), "", Path(out).with_name("evaluation_report"), formats=("csv",))
    for f in stale:
        f.unlink(missing_ok=True)
    return result
