"""Checkpoint, kill or SIGTERM, resume: the resumed run must end with the same weights."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from ltd import checkpoint, jobspec
from ltd.experiments import Run
from ltd.files import load_json
from ltd.jobs import training

from .conftest import ROOT

# The training job as a real process. With LTD_TEST_PAUSE_AT=k the k-th step call (over
# the whole run, 1-based) writes LTD_TEST_MARKER when its computation is done and waits
# for the parent to create MARKER.sent (which it does right after sending SIGTERM): the
# signal lands at a known step however fast or slow the machine is.
JOB = """
import os, sys, time, torch, yaml
from ltd import jobspec, steps
from ltd.experiments import Run
from ltd.jobs import training
torch.set_num_threads(1)
pause_at, marker = int(os.environ.get("LTD_TEST_PAUSE_AT", 0)), os.environ.get("LTD_TEST_MARKER")
if pause_at:
    build, calls = steps.build_step, [0]
    def build_step(*a, **k):
        step = build(*a, **k)
        call = type(step).__call__
        class Paused(type(step)):
            def __call__(self, model, x, y, q):
                out = call(self, model, x, y, q)
                calls[0] += 1
                if calls[0] == pause_at:
                    open(marker, "w").close()
                    deadline = time.time() + 120
                    while not os.path.exists(marker + ".sent") and time.time() < deadline:
                        time.sleep(0.01)
                return out
        step.__class__ = Paused
        return step
    steps.build_step = build_step
config = yaml.safe_load(open(sys.argv[1]))
run = Run.parse("students", sys.argv[2])
training.train_run(jobspec.training(config, run), out_dir=sys.argv[3], device=torch.device("cpu"))
"""

STEPS_PER_EPOCH = 4  # 256 training images, batch 64
NAME = Run("students", "digits", "wrn-10-1", 0, method="trades", beta=6.0).name


def _tiny(config):
    config["datasets"]["digits"].update(train_size=256, image_size=16)
    config["datasets"]["digits"]["attack"]["default"]["steps"] = 2
    config["train"].update(epochs=3, batch_size=64, lr_milestones=[2])
    config["teacher"] = config["substitute"] = config["student"] = {}  # no per-role epochs
    return config


@pytest.fixture
def tiny(demo_config, tmp_path):
    c = _tiny(demo_config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(c))
    return c, path


def _job(config_path, name, out_dir, env=None):
    return subprocess.Popen([sys.executable, "-c", JOB, str(config_path), name, str(out_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def reference(_demo_config, tmp_path_factory):
    """An uninterrupted run's model.pt, shared by the resume tests."""
    import copy

    tmp = tmp_path_factory.mktemp("reference")
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(_tiny(copy.deepcopy(_demo_config))))
    job = _job(path, NAME, tmp / "out")
    out = job.communicate(timeout=300)[0]
    assert job.returncode == 0, out
    return checkpoint.load(tmp / "out" / "model.pt")


def _assert_same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_killed_run_resumes_to_identical_weights(tiny, tmp_path, reference):
    config, path = tiny
    killed = _job(path, NAME, tmp_path / "resumed")
    ckpt = tmp_path / "resumed" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "resumed" / "model.pt").exists()
    done = checkpoint.load(ckpt)["epoch"]
    assert 1 <= done < 3

    resumed = _job(path, NAME, tmp_path / "resumed")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert f"resuming after epoch {done}" in out
    _assert_same(reference, checkpoint.load(tmp_path / "resumed" / "model.pt"))
    metrics = load_json(tmp_path / "resumed" / "metrics.json")
    assert metrics["epochs"] == 3 and 0 <= metrics["clean_accuracy"] <= 1
    assert not ckpt.exists()  # removed once the job is complete


def test_sigterm_mid_epoch_checkpoints_and_resumes_to_identical_weights(tiny, tmp_path, reference):
    config, path = tiny
    out_dir, marker = tmp_path / "preempted", tmp_path / "marker"
    k = 2  # the signal arrives during step 2 of epoch 2
    job = _job(path, NAME, out_dir, env={"LTD_TEST_PAUSE_AT": str(STEPS_PER_EPOCH + k), "LTD_TEST_MARKER": str(marker)})
    deadline = time.time() + 300
    while not marker.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), job.communicate()[0]
    job.send_signal(signal.SIGTERM)
    (tmp_path / "marker.sent").touch()
    out = job.communicate(timeout=120)[0]
    assert job.returncode != 0, out
    assert "Preempted" in out and f"at epoch 2, step {k}" in out, out
    assert not (out_dir / "model.pt").exists()
    state = checkpoint.load(out_dir / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, k)  # mid-epoch: after step k of epoch 2
    assert state["totals"]["n"] == k * 64

    resumed = _job(path, NAME, out_dir)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert f"resuming after epoch 1, step {k} of epoch 2" in out
    _assert_same(reference, checkpoint.load(out_dir / "model.pt"))
    history = [l for l in (out_dir / "history.jsonl").read_text().splitlines() if l]
    assert len(history) == 3
    assert not (out_dir / "checkpoint.pt").exists()


