"""Two gloo processes under torchrun (through ltd.distributed.launch) train like one.

The comparison is exact math only without BatchNorm: per-process BN normalises each
slice with its own statistics (SyncBatchNorm, which would fix that, runs on CUDA only),
so the one-process comparison uses a BN-free net. A BN + TRADES run checks instead that
the two processes hold identical weights and running statistics throughout, and a
SIGTERM that reaches one process only stops both at the same step and resumes exactly.
"""
import runpy
import sys

import torch

from ltd import checkpoint, distributed, train

WORKER = r'''
import os, signal, sys
from pathlib import Path
import torch
from ltd import distributed, train
from ltd.loaders import DeviceLoader, Split
from ltd.steps import build_step

torch.set_num_threads(1)
train.SYNC_EVERY = 1  # agree on SIGTERM after every step (the default waits for a sync point)
natural_step = build_step("natural")
ctx = distributed.init("cpu")
out = Path(sys.argv[1])
SCHED = dict(epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, lr_milestones=[1], lr_gamma=0.1,
             precision="fp32")
g = torch.Generator().manual_seed(0)
x, y = torch.rand(45, 3, 8, 8, generator=g), torch.randint(0, 10, (45,), generator=g)
# global batches of 16, 16, 13: rank slices 8/8, 8/8, 6/7 (unequal: tests the weighting)
loader = DeviceLoader(Split(x, y, None), 16, crop_padding=1, seed=3, rank=ctx.rank, world_size=ctx.world_size)


def net(bn=False):
    torch.manual_seed(1 + ctx.rank)  # a different init per rank on purpose: fit starts all from rank 0's
    layers = [torch.nn.Conv2d(3, 8, 3, padding=1)] + ([torch.nn.BatchNorm2d(8)] if bn else [])
    return torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 10))


def fit(model, step, name):
    return train.fit(model, step, loader, SCHED, ckpt_path=out / f"{name}.ckpt", device=ctx.device, desc=name)


result = {}
model = net()
result["history"] = fit(model, natural_step, "plain")
result["plain"] = model.state_dict()
if ctx.world_size > 1:
    model = net(bn=True)
    torch.manual_seed(0)  # the attack's random start: the same stream on every rank
    fit(model, build_step("trades", beta=6.0, attack=dict(eps=0.03, step_size=0.01, steps=2)), "bn")
    result["bn"] = model.state_dict()

    class Signalled(type(natural_step)):
        calls = 0
        def __call__(self, model, x, y, q):  # rank 1 alone gets SIGTERM, during epoch 2's first step
            self.calls += 1
            if ctx.rank == 1 and self.calls == 4:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(model, x, y, q)
    try:
        fit(net(), Signalled(natural_step.method), "preempted")
    except train.Preempted as e:
        result["preempted"] = str(e)
    model = net()
    fit(model, natural_step, "preempted")  # the rerun
    result["resumed"] = model.state_dict()
torch.save(result, out / f"rank{ctx.rank}.pt")
distributed.destroy()
'''


def test_two_processes_train_like_one(tmp_path, monkeypatch):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    distributed.launch(2, str(script), [tmp_path / "two"])
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "one")])
    # the script sets the loop's SYNC_EVERY and the thread count: restored after this test,
    # or a later test's loop (test_amp's non-finite counts) would sync after every step
    monkeypatch.setattr(train, "SYNC_EVERY", train.SYNC_EVERY)
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")  # the same code, one process
    finally:
        torch.set_num_threads(threads)
    r0, r1 = (torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=False)

    for k, v in one["plain"].items():  # same weights as one process on the same global batches
        torch.testing.assert_close(r0["plain"][k], v, rtol=1e-5, atol=1e-6)
    for h2, h1 in zip(r0["history"], one["history"], strict=True):  # totals summed over ranks
        assert abs(h2["train_loss"] - h1["train_loss"]) < 1e-5
        assert h2["train_accuracy"] == h1["train_accuracy"]
    for name in ("plain", "bn", "resumed"):  # the ranks never drift apart (BN buffers included)
        assert all(torch.equal(r0[name][k], r1[name][k]) for k in r0[name]), name
    assert any("running_mean" in k for k in r0["bn"])

    assert r0["preempted"] == r1["preempted"] and "at epoch 2, step 1" in r0["preempted"]
    assert all(torch.equal(r0["resumed"][k], r0["plain"][k]) for k in r0["plain"]), "resume is not exact"
    assert checkpoint.load(tmp_path / "two" / "preempted.ckpt")["step"] == 0  # rewritten at the epoch ends


def test_launch_reports_a_failing_process(tmp_path):
    import subprocess

    import pytest

    script = tmp_path / "fail.py"
    script.write_text("import os, sys\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    with pytest.raises(subprocess.CalledProcessError):
        distributed.launch(2, str(script))
