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
from typing import Callable

import torch

from .. import checkpoint, compiled, data, distributed, evaluate, fp16_emulation, runtime, steps
from ..experiments import weights_file
from ..files import save_json
from ..jobspec import Training
from ..models import count_parameters
from ..provenance import fingerprint, provenance
from ..teacher_labels import TeacherLabels
from ..train import Preempted, StalledAttacks, fit
from .common import load_model, new_model, tensors

PREEMPTED_EXIT = Preempted.exit_code


def train_run(spec: Training, *, out_dir: str | Path, soft_label_file: str | Path | None = None,
              teacher: str | Path | None = None, device: torch.device) -> dict:
    """Train a teacher, substitute or student as ``spec`` says; writes model.pt (a plain
    state dict, the RobustBench layout; students also best.pt), metrics.json,
    history.jsonl, the run's curves and TensorBoard files into ``out_dir``. Resumes from
    ``out_dir/checkpoint.pt`` if a previous attempt with the same identity left one. A
    soft-label run takes precomputed ``soft_label_file`` (q_T), or, when its labels
    are made on the fly, the ``teacher``'s model.pt."""
    run, out_dir = spec.run, Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = runtime.effective_precision(device, spec.precision, explicit=run.precision is not None)
    if precision != spec.precision and distributed.is_main():
        print(f"{run.name}: trains in {precision}, not the schedule's {spec.precision}, on the {device.type} "
              "(a table entry's own precision would run as asked)", file=sys.stderr)
    schedule = _emulation_schedule(spec.schedule, run.name) if precision == runtime.EMULATED else spec.schedule
    step = steps.build_step(run.method, beta=run.beta, attack=spec.attack, awp=spec.awp)
    if schedule["compile_attack"]:  # the attack's forwards compiled, no weight gradients (in the identity)
        step.compiled_attack = compiled.AttackForward()
    loader = _loader(spec, soft_label_file, teacher, device, precision)
    torch.manual_seed(run.seed)  # weight init and the attack's random start; resume restores the RNG
    model = new_model(spec.model)
    monitor = _Monitor(spec, device)

    t0 = time.time()
    ckpt, best = out_dir / "checkpoint.pt", out_dir / weights_file("best")
    history = fit(model, step, loader, schedule, ckpt_path=ckpt, device=device, precision=precision,
                  fingerprint=fingerprint(spec.identity), evaluate=monitor, log_path=out_dir / "history.jsonl",
                  desc=run.name, board_dir=out_dir / "tensorboard" / "training",
                  best=(BEST_KEY, best) if run.role == "students" else None)
    if not distributed.is_main():
        return {}  # rank 0 writes model.pt/metrics.json and removes the checkpoint
    checkpoint.save(model.state_dict(), out_dir / weights_file("last"))
    if run.role == "students" and spec.monitor is None:  # no monitor, no best epoch: best.pt is the last one
        checkpoint.save(model.state_dict(), best)
    # fp32 (the T_max search reads it); the history's curves may be TF32 (monitor_precision)
    clean = history[-1]["test_accuracy"] if history[-1].get("monitor_precision") == "fp32" else monitor.clean(model)
    metrics = _metrics(spec, model, history, clean=clean, precision=precision, device=device, t0=t0)
    save_json(metrics, out_dir / "metrics.json")
    ckpt.unlink(missing_ok=True)  # the job is complete; model.pt is what later rules read
    draw_curves(run.name, history, out_dir / "curves")
    return metrics


def _emulation_schedule(schedule: dict, name: str) -> dict:
    """fp16-emulated's schedule: said in the log, and eager (speed switches, no result
    depends on them: torch.compile's inductor cannot trace the emulation's casts)."""
    if distributed.is_main():
        print(f"{name}: trains in {fp16_emulation.LABEL}", file=sys.stderr)
        if schedule["compile"] or schedule["compile_attack"]:
            print(f"{name}: train.compile and train.compile_attack ignored: {runtime.EMULATED} runs eager",
                  file=sys.stderr)
    return {**schedule, "compile": False, "compile_attack": False}


def _loader(spec: Training, soft_label_file: str | Path | None, teacher: str | Path | None, device: torch.device,
            precision: str):
    """This process's slice of the training batches, with their labels: one-hot, the
    precomputed q_T, or q_T made on the fly by the teacher on the very augmented batch."""
    run, on_the_fly = spec.run, spec.run.soft_label_mode == "on_the_fly"
    q = None
    if run.uses_soft_labels and not on_the_fly:
        if soft_label_file is None:
            raise ValueError(f"{run.name} trains on precomputed soft labels but none were given")
        q = checkpoint.load(soft_label_file, map_location=device)
    loader = data.make_train_loader(spec.data, device, spec.schedule["batch_size"], q=q, seed=run.seed,
                                    rank=distributed.rank(), world_size=distributed.world_size())
    if not on_the_fly:
        return loader
    if teacher is None:
        raise ValueError(f"{run.name} labels its batches on the fly but no teacher was given")
    return TeacherLabels(loader, load_model(spec.teacher, teacher, device), run.temperature, device,
                         precision)


