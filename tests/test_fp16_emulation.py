"""fp16-emulated: CUDA's fp16 autocast emulated in fp32 arithmetic (ltd/fp16_emulation.py).

What is checked on the CPU: the emulation follows CUDA autocast's op lists (as the
installed torch's ATen/autocast_mode.h writes them) and its rounding (one rounding of an
fp32-accumulated GEMM; gradients in fp16 where CUDA's are; autocast's weight-cast cache);
it equals real CPU fp16 autocast on nets where the two agree in op lists and in kernels
(1x1 convolutions, BatchNorm, ReLU, pooling, linear: the same loss, zero-gradient pixel
fraction and stalled fraction); where they differ, the difference is the CPU's own
(its lists; its 3x3 convolution's input gradient, rounded twice); and the emulated
precision trains through the real loop with torch.amp's GradScaler, is named in run
names and records, and plans as a table entry's own precision. The comparison with
real fp16 on CUDA is a stage of the device check (``ltd.fp16_emulation.compare``).
"""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from ltd import config as ltd_config
from ltd import experiments, flops, jobspec, loaders, runtime, steps
from ltd import fp16_emulation as emu
from ltd import train as loop
from ltd.models import build_model
from ltd.table_notes import precision_note

from .conftest import ROOT

EMU = emu.PRECISION
ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 2}
SCHED = {"epochs": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "lr_milestones": [],
         "lr_gamma": 0.1}
HALF_MAX = torch.finfo(torch.float16).max


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    with flops.one_thread():
        yield


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- the op lists ----

def _header_lists() -> dict[str, set[str]]:
    header = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        pytest.skip(f"{header} is not installed with this torch")
    text = header.read_text()

    def names(macro):
        body = re.search(rf"#define {macro}\(_\)(.*?)\n\n", text, re.S).group(1)
        return set(re.findall(r"_\((?:ADD_NS\()?(\w+)", body))

    return {"lower": names("AT_FORALL_LOWER_PRECISION_FP"),
            "fp32": names("AT_FORALL_FP32") | names("AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE"),
            "fp32_opt_dtype": names("AT_FORALL_FP32_SET_OPT_DTYPE"), "promote": names("AT_FORALL_PROMOTE")}


def test_the_lists_are_cuda_autocasts_as_the_installed_torch_writes_them():
    lists = _header_lists()
    assert lists["lower"] and lists["lower"] <= emu.CUDA_LOWER_PRECISION_OPS
    assert lists["fp32"] and lists["fp32"] <= emu.CUDA_FP32_OPS
    assert lists["fp32_opt_dtype"] and lists["fp32_opt_dtype"] <= emu.CUDA_FP32_OPT_DTYPE_OPS
    assert lists["promote"] and lists["promote"] <= emu.CUDA_PROMOTE_OPS
    assert not emu.CUDA_LOWER_PRECISION_OPS & (emu.CUDA_FP32_OPS | emu.CUDA_FP32_OPT_DTYPE_OPS)


def _dtypes(context):
    x32 = torch.randn(4, 8, 6, 6, generator=_gen())
    x16, v16 = x32.half(), torch.randn(4, 10, generator=_gen(1)).half()
    w = torch.randn(8, 8, 3, 3, generator=_gen(2))
    ops = {
        "conv2d": lambda: F.conv2d(x32, w), "linear": lambda: F.linear(v16.float(), torch.ones(3, 10)),
        "matmul": lambda: x32[0, 0] @ x32[0, 0], "bmm": lambda: torch.bmm(x32[0], x32[0]),
        "batch_norm": lambda: F.batch_norm(x16, None, None, torch.ones(8), torch.zeros(8), training=True),
        "relu": lambda: F.relu(x16), "max_pool2d": lambda: F.max_pool2d(x16, 2),
        "adaptive_avg_pool2d": lambda: F.adaptive_avg_pool2d(x16, 1), "add": lambda: x16 + x16,
        "log_softmax": lambda: F.log_softmax(v16, 1), "softmax": lambda: v16.softmax(1), "exp": lambda: v16.exp(),
        "sum": lambda: v16.sum(), "sum(dtype=fp16)": lambda: v16.sum(dtype=torch.float16),
        "layer_norm": lambda: F.layer_norm(v16, (10,)), "pow": lambda: v16 ** 2,
        "cross_entropy": lambda: F.cross_entropy(v16, torch.zeros(4, dtype=torch.long)),
        "kl_div": lambda: F.kl_div(v16, v16, reduction="sum", log_target=True),
        "addcmul": lambda: torch.addcmul(x32[0, 0], x16[0, 0], x16[0, 0]),
        "mm(fp64)": lambda: x32[0, 0].double() @ x32[0, 0].double(),
        "addmm_ (in place)": lambda: x32[0, 0].clone().addmm_(x32[0, 0], x32[0, 0]),
    }
    with context:
        return {k: f().dtype for k, f in ops.items()}


