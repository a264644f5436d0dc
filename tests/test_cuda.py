"""The GPU code paths: bf16 autocast, channels_last, the on-device loader, checkpoint and
resume, AutoAttack, GPU slots.

Each runs on the CPU where it can (bf16 autocast and channels_last exist there too), and
on CUDA in the tests marked ``cuda``: those are skipped, with the reason, without a GPU
(tests/conftest.py); ``pytest -m cuda`` runs just them, on the GPU machine.

Tolerances. bf16 keeps 8 significant bits: one rounding is up to 2^-9 = 0.2 % relative,
and a bf16 step's loss (computed in fp32 from bf16 logits) stays within about one bf16
step (2^-8 = 0.4 %) of the fp32 loss; measured on these tiny models: 0.01-0.04 %. We
allow 0.5 % (BF16_RTOL): an order of magnitude above what was measured, and still five
times below the effect of AWP's weight perturbation on the loss here (about 2.4 %), so a
bf16 step that silently drops the perturbation fails. channels_last changes only the
order of float32 sums: its forward equals the contiguous one to float rounding.
"""
import contextlib
import copy
import fcntl
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltd import flops, gpu_slots, jobspec, loaders, runtime
from ltd.autoattack import run_autoattack
from ltd.known_answer import MeanIntensityNet, known_answer_data
from ltd.models import build_model
from ltd.steps import build_step
from ltd.train import fit

