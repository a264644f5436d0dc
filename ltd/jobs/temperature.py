"""rules/temperature.smk: teacher logits, soft labels, the T_max search (Sec. 4.2, step
1) and the choice of an `auto` temperature (step 2)."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint, data, evaluate, experiments, temperature
from ..experiments import Run
from ..files import load_json, save_json
from ..losses import soft_labels as softmax_t
from ..provenance import provenance
from .common import dataset, load_model, split_tensors


def teacher_logits(config: dict, teacher: Run, model_path: str | Path, out: str | Path,
                   device: torch.device, split: str = "train") -> None:
    """Teacher logits on the un-augmented images of a split, in split order (precomputed
    soft labels belong to the un-augmented image; crop/flip are applied to the input only)."""
    model = load_model(config, teacher, model_path, device)
    bs = experiments.schedule(config, "teachers", teacher.dataset)["eval_batch_size"]
    batches = data.eval_batches(dataset(config, teacher), config["data_dir"], split, device, bs)
    with torch.no_grad():
        logits = [model(x).float().cpu() for x, _ in batches]
    checkpoint.save(torch.cat(logits), out)


def soft_labels(logits_path: str | Path, temperature_: float, out: str | Path) -> None:
    checkpoint.save(softmax_t(checkpoint.load(logits_path), temperature_), out)


def validate_run(config: dict, run: Run, model_path: str | Path, teacher_path: str | Path, out: str | Path,
                 device: torch.device) -> dict:
    """The search criteria on the validation split: PGD accuracy and the Eq. 9 loss
    (soft labels at the run's own T)."""
    ev, tr = experiments.evaluation(config, run.dataset), experiments.attack(config, run.dataset, run.method)
    x, y = split_tensors(config, run.dataset, "val", device, ev["batch_size"])
    if len(y) == 0:
        raise ValueError(f"temperature 'auto' needs a validation split: set datasets.{run.dataset}.val_size > 0")
    model = load_model(config, run, model_path, device)
    teacher = load_model(config, run.teacher, teacher_path, device)
    q = softmax_t(evaluate.predict(teacher, x, ev["batch_size"]), run.temperature)
    result = {
        "run": run.name, "temperature": run.temperature, "n_val": len(y),
        "pgd_accuracy": evaluate.pgd_accuracy(model, x, y, eps=ev["eps"], step_size=ev["pgd_step_size"],
                                              steps=ev["pgd_steps"], batch_size=ev["batch_size"]),
        "eq9_loss": evaluate.eq9_loss(model, x, q, beta=run.beta, eps=tr["eps"], step_size=tr["step_size"],
                                      steps=tr["steps"], batch_size=ev["batch_size"]),
        "provenance": provenance(config, device, seed=run.seed, precision="fp32",
                                 settings={"evaluation": ev, "attack": tr}),
    }
    save_json(result, out)
    return result


def find_tmax(config: dict, dataset_name: str, substitute_metrics: list[str | Path], out: str | Path) -> dict:
    ts = experiments.search(config, dataset_name)
    subs = [(m["temperature"], m["clean_accuracy"]) for m in map(load_json, substitute_metrics)]
    result = {"dataset": dataset_name, "threshold": ts["threshold"],
              "substitutes": [{"T": t, "clean_accuracy": a} for t, a in subs],
              "tmax": temperature.find_tmax(subs, ts["threshold"]),
              "provenance": provenance(config, settings={"temperature_search": ts})}
    save_json(result, out)
    return result


def select_temperature(config: dict, group: str, tmax_path: str | Path, validations: list[str | Path],
                       out: str | Path) -> dict:
    dataset_name = experiments.search_candidates(config, group)[0].dataset
    criterion = experiments.search(config, dataset_name)["criterion"]
    tmax = load_json(tmax_path)["tmax"]
    vals = [load_json(p) for p in validations]
    chosen = temperature.choose([(v["temperature"], v[criterion]) for v in vals], tmax, criterion)
    result = {"temperature": chosen, "tmax": tmax, "criterion": criterion,
              "candidates": [{"T": v["temperature"], criterion: v[criterion]} for v in vals],
              "provenance": provenance(config, settings={"criterion": criterion})}
    save_json(result, out)
    return result


def resolve_auto(evaluation: str | Path, selection: str | Path, out: str | Path) -> None:
    """The chosen student's evaluation, with the search that chose it."""
    result = load_json(evaluation)
    result["selection"] = load_json(selection)
    save_json(result, out)