def test_ops_run_in_cuda_autocasts_dtypes():
    """Lower-precision list in fp16, fp32 list in fp32 (unless a dtype is given), the
    rest in its inputs' precision, fp64 and in-place ops untouched: CUDA autocast's
    documented behaviour (docs: "Autocast Op Reference")."""
    h, f = torch.float16, torch.float32
    assert _dtypes(emu.Fp16Emulation()) == {
        "conv2d": h, "linear": h, "matmul": h, "bmm": h, "batch_norm": h, "relu": h, "max_pool2d": h,
        "adaptive_avg_pool2d": h, "add": h, "log_softmax": f, "softmax": f, "exp": f, "sum": f,
        "sum(dtype=fp16)": h, "layer_norm": f, "pow": f, "cross_entropy": f, "kl_div": f, "addcmul": f,
        "mm(fp64)": torch.float64, "addmm_ (in place)": f}


def test_cpu_autocasts_lists_are_not_cudas():
    """One reason real CPU fp16 is no reference: it runs softmax, log_softmax, exp, sum,
    layer_norm, pow in fp16 (CUDA: fp32). A TRADES KL on fp16 logits (no ``.float()``)
    then differs completely: ltd's steps call ``.float()`` on logits, so ours do not."""
    cpu = _dtypes(torch.autocast("cpu", dtype=torch.float16))
    assert all(cpu[k] == torch.float16 for k in ("log_softmax", "softmax", "exp", "sum", "layer_norm", "pow"))
    assert all(cpu[k] == torch.float16 for k in ("conv2d", "linear", "batch_norm", "relu", "add"))


def test_python_functions_that_hide_listed_ops_are_refused():
    mha = nn.MultiheadAttention(8, 2)
    x = torch.randn(3, 2, 8)
    with emu.Fp16Emulation(), pytest.raises(NotImplementedError, match="multi_head_attention_forward"):
        mha(x, x, x)


# ---- the rounding ----

def test_a_gemm_is_fp32_arithmetic_on_fp16_values_rounded_once():
    x = torch.randn(8, 4, 10, 10, generator=_gen()) * 3
    w = torch.randn(6, 4, 3, 3, generator=_gen(1), requires_grad=True)
    with emu.Fp16Emulation():
        y = F.conv2d(x, w, padding=1)
    reference = F.conv2d(x.half().float(), w.detach().half().float(), padding=1).half()
    assert y.dtype == torch.float16 and torch.equal(y, reference)
    # the real fp16 kernel differs from it in the last bit at most, here and there
    real = F.conv2d(x.half(), w.detach().half(), padding=1)
    assert ((real.float() - reference.float()).abs() <= reference.float().abs() * 2 ** -10 + 2 ** -24).all()


def test_gradients_are_fp16_where_cudas_are_underflow_and_overflow_included():
    """The input gradient of a linear layer is fp16 (tiny ones underflow to exactly 0);
    the weight's gradient is computed in fp16 (overflows to inf past 65504) and reaches
    the fp32 parameter through the cast, as CUDA's ToCopyBackward gives it."""
    lin = nn.Linear(64, 4, bias=False)
    x = torch.randn(16, 64, generator=_gen(), requires_grad=True)
    g = torch.randn(16, 4, generator=_gen(1)) * 1e-7
    with emu.Fp16Emulation():
        y = lin(x)
    (gx,) = torch.autograd.grad(y, x, g.half(), retain_graph=True)
    ref = (g.half().float() @ lin.weight.detach().half().float()).half().float()  # fp32 sum, rounded once
    assert torch.equal(gx, ref) and 0 < (gx == 0).float().mean() < 1  # partly underflowed, as fp16 does
    assert gx.dtype == torch.float32  # x's dtype; values fp16's
    y.backward(torch.full_like(y, 3e4))  # 16 x 3e4 x |x| > 65504: the fp16 weight gradient overflows
    assert lin.weight.grad.dtype == torch.float32 and torch.isinf(lin.weight.grad).any()
    fp32 = torch.full((16, 4), 3e4).t() @ x.detach()
    assert not torch.isinf(fp32).any()  # in fp32 nothing overflows: the inf is fp16's


