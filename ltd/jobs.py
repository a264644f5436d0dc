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


def _git_commit() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=Path(__file__).parent)
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "pyautoattack", "snakemake", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def provenance(config: dict, device: torch.device, *, wall_seconds: float | None = None, **extra: Any) -> dict:
    """Where a result came from: code (git commit, dirty tree), packages, device, and the
    job's own facts in ``extra`` (seed, precision, the config values that produced it).
    ``wall_seconds`` also gives GPU-hours (wall time x GPUs held; 0 on the CPU)."""
    gpus = distributed.world_size() if device.type == "cuda" else 0
    timing = {} if wall_seconds is None else {"wall_seconds": round(wall_seconds, 1),
                                              "gpu_hours": round(wall_seconds * gpus / 3600, 4)}
    return {**_git_commit(), "run": config["run"], "finished": _dt.datetime.now().isoformat(timespec="seconds"),
            **runtime.describe(device), "gpus": gpus, "packages": _versions(), **timing, **extra}


def _dataset(config: dict, run: Run) -> dict:
    return experiments.dataset_cfg(config, run.dataset)


def _model(config: dict, run: Run) -> torch.nn.Module:
    return build_model(run.arch, data.num_classes(_dataset(config, run), config["data_dir"]))


def load_model(config: dict, run: Run, path: str | Path, device: torch.device) -> torch.nn.Module:
    model = _model(config, run)
    model.load_state_dict(checkpoint.load(path, map_location="cpu"))
    # Attacks need input gradients only; frozen weights spare the weight gradients that
    # pyautoattack's FAB-T would otherwise compute (about 8 % of AutoAttack's FLOPs).
    return model.requires_grad_(False).to(device).eval()


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
    speed_keys = ("channels_last", "compile", "eval_batch_size")  # change speed, not the result
    fp = fingerprint({"run": run.name, "schedule": {k: v for k, v in sched.items() if k not in speed_keys},
                      "dataset": ds, "n_train": len(loader),
                      "method": {"beta": beta, "attack": attack, "awp": config["awp"]} if is_student else None})

    # Per-epoch PGD accuracy of students on a few test images: the training curves show
    # robust overfitting and (with soft labels at high T) masking as it develops.
    ev = experiments.evaluation(config, run.dataset)
    monitor_n = (ev.get("monitor") or {}).get("n_examples", 0) if is_student else 0
    if monitor_n:
        x_mon, y_mon = _tensors(data.eval_batches(ds, data_dir, "test", device, sched["eval_batch_size"], n=monitor_n))

    def eval_clean(m: torch.nn.Module) -> dict:
        record = {"test_accuracy": evaluate.clean_accuracy_batches(
            m, data.eval_batches(ds, data_dir, "test", device, sched["eval_batch_size"]))}
        if monitor_n:
            record["test_pgd_accuracy"] = evaluate.pgd_accuracy(
                m, x_mon, y_mon, eps=ev["eps"], step_size=ev["pgd_step_size"], steps=ev["monitor"]["pgd_steps"],
                batch_size=sched["eval_batch_size"])
        return record

    precision = runtime.effective_precision(device, sched["precision"])
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
        "precision": precision,
        "processes": distributed.world_size(),
        "train_seconds_this_attempt": time.time() - t0,
        "history": history,
        "provenance": provenance(config, device, wall_seconds=time.time() - t0, seed=run.seed, precision=precision,
                                 settings={"dataset": ds, "schedule": sched, **({"beta": beta, "attack": attack,
                                         "awp": config["awp"]} if is_student else {})}),
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
    from . import diagnostics

    from . import tables

    t_start = time.time()
    ev = experiments.evaluation(config, dataset)
    state_path = Path(state_path)
    stem = state_path.with_suffix("")
    stale = [state_path, *diagnostics.state_files(stem)]
    if model_path is not None:
        for f in stale:
            if f.exists() and f.stat().st_mtime < Path(model_path).stat().st_mtime:
                f.unlink()  # left by an evaluation of an older model: never resume from it
    model = model.to(device).eval()
    runtime.allow_tf32(device, ev.get("tf32", False))  # recorded as the result's precision
    bs = ev["batch_size"]
    x, y = _tensors(data.eval_batches(experiments.dataset_cfg(config, dataset), config["data_dir"], "test", device,
                                      bs, n=ev.get("n_examples")))
    result = {"run": name, "dataset": dataset, "n_examples": len(y), "eps": ev["eps"], "norm": "Linf",
              "precision": evaluate.numeric_precision(device), **(extra or {}),
              "clean_accuracy": evaluate.clean_accuracy(model, x, y, bs)}
    t0 = time.time()
    result["pgd"] = {"steps": ev["pgd_steps"], "step_size": ev["pgd_step_size"], "eps": ev["eps"],
                     "accuracy": evaluate.pgd_accuracy(model, x, y, eps=ev["eps"],
                                                       step_size=ev["pgd_step_size"], steps=ev["pgd_steps"],
                                                       batch_size=bs), "seconds": time.time() - t0}
    aa = ev["autoattack"]
    record, flags = evaluate.run_autoattack(
        model, x, y, eps=ev["eps"], version=aa["version"], attacks=aa.get("attacks") or None,
        square_queries=aa.get("square_queries"), batch_size=bs, seed=ev["seed"], state_path=state_path,
        device=device)
    result["autoattack"] = record
    result["robust_accuracy"] = record["robust_accuracy"]
    result["precision"] = record["precision"]
    result["diagnostics"] = diagnostics.run(
        model, x, y, clean=result["clean_accuracy"], robust=result["robust_accuracy"],
        pgd=result["pgd"]["accuracy"], eps=ev["eps"], seed=ev["seed"], batch_size=bs, device=device,
        cfg=ev.get("diagnostics"), state_stem=stem,
        apgd_ce_flags=flags["apgd-ce"] if record["attacks"][0] == "apgd-ce" else None)
    result["report"] = diagnostics.report_row(result)
    result["provenance"] = provenance(config, device, wall_seconds=time.time() - t_start, seed=ev["seed"],
                                      precision=record["precision"], settings={"dataset": dataset, "evaluation": ev})
    checkpoint.save_json(result, out)
    tables.render(diagnostics.report_frame([result]), "", Path(out).with_name("evaluation_report"), formats=("csv",))
    for f in stale:
        f.unlink(missing_ok=True)
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
        "provenance": provenance(config, device, seed=run.seed, precision="fp32", settings={"evaluation": ev,
                                                                                             "attack": tr}),
    }
    checkpoint.save_json(result, out)
    return result


