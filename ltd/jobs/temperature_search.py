"""rules/temperature.smk: teacher logits, soft labels, the T_max search (Sec. 4.2, step
1) and the choice of an `auto` temperature (step 2)."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint, data, diagnostics, evaluate, temperature
from ..autoattack import run_autoattack
from ..files import load_json, save_json
from ..jobspec import Logits, Search, Validation
from ..losses import tempered_softmax
from ..provenance import provenance
from .common import load_model, split_tensors


def teacher_logits(spec: Logits, model_path: str | Path, out: str | Path, device: torch.device,
                   split: str = "train") -> None:
    """Teacher logits on the un-augmented images of a split, in split order (precomputed
    soft labels belong to the un-augmented image; crop/flip are applied to the input only)."""
    model = load_model(spec.teacher, model_path, device)
    batches = data.eval_batches(spec.teacher.data, split, device, spec.batch_size)
    with torch.no_grad():
        logits = [model(x).float().cpu() for x, _ in batches]
    checkpoint.save(torch.cat(logits), out)


def write_soft_labels(logits_path: str | Path, temperature: float, out: str | Path) -> None:
    """q_T of every training image, from the teacher's logits: the precomputed soft labels."""
    checkpoint.save(tempered_softmax(checkpoint.load(logits_path), temperature), out)


def validate_model(spec: Validation, model: torch.nn.Module, teacher: torch.nn.Module, device: torch.device,
                   state_stem: str | Path | None = None) -> dict:
    """An `auto` candidate on the validation split: clean, PGD and AutoAttack accuracy
    (``temperature_search.attacks``), the Eq. 9 objective with its KL natural term (soft
    labels at the run's own T), and the gradient-masking diagnostics whose flags drop a
    candidate from the search (ltd.temperature)."""
    run, ev, tr, bs = spec.run, spec.settings, spec.attack, spec.settings["batch_size"]
    x, y = split_tensors(spec.data, "val", device, bs)
    if len(y) == 0:
        raise ValueError(f"temperature 'auto' needs a validation split: set datasets.{run.dataset}.val_size > 0")
    model, teacher = model.to(device).eval(), teacher.to(device).eval()
    q = tempered_softmax(evaluate.predict(teacher, x, bs), run.temperature)
    clean = evaluate.clean_accuracy(model, x, y, bs)
    pgd = evaluate.pgd_accuracy(model, x, y, eps=ev["eps"], step_size=ev["pgd_step_size"], steps=ev["pgd_steps"],
                                batch_size=bs, seed=ev["seed"])
    state = None if state_stem is None else Path(f"{state_stem}_autoattack.json")
    record, flags = run_autoattack(model, x, y, eps=ev["eps"], version="custom", attacks=spec.search_attacks,
                                   batch_size=bs, seed=ev["seed"], state_path=state, device=device)
    masking = diagnostics.run(model, x, y, clean=clean, robust=record["robust_accuracy"], pgd=pgd, eps=ev["eps"],
                              seed=ev["seed"], batch_size=bs, device=device, cfg=ev["diagnostics"],
                              state_stem=state_stem, apgd_ce_flags=flags.get("apgd-ce"))
    return {
        "run": run.name, "temperature": run.temperature, "n_val": len(y), "clean_accuracy": clean,
        "pgd_accuracy": pgd, "robust_accuracy": record["robust_accuracy"], "autoattack": record,
        "eq9_kl": evaluate.eq9_kl(model, x, q, beta=run.beta, eps=tr["eps"], step_size=tr["step_size"],
                                  steps=tr["steps"], batch_size=bs, seed=ev["seed"]),
        "diagnostics": masking, "flags": masking["flags"],
    }


def validate_run(spec: Validation, model_path: str | Path, teacher_path: str | Path, out: str | Path,
                 device: torch.device) -> dict:
    """``validate_model`` on a trained candidate; its AutoAttack runs resume from state
    files beside ``out``."""
    stem = Path(out).with_suffix("")
    result = validate_model(spec, load_model(spec.model, model_path, device),
                            load_model(spec.teacher, teacher_path, device), device, state_stem=stem)
    result["provenance"] = provenance(spec.machine.results, device, seed=spec.run.seed,
                                      precision=result["autoattack"]["precision"], settings=spec.identity,
                                      splits=data.describe(spec.data, ("val",)))
    save_json(result, out)
    for f in Path(out).parent.glob(f"{stem.name}_*.json"):
        f.unlink()  # the state files, once the result is written
    return result


def find_tmax(spec: Search, substitute_metrics: list[str | Path], out: str | Path) -> dict:
    """Step 1: T_max, the lowest substitute temperature whose clean accuracy falls below the threshold."""
    ts = spec.settings
    subs = [(m["temperature"], m["clean_accuracy"]) for m in map(load_json, substitute_metrics)]
    result = {"dataset": spec.dataset, "threshold": ts["threshold"],
              "substitutes": [{"T": t, "clean_accuracy": a} for t, a in subs],
              "tmax": temperature.find_tmax(subs, ts["threshold"]),
              "provenance": provenance(spec.machine.results, settings={"temperature_search": ts})}
    save_json(result, out)
    return result


def select_temperature(spec: Search, tmax_path: str | Path, validations: list[str | Path], out: str | Path) -> dict:
    """Step 2: the chosen T and every candidate's verdict (kept, or dropped and why)."""
    ts = spec.settings
    tmax = load_json(tmax_path)["tmax"]
    vals = [load_json(p) for p in validations]
    chosen, decisions = temperature.choose(vals, tmax, ts["criterion"])
    for d, v in zip(decisions, sorted(vals, key=lambda v: v["temperature"])):
        d.update({k: v[k] for k in ("clean_accuracy", "pgd_accuracy", "robust_accuracy", "eq9_kl")})
    result = {"temperature": chosen, "tmax": tmax, "criterion": ts["criterion"], "attacks": ts["attacks"],
              "candidates": decisions,
              "provenance": provenance(spec.machine.results, settings={"temperature_search": ts})}
    save_json(result, out)
    return result


def resolve_auto(evaluation: str | Path, selection: str | Path, out: str | Path) -> None:
    """The chosen student's evaluation, with the search that chose it."""
    result = load_json(evaluation)
    result["selection"] = load_json(selection)
    save_json(result, out)