def test_the_weight_cast_is_cached_per_context_as_autocast_does():
    """Two forwards in one context share one fp16 copy of the weight: their gradients add
    up in fp16 there (overflowing where each alone would not), as under CUDA autocast.
    A weight changed in place (AWP's perturbation) is cast again; nothing made under
    no_grad is kept (the next forward with grad gets the weight its gradient)."""
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    x = torch.ones(1, 1)
    with emu.Fp16Emulation():
        (lin(x) * 4e4 + lin(x) * 4e4).sum().backward()
    assert torch.isinf(lin.weight.grad).all()  # 8e4 in fp16
    lin.weight.grad = None
    with emu.Fp16Emulation(cache_enabled=False):
        (lin(x) * 4e4 + lin(x) * 4e4).sum().backward()
    assert lin.weight.grad.item() == 8e4  # two casts: each 4e4 in fp16, summed in fp32
    lin.weight.grad = None
    with emu.Fp16Emulation():
        with torch.no_grad():
            lin(x)
        before = lin(x)
        with torch.no_grad():
            lin.weight.add_(1.0)
        after = lin(x)
        after.sum().backward()
    assert before.item() == 1.0 and after.item() == 2.0 and lin.weight.grad.item() == 1.0


# ---- against real CPU fp16, where op lists and kernels agree ----

