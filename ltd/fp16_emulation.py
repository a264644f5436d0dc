"""CUDA's fp16 autocast, emulated at fp32 speed on any device (the precision ``fp16-emulated``).

Why: fp16 underflow of the TRADES attack's input gradient is the likely cause of the
paper's stalled high-T rows, but real fp16 on a CPU without AVX512-FP16/AMX runs its
convolutions about 30x slower than fp32, and CPU autocast's op lists and kernels are not
CUDA's. No tool of the field (TRADES, AWP, ART, RobustBench) emulates CUDA's rounding.

What CUDA autocast does, and this module with it (torch's lists: ATen/autocast_mode.h's
``AT_FORALL_LOWER_PRECISION_FP`` / ``AT_FORALL_FP32`` / ``AT_FORALL_FP32_SET_OPT_DTYPE``, the
docs' "CUDA Ops that can autocast to float16 / float32"):

* The lower-precision list (convolutions, linear, the matmul family, RNN cells, ...):
  inputs cast to fp16 (the cast of an fp32 leaf that requires grad, i.e. a weight, is
  cached for the context, as autocast caches it), an fp32-accumulating kernel, fp16
  outputs. Here: the same casts (recorded by autograd as autocast's are), then the op in
  fp32 on the fp16 values (exact products, fp32 sums) and its outputs rounded to fp16
  once: ``op(x.half().float(), ...).half()``. Autograd then runs the backward in fp32
  too and rounds each input's gradient to fp16 where CUDA's fp16 kernel returns it in
  fp16 (subnormals, underflow to 0, overflow to inf); a weight's gradient reaches its
  fp32 parameter through the cast, fp16-rounded, as under CUDA (ToCopyBackward); the
  gradients of a weight used by several forwards in one context add up in fp16 at its
  cached cast, as under CUDA.
* The fp32 list (softmax, log_softmax, losses, norms, exp/log/pow, sum/prod/cumsum
  unless given a dtype, ...): fp16/bf16 inputs cast to fp32.
* The promote list (addcmul, dot, grid_sample, ...): inputs cast to the widest of theirs.
* Every other op runs on the dtypes it gets, with the device's own kernels: fp16 data
  stays fp16 (BatchNorm with fp32 parameters returns fp16; ReLU, additions, pooling in
  fp16). On the CPU these kernels compute in fp32 and round once, as CUDA's do (measured
  op by op: docs/fp16_emulation.md).

It is a ``TorchFunctionMode`` (torch.overrides, public): it sees torch's Python-level
calls, so its casts are recorded by autograd and backward needs no mode (the training
loop's ``backward()`` runs outside any autocast context). A Python-level torch function
not on a list runs as it comes, with the mode off inside it (as a mode's handler does):
one that calls listed ops inside (``NOT_EMULATED``) is refused rather than run unfaithfully.
Deliberate differences from torch.autocast: the cast cache is also dropped when a weight
changed in place (AWP's perturbation; ltd.awp clears autocast's cache for the same
reason) and holds nothing made under no_grad (torch >= 2.10 behaves so; older torch
starved the weights of gradients, pytorch/pytorch#112583). In-place ops and calls with
``out=`` are not cast, as under autocast. Loss scaling, fp32 master weights and the
optimiser are torch.amp's own (``torch.amp.GradScaler``; ltd.runtime).

Not emulated: the summation order and algorithms of cuDNN/cuBLAS (Winograd, split-K,
cuBLAS's reduced-precision reductions), cuDNN's separate fp16 bias add after a
convolution (rounded twice there, once here; our models' convolutions have no bias).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from . import attacks
from .experiments import EMULATED

PRECISION = EMULATED  # its name in configs, run names and records (ltd.experiments.PRECISIONS)
LABEL = "fp16-emulated (CUDA's fp16 autocast emulated in fp32 arithmetic rounded to fp16; not a GPU fp16 number)"

# torch-function names (``func.__name__``) of CUDA's lists: the aten names of
# autocast_mode.h and the Python-level names the docs list (torch.* functions and Tensor
# methods share them). Python wrappers whose inner ops autocast would cast are listed by
# the wrapper's name (cross_entropy -> log_softmax + nll_loss, normalize -> norm, ...).
CUDA_LOWER_PRECISION_OPS = frozenset({
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "__matmul__", "__rmatmul__",
    "einsum", "mm", "mv", "linalg_vecdot", "vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul",
    "linalg_multi_dot", "multi_dot", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell",
    "rnn_tanh_cell", "rnn_relu_cell", "_scaled_dot_product_flash_attention", "scaled_dot_product_attention"})
CUDA_FP32_OPS = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt", "sinh",
    "tan", "pow", "__pow__", "__rpow__", "__rtruediv__", "__rdiv__", "softplus", "layer_norm", "native_layer_norm",
    "rms_norm", "group_norm", "frobenius_norm", "nuclear_norm", "cosine_similarity", "poisson_nll_loss",
    "cosine_embedding_loss", "nll_loss", "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss",
    "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss",
    "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist",
    "renorm", "logsumexp", "norm", "cross_entropy", "normalize", "interpolate", "upsample",
    "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
    "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa"})
# fp32 unless the call gives a dtype (autocast's fp32_set_opt_dtype policy).
CUDA_FP32_OPT_DTYPE_OPS = frozenset({"prod", "softmax", "log_softmax", "softmin", "cumprod", "cumsum", "sum",
                                     "linalg_vector_norm", "vector_norm", "linalg_matrix_norm", "matrix_norm"})
# The widest input type among the floating-point tensors (autocast's promote policy).
CUDA_PROMOTE_OPS = frozenset({"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler",
                              "grid_sample", "index_put", "tensordot", "scatter_add"})
# Python-level torch functions that call listed ops inside (autocast would cast those):
# the mode cannot reach inside them, so it refuses them.
NOT_EMULATED = frozenset({"multi_head_attention_forward"})

_LISTED = CUDA_LOWER_PRECISION_OPS | CUDA_FP32_OPS | CUDA_FP32_OPT_DTYPE_OPS | CUDA_PROMOTE_OPS | NOT_EMULATED
_LOW = (torch.float16, torch.bfloat16)


def _eligible(t: Any) -> bool:
    """autocast's is_eligible: a floating-point tensor, not fp64."""
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class Fp16Emulation(TorchFunctionMode):
    """Inside: CUDA's fp16 autocast, emulated (see the module's docstring), on tensors of
    any device. ``cache_enabled``: autocast's weight-cast cache (its default: on)."""

    _active = threading.local()  # the emulations entered in this thread, innermost last

    def __init__(self, cache_enabled: bool = True):
        super().__init__()
        self.cache_enabled = cache_enabled
        self._cache: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def __enter__(self):
        self._stack().append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        self._stack().pop()
        self._cache.clear()  # as autocast drops its cache on leaving its context
        return super().__exit__(*exc)

    @classmethod
    def _stack(cls) -> list:
        if not hasattr(cls._active, "stack"):
            cls._active.stack = []
        return cls._active.stack

    def _to_half(self, t: Any) -> Any:
        if not _eligible(t) or t.dtype == torch.float16:
            return t
        if not (self.cache_enabled and t.dtype == torch.float32 and t.requires_grad and t.is_leaf
                and torch.is_grad_enabled()):
            return t.half()
        hit = self._cache.get(id(t))
        if hit is not None and hit[0] is t and hit[1] == t._version:
            return hit[2]
        half = t.half()
        self._cache[id(t)] = (t, t._version, half)  # t kept alive: its id is not reused while cached
        return half

    def __torch_function__(self, func: Callable, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", None)
        if name not in _LISTED or kwargs.get("out") is not None:
            return func(*args, **kwargs)
        if name in NOT_EMULATED:
            raise NotImplementedError(f"{PRECISION}: torch's {name} calls autocast-listed ops inside, which this "
                                      "emulation cannot reach (ltd/fp16_emulation.py); use real fp16 on a GPU")
        if name in CUDA_LOWER_PRECISION_OPS:
            args, kwargs = tree_map(self._to_half, (args, kwargs))
            args, kwargs = tree_map(_half_to_float, (args, kwargs))  # fp16 values, fp32 arithmetic
            return tree_map(_round_to_half, func(*args, **kwargs))
        if name in CUDA_PROMOTE_OPS:
            args, kwargs = tree_map(_promote_to(_widest((args, kwargs))), (args, kwargs))
            return func(*args, **kwargs)
        if name in CUDA_FP32_OPT_DTYPE_OPS and (kwargs.get("dtype") is not None
                                                or any(isinstance(a, torch.dtype) for a in args)):
            return func(*args, **kwargs)
        args, kwargs = tree_map(_low_to_float, (args, kwargs))
        return func(*args, **kwargs)


def _widest(tree: Any) -> torch.dtype:
    """fp32 if an eligible tensor in ``tree`` is fp32, else fp16 (autocast's promote_type)."""
    fp32 = any(_eligible(t) and t.dtype == torch.float32 for t in tree_leaves(tree))
    return torch.float32 if fp32 else torch.float16


def _promote_to(dtype: torch.dtype) -> Callable[[Any], Any]:
    return lambda t: t.to(dtype) if _eligible(t) and t.dtype != dtype else t


def _half_to_float(t: Any) -> Any:
    return t.float() if isinstance(t, torch.Tensor) and t.dtype == torch.float16 else t


def _low_to_float(t: Any) -> Any:
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in _LOW else t


def _round_to_half(t: Any) -> Any:
    return t.half() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t


def active() -> Fp16Emulation | None:
    """The innermost emulation entered in this thread, or None (e.g. to re-enter it later
    for a forward that belongs to the same step, as ltd.steps.PgdStep does)."""
    stack = Fp16Emulation._stack()
    return stack[-1] if stack else None


# ---- the comparison the validation and the device check run (emulated vs real autocast) ----

def _context(precision: str, device: torch.device):
    """A fresh context: "fp32" (none), "fp16" (real torch.autocast on the device) or ``PRECISION``."""
    if precision == PRECISION:
        return Fp16Emulation()
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def attack_start(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """TRADES's random start x + 0.001 N(0, 1), drawn from its own generator (the same for every precision)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    return x + attacks.INIT_STD * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def start_gradient(model: torch.nn.Module, x: torch.Tensor, start: torch.Tensor, precision: str) -> torch.Tensor:
    """The TRADES attack's first input gradient, d KL(f(x) || f(start)) / d start, in eval
    mode under ``precision`` (``_context``): what underflows to exactly zero in fp16."""
    was_training = model.training
    model.eval()
    try:
        with _context(precision, x.device):
            with torch.no_grad():
                log_p = torch.log_softmax(model(x).float(), 1)
            xs = start.detach().clone().requires_grad_(True)
            kl = torch.nn.functional.kl_div(torch.log_softmax(model(xs).float(), 1), log_p, reduction="sum",
                                            log_target=True)
            (grad,) = torch.autograd.grad(kl, xs)
    finally:
        model.train(was_training)
    return grad


def attack_stalled(model: torch.nn.Module, x: torch.Tensor, start: torch.Tensor, precision: str, *, eps: float,
                   step_size: float, steps: int) -> torch.Tensor:
    """Per example, whether TRADES's attack from ``start`` under ``precision`` stalled, as
    the training loop counts it (``ltd.attacks.stalled``), as ltd.steps.trades_adversarial runs it."""
    was_training = model.training
    model.eval()
    try:
        with _context(precision, x.device):
            with torch.no_grad():
                logits = model(x).float()
            x_adv = attacks.trades_attack(model, x, logits, eps=eps, step_size=step_size, steps=steps, start=start)
    finally:
        model.train(was_training)
    return attacks.stalled(attacks.moved_fraction(x_adv, start, x, eps))


def compare(model: torch.nn.Module, x: torch.Tensor, *, eps: float = 8 / 255, step_size: float = 2 / 255,
            steps: int = 10, seed: int = 0, precisions: tuple[str, ...] = (PRECISION, "fp16", "fp32")) -> dict:
    """Emulated against real fp16 autocast (and fp32) on ``x``'s device, the same model,
    weights, batch and random start (``seed``): per precision, the fraction of input-
    gradient pixels that are exactly zero at TRADES's random start (``zero_grad``), the
    fraction of TRADES attacks (``eps``, ``step_size``, ``steps``) that stalled
    (``stalled``, ltd.attacks.stalled) and the clean logits' largest deviation from fp32
    relative to their largest magnitude (``logit_error``); ``sign_agreement``: the
    fraction of pixels where the emulated and the real first gradients have the same sign.
    On a GPU, fp32 convolutions and matmuls run without TF32 inside (the emulation's
    arithmetic is fp32). Real fp16 on the CPU is CPU autocast: other op lists and kernels
    than CUDA's (docs/fp16_emulation.md)."""
    from .runtime import in_tf32_mode  # here: ltd.runtime imports this module

    start = attack_start(x, seed)
    out: dict = {"device": x.device.type, "n": len(x), "attack": {"eps": eps, "step_size": step_size, "steps": steps}}
    grads, logits = {}, {}
    with in_tf32_mode(x.device, "fp32"):
        for p in precisions:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad(), _context(p, x.device):
                    logits[p] = model(x).float()
            finally:
                model.train(was_training)
            grads[p] = start_gradient(model, x, start, p)
            stuck = attack_stalled(model, x, start, p, eps=eps, step_size=step_size, steps=steps)
            out[p] = {"zero_grad": (grads[p] == 0).double().mean().item(), "stalled": stuck.double().mean().item()}
    ref = logits.get("fp32")
    for p in precisions:
        if ref is not None:
            out[p]["logit_error"] = ((logits[p] - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    if PRECISION in grads and "fp16" in grads:
        out["sign_agreement"] = (grads[PRECISION].sign() == grads["fp16"].sign()).double().mean().item()
    return out