def test_stale_checkpoint_from_other_settings_is_not_resumed(tiny, tmp_path):
    config, _ = tiny
    config["train"]["epochs"] = 1
    run = Run("teachers", "digits", "wrn-10-1", 0)
    out = tmp_path / "t"
    before = signal.getsignal(signal.SIGTERM)
    training.train_run(jobspec.training(config, run), out_dir=out, device=torch.device("cpu"))
    assert signal.getsignal(signal.SIGTERM) is before  # fit put the previous handler back
    first = checkpoint.load(out / "model.pt")
    # leave a checkpoint claiming a finished run with different settings
    fake = {"model": {k: torch.zeros_like(v) for k, v in first.items()}, "epoch": 1, "fingerprint": "other"}
    checkpoint.save(fake, out / "checkpoint.pt")
    training.train_run(jobspec.training(config, run), out_dir=out, device=torch.device("cpu"))
    again = checkpoint.load(out / "model.pt")
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_non_finite_loss_stops_with_epoch_and_step(tiny, tmp_path):
    config, _ = tiny
    config["train"].update(lr=1e6, epochs=2)
    run = Run("teachers", "digits", "wrn-10-1", 0)
    with pytest.raises(RuntimeError, match=r"loss is nan or inf at epoch \d+, within steps \d+-\d+"):
        training.train_run(jobspec.training(config, run), out_dir=tmp_path / "nan", device=torch.device("cpu"))
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_history_numbers_equal_per_step_host_sums(tmp_path):
    """The loop keeps its totals on the device and reads them every SYNC_EVERY steps; the
    history must hold what per-step host sums (the old loop's .item() per step) give."""
    from ltd import train as loop
    from ltd.loaders import DeviceLoader, Split
    from ltd.models import build_model
    from ltd.steps import build_step

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(200, 3, 8, 8, generator=g), torch.randint(0, 10, (200,), generator=g)
    loader = DeviceLoader(Split(x, y, None), 16, crop_padding=1, seed=2)  # 13 steps: reads at 5, 10 and 13
    seen = []
    base = build_step("trades", beta=6.0, attack={"eps": 8 / 255, "step_size": 2 / 255, "steps": 2})

    class Recording(type(base)):
        def __call__(self, model, x, y, q):
            loss, logits, stats = super().__call__(model, x, y, q)
            seen.append((loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y), stats["robust"].item(),
                         stats["stalled"].item(), stats["adv_accuracy"].item(), stats["moved"].item()))
            return loss, logits, stats

    step = Recording(base.method, beta=6.0, attack=base.attack)
    sched = dict(epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, lr_milestones=[1], lr_gamma=0.1)
    torch.manual_seed(0)
    old = loop.SYNC_EVERY
    loop.SYNC_EVERY = 5
    try:
        history = loop.fit(build_model("wrn-10-1", 10), step, loader, sched, ckpt_path=tmp_path / "c.pt",
                           device=torch.device("cpu"))
    finally:
        loop.SYNC_EVERY = old
    assert len(seen) == 2 * len(loader)
    for epoch, h in enumerate(history):
        steps = seen[epoch * len(loader):(epoch + 1) * len(loader)]
        n = sum(s[2] for s in steps)
        assert h["train_loss"] == pytest.approx(sum(s[0] for s in steps) / n, rel=1e-12)
        assert h["train_accuracy"] == sum(s[1] for s in steps) / n
        assert h["train_robust"] == pytest.approx(sum(s[3] * s[2] for s in steps) / n, rel=1e-6)
        assert h["train_stalled"] == pytest.approx(sum(s[4] * s[2] for s in steps) / n, abs=1e-12)
        assert h["train_adv_accuracy"] == pytest.approx(sum(s[5] * s[2] for s in steps) / n, abs=1e-12)
        assert h["train_moved"] == pytest.approx(sum(s[6] * s[2] for s in steps) / n, abs=1e-12) and h["train_moved"] > 0


def _stalling_fit(tmp_path, alarm, name):
    """TRADES in fp16 on a model with logits of a few hundredths (tests/test_attacks.py):
    every attack's input gradient underflows, x' never moves."""
    from ltd import train as loop
    from ltd.loaders import DeviceLoader, Split
    from ltd.steps import build_step

    from .test_attacks import SmallLogits

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g)
    torch.manual_seed(0)
    sched = dict(epochs=2, lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True, lr_milestones=[], lr_gamma=0.1,
                 stalled_attacks=alarm)
    step = build_step("trades", beta=6.0, attack={"eps": 8 / 255, "step_size": 2 / 255, "steps": 2})
    return loop.fit(SmallLogits(), step, DeviceLoader(Split(x, y, None), 32, seed=1), sched,
                    ckpt_path=tmp_path / f"{name}.pt", device=torch.device("cpu"), precision="fp16", desc=name)


def test_stalled_attacks_warn_loudly_and_can_stop_the_run(tmp_path, capsys):
    from ltd import train as loop

    history = _stalling_fit(tmp_path, {"warn": 0.5, "stop": None}, "warned")
    assert [(h["train_stalled"], h["train_moved"]) for h in history] == [(1.0, 0.0), (1.0, 0.0)]
    err = capsys.readouterr().err
    assert err.count("WARNING warned: 100.0 % of epoch") == 2 and "in fp16 a small input gradient underflows" in err
    assert "moving fewer than 50 % of their pixels" in err and "moved 0.0 % of the pixels on average" in err
    _stalling_fit(tmp_path, {"warn": None, "stop": None}, "quiet")
    assert "WARNING" not in capsys.readouterr().err
    with pytest.raises(loop.StalledAttacks, match="stopped by train.stalled_attacks.stop = 0.9"):
        _stalling_fit(tmp_path, {"warn": 0.5, "stop": 0.9}, "stopped")
    assert checkpoint.load(tmp_path / "stopped.pt")["epoch"] == 1  # the stopped epoch's checkpoint is kept
