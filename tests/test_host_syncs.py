"""No host synchronisation per training step (issue: ~4 per step hid in the augmentation
and the running totals). Counted with ``ltd.host_syncs.HostSyncs`` on the ``meta``
device: every copy between host and device and every read of a device value is seen by
the dispatcher there, on any CPU (``torch.cuda.set_sync_debug_mode`` needs a GPU: the
retired device check, benchmarks/gpu_check.py, counted the real ones: docs/performance.md)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltd import loaders, methods, steps
from ltd.host_syncs import HostSyncs
from ltd.models import build_model
from ltd.train import Totals, make_optimizer

META = torch.device("meta")
SCHED = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "lr_milestones": [1], "lr_gamma": 0.1}
ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 2}


def test_the_counter_sees_every_kind_of_sync():
    host = torch.arange(4)
    dev = torch.zeros(4, 3, device=META)
    with HostSyncs() as s:
        dev.sum().item()                      # read
        dev.sum(0).tolist()                   # a copy device -> host
        host.to(META)                         # copy host -> device
        dev.cpu()                             # copy device -> host
        dev[host]                             # a host index given to a device op: copied
        torch.tensor(3.0, device=META)        # host data onto the device (bypasses the dispatcher)
        torch.nonzero(dev)                    # output size read from the device
    assert s.kinds() == {"read": 2, "copy": 5}, s.events
    assert all("test_host_syncs.py" in where for _, _, where in s.events)  # each names the line
    with HostSyncs() as s:  # kernel arguments and device-side work: no sync
        dev * 3
        torch.full((), 3.0, device=META)
        dev[torch.arange(2, device=META)]
        host * 2  # the host alone
        torch.tensor(3.0)
    assert s.count == 0, s.events
    assert torch.tensor is not None and "factory" not in repr(torch.tensor)  # restored on exit


def _loop_body(step, model, opt, totals, batch):
    """ltd.train.fit's per-batch code (one process, fp32; its read every SYNC_EVERY steps aside)."""
    x, y, q = batch
    loss, logits, stats = step(model, x, y, q)
    totals.add(loss, logits, y, stats)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    step.after_update(model)


# PGD-AT is left out: its after_update asks autocast about the device, which meta lacks
@pytest.mark.parametrize("method", ["trades-ltd", "awp-ltd", "mart-ltd", "natural"])
def test_a_training_step_never_waits_for_the_host(method):
    g = torch.Generator().manual_seed(0)
    n = 24
    split = loaders.Split(torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 10, np.arange(n)).to(META)
    q = F.softmax(torch.randn(n, 10, generator=g), 1).to(META)
    loader = loaders.DeviceLoader(split, 8, q=q, crop_padding=2, seed=0)
    m = methods.get(method)
    step = steps.build_step(method, beta=6.0, attack=ATTACK if m.attack else None,
                              awp={"gamma": 5e-3, "warmup_epochs": 1, "proxy_lr": 0.1} if m.awp else None)
    step.begin_epoch(0)
    model = build_model("wrn-10-1", 10).to(META)
    opt, _ = make_optimizer(model, SCHED)
    totals = Totals(META)
    counts = []
    batches = loader.epoch(0)
    for _ in range(len(loader)):
        with HostSyncs() as s:
            _loop_body(step, model, opt, totals, next(batches))
        counts.append(s.events)
    assert getattr(step, "active", True)  # AWP was on
    # the epoch's order and crop/flip parameters reach the device in one copy, with its first batch
    assert [len(c) for c in counts] == [1, 0, 0], counts
    assert "loaders.py" in counts[0][0][2]


def test_totals_add_copies_nothing():
    totals = Totals(META)
    loss, logits, y = torch.zeros((), device=META), torch.zeros(8, 10, device=META), torch.zeros(8, dtype=torch.long,
                                                                                             device=META)
    with HostSyncs() as s:
        for _ in range(3):
            totals.add(loss, logits, y, {"loss": loss, "robust": loss})
    assert s.count == 0, s.events


def _per_batch_reference(split, batch_size, padding, seed, epoch, rank=0, world_size=1):
    """The loader as it was before (each batch drew its crop/flip parameters on the host and
    copied them to the device): the batches must stay bitwise these."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(split), generator=g)
    for start, stop in loaders.batch_bounds(len(split), batch_size, world_size):
        lo, hi = loaders.shard(start, stop, rank, world_size)
        idx = order[lo:hi]
        dy, dx, flip = loaders._crop_flip_params(stop - start, padding, g)
        dy, dx = (None, None) if dy is None else (dy[lo - start:hi - start], dx[lo - start:hi - start])
        x = loaders._apply_crop_flip(split.x[idx], padding, dy, dx, flip[lo - start:hi - start])
        yield x, split.y[idx]


@pytest.mark.parametrize("padding, world_size", [(2, 1), (0, 1), (1, 2), (3, 3)])
def test_batches_are_bitwise_those_of_per_batch_draws(padding, world_size):
    g = torch.Generator().manual_seed(1)
    split = loaders.Split(torch.rand(45, 3, 8, 8, generator=g), torch.arange(45) % 10, np.arange(45))
    for epoch in (0, 3):
        for rank in range(world_size):
            loader = loaders.DeviceLoader(split, 16, crop_padding=padding, seed=5, rank=rank, world_size=world_size)
            ours = list(loader.epoch(epoch))
            ref = list(_per_batch_reference(split, 16, padding, 5, epoch, rank, world_size))
            assert len(ours) == len(ref) == len(loader)
            for (x, y, _), (rx, ry) in zip(ours, ref):
                assert torch.equal(x, rx) and torch.equal(y, ry)
