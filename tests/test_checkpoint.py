"""A truncated checkpoint (a disk fault, a copy cut short): named, moved aside, and the run
starts again from its first epoch, instead of torch's zip-reader error that names no file
at every retry."""
import pytest
import torch

from ltd import checkpoint
from ltd import train as loop
from ltd.loaders import DeviceLoader, Split
from ltd.models import build_model
from ltd.steps import build_step

SCHED = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True, lr_milestones=[1], lr_gamma=0.1)


def _fit(ckpt, epochs):
    """TRADES on 64 random images, 2 steps an epoch, from a model and RNG seeded alike."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 3, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    step = build_step("trades", beta=6.0, attack={"eps": 8 / 255, "step_size": 2 / 255, "steps": 1})
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    history = loop.fit(model, step, DeviceLoader(Split(x, y, None), 32, seed=1), {**SCHED, "epochs": epochs},
                       ckpt_path=ckpt, device=torch.device("cpu"), fingerprint="run", desc="run")
    return model.state_dict(), history


@pytest.mark.parametrize("keep", [0.5, 0.0])  # cut in the middle; an empty file
def test_a_truncated_checkpoint_is_named_moved_aside_and_the_run_restarts(tmp_path, capsys, keep):
    ckpt = tmp_path / "students" / "run" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    _fit(ckpt, epochs=1)  # a real checkpoint, after epoch 1 of the run
    assert checkpoint.load(ckpt)["epoch"] == 1
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(checkpoint.UnreadableFile, match=f"{ckpt} cannot be read by torch.load"):
        checkpoint.load(ckpt)
    capsys.readouterr()

    weights, history = _fit(ckpt, epochs=2)  # the rerun, through fit's resume
    err = capsys.readouterr().err
    aside = ckpt.with_name("checkpoint.pt.corrupt")
    assert f"run: WARNING: {ckpt} cannot be read by torch.load" in err and \
        f"Moved it to {aside}; training starts again from epoch 1" in err, err
    assert "resuming" not in err
    assert aside.read_bytes() == data[:int(len(data) * keep)]  # kept as it was
    assert checkpoint.load(ckpt)["epoch"] == 2  # a new, readable checkpoint
    # from the start: what an uninterrupted two-epoch run gives
    want, want_history = _fit(tmp_path / "reference.pt", epochs=2)
    assert [h["epoch"] for h in history] == [h["epoch"] for h in want_history] and len(history) == 2
    assert all(torch.equal(weights[k], want[k]) for k in want)


def test_a_second_corrupt_file_does_not_overwrite_the_first(tmp_path):
    f = tmp_path / "checkpoint.pt"
    for i in range(2):
        f.write_bytes(b"PK\x03\x04 cut" + bytes([i]))
        checkpoint.set_aside(f)
    assert (tmp_path / "checkpoint.pt.corrupt").read_bytes()[-1] == 0
    assert (tmp_path / "checkpoint.pt.corrupt.1").read_bytes()[-1] == 1 and not f.exists()