from .conftest import ROOT

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3}
AWP = {"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.1}  # AWP on from the first epoch
SCHED = {"epochs": 2, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "lr_milestones": [1],
         "lr_gamma": 0.1, "channels_last": True}
BF16_RTOL = 5e-3


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """Tiny models: one CPU thread is faster than two that wait on each other on a busy machine."""
    with flops.one_thread():
        yield


def _device(name: str) -> torch.device:
    if name == "cuda":
        return runtime.setup("cuda")  # as a job: TF32 off, so fp32 is fp32
    return torch.device("cpu")


def _batch(n=16, size=16, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    q = F.softmax(2 * torch.randn(n, classes, generator=g), dim=1)
    return x, y, q


def _step(method, base, batch, device, precision, memory_format=torch.contiguous_format, seed=100):
    """One training step driven as ltd.train.fit drives it (autocast around the step,
    backward outside); returns (loss, logits dtype, the flattened gradient)."""
    model = copy.deepcopy(base).to(device, memory_format=memory_format)
    x, y, q = (t.to(device) for t in batch)
    x = x.contiguous(memory_format=memory_format)
    step = build_step(method, beta=6.0, attack=ATTACK if method != "natural" else None,
                      awp=AWP if method.startswith("awp") else None)
    step.begin_epoch(0)
    torch.manual_seed(seed)  # the attack's random start (every device's generator)
    with runtime.autocast(device, precision):
        loss, logits, _ = step(model, x, y, q)
    model.zero_grad(set_to_none=True)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).float().cpu()
    step.after_update(model)
    return loss.item(), logits.dtype, grad


def _cos(a, b) -> float:
    return F.cosine_similarity(a.double(), b.double(), dim=0).item()  # float64: 1 - cos resolves 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["trades-ltd", "awp-ltd"])
def test_bf16_step_is_close_to_fp32(device, method):
    device = _device(device)
    torch.manual_seed(0)
    base = build_model("wrn-10-1", 10)
    batch = _batch()
    loss32, dtype32, grad32 = _step(method, base, batch, device, "fp32")
    loss16, dtype16, grad16 = _step(method, base, batch, device, "bf16")
    assert dtype32 == torch.float32 and dtype16 == torch.bfloat16  # autocast really ran (or not)
    assert abs(loss16 - loss32) <= BF16_RTOL * abs(loss32), (loss16, loss32)
    assert _cos(grad16, grad32) > 0.95  # measured 0.98-0.99
    if method == "awp-ltd":
        # The weight perturbation must act under autocast as in fp32: autocast's cache of
        # bf16 weight copies once made the bf16 loss ignore it (AWP silently = TRADES).
        trades32 = _step("trades-ltd", base, batch, device, "fp32")[0]
        trades16 = _step("trades-ltd", base, batch, device, "bf16")[0]
        effect32, effect16 = loss32 - trades32, loss16 - trades16
        assert abs(effect32) > 2 * BF16_RTOL * abs(loss32)  # the perturbation matters at these settings
        assert abs(effect16 - effect32) <= 0.2 * abs(effect32), (effect16, effect32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["trades-ltd", "awp-ltd"])
def test_short_fit_in_bf16_is_close_to_fp32_and_records_it(device, method, tmp_path):
    device = _device(device)
    x, y, q = _batch(n=64)
    histories = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model("wrn-10-1", 10)
        dtypes = set()
        model.fc.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
        step = build_step(method, beta=6.0, attack=ATTACK, awp=AWP if method.startswith("awp") else None)
        loader = loaders.DeviceLoader(loaders.Split(x.to(device), y.to(device), None), 16, q=q.to(device),
                                      crop_padding=2, seed=1)
        histories[precision] = fit(model, step, loader, SCHED, ckpt_path=tmp_path / f"{precision}.pt", device=device,
                                   precision=precision)
        assert [h["precision"] for h in histories[precision]] == [precision] * 2  # what ran, recorded
        # the training forwards ran in it (the attack's eval-mode forwards are under autocast too)
        assert dtypes == {torch.float32 if precision == "fp32" else torch.bfloat16}
    for h32, h16 in zip(histories["fp32"], histories["bf16"], strict=True):
        assert abs(h16["train_loss"] - h32["train_loss"]) <= BF16_RTOL * h32["train_loss"]


@pytest.mark.parametrize("device", DEVICES)
def test_every_method_trains_in_bf16_with_channels_last(device, tmp_path):
    """Every registry method through ltd.train.fit (bf16 autocast, channels_last on CUDA),
    and LTD students labelled on the fly by a teacher on the device: losses finite, weights
    moved, BN statistics finite (PGD-AT's post-update forward and the BN replays too)."""
    from ltd import methods
    from ltd.teacher_labels import TeacherLabels

    device = _device(device)
    x, y, q = _batch(n=32)
    torch.manual_seed(0)
    teacher = build_model("wrn-10-1", 10)
    for name, m in methods.METHODS.items():
        for fly in ([False, True] if m.uses_soft_labels and m.role == "students" else [False]):
            torch.manual_seed(0)
            model = build_model("wrn-10-1", 10)
            before = copy.deepcopy(model.state_dict())
            loader = loaders.DeviceLoader(loaders.Split(x.to(device), y.to(device), None), 16,
                                          q=None if fly else q.to(device), crop_padding=2, seed=1)
            if fly:
                loader = TeacherLabels(loader, copy.deepcopy(teacher), 5.0, device, "bf16")
            step = build_step(name, beta=6.0, attack=ATTACK if m.attack else None, awp=AWP if m.awp else None)
            h = fit(model, step, loader, {**SCHED, "epochs": 1}, ckpt_path=tmp_path / f"{name}{fly}.pt",
                    device=device, precision="bf16")
            assert h[0]["precision"] == "bf16" and math.isfinite(h[0]["train_loss"]), (name, fly)
            if m.attack:  # every method with a training attack reports its attack's numbers
                assert {"train_stalled", "train_adv_accuracy"} <= set(h[0]), (name, h[0])
                assert 0 <= h[0]["train_stalled"] <= 1 and 0 <= h[0]["train_adv_accuracy"] <= 1
            if m.attack in ("trades", "awp", "mart"):
                assert h[0]["train_robust"] >= 0  # the KL term
            state = model.state_dict()
            assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), (name, fly)
            assert any(not torch.equal(v.cpu(), before[k]) for k, v in state.items() if k.endswith("weight"))


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_equals_contiguous(device):
    device = _device(device)
    torch.manual_seed(0)
    base = build_model("wrn-10-2", 10)
    batch = _batch()
    x = batch[0].to(device)
    with torch.no_grad():
        ref = copy.deepcopy(base).to(device).eval()(x)
        cl_model = copy.deepcopy(base).to(device, memory_format=torch.channels_last).eval()
        assert cl_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        out = cl_model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for method in ("natural", "trades-ltd"):
        loss_c, _, grad_c = _step(method, base, batch, device, "fp32")
        loss_l, _, grad_l = _step(method, base, batch, device, "fp32", memory_format=torch.channels_last)
        # natural: float rounding only. TRADES: its sign-gradient attack may flip the sign of
        # an input gradient that is ~0, moving that pixel by 2 steps: still within 1e-4.
        rtol = 1e-5 if method == "natural" else 1e-4
        assert abs(loss_l - loss_c) <= rtol * abs(loss_c), (method, loss_l, loss_c)
        assert _cos(grad_l, grad_c) > 1 - (1e-5 if method == "natural" else 1e-3)  # measured: 1e-11-1e-7 / 2e-5


