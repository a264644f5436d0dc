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

from . import checkpoint, data, distributed, evaluate, experiments, runtime, temperature
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


def _dataset(config: dict, run: Run) -> dict:
    return experiments.dataset_cfg(config, run.dataset)


def _model(config: dict, run: Run) -> torch.nn.Module:
    return build_model(run.arch, data.num_classes(_dataset(config, run), config["data_dir"]))


def load_model(config: dict, run: Run, path: str | Path, device: torch.device) -> torch.nn.Module:
    model = _model(config, run)
    model.load_state_dict(checkpoint.load(path, map_location="cpu"))
    return model.to(device).eval()


def _tensors(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's (first n) images in memory: AutoAttack and PGD take whole tensors."""
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def prepare_data(config: dict, dataset: str, out: str | Path) -> None:
    """Fetch (CIFAR: download once, before any parallel job), build (the demo's ImageFolder
    tree, from ``build_from``) or index a data set, and record its splits."""
    cfg = experiments.dataset_cfg(config, dataset)
    if cfg["source"] == "imagefolder" and cfg.get("build_from") and not Path(cfg["path"]).exists():
        data.write_image_folder(cfg["build_from"], config["data_dir"], cfg["path"])
    checkpoint.save_json({"name": dataset, **data.describe(cfg, config["data_dir"])}, out)


def train_run(config: dict, run: Run, *, out_dir: str | Path, soft_labels: str | Path | None = None,
              device: torch.device) -> dict:
    """Train a teacher, substitute or student; writes model.pt (a plain state dict, the
    RobustBench layout), metrics.json and history.jsonl into ``out_dir``. Resumes from
    ``out_dir/checkpoint.pt`` if a previous attempt left one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sched = experiments.schedule(config, run.role, run.dataset)
    ds, data_dir = _dataset(config, run), config["data_dir"]
    q = None
    if run.uses_soft_labels:
        if soft_labels is None:
            raise ValueError(f"{run.name} trains on soft labels but none were given")
        q = checkpoint.load(soft_labels, map_location=device)
    attack = experiments.attack(config, run.dataset)
    beta = run.beta if run.beta is not None else config["beta"]
    step = build_step(run.method, beta=beta, attack=attack, awp=config["awp"])
    loader = data.make_train_loader(ds, data_dir, device, sched["batch_size"], soft_labels=q, seed=run.seed,
                                    rank=distributed.rank(), world_size=distributed.world_size())
    torch.manual_seed(run.seed)  # weight init and the attack's random start; resume restores the RNG
    model = _model(config, run)
    is_student = run.role == "students"
    fp = fingerprint({"run": run.name, "schedule": sched, "dataset": ds, "n_train": len(loader),
                      "method": {"beta": beta, "attack": attack, "awp": config["awp"]} if is_student else None})

    def eval_clean(m: torch.nn.Module) -> dict:
        return {"test_accuracy": evaluate.clean_accuracy_batches(
            m, data.eval_batches(ds, data_dir, "test", device, sched["eval_batch_size"]))}

    t0 = time.time()
    ckpt = out_dir / "checkpoint.pt"
    history = fit(model, step, loader, sched, ckpt_path=ckpt, device=device, fingerprint=fp,
                  evaluate=eval_clean, log_path=out_dir / "history.jsonl", desc=run.name)
    if not distributed.is_main():
        return {}  # rank 0 writes model.pt/metrics.json and removes the checkpoint
    checkpoint.save(model.state_dict(), out_dir / "model.pt")
    metrics = {
        "run": run.name, "role": run.role, "method": run.method, "temperature": run.temperature,
        "beta": run.beta, "dataset": run.dataset, "arch": run.arch, "parameters": count_parameters(model),
        "clean_accuracy": history[-1]["test_accuracy"], "epochs": len(history),
        "schedule": sched, "attack": attack if is_student else None,
        "awp": config["awp"] if run.method.startswith("awp") else None,
        "precision": runtime.effective_precision(device, sched["precision"]),
        "processes": distributed.world_size(),
        "train_seconds_this_attempt": time.time() - t0,
        "provenance": provenance(config, device),
    }
    checkpoint.save_json(metrics, out_dir / "metrics.json")
    ckpt.unlink(missing_ok=True)  # the job is complete; model.pt is what later rules read
    return metrics


def train_job(config: dict, run: Run, *, out_dir: str | Path, soft_labels: str | Path | None,
              device: torch.device) -> int:
    """A workflow training job: one process, or ``processes`` torch.distributed ones
    (torchrun; gloo on the CPU). Returns the exit code: 0, or 143 when SIGTERM stopped it
    after writing a checkpoint (rerun to continue)."""
    from .distributed_worker import PREEMPTED_EXIT, launch_train
    from .train import Preempted

    n = experiments.processes(config, run.dataset)
    try:
        if n > 1:
            threads = max(1, torch.get_num_threads() // n)
            launch_train(n, config, run.role, run.name, out_dir, soft_labels, device=device.type, threads=threads)
        else:
            train_run(config, run, out_dir=out_dir, soft_labels=soft_labels, device=device)
    except Preempted as e:
        print(e, file=sys.stderr)
        return PREEMPTED_EXIT
    except subprocess.CalledProcessError as e:
        if e.returncode == PREEMPTED_EXIT:
            print(f"{run.name}: preempted; rerun to continue from its checkpoint", file=sys.stderr)
            return PREEMPTED_EXIT
        raise
    return 0


def teacher_logits(config: dict, teacher: Run, model_path: str | Path, out: str | Path,
                   device: torch.device, split: str = "train") -> None:
    """Teacher logits on the un-augmented images of a split, in split order (precomputed
    soft labels belong to the un-augmented image; crop/flip are applied to the input only)."""
    model = load_model(config, teacher, model_path, device)
    bs = experiments.schedule(config, "teachers", teacher.dataset)["eval_batch_size"]
    batches = data.eval_batches(_dataset(config, teacher), config["data_dir"], split, device, bs)
    with torch.no_grad():
        logits = [model(x).float().cpu() for x, _ in batches]
    checkpoint.save(torch.cat(logits), out)


def soft_labels(logits_path: str | Path, temperature_: float, out: str | Path) -> None:
    checkpoint.save(softmax_t(checkpoint.load(logits_path), temperature_), out)


def evaluate_run(config: dict, run: Run, model_path: str | Path, out: str | Path, *, state_path: str | Path,
                 device: torch.device) -> dict:
    """Clean accuracy, PGD and AutoAttack on the first ``n_examples`` test images."""
    ev = experiments.evaluation(config, run.dataset)
    state_path = Path(state_path)
    if state_path.exists() and state_path.stat().st_mtime < Path(model_path).stat().st_mtime:
        state_path.unlink()  # left by an evaluation of an older model: never resume from it
    model = load_model(config, run, model_path, device)
    bs = ev["batch_size"]
    x, y = _tensors(data.eval_batches(_dataset(config, run), config["data_dir"], "test", device, bs,
                                      n=ev["n_examples"]))
    result = {"run": run.name, "n_examples": len(y), "eps": ev["eps"], "precision": "fp32",
              "clean_accuracy": evaluate.clean_accuracy(model, x, y, bs)}
    t0 = time.time()
    result["pgd"] = {"steps": ev["pgd_steps"], "step_size": ev["pgd_step_size"], "eps": ev["eps"],
                     "accuracy": evaluate.pgd_accuracy(model, x, y, eps=ev["eps"],
                                                       step_size=ev["pgd_step_size"], steps=ev["pgd_steps"],
                                                       batch_size=bs), "seconds": time.time() - t0}
    aa = ev["autoattack"]
    result["autoattack"] = evaluate.autoattack(
        model, x, y, eps=ev["eps"], version=aa["version"], attacks=aa.get("attacks") or None,
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
    ev, tr = experiments.evaluation(config, run.dataset), experiments.attack(config, run.dataset)
    x, y = _tensors(data.eval_batches(_dataset(config, run), config["data_dir"], "val", device, ev["batch_size"]))
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
    }
    checkpoint.save_json(result, out)
    return result


def find_tmax(config: dict, dataset: str, substitute_metrics: list[str | Path], out: str | Path) -> dict:
    ts = experiments.search(config, dataset)
    subs = [(m["temperature"], m["clean_accuracy"]) for m in map(checkpoint.load_json, substitute_metrics)]
    result = {"dataset": dataset, "threshold": ts["threshold"], "substitutes": [{"T": t, "clean_accuracy": a} for t, a in subs],
              "tmax": temperature.find_tmax(subs, ts["threshold"])}
    checkpoint.save_json(result, out)
    return result


def select_temperature(config: dict, group: str, tmax_path: str | Path, validations: list[str | Path],
                       out: str | Path) -> dict:
    dataset = experiments.search_candidates(config, group)[0].dataset
    criterion = experiments.search(config, dataset)["criterion"]
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


def render_table(config: dict, table: str, evals: list[str | Path], tmax_path: str | Path | None,
                 paper_path: str | Path, stem: str | Path) -> None:
    """A table as Markdown, LaTeX, CSV, and JSON (rows with their runs, for the figures)."""
    import yaml

    from . import tables

    spec = config["tables"][table]
    paper = yaml.safe_load(Path(paper_path).read_text())[table]
    entries, n_seeds = experiments.table_entries(config, table), len(experiments.seeds(config))
    if len(entries) * n_seeds != len(evals):
        raise ValueError(f"{table} has {len(entries)} rows x {n_seeds} seeds but {len(evals)} evaluations were given")
    loaded = [checkpoint.load_json(p) for p in evals]
    results = [loaded[i * n_seeds:(i + 1) * n_seeds] for i in range(len(entries))]  # each row's seeds
    tmax = checkpoint.load_json(tmax_path) if tmax_path else None
    rows = tables.assemble(entries, results, paper["rows"], tmax if spec.get("tmax_row") else None,
                           tolerance=config["tolerance"])
    dataset = experiments.table_dataset(config, table)
    notes = []
    if tmax is not None:
        subs = ", ".join(f"T={experiments.fmt_num(s['T'])}: {100 * s['clean_accuracy']:.2f} %"
                         for s in tmax["substitutes"])
        found = "none below it" if tmax["tmax"] is None else f"T_max = {experiments.fmt_num(tmax['tmax'])}"
        notes.append(f"T_max search: substitutes {subs}; threshold {100 * tmax['threshold']:.1f} %, {found}")
    aa = loaded[0]["autoattack"]
    notes.append(f"AutoAttack {aa['version']} ({', '.join(aa['attacks'])}), Linf eps={aa['eps']:.5f}, "
                 f"{aa['n_examples']} test images, fp32")
    stand_ins = [f"{new} for {old}" for kind in ("datasets", "archs")
                 for old, new in (config.get("stand_ins") or {}).get(kind, {}).items()
                 if old in {spec["dataset"], *(e.arch for e in entries)}]
    if stand_ins:
        notes.append("Stand-ins: " + ", ".join(stand_ins))
    if any(r["beyond_tolerance"] for r in rows):
        tol = config["tolerance"]
        notes.append(f"{tables.MARK}: differs from the paper by more than {tol['clean']:g} (clean) or "
                     f"{tol['autoattack']:g} (AutoAttack) percentage points")
    if n_seeds > 1:
        notes.append(f"Ours: mean over {n_seeds} seeds, ± the sample standard deviation")
    caption = tables.caption_for(spec["caption"], dataset, paper["dataset"], notes,
                                 demo=dataset != spec["dataset"])
    tables.render(tables.frame(rows), caption, stem)
    checkpoint.save_json({"table": table, "caption": caption, "dataset": dataset, "paper_dataset": paper["dataset"],
                          "tmax": None if tmax is None else tmax["tmax"], "rows": rows},
                         Path(stem).with_suffix(".json"))


def render_figure(table_json: str | Path, kind: str, stem: str | Path) -> None:
    """Accuracy against the teacher temperature or against beta, ours beside the paper's."""
    from . import figures

    t = checkpoint.load_json(table_json)
    ours = [r for r in t["rows"] if r["source"] == "this run" and r.get("run_role") == "students"
            and not r.get("auto")]
    key = {"temperature": "temperature", "beta": "beta"}[kind]
    if kind == "temperature":
        points = [r for r in ours if r["temperature"] is not None]
        baseline = next((r for r in ours if r["temperature"] is None), None)
    else:
        points, baseline = ours, None

    def pts(rows, clean, robust):
        return sorted(({"x": r[key], "clean": r[clean], "robust": r[robust]} for r in rows
                       if r[clean] is not None), key=lambda p: p["x"])

    paper = [r for r in points if r["paper_clean"] is not None and r["paper_robust"] is not None]
    figures.accuracy_against(
        kind, pts(points, "clean", "robust"), pts(paper, "paper_clean", "paper_robust"),
        None if baseline is None else {"clean": baseline["clean"], "robust": baseline["robust"],
                                       "label": baseline["label"]},
        t["tmax"] if kind == "temperature" else None,
        f"{t['table']}: accuracy against {'teacher temperature T' if kind == 'temperature' else 'β'} ({t['dataset']})",
        stem, paper_dataset=t["paper_dataset"])
