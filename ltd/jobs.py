"""One function per workflow job: config + file paths in, files out.

The workflow scripts only unpack Snakemake's objects and call these, so the demo, the
tests and a 120-epoch GPU run go through the same code; only the config differs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, data, evaluate, experiments, runtime, temperature
from .experiments import Run
from .losses import soft_labels as softmax_t
from .methods import build_step
from .models import build_model, count_parameters
from .train import fit


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance(config: dict, device: torch.device, **extra: Any) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip() or None
    except OSError:
        commit = None
    return {"git_commit": commit, "run": config["run"], "finished": _dt.datetime.now().isoformat(timespec="seconds"),
            **runtime.describe(device), **extra}


def _model(config: dict, run: Run) -> torch.nn.Module:
    return build_model(run.arch, data.NUM_CLASSES[run.dataset])


def load_model(config: dict, run: Run, path: str | Path, device: torch.device) -> torch.nn.Module:
    model = _model(config, run)
    model.load_state_dict(checkpoint.load(path, map_location="cpu"))
    return model.to(device).eval()


def prepare_data(config: dict, out: str | Path) -> None:
    """Fetch (CIFAR: download once, before any parallel job) and record the splits."""
    checkpoint.save_json(data.describe(config["dataset"], config["data_dir"]), out)


def train_run(config: dict, run: Run, *, out_dir: str | Path, soft_labels: str | Path | None = None,
              device: torch.device) -> dict:
    """Train a teacher, substitute or student; writes model.pt (a plain state dict, the
    RobustBench layout), metrics.json and history.jsonl into ``out_dir``. Resumes from
    ``out_dir/checkpoint.pt`` if a previous attempt left one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sched = experiments.schedule(config, run.role)
    train = data.load_split(config["dataset"], config["data_dir"], "train").to(device)
    test = data.load_split(config["dataset"], config["data_dir"], "test").to(device)
    q = None
    if run.uses_soft_labels:
        if soft_labels is None:
            raise ValueError(f"{run.name} trains on soft labels but none were given")
        q = checkpoint.load(soft_labels, map_location=device)
    trades = {**config["trades"], **({"beta": run.beta} if run.beta is not None else {})}
    step = build_step(run.method, trades)
    loader = data.DeviceLoader(train, sched["batch_size"], soft_labels=q,
                               crop_padding=config["dataset"].get("crop_padding", 0), seed=run.seed)
    torch.manual_seed(run.seed)  # weight init and the attack's random start; resume restores the RNG
    model = _model(config, run)
    fp = fingerprint({"run": run.name, "schedule": sched, "trades": trades if run.role == "students" else None,
                      "dataset": config["dataset"], "n_train": len(train)})

    def eval_clean(m: torch.nn.Module) -> dict:
        return {"test_accuracy": evaluate.clean_accuracy(m, test.x, test.y, sched["eval_batch_size"])}

    t0 = time.time()
    ckpt = out_dir / "checkpoint.pt"
    history = fit(model, step, loader, sched, ckpt_path=ckpt, device=device, fingerprint=fp,
                  evaluate=eval_clean, log_path=out_dir / "history.jsonl", desc=run.name)
    checkpoint.save(model.state_dict(), out_dir / "model.pt")
    metrics = {
        "run": run.name, "role": run.role, "method": run.method, "temperature": run.temperature,
        "beta": run.beta, "arch": run.arch, "parameters": count_parameters(model),
        "clean_accuracy": history[-1]["test_accuracy"], "n_test": len(test), "epochs": len(history),
        "schedule": sched, "trades": trades if run.role == "students" else None,
        "precision": runtime.effective_precision(device, sched["precision"]),
        "train_seconds_this_attempt": time.time() - t0,
        "provenance": provenance(config, device),
    }
    checkpoint.save_json(metrics, out_dir / "metrics.json")
    ckpt.unlink(missing_ok=True)  # the job is complete; model.pt is what later rules read
    return metrics