def _pointwise_net(head_scale: float, c: int = 16) -> nn.Module:
    """1x1 convolutions, BatchNorm, ReLU, average pooling, linear: CPU autocast casts these
    as CUDA's does, and the CPU's fp16 kernels of these ops round once (measured in
    docs/fp16_emulation.md), so real CPU fp16 is a fair reference here. ``head_scale``
    sets the logits' size, hence how much of the input gradient underflows."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                        nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    with torch.no_grad():
        net[-1].weight *= head_scale
    return net


@pytest.mark.parametrize("head_scale", [3.0, 10.0], ids=["most-underflow", "partial-underflow"])
def test_equals_real_cpu_fp16_where_lists_and_kernels_agree(head_scale):
    x = torch.rand(32, 3, 16, 16, generator=_gen(1))
    r = emu.compare(_pointwise_net(head_scale), x, steps=3)
    e, real = r[EMU], r["fp16"]
    assert 0.2 < real["zero_grad"] < 1.0 and r["fp32"]["zero_grad"] == 0.0  # fp16 underflow, partly
    assert abs(e["zero_grad"] - real["zero_grad"]) <= 0.002
    assert abs(e["stalled"] - real["stalled"]) <= 1 / len(x)
    assert r["sign_agreement"] >= 0.99
    assert e["logit_error"] < 4e-3 and real["logit_error"] < 4e-3  # fp16 rounding of the logits, both


def test_a_trades_ltd_loss_equals_real_cpu_fp16s_within_fp16_rounding():
    x = torch.rand(32, 3, 16, 16, generator=_gen(1))
    y = torch.randint(0, 10, (32,), generator=_gen(2))
    q = torch.softmax(torch.randn(32, 10, generator=_gen(3)) / 20, 1)  # soft labels of a T = 20 teacher
    losses = {}
    for name, context in (("emulated", emu.Fp16Emulation), ("real", lambda: torch.autocast("cpu", torch.float16))):
        net = _pointwise_net(10.0).train()
        step = steps.build_step("trades-ltd", beta=6.0, attack=ATTACK)
        torch.manual_seed(7)
        with context():
            losses[name], _, stats = step(net, x, y, q)
    assert losses["emulated"].item() == pytest.approx(losses["real"].item(), rel=2 ** -9)


def test_3x3_convolutions_differ_from_real_cpu_fp16_by_the_cpus_double_rounding():
    """Why real CPU fp16 stalls more than CUDA would (98.8 % vs 86 % zero pixels in the
    probe, docs/fp16_emulation.md): the CPU's fp16 3x3 convolution computes its input
    gradient as a GEMM rounded to fp16 per kernel tap, then sums the 9 taps in fp16
    (col2im): bit for bit that model, where a tiny gradient's taps underflow one by one.
    cuDNN accumulates them in fp32 and rounds once, as the emulation does."""
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    x = torch.randn(8, 16, 12, 12, generator=_gen()).half()
    g = (torch.randn(8, 16, 12, 12, generator=_gen(1)) * 6e-8).half()  # subnormal in fp16, as at high T
    w = conv.weight.detach().half()
    opts = dict(bias_sizes=None, stride=[1, 1], padding=[1, 1], dilation=[1, 1], transposed=False,
                output_padding=[0, 0], groups=1, output_mask=[True, False, False])
    real = torch.ops.aten.convolution_backward(g, x, w, **opts)[0]
    cols = torch.einsum("ok,nol->nkl", w.float().reshape(16, -1), g.float().reshape(8, 16, -1))
    assert torch.equal(real, F.fold(cols.half(), (12, 12), 3, padding=1))  # per-tap fp16, fp16 sum
    xe = x.float().requires_grad_()
    with emu.Fp16Emulation():
        ye = conv(xe)
    (ge,) = torch.autograd.grad(ye, xe, g)
    once = torch.ops.aten.convolution_backward(g.float(), x.float(), w.float(), **opts)[0].half().float()
    assert torch.equal(ge, once)
    assert (ge == 0).float().mean() + 0.1 < (real == 0).float().mean()  # the CPU loses more to underflow


# ---- the emulated precision in the loop, the runtime and the workflow ----

def _data(n=32, size=8):
    g = _gen()
    return (torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g),
            torch.softmax(torch.randn(n, 10, generator=g), 1))


def test_the_runtime_runs_it_as_asked_with_a_grad_scaler():
    cpu = torch.device("cpu")
    assert runtime.effective_precision(cpu, EMU) == EMU  # not fp32, as a schedule's fp16 becomes on the CPU
    assert runtime.effective_precision(cpu, "fp16") == "fp32"
    assert isinstance(runtime.autocast(cpu, EMU), emu.Fp16Emulation)
    assert runtime.grad_scaler(cpu, EMU).is_enabled() and not runtime.grad_scaler(cpu, "bf16").is_enabled()


@pytest.mark.parametrize("init_scale", [2.0 ** 16, 2.0 ** 40], ids=["applied", "skipped"])
def test_it_trains_through_the_loop_with_the_grad_scaler(init_scale, tmp_path, monkeypatch):
    """ltd.train.fit in fp16-emulated: the history says so, the scaler skips the steps
    whose fp16 gradients overflow (2^40 x the loss) and halves its scale, as for fp16."""
    monkeypatch.setattr(runtime, "grad_scaler", lambda dev, p: torch.amp.GradScaler(
        torch.device(dev).type, init_scale=init_scale, enabled=p in runtime.FP16_RANGE))
    x, y, q = _data()
    loader = loaders.DeviceLoader(loaders.Split(x, y, None), 16, q=q, shuffle=False, augment=False)  # 2 steps
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    before = [p.detach().clone() for p in model.parameters()]
    history = loop.fit(model, steps.build_step("trades-ltd", beta=6.0, attack=ATTACK), loader, SCHED,
                       ckpt_path=tmp_path / "c.pt", device=torch.device("cpu"), precision=EMU)
    h = history[0]
    skipped = init_scale > 2 ** 16
    assert h["precision"] == EMU and h["train_skipped_steps"] == (2 if skipped else 0)
    assert h["loss_scale"] == (init_scale / 4 if skipped else init_scale) and math.isfinite(h["train_loss"])
    assert 0.0 <= h["train_stalled"] <= 1.0
    changed = any(not torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert changed != skipped


@pytest.mark.parametrize("method", [m for m, v in steps.methods.METHODS.items() if v.role == "students"])
def test_every_method_gives_every_weight_a_gradient_under_the_emulation(method):
    x, y, q = _data(n=8)
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10).train()
    step = steps.build_step(method, beta=6.0, attack=ATTACK, awp={"gamma": 0.01, "warmup_epochs": 0,
                                                                   "proxy_lr": 0.01})
    step.begin_epoch(1)
    with runtime.autocast(torch.device("cpu"), EMU):
        loss, _, _ = step(model, x, y, q)
    torch.amp.GradScaler("cpu").scale(loss).backward()
    step.after_update(model)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (method, name)


def test_the_stalled_alarm_gives_fp16s_cause_and_says_emulated(capsys):
    record = {"epoch": 1, "train_stalled": 0.99, "train_adv_accuracy": 0.9, "precision": EMU}
    loop._stalled_alarm(record, {"warn": 0.5, "stop": None}, "run", Path("c.pt"), True, loop.Board(None, 0, False))
    err = capsys.readouterr().err
    assert "in fp16 a small input gradient underflows" in err and "EMULATED" in err


def test_a_table_entry_in_fp16_emulated_plans_names_and_notes_its_run(tmp_path):
    """The config's checks accept it, its run's name and identity carry it (never
    confused with fp16's), its row and the table's note say emulated."""
    overlay = tmp_path / "emu.yaml"
    overlay.write_text(yaml.safe_dump({"tables": {"table4": {"entries": [
        {"method": "trades-ltd", "temperature": 5}, {"method": "trades-ltd", "temperature": 5, "precision": EMU},
        {"method": "trades-ltd", "temperature": 5, "precision": "fp16"}]}}}))
    config = ltd_config.load(ROOT / "config" / "demo.yaml", overlay)
    entries = experiments.table_entries(config, "table4")
    assert [e.label for e in entries] == ["TRADES+LTD T=5", f"TRADES+LTD T=5 ({EMU})", "TRADES+LTD T=5 (fp16)"]
    runs = [experiments.entry_run(config, e) for e in entries]
    assert runs[1].name == f"digits_wrn-10-1_trades-ltd_T5_{EMU}_b6_s0"
    assert runs[2].name == "digits_wrn-10-1_trades-ltd_T5_fp16_b6_s0" and runs[0].name == "digits_wrn-10-1_trades-ltd_T5_b6_s0"
    assert experiments.Run.parse("students", runs[1].name) == runs[1]
    assert jobspec.training(config, runs[1]).identity["schedule"]["precision"] == EMU
    assert len({jobspec.training(config, r).identity["schedule"]["precision"] for r in runs}) == 3
    note = precision_note([{"label": e.label, "training": {"precision": e.trains_in}} for e in entries[1:2]])
    assert "emulated" in note and "not a GPU fp16 number" in note
    with pytest.raises(Exception, match="fp16-emulatd"):
        overlay.write_text(yaml.safe_dump({"train": {"precision": "fp16-emulatd"}}))
        ltd_config.load(ROOT / "config" / "demo.yaml", overlay)


class _Recording(emu.Fp16Emulation):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", ""))
        return super().__torch_function__(func, types, args, kwargs)


@pytest.mark.parametrize("arch", ["wrn-10-1", "resnet-14"])
def test_the_listed_ops_our_steps_dispatch(arch):
    """What docs/fp16_emulation.md lists as emulated in our models: convolutions and linear
    layers in fp16; log_softmax, softmax, kl_div, cross_entropy, nll_loss, log, sum and
    AWP's norm in fp32 (on fp32 inputs already: the steps call .float() on logits)."""
    x, y, q = _data(n=4)
    seen = set()
    for method in ("trades-ltd", "pgd-at-ltd", "mart-ltd", "awp-ltd"):
        torch.manual_seed(0)
        model = build_model(arch, 10).train()
        step = steps.build_step(method, beta=6.0, attack=ATTACK, awp={"gamma": 0.01, "warmup_epochs": 0,
                                                                       "proxy_lr": 0.01})
        step.begin_epoch(1)
        with _Recording() as mode:
            step(model, x, y, q)
        seen |= mode.names & emu._LISTED
    assert seen == {"conv2d", "linear", "log_softmax", "softmax", "kl_div", "cross_entropy", "nll_loss", "log", "sum",
                    "norm"}
