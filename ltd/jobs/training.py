"""rules/train.smk: train a teacher, a substitute or a student, in one process or as
``processes`` torch.distributed processes under torchrun (``ltd.jobs.worker``).

What a training job leaves in its run folder: model.pt (the last epoch), best.pt
(students: the epoch with the best monitored PGD accuracy), metrics.json, history.jsonl
(one line per epoch, as it ends), curves.png/.pdf (drawn when the run finishes),
tensorboard/training/ (event files: per epoch, and the running values every
``ltd.train.SYNC_EVERY`` steps); its log is results/<run>/logs/<role>/<name>.log.

``train_run`` is the job in the order it runs: what it computes in (ltd.runtime), its
step (ltd.steps), its batches, its model, its monitor (ltd.jobs.monitor), the loop
(ltd.train.fit), and what the finished run leaves (ltd.jobs.training_outputs).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .. import checkpoint, compiled, data, distributed, runtime, steps
from ..experiments import weights_file
from ..files import save_json
from ..jobspec import Training
from ..provenance import fingerprint
from ..teacher_labels import TeacherLabels
from ..train import Preempted, StalledAttacks, fit
from .common import load_model, new_model
from .monitor import BEST_KEY, Monitor
from .training_outputs import finish

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
    precision, schedule = runtime.training_precision(device, spec.precision, spec.schedule, name=run.name,
                                                     explicit=run.precision is not None, say=distributed.is_main())
    step = steps.build_step(run.method, beta=run.beta, attack=spec.attack, awp=spec.awp)
    if schedule["compile_attack"]:  # the attack's forwards compiled, no weight gradients (in the identity)
        step.compiled_attack = compiled.AttackForward()
    loader = _loader(spec, soft_label_file, teacher, device, precision)
    torch.manual_seed(run.seed)  # weight init and the attack's random start; resume restores the RNG
    model = new_model(spec.model)
    monitor = Monitor(spec, device)

    t0 = time.time()
    ckpt = out_dir / "checkpoint.pt"
    history = fit(model, step, loader, schedule, ckpt_path=ckpt, device=device, precision=precision,
                  fingerprint=fingerprint(spec.identity), evaluate=monitor, log_path=out_dir / "history.jsonl",
                  desc=run.name, board_dir=out_dir / "tensorboard" / "training",
                  best=(BEST_KEY, out_dir / weights_file("best")) if run.role == "students" else None)
    if not distributed.is_main():
        return {}  # rank 0 writes model.pt/metrics.json and removes the checkpoint
    return finish(spec, model, history, monitor, out_dir, ckpt=ckpt, precision=precision, device=device, t0=t0)


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
