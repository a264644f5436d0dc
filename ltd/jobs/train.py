"""rules/train.smk: train a teacher, a substitute or a student, in one process or as
``processes`` torch.distributed processes under torchrun (``ltd.jobs.worker``).

What a training job leaves in its run folder: model.pt (the last epoch), best.pt
(students: the epoch with the best monitored PGD accuracy), metrics.json, history.jsonl
(one line per epoch, as it ends), curves.png/.pdf (drawn when the run finishes),
tensorboard/training/ (event files: per epoch, and the running values every
``ltd.train.SYNC_EVERY`` steps); its log is results/<run>/logs/<role>/<name>.log.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

from .. import checkpoint, compiled, data, distributed, evaluate, experiments, methods, runtime, steps
from ..experiments import Run
from ..files import save_json
from ..models import count_parameters
from ..provenance import fingerprint, provenance
from ..soft_labels import TeacherLabels
from ..train import Preempted, StalledAttacks, fit
from .common import dataset, load_model, new_model, tensors

PREEMPTED_EXIT = Preempted.exit_code


def train_run(config: dict, run: Run, *, out_dir: str | Path, soft_labels: str | Path | None = None,
              teacher: str | Path | None = None, device: torch.device) -> dict:
    """Train a teacher, substitute or student; writes model.pt (a plain state dict, the
    RobustBench layout; students also best.pt), metrics.json, history.jsonl, the run's
    curves and TensorBoard files into ``out_dir``. Resumes from ``out_dir/checkpoint.pt``
    if a previous attempt with the same identity left one. A soft-label run takes
    precomputed ``soft_labels`` (a file of q_T), or, when its labels are made on the fly,
    the ``teacher``'s model.pt."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    method = methods.get(run.method)
    sched = experiments.run_schedule(config, run)
    ds, data_dir = dataset(config, run), config["data_dir"]
    precision = runtime.effective_precision(device, sched["precision"], explicit=run.precision is not None)
    if precision != sched["precision"] and distributed.is_main():
        print(f"{run.name}: trains in {precision}, not the schedule's {sched['precision']}, on the {device.type} "
              "(a table entry's own precision would run as asked)", file=sys.stderr)
    on_the_fly = run.labels == "on_the_fly"
    q = None
    if method.soft_labels and not on_the_fly:
        if soft_labels is None:
            raise ValueError(f"{run.name} trains on precomputed soft labels but none were given")
        q = checkpoint.load(soft_labels, map_location=device)
    attack = experiments.attack(config, run.dataset, run.method) if method.attack else None
    step = steps.build_step(run.method, beta=run.beta, attack=attack, awp=config["awp"] if method.awp else None)
    if sched.get("compile_attack"):  # a speed switch: the attack's forwards compiled, no weight gradients
        step.compiled_attack = compiled.AttackForward()
    loader = data.make_train_loader(ds, data_dir, device, sched["batch_size"], soft_labels=q, seed=run.seed,
                                    rank=distributed.rank(), world_size=distributed.world_size())
    if on_the_fly:
        if teacher is None:
            raise ValueError(f"{run.name} labels its batches on the fly but no teacher was given")
        loader = TeacherLabels(loader, load_model(config, run.teacher, teacher, device), run.temperature, device,
                               precision)
    torch.manual_seed(run.seed)  # weight init and the attack's random start; resume restores the RNG
    model = new_model(config, run)
    identity = experiments.training_identity(config, run)

    # Per-epoch PGD accuracy of students on a few test images: the training curves show
    # robust overfitting and (with soft labels at high T) masking as it develops.
    ev = experiments.evaluation(config, run.dataset)
    monitor_n = (ev.get("monitor") or {}).get("n_examples", 0) if run.role == "students" else 0
    if monitor_n:
        x_mon, y_mon = tensors(data.eval_batches(ds, data_dir, "test", device, sched["eval_batch_size"], n=monitor_n))

    def test_accuracy(m: torch.nn.Module) -> float:
        return evaluate.clean_accuracy_batches(m, data.eval_batches(ds, data_dir, "test", device,
                                                                    sched["eval_batch_size"]))

    def eval_clean(m: torch.nn.Module) -> dict:
        # the curves only: TF32 on a GPU (recorded); the reported clean accuracy is fp32, below
        with evaluate.fp32_precision(device, "tf32") as monitor_precision:
            record = {"test_accuracy": test_accuracy(m), "monitor_precision": monitor_precision}
            if monitor_n:
                record["test_pgd_accuracy"] = evaluate.pgd_accuracy(
                    m, x_mon, y_mon, eps=ev["eps"], step_size=ev["pgd_step_size"], steps=ev["monitor"]["pgd_steps"],
                    batch_size=sched["eval_batch_size"], seed=ev["seed"])  # seeded apart: training's RNG untouched
        return record

    t0 = time.time()
    ckpt = out_dir / "checkpoint.pt"
    best = out_dir / experiments.WEIGHTS["best"][0]
    history = fit(model, step, loader, sched, ckpt_path=ckpt, device=device, precision=precision,
                  fingerprint=fingerprint(identity), evaluate=eval_clean, log_path=out_dir / "history.jsonl",
                  desc=run.name, board_dir=out_dir / "tensorboard" / "training",
                  best=(BEST_KEY, best) if run.role == "students" else None)
    if not distributed.is_main():
        return {}  # rank 0 writes model.pt/metrics.json and removes the checkpoint
    checkpoint.save(model.state_dict(), out_dir / "model.pt")
    if run.role == "students" and not monitor_n:  # no monitor, no best epoch: best.pt is the last one
        checkpoint.save(model.state_dict(), best)
    gpus = distributed.world_size() if device.type == "cuda" else 0
    metrics = {
        "run": run.name, "role": run.role, "method": run.method, "temperature": run.temperature,
        "beta": run.beta, "dataset": run.dataset, "arch": run.arch, "parameters": count_parameters(model),
        # fp32 (the T_max search reads it); the history's curves may be TF32 (monitor_precision)
        "clean_accuracy": test_accuracy(model) if history[-1].get("monitor_precision") != "fp32" else
        history[-1]["test_accuracy"], "epochs": len(history),
        "schedule": sched, "attack": attack, "awp": identity.get("awp"), "soft_labels": run.labels,
        "precision": precision, "best": best_epoch(history) if run.role == "students" else None,
        "processes": distributed.world_size(),
        "train_seconds_this_attempt": time.time() - t0,
        "history": history,
        "provenance": provenance(config, device, gpus=gpus, wall_seconds=time.time() - t0, seed=run.seed,
                                 precision=precision, settings=identity,
                                 splits=data.describe(ds, data_dir, ("train",))),
    }
    save_json(metrics, out_dir / "metrics.json")
    ckpt.unlink(missing_ok=True)  # the job is complete; model.pt is what later rules read
    draw_curves(run.name, history, out_dir / "curves")
    return metrics