def test_known_answer_model_and_data():
    model = MeanIntensityNet()
    eps = 8 / 255
    x, y, clean, robust = known_answer_data(model, 200, eps, clean=0.85, robust=0.57)
    assert clean.float().mean().item() == pytest.approx(0.85) and robust.float().mean().item() == pytest.approx(0.57)
    assert 0 <= x.min() and x.max() <= 1
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1) == y, clean)
        # the best Linf attack on this model shifts every pixel by eps toward the nearest boundary
        m = model.intensity(x)
        for sign in (1.0, -1.0):
            moved = model((x + sign * eps).clamp(0, 1)).argmax(1) == y
            assert not (moved & ~robust & clean & (torch.sign(m - model.centres[y]) == sign)).any()
            assert moved[robust].all()


def _autoattack(device, x, y, square_queries=200):
    model = MeanIntensityNet().to(device)
    return run_autoattack(model, x.to(device), y.to(device), eps=8 / 255, version="standard",
                          square_queries=square_queries, batch_size=500, device=device, progress=False)


@pytest.fixture(scope="module")
def known_answer():
    return known_answer_data(MeanIntensityNet(), 12, 8 / 255, image_size=16)


def test_autoattack_finds_exactly_the_known_answer_on_the_cpu(known_answer):
    x, y, clean, robust = known_answer
    record, flags = _autoattack("cpu", x, y)
    assert torch.equal(flags["square"], robust) and torch.equal(flags["apgd-ce"], robust)
    assert record["clean_accuracy"] == clean.sum().item() / len(y)
    assert record["robust_accuracy"] == robust.sum().item() / len(y) > 0


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "pytorch_default", "tf32"])
def test_autoattack_on_cuda_equals_the_cpu(known_answer, precision):
    """"Equal" across devices: on this model every example lies at least 0.005 (in mean
    intensity) from the eps threshold, far beyond any rounding (below 1e-3 even in TF32),
    so the per-example flags after each attack must be identical on CPU and GPU, and equal
    the known answer. (On an ordinary network, examples near the threshold may flip
    between devices; only robust accuracy within a margin could be compared there.)"""
    x, y, clean, robust = known_answer
    cpu_record, cpu_flags = _autoattack("cpu", x, y)
    device = _device("cuda")
    runtime.allow_tf32(device, precision)
    try:
        record, flags = _autoattack(device, x, y)
    finally:
        runtime.allow_tf32(device, False)
    assert record["precision"] == precision
    for attack in cpu_flags:
        assert torch.equal(flags[attack], cpu_flags[attack]), attack
    assert torch.equal(flags["square"], robust)
    assert record["robust_accuracy_after"] == cpu_record["robust_accuracy_after"]


@pytest.mark.cuda
def test_device_loader_batches_on_cuda_equal_the_cpus():
    device = _device("cuda")
    x = torch.randint(0, 256, (100, 3, 32, 32)).float() / 255  # CIFAR-like pixel values
    y, q = torch.arange(100) % 10, torch.softmax(torch.randn(100, 10), 1)
    for world, rank in ((1, 0), (3, 1)):
        make = lambda d: loaders.DeviceLoader(loaders.Split(x.to(d), y.to(d), np.arange(100)), 32,  # noqa: E731
                                              q=q.to(d), crop_padding=4, seed=5, rank=rank, world_size=world)
        cpu, gpu = make("cpu"), make(device)
        for epoch in (0, 1):
            batches = list(zip(cpu.epoch(epoch), gpu.epoch(epoch), strict=True))
            assert len(batches) == len(cpu)
            for (xc, yc, qc), (xg, yg, qg) in batches:
                assert xg.device.type == "cuda"
                assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc) and torch.equal(qg.cpu(), qc)