class _Monitor:
    """The training curves' per-epoch numbers: clean test accuracy and (students with a
    monitor) PGD accuracy on the monitor's images, in TF32 on a GPU (recorded). Those are
    the first or the last ``n_examples`` of its split (test, or val: held out of
    training), apart from the evaluated first test images where the config says so
    (ltd.selection checks it before any job); the key stays ``test_pgd_accuracy``."""

    def __init__(self, spec: Training, device: torch.device):
        self.spec, self.device, self.bs = spec, device, spec.schedule["eval_batch_size"]
        self.x = self.y = None
        m = spec.monitor
        if m:
            self.x, self.y = tensors(data.eval_batches(spec.data, m["split"], device, self.bs, n=m["n_examples"],
                                                       last=m["images"] == "last"))

    def clean(self, model: torch.nn.Module) -> float:
        return evaluate.clean_accuracy_batches(model, data.eval_batches(self.spec.data, "test", self.device, self.bs))

    def __call__(self, model: torch.nn.Module) -> dict:
        # the curves only: TF32 on a GPU (recorded); the reported clean accuracy is fp32 (train_run)
        with runtime.in_tf32_mode(self.device, "tf32") as monitor_precision:
            record = {"test_accuracy": self.clean(model), "monitor_precision": monitor_precision}
            m = self.spec.monitor
            if m:
                record["test_pgd_accuracy"] = evaluate.pgd_accuracy(
                    model, self.x, self.y, eps=m["eps"], step_size=m["step_size"], steps=m["pgd_steps"],
                    batch_size=self.bs, seed=m["seed"])  # seeded apart: training's RNG untouched
        return record


def _metrics(spec: Training, model: torch.nn.Module, history: list[dict], *, clean: float, precision: str,
             device: torch.device, t0: float) -> dict:
    """metrics.json: the run, its final clean accuracy, its settings, every epoch and where it came from."""
    run = spec.run
    gpus = distributed.world_size() if device.type == "cuda" else 0
    return {
        "run": run.name, "role": run.role, "method": run.method, "temperature": run.temperature,
        "beta": run.beta, "dataset": run.dataset, "arch": run.arch, "parameters": count_parameters(model),
        "clean_accuracy": clean, "epochs": len(history),
        "schedule": spec.schedule, "attack": spec.attack, "awp": spec.awp, "soft_labels": run.soft_label_mode,
        "precision": precision,
        "best": {**best_epoch(history), "monitor": spec.monitor} if run.role == "students" else None,
        "processes": distributed.world_size(),
        "train_seconds_this_attempt": time.time() - t0,
        "history": history,
        "provenance": provenance(spec.machine.results, device, gpus=gpus, wall_seconds=time.time() - t0,
                                 seed=run.seed, precision=precision, settings=spec.identity,
                                 splits=data.describe(spec.data, ("train",))),
    }


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


def launch_train(nprocs: int, spec: Training, out_dir: str | Path, soft_label_file: str | Path | None = None,
                 teacher: str | Path | None = None, device: str = "auto", threads: int | None = None) -> None:
    """``nprocs`` processes of ``ltd.jobs.worker`` under torchrun, each running
    ``train_run`` on its slice of every global batch (the job, its spec included, is
    written to job.json)."""
    out_dir = Path(out_dir)
    job = out_dir / "job.json"
    save_json({"spec": spec.to_json(), "out_dir": str(out_dir),
               "soft_label_file": None if soft_label_file is None else str(soft_label_file),
               "teacher": None if teacher is None else str(teacher),
               "device": device, "threads": threads}, job)
    distributed.launch(nprocs, "ltd.jobs.worker", [str(job)])


def train_job(spec: Training, *, out_dir: str | Path, soft_label_file: str | Path | None = None,
              teacher: str | Path | None = None, device: torch.device) -> int:
    """A workflow training job: one process, or ``spec.processes`` torch.distributed ones
    (torchrun; gloo on the CPU). Returns the exit code: 0, or 143 when SIGTERM stopped it
    after writing a checkpoint (rerun to continue)."""
    n = spec.processes
    if n == 1:
        return exit_code(lambda: train_run(spec, out_dir=out_dir, soft_label_file=soft_label_file, teacher=teacher,
                                           device=device))
    try:
        launch_train(n, spec, out_dir, soft_label_file, teacher, device=device.type,
                     threads=max(1, torch.get_num_threads() // n))
    except subprocess.CalledProcessError as e:  # a worker's exit_code
        if e.returncode == PREEMPTED_EXIT:
            print(f"{spec.run.name}: preempted; rerun to continue from its checkpoint", file=sys.stderr)
            return PREEMPTED_EXIT
        raise
    return 0


def exit_code(run: Callable[[], object]) -> int:
    """A training process's exit code (the job's, or a torchrun worker's): 0; PREEMPTED_EXIT
    after SIGTERM stopped it with a checkpoint written (rerun to continue); 1 when the
    stalled-attack alarm stopped it (every process after the same epoch)."""
    try:
        run()
    except Preempted as e:
        print(e, file=sys.stderr)
        return PREEMPTED_EXIT
    except StalledAttacks as e:
        print(e, file=sys.stderr)
        return 1
    return 0