def find_tmax(config: dict, dataset: str, substitute_metrics: list[str | Path], out: str | Path) -> dict:
    ts = experiments.search(config, dataset)
    subs = [(m["temperature"], m["clean_accuracy"]) for m in map(checkpoint.load_json, substitute_metrics)]
    result = {"dataset": dataset, "threshold": ts["threshold"], "substitutes": [{"T": t, "clean_accuracy": a} for t, a in subs],
              "tmax": temperature.find_tmax(subs, ts["threshold"]),
              "provenance": provenance(config, torch.device("cpu"), settings={"temperature_search": ts})}
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
              "candidates": [{"T": v["temperature"], criterion: v[criterion]} for v in vals],
              "provenance": provenance(config, torch.device("cpu"), settings={"criterion": criterion})}
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
    checkpoint.save_json({"provenance": provenance(config, torch.device("cpu"), settings={"table": spec,
                                                                                        "tolerance": config["tolerance"]},
                                                   evaluations=[str(p) for p in evals]),
                          "table": table, "caption": caption, "dataset": dataset, "paper_dataset": paper["dataset"],
                          "tmax": None if tmax is None else tmax["tmax"], "rows": rows},
                         Path(stem).with_suffix(".json"))


def render_figure(table_json: str | Path, kind: str, stem: str | Path) -> None:
    """Accuracy against the teacher temperature or against beta, ours beside the paper's."""
    from . import figures

    t = checkpoint.load_json(table_json)
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

    paper = [r for r in points if r["paper_clean"] is not None and r["paper_robust"] is not None]
    figures.accuracy_against(
        kind, pts(points, "clean", "robust"), pts(paper, "paper_clean", "paper_robust"),
        None if baseline is None else {"clean": baseline["clean"], "robust": baseline["robust"],
                                       "label": baseline["label"]},
        t["tmax"] if kind == "temperature" else None,
        f"{t['table']}: accuracy against {'teacher temperature T' if kind == 'temperature' else 'β'} ({t['dataset']})",
        stem, paper_dataset=t["paper_dataset"])


def render_tmax_figure(tmax_path: str | Path, stem: str | Path) -> None:
    from . import figures

    t = checkpoint.load_json(tmax_path)
    figures.substitutes_vs_temperature(t["substitutes"], t["threshold"], t["tmax"],
                                       f"T_max search on {t['dataset']}: substitutes' clean accuracy", stem)


def render_curves(table: str, metrics_paths: list[str | Path], stem: str | Path) -> None:
    """Training curves of a table's students, from each run's own history."""
    from . import figures

    runs = [checkpoint.load_json(p) for p in metrics_paths]
    figures.training_curves({m["run"]: m["history"] for m in runs}, f"{table}: training curves", stem)


def render_evaluation_report(evaluations: list[str | Path], stem: str | Path) -> None:
    """All evaluations side by side with their gradient-masking diagnostics (Markdown, CSV)."""
    from . import diagnostics, tables

    df = diagnostics.report_frame([checkpoint.load_json(p) for p in evaluations])
    tables.render(df, "Evaluations and gradient-masking diagnostics (accuracies in %).", stem, formats=("md", "csv"))