RESUME = """
import json, sys, torch
from ltd import loaders, runtime, train
from ltd.steps import build_step
from ltd.models import build_model

device = runtime.setup("cuda")
torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
torch.use_deterministic_algorithms(True, warn_only=True)
sched = json.loads(sys.argv[2])
g = torch.Generator().manual_seed(0)
x, y = torch.rand(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g)
q = torch.softmax(2 * torch.randn(64, 10, generator=g), 1)
loader = loaders.DeviceLoader(loaders.Split(x.to(device), y.to(device), None), 16, q=q.to(device),
                              crop_padding=2, seed=1)

# Train to stops[-1] epochs in attempts that end at each of `stops` (the first ones are
# interrupted runs). Each attempt builds its model as a job does (seed 0) and fit resumes
# from the checkpoint; between attempts the RNG is re-seeded with `reseed`, as a new
# process's RNG would differ from where the run stopped.
def run(ckpt, stops, reseed=None):
    for i, epochs in enumerate(stops):
        torch.manual_seed(0)
        model = build_model("wrn-10-1", 10)
        if i > 0:
            torch.manual_seed(reseed)  # every device's generator
        step = build_step("trades-ltd", beta=6.0, attack={"eps": 8 / 255, "step_size": 2 / 255, "steps": 3})
        train.fit(model, step, loader, {**sched, "epochs": epochs}, ckpt_path=ckpt, device=device,
                  precision="bf16", fingerprint="resume-test")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}

def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)

out = sys.argv[1]
ref = run(f"{out}/ref.pt", [3])
ref2 = run(f"{out}/ref2.pt", [3])
resumed = run(f"{out}/resumed.pt", [1, 3], reseed=12345)
restore = train._set_rng_state
train._set_rng_state = lambda state: torch.set_rng_state(state["torch"].cpu())  # forget the CUDA RNG state
no_cuda_rng = run(f"{out}/no_cuda_rng.pt", [1, 3], reseed=12345)
train._set_rng_state = restore
print(json.dumps({"reproducible": same(ref, ref2), "resumed_equal": same(ref, resumed),
                  "without_cuda_rng_equal": same(ref, no_cuda_rng),
                  "cuda_rng_in_checkpoint": "cuda" in torch.load(f"{out}/resumed.pt", weights_only=True)["rng"]}))
"""