def teacher_logits(config: dict, teacher: Run, model_path: str | Path, out: str | Path,
                   device: torch.device, split: str = "train") -> None:
    """Teacher logits on the un-augmented images of a split (precomputed soft labels
    belong to the un-augmented image; crop/flip are applied to the input only)."""
    model = load_model(config, teacher, model_path, device)
    s = data.load_split(config["dataset"], config["data_dir"], split).to(device)
    bs = experiments.schedule(config, "teachers")["eval_batch_size"]
    checkpoint.save(evaluate.predict(model, s.x, bs).cpu(), out)


def soft_labels(logits_path: str | Path, temperature_: float, out: str | Path) -> None:
    checkpoint.save(softmax_t(checkpoint.load(logits_path), temperature_), out)


def evaluate_run(config: dict, run: Run, model_path: str | Path, out: str | Path, *, state_path: str | Path,
                 device: torch.device) -> dict:
    """Clean accuracy, PGD and AutoAttack on the first ``n_examples`` test images."""
    ev = config["evaluation"]
    state_path = Path(state_path)
    if state_path.exists() and state_path.stat().st_mtime < Path(model_path).stat().st_mtime:
        state_path.unlink()  # left by an evaluation of an older model: never resume from it
    model = load_model(config, run, model_path, device)
    test = data.load_split(config["dataset"], config["data_dir"], "test").head(ev["n_examples"]).to(device)
    bs = ev["batch_size"]
    result = {"run": run.name, "n_examples": len(test), "eps": ev["eps"], "precision": "fp32",
              "clean_accuracy": evaluate.clean_accuracy(model, test.x, test.y, bs)}
    t0 = time.time()
    result["pgd"] = {"steps": ev["pgd_steps"], "step_size": ev["pgd_step_size"], "eps": ev["eps"],
                     "accuracy": evaluate.pgd_accuracy(model, test.x, test.y, eps=ev["eps"],
                                                       step_size=ev["pgd_step_size"], steps=ev["pgd_steps"],
                                                       batch_size=bs), "seconds": time.time() - t0}
    aa = ev["autoattack"]
    result["autoattack"] = evaluate.autoattack(
        model, test.x, test.y, eps=ev["eps"], version=aa["version"], attacks=aa.get("attacks") or None,
        square_queries=aa.get("square_queries"), batch_size=bs, seed=ev["seed"], state_path=state_path,
        device=device)
    result["robust_accuracy"] = result["autoattack"]["robust_accuracy"]
    result["provenance"] = provenance(config, device)
    checkpoint.save_json(result, out)
    state_path.unlink(missing_ok=True)
    return result


def validate_run(config: dict, run: Run, model_path: str | Path, teacher_path: str | Path, out: str | Path,
                 device: torch.device) -> dict:
    """The search criteria on the validation split: PGD accuracy and the Eq. 9 loss
    (soft labels at the run's own T)."""
    val = data.load_split(config["dataset"], config["data_dir"], "val").to(device)
    if len(val) == 0:
        raise ValueError("temperature 'auto' needs a validation split: set dataset.val_size > 0")
    ev, tr = config["evaluation"], config["trades"]
    model = load_model(config, run, model_path, device)
    teacher = load_model(config, run.teacher, teacher_path, device)
    q = softmax_t(evaluate.predict(teacher, val.x, ev["batch_size"]), run.temperature)
    result = {
        "run": run.name, "temperature": run.temperature, "n_val": len(val),
        "pgd_accuracy": evaluate.pgd_accuracy(model, val.x, val.y, eps=ev["eps"], step_size=ev["pgd_step_size"],
                                              steps=ev["pgd_steps"], batch_size=ev["batch_size"]),
        "eq9_loss": evaluate.eq9_loss(model, val.x, q, beta=run.beta, eps=tr["eps"], step_size=tr["step_size"],
                                      steps=tr["steps"], batch_size=ev["batch_size"]),
    }
    checkpoint.save_json(result, out)
    return result


def find_tmax(config: dict, substitute_metrics: list[str | Path], out: str | Path) -> dict:
    ts = config["temperature_search"]
    subs = [(m["temperature"], m["clean_accuracy"]) for m in map(checkpoint.load_json, substitute_metrics)]
    result = {"threshold": ts["threshold"], "substitutes": [{"T": t, "clean_accuracy": a} for t, a in subs],
              "tmax": temperature.find_tmax(subs, ts["threshold"])}
    checkpoint.save_json(result, out)
    return result