# The training curves' monitor (students' per-epoch PGD accuracy) chooses best.pt.
BEST_KEY = "test_pgd_accuracy"


def best_epoch(history: list[dict]) -> dict:
    """The epoch best.pt holds: the first with the highest monitored PGD accuracy, else the last."""
    scored = [h for h in history if BEST_KEY in h]
    if not scored:
        return {"epoch": history[-1]["epoch"], "by": None}
    top = max(scored, key=lambda h: h[BEST_KEY])  # max keeps the first of equal values
    return {"epoch": top["epoch"], "by": BEST_KEY, BEST_KEY: top[BEST_KEY]}


def draw_curves(name: str, history: list[dict], stem: Path) -> None:
    """The run's own training curves, drawn as it finishes (a table's curves wait for all
    its runs). A figure that fails to draw never fails the finished training."""
    try:
        from .. import figures

        figures.training_curves({name: history}, f"{name}: training curves", stem)
    except Exception as e:  # noqa: BLE001 - a figure is not worth a finished run
        print(f"{name}: the training curves could not be drawn: {e!r}", file=sys.stderr)


def launch_train(nprocs: int, config: dict, run: Run, out_dir: str | Path, soft_labels: str | Path | None = None,
                 teacher: str | Path | None = None, device: str = "auto", threads: int | None = None) -> None:
    """``nprocs`` processes of ``ltd.jobs.worker`` under torchrun, each running
    ``train_run`` on its slice of every global batch (the job is written to job.json)."""
    out_dir = Path(out_dir)
    job = out_dir / "job.json"
    save_json({"config": config, "role": run.role, "run": run.name, "out_dir": str(out_dir),
               "soft_labels": None if soft_labels is None else str(soft_labels),
               "teacher": None if teacher is None else str(teacher),
               "device": device, "threads": threads}, job)
    distributed.launch(nprocs, "ltd.jobs.worker", [str(job)])


def train_job(config: dict, run: Run, *, out_dir: str | Path, soft_labels: str | Path | None = None,
              teacher: str | Path | None = None, device: torch.device) -> int:
    """A workflow training job: one process, or ``processes`` torch.distributed ones
    (torchrun; gloo on the CPU). Returns the exit code: 0, or 143 when SIGTERM stopped it
    after writing a checkpoint (rerun to continue)."""
    n = experiments.processes(config, run.dataset)
    try:
        if n > 1:
            threads = max(1, torch.get_num_threads() // n)
            launch_train(n, config, run, out_dir, soft_labels, teacher, device=device.type, threads=threads)
        else:
            train_run(config, run, out_dir=out_dir, soft_labels=soft_labels, teacher=teacher, device=device)
    except Preempted as e:
        print(e, file=sys.stderr)
        return PREEMPTED_EXIT
    except StalledAttacks as e:
        print(e, file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        if e.returncode == PREEMPTED_EXIT:
            print(f"{run.name}: preempted; rerun to continue from its checkpoint", file=sys.stderr)
            return PREEMPTED_EXIT
        raise
    return 0