def _python(code, *args, env=None, timeout=300):
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    env.pop("LTD_GPU_SLOTS_HELD", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.cuda
def test_resume_on_cuda_gives_identical_weights(tmp_path):
    """bf16, channels_last, cuDNN: resuming from a checkpoint ends with the weights of an
    uninterrupted run, bit for bit, because the checkpoint carries the CUDA RNG state
    (the attack's random start draws from it). Deterministic kernels (a fresh process,
    CUBLAS_WORKSPACE_CONFIG) so that two uninterrupted runs agree bit for bit at all."""
    out = _python(RESUME, tmp_path, json.dumps(SCHED), env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["cuda_rng_in_checkpoint"]
    assert r["reproducible"], "two uninterrupted runs differ: CUDA kernels are not deterministic here"
    assert r["resumed_equal"], "the resumed run's weights differ from the uninterrupted run's"
    assert not r["without_cuda_rng_equal"], "the test cannot tell: the CUDA RNG state made no difference"


SLOT_JOB = """
import json, os, sys, torch
from ltd import runtime
try:
    device = runtime.setup("auto", 1, gpus=int(sys.argv[1]), slots_dir=sys.argv[2], job="test_cuda")
except runtime.NoCudaError as e:
    print(json.dumps({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "error": str(e)}))
    sys.exit(0)
n = torch.cuda.device_count()
print(json.dumps({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": device.type, "count": n,
                  "uuids": [str(torch.cuda.get_device_properties(i).uuid) for i in range(n)]}))
"""


def _slot_job(gpus, slots_dir, ltd_gpus):
    out = _python(SLOT_JOB, gpus, slots_dir, env={"LTD_GPUS": ltd_gpus}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _held_by_another_job(slots_dir, gpus):
    """The lock files of ``gpus``, held as another job's gpu_slots would hold them (flock).
    Not gpu_slots.acquire: that refuses to run once CUDA is started in this process."""
    host_dir = gpu_slots.host_slots_dir(slots_dir)
    host_dir.mkdir(parents=True, exist_ok=True)
    fds = [os.open(host_dir / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666) for gpu in gpus]
    try:
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _visible_gpus():
    """This process's GPU ids (as gpu_slots reads them) and each one's UUID, by ordinal."""
    ids = gpu_slots.available_gpus()
    uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    return ids, uuids


@pytest.mark.cuda
def test_slot_sets_cuda_visible_devices_before_cuda_starts(tmp_path):
    """Meaningful on one GPU. LTD_GPUS lists a GPU that does not exist first, then the
    real one. While the test holds the bogus slot, the job gets the real GPU and CUDA shows
    it exactly. With the bogus slot free, the job takes it and CUDA shows *no* device: the
    job stops (NoCudaError). Had CUDA started before CUDA_VISIBLE_DEVICES was narrowed,
    it would have kept the real GPU."""
    ids, uuids = _visible_gpus()
    bogus = "99"
    ltd_gpus = f"{bogus},{ids[0]}"
    with _held_by_another_job(tmp_path, [bogus]):
        r = _slot_job(1, tmp_path, ltd_gpus)
    assert r["cvd"] == ids[0] and r["device"] == "cuda" and r["count"] == 1 and r["uuids"] == [uuids[0]]
    r = _slot_job(1, tmp_path, ltd_gpus)
    assert r["cvd"] == bogus and "error" in r and "torch sees no CUDA device" in r["error"]


@pytest.mark.cuda
def test_two_slots_expose_exactly_those_gpus(tmp_path):
    ids, uuids = _visible_gpus()
    if len(ids) < 2 or len(uuids) < 2:
        pytest.skip(f"needs 2 GPUs, this machine shows {len(uuids)} (the one-GPU slot test covers the ordering)")
    if len(ids) >= 3:  # another job holds the first GPU: the job must get the next two, in order
        with _held_by_another_job(tmp_path, [ids[0]]):
            r = _slot_job(2, tmp_path, ",".join(ids))
        want = [1, 2]
    else:
        r = _slot_job(2, tmp_path, ",".join(ids))
        want = [0, 1]
    assert r["cvd"] == ",".join(ids[i] for i in want) and r["count"] == 2
    assert r["uuids"] == [uuids[i] for i in want]


def test_attack_random_starts_do_not_depend_on_the_memory_format():
    """The same seed gives the same starting noise for a channels_last batch as for a
    contiguous one (randn_like would fill it in memory order: other noise per pixel)."""
    from ltd.attacks import pgd_attack, trades_attack

    x = torch.rand(4, 3, 8, 8)
    xl = x.contiguous(memory_format=torch.channels_last)
    model = torch.nn.Identity()  # unused with 0 attack steps
    starts = []
    for batch in (x, xl):
        torch.manual_seed(7)
        starts.append((trades_attack(model, batch, torch.zeros(4, 10), eps=0.1, step_size=0.01, steps=0),
                       pgd_attack(model, batch, torch.zeros(4, dtype=torch.long), eps=0.1, step_size=0.01, steps=0)))
    for a, b in zip(*starts):
        assert torch.equal(a, b) and not torch.equal(a, x)


def test_a_cpu_job_trains_in_fp32_and_records_it(demo_config, tmp_path):
    """The workflow's policy (runtime.effective_precision): a schedule's bf16 is for the
    GPU; a job on the CPU trains in fp32, and its metrics and history say so."""
    from ltd.experiments import Run
    from ltd.jobs import training

    config = demo_config
    config["datasets"]["digits"].update(train_size=64, image_size=16)
    config["train"].update(epochs=1, batch_size=32, precision="bf16")
    config["teacher"] = {}
    metrics = training.train_run(jobspec.training(config, Run("teachers", "digits", "wrn-10-1", 0)), out_dir=tmp_path,
                                 device=torch.device("cpu"))
    assert metrics["schedule"]["precision"] == "bf16" and metrics["precision"] == "fp32"
    assert [h["precision"] for h in metrics["history"]] == ["fp32"]
    # the monitors' precision is recorded (TF32 on a GPU; the CPU has none), and the
    # reported clean accuracy is the fp32 pass (here the monitor's own)
    assert [h["monitor_precision"] for h in metrics["history"]] == ["fp32"]
    assert metrics["clean_accuracy"] == metrics["history"][-1]["test_accuracy"]
