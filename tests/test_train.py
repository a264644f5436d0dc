"""Checkpoint, kill, resume: the resumed run must end with the same weights."""
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from ltd import checkpoint, jobs
from ltd.experiments import Run

from .conftest import ROOT

JOB = """
import sys, torch, yaml
from ltd import jobs
from ltd.experiments import Run
torch.set_num_threads(1)
config = yaml.safe_load(open(sys.argv[1]))
run = Run.parse("students", sys.argv[2])
jobs.train_run(config, run, out_dir=sys.argv[3], device=torch.device("cpu"))
"""


@pytest.fixture
def tiny(demo_config, tmp_path):
    c = demo_config
    c["dataset"].update(train_size=256, image_size=16)
    c["arch"] = "wrn-10-1"
    c["train"].update(epochs=3, batch_size=64, lr_milestones=[2])
    c["student"] = {}
    c["trades"]["steps"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(c))
    return c, path


def _job(config_path, name, out_dir):
    return subprocess.Popen([sys.executable, "-c", JOB, str(config_path), name, str(out_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_run_resumes_to_identical_weights(tiny, tmp_path):
    config, path = tiny
    name = Run("students", "digits", "wrn-10-1", 0, method="trades", beta=6.0).name
    reference = _job(path, name, tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    killed = _job(path, name, tmp_path / "resumed")
    ckpt = tmp_path / "resumed" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "resumed" / "model.pt").exists()
    done = checkpoint.load(ckpt)["epoch"]
    assert 1 <= done < 3

    resumed = _job(path, name, tmp_path / "resumed")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert f"resuming after epoch {done}" in out
    a = checkpoint.load(tmp_path / "reference" / "model.pt")
    b = checkpoint.load(tmp_path / "resumed" / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    metrics = checkpoint.load_json(tmp_path / "resumed" / "metrics.json")
    assert metrics["epochs"] == 3 and 0 <= metrics["clean_accuracy"] <= 1
    assert not ckpt.exists()  # removed once the job is complete


def test_stale_checkpoint_from_other_settings_is_not_resumed(tiny, tmp_path):
    config, _ = tiny
    config["train"]["epochs"] = 1
    run = Run("teachers", "digits", "wrn-10-1", 0)
    out = tmp_path / "t"
    jobs.train_run(config, run, out_dir=out, device=torch.device("cpu"))
    first = checkpoint.load(out / "model.pt")
    # leave a checkpoint claiming a finished run with different settings
    fake = {"model": {k: torch.zeros_like(v) for k, v in first.items()}, "epoch": 1, "fingerprint": "other"}
    checkpoint.save(fake, out / "checkpoint.pt")
    jobs.train_run(config, run, out_dir=out, device=torch.device("cpu"))
    again = checkpoint.load(out / "model.pt")
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_non_finite_loss_stops_with_epoch_and_step(tiny, tmp_path):
    config, _ = tiny
    config["train"].update(lr=1e6, epochs=2)
    run = Run("teachers", "digits", "wrn-10-1", 0)
    with pytest.raises(RuntimeError, match=r"loss is (nan|inf) at epoch \d+, step \d+"):
        jobs.train_run(config, run, out_dir=tmp_path / "nan", device=torch.device("cpu"))
    assert not (tmp_path / "nan" / "model.pt").exists()