def select_temperature(config: dict, tmax_path: str | Path, validations: list[str | Path], out: str | Path) -> dict:
    criterion = config["temperature_search"]["criterion"]
    tmax = checkpoint.load_json(tmax_path)["tmax"]
    vals = [checkpoint.load_json(p) for p in validations]
    chosen = temperature.choose([(v["temperature"], v[criterion]) for v in vals], tmax, criterion)
    result = {"temperature": chosen, "tmax": tmax, "criterion": criterion,
              "candidates": [{"T": v["temperature"], criterion: v[criterion]} for v in vals]}
    checkpoint.save_json(result, out)
    return result


def resolve_auto(evaluation: str | Path, selection: str | Path, out: str | Path) -> None:
    """The chosen student's evaluation, with the search that chose it."""
    result = checkpoint.load_json(evaluation)
    result["selection"] = checkpoint.load_json(selection)
    checkpoint.save_json(result, out)


def log_to(path: str | Path) -> None:
    """Send this job's stdout and stderr to its Snakemake log file."""
    f = open(path, "a", buffering=1)
    sys.stdout = sys.stderr = f


def render_table4(config: dict, evals: list[str | Path], tmax_path: str | Path, paper_path: str | Path,
                  stem: str | Path, figure_stem: str | Path) -> None:
    """Table IV (md/tex/csv) and the accuracy-vs-temperature figure."""
    import yaml

    from . import figures, tables

    spec = config["tables"]["table4"]
    paper = yaml.safe_load(Path(paper_path).read_text())["table4"]
    entries = experiments.table_entries(config, "table4")
    if len(entries) != len(evals):
        raise ValueError(f"table4 has {len(entries)} rows but {len(evals)} evaluations were given")
    rows, points, baseline = [], [], None
    for entry, path in zip(entries, evals):
        ev = checkpoint.load_json(path)
        run = Run.parse("students", ev["run"])
        row = {"label": entry.label, "clean": ev["clean_accuracy"], "robust": ev["robust_accuracy"]}
        if entry.is_auto:
            row["label"] += f" (chose {experiments.fmt_num(run.temperature)})"
            row["paper_label"] = None
        rows.append(row)
        if run.temperature is None:
            baseline = {"clean": 100 * row["clean"], "robust": 100 * row["robust"]}
        elif not entry.is_auto:
            points.append({"T": run.temperature, "clean": 100 * row["clean"], "robust": 100 * row["robust"]})
    tm = checkpoint.load_json(tmax_path)
    notes = []
    if spec.get("tmax_row", True):
        if tm["tmax"] is None:
            notes.append(f"No substitute fell below the {100 * tm['threshold']:.1f} % threshold: no T_max row")
        else:
            acc = next(s["clean_accuracy"] for s in tm["substitutes"] if s["T"] == tm["tmax"])
            rows.append({"label": f"Substitute T={experiments.fmt_num(tm['tmax'])}", "clean": acc, "robust": None})
    aa = checkpoint.load_json(evals[0])["autoattack"]
    notes.append(f"AutoAttack {aa['version']} ({', '.join(aa['attacks'])}), Linf eps={aa['eps']:.5f}, "
                 f"{aa['n_examples']} test images, fp32; T_max threshold {100 * tm['threshold']:.1f} %")
    caption = tables.caption_for(spec["caption"], config["dataset"]["name"], paper["dataset"], notes)
    tables.render(tables.build(rows, paper["rows"]), caption, stem)
    paper_points = []
    for label, (c, r) in paper["rows"].items():
        if label.startswith("TRADES+LTD T=") and r is not None:
            paper_points.append({"T": float(label.split("=")[1]), "clean": c, "robust": r})
    figures.accuracy_vs_temperature(
        sorted(points, key=lambda p: p["T"]), paper_points, baseline, tm["tmax"],
        f"TRADES+LTD: accuracy against teacher temperature ({config['dataset']['name']}, {config['arch']})",
        figure_stem, paper_dataset=paper["dataset"])
