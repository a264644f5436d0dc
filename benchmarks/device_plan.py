"""The device check's timing plan: each stage's expected seconds on one H100, computed
from the work it does (benchmarks/device_stages.py's GPU sizes) and the budget's own
rates (ltd.throughput: the calibration's measured rows where a GPU measured the
architecture, else counted FLOPs at the budget's MFU capped by the launch floor), plus
the few fixed costs that no rate covers, each read from a recorded measurement.
Torch-free except for counting, so ``--plan`` runs anywhere in a second.
"""

from __future__ import annotations

import json
from pathlib import Path

from ltd import budget, methods, throughput

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "docs" / "gpu" / "h200_2026-11-26"
CAP_FACTOR = 2.0  # a stage's cap: twice its planned seconds (the plan's figures are estimates),
CAP_FLOOR = 30.0  # and at least this: fixed costs no rate prices (cuDNN's first call of a shape, imports)
# The H200's rows price an H100: the same dense peaks, ~30 % less memory bandwidth, "expect
# ~5-15 % slower" (/work/shared/notes/gpu-hot-path.md): the high side.
H100_SLOWER = 1.15
CHECKPOINT_BYTES_PER_S = 1e9  # fit writes a checkpoint per epoch (weights + momentum): assumed 1 GB/s disk
# Stage 4's archive unpacked and its images decoded: measured on the development machine
# (2 shared cores, 2026-12-07: 14.5 s for `tar xzf` of the 60,000 JPEGs; ltd.data decodes
# in threads): twice that, for the Python extraction.
UNPACK_SECONDS = 30.0
STARTUP_SECONDS = 15.0  # python, torch and CUDA's context before stage 1: assumed
PARAMS = {"wrn-34-10": 46.2e6, "preact-resnet18": 11.2e6}  # ltd.models.count_parameters


def recorded(name: str, *keys: str) -> float:
    """A figure of the H200 check of 2026-11-26 (docs/gpu/h200_2026-11-26/<name>.json)."""
    value = json.loads((RECORDED / f"{name}.json").read_text())["result"]
    for k in keys:
        value = value[k]
    return float(value)


def first_step_seconds() -> float:
    """CUDA's and cuDNN's lazy start, paid once: the H200's first TRADES+LTD step less a warm one."""
    warm = json.loads((RECORDED / "train.json").read_text())["result"]["trades-ltd"]["warmup_step_seconds"][0]
    return recorded("train", "trades-ltd", "first_step_seconds") - warm


class Pricer:
    """Seconds of training steps and attack iterations, as ``snakemake budget`` prices them."""

    def __init__(self, config: dict, size: int = 32, classes: int = 10):
        self.config, self.size, self.classes = config, size, classes
        self.b = config["budget"]

    def step(self, arch: str, method: str, precision: str, images: int, batch: int, attack_steps: int) -> tuple:
        fwd = budget.forward_flops(arch, self.size, self.classes)
        fe = methods.forward_equivalents(method, attack_steps, awp_on=True)
        kind = methods.get(method).step
        precisions = (precision, *[p for p in throughput.AUTOCAST if p != precision])
        mod = throughput.model(self.config, fwd, self.b["peak_tflops"], self.b["mfu"]["train"],
                               throughput.launches(arch, kind, attack_steps) / fe, batch)
        rate = throughput.measured_or_floor(
            throughput.measured(self.config, arch, self.size, precisions, method, fwd, self.b["peak_tflops"]), mod)
        return images * fe * rate.seconds * H100_SLOWER, f"{images} img x {fe:g} FE, {short(rate)}"

    def attack(self, arch: str, precision: str, iterations: int) -> tuple:
        """``iterations`` image-iterations of forward + input gradient (2 FE)."""
        fwd = budget.forward_flops(arch, self.size, self.classes)
        peak, mfu = budget.eval_peak_mfu(self.b, precision)
        rate = throughput.measured(self.config, arch, self.size, (precision,), throughput.ATTACK, fwd, peak)
        if rate is None:
            rate = throughput.model(self.config, fwd, peak, mfu, throughput.launches(arch, "attack", 1) / 2, 500)
        return iterations * 2 * rate.seconds * H100_SLOWER, f"{iterations} img-iterations, {short(rate)}"


def short(rate: throughput.Rate) -> str:
    """The rate's basis and numbers, without the calibration row's long source."""
    if not rate.basis.startswith("measured"):
        return f"{rate.basis}: {rate.how}"
    row = rate.how.split(" (")[0]
    return f"measured: {row}" + ("" if rate.own else " (its rate per FE)")


def checkpoints(arch: str, n: int) -> tuple:
    seconds = n * PARAMS[arch] * 4 * 2 / CHECKPOINT_BYTES_PER_S
    return seconds, f"{n} checkpoints of {PARAMS[arch] / 1e6:.1f} M weights + momentum at 1 GB/s (assumed)"


def correctness(p: Pricer, s) -> list[tuple]:
    items = [("CUDA's first step", first_step_seconds(), "docs/gpu/h200_2026-11-26/train.json: first less warm step")]
    for m in ("trades", "trades-ltd", "awp-ltd"):
        for prec in ("fp16", "bf16"):
            items.append((f"{m} {prec}: 1 step", *p.step(s.big, m, prec, s.batch, s.batch, s.attack_steps)))
        # the loss in fp32, fp16, bf16: the step without its backward (~1/3 less): priced as whole steps
        fp32 = p.step(s.big, m, "bf16", s.batch, s.batch, s.attack_steps)[0] * recorded_fp32_factor(p, s)
        items.append((f"{m}: loss in fp32", fp32, "one step at the fp32/bf16 ratio of WRN-34-10's attack rows"))
        items.append((f"{m}: loss in fp16, bf16", *_times(2, p.step(s.big, m, "bf16", s.batch, s.batch,
                                                                       s.attack_steps))))
    items.append(("GradScaler: 50 fp16 steps", *p.step(s.big, "trades-ltd", "fp16", s.batch * s.scale_steps, s.batch,
                                                        s.attack_steps)))
    items.append(("checkpoints", *checkpoints(s.big, 7)))
    return items


def recorded_fp32_factor(p: Pricer, s) -> float:
    """fp32 against bf16 per FLOP: the measured attack rows, fp32 vs TF32, x TF32's peak / bf16's."""
    fwd = budget.forward_flops(s.big, p.size, p.classes)
    fp32 = throughput.measured(p.config, s.big, p.size, ("fp32",), throughput.ATTACK, fwd, 1.0)
    train = throughput.measured(p.config, s.big, p.size, ("bf16",), "trades-ltd", fwd, 1.0)
    return fp32.seconds / train.seconds


def _times(k: int, priced: tuple) -> tuple:
    return k * priced[0], f"{k} x {priced[1]}"


def emulation(p: Pricer, s) -> list[tuple]:
    # compare(): per precision a forward, the start gradient (forward + backward) and the
    # attack (forward + k iterations): ~2k + 4 FE; fp32 and the emulation (fp32 arithmetic
    # + rounding: priced at fp32 twice) and real fp16
    fe = 2 * s.attack_steps + 4
    one = p.attack(s.small, "fp32", s.emu_n * fe // 2)[0]
    fp16 = p.step(s.small, "soft", "fp16", s.emu_n * fe // 3, s.emu_n, 0)[0]
    compare = one * 3 + fp16
    return [("compare() at init", compare, f"{fe} FE of {s.emu_n} images: fp32, emulated (2 x fp32), fp16"),
            (f"{s.emu_steps} fp16 steps at T = 20", *p.step(s.small, "trades-ltd", "fp16", s.batch * s.emu_steps,
                                                          s.batch, s.attack_steps)),
            ("compare() after", compare, "as at init")]


def throughput_items(p: Pricer, s) -> list[tuple]:
    items = []
    compile_s = recorded("compile", "trades-ltd", "compile_seconds")
    for comp in (False, True):
        for arch in (s.big, s.small):
            for prec in ("bf16", "fp16"):
                name = f"{arch} {prec}{' compiled attack' if comp else ''}: 2 epochs of {s.timed_steps} steps"
                items.append((name, *p.step(arch, "trades-ltd", prec, 2 * s.timed_steps * s.batch, s.batch,
                                            s.attack_steps)))
                if comp:
                    items.append((f"{arch} {prec}: compile", compile_s,
                                  "docs/gpu/h200_2026-11-26/compile.json: torch.compile's first step (WRN-34-10)"))
        if not comp:
            items.append(("launch cost: 2 epochs at batch 8", *p.step(s.small, "trades-ltd", "bf16",
                                                                      2 * s.timed_steps * s.launch_batch,
                                                                      s.launch_batch, s.attack_steps)))
    items.append(("checkpoints", *checkpoints(s.big, 8)))
    return items


def cifar_slice(p: Pricer, s) -> list[tuple]:
    items = [("unpack + decode the archive", UNPACK_SECONDS, "measured on the development CPU (tar: 14.5 s), x 2"),
             (f"teacher: {s.teacher_steps} natural steps", *p.step(s.small, "natural", "bf16",
                                                                   s.teacher_steps * s.batch, s.batch, 0))]
    for t in (5, 20):
        for prec in ("fp16", "bf16"):
            seconds, how = p.step(s.small, "trades-ltd", prec, s.slice_steps * s.batch, s.batch, s.attack_steps)
            label = p.step(s.small, "soft", prec, s.slice_steps * s.batch // 3, s.batch, 0)[0]  # 1 FE of 3
            items.append((f"T = {t} {prec}: {s.slice_steps} steps + teacher labels", seconds + label, how))
    items.append(("checkpoints", *checkpoints(s.small, 4 * s.slice_steps // s.slice_every + 4)))
    return items


def autoattack(p: Pricer, s) -> list[tuple]:
    items = []
    for prec in ("fp32", "tf32"):
        items.append((f"{prec}: {s.aa_iters + 1} attack iterations", *p.attack(s.big, prec, (s.aa_iters + 1) * s.aa_n)))
        # APGD-CE: 100 iterations on the correctly classified (~10 % of a fresh model's), 1 restart
        items.append((f"{prec}: APGD-CE", *p.attack(s.big, prec, 100 * s.aa_n // 10 + s.aa_n)))
    return items


PLANNERS = {"correctness": correctness, "emulation": emulation, "throughput": throughput_items,
            "cifar_slice": cifar_slice, "autoattack": autoattack}


def plan(config: dict, sizes) -> dict[str, dict]:
    """{stage: {seconds, items: [(what, seconds, how)]}} on one H100; startup in stage 1."""
    p = Pricer(config)
    out = {}
    for name, planner in PLANNERS.items():
        items = planner(p, sizes)
        if name == "correctness":
            items.insert(0, ("python, torch, CUDA context", STARTUP_SECONDS, "assumed"))
        out[name] = {"seconds": sum(i[1] for i in items), "items": items}
    return out


def cap(planned: float) -> float:
    return max(CAP_FLOOR, CAP_FACTOR * planned)


def render(stages: dict[str, dict], budget_s: float) -> str:
    total = sum(v["seconds"] for v in stages.values())
    lines = ["<!-- written by `python3 benchmarks/device_check.py --plan` (tests/test_device_check.py: current) -->",
             "", f"Timing plan on one H100 (rates of config/calibration.yaml x {H100_SLOWER} for the H100, "
             "ltd.throughput's model where no row measured)", "",
             "| stage | part | seconds | derived from |", "| --- | --- | ---: | --- |"]
    for name, v in stages.items():
        for what, seconds, how in v["items"]:
            lines.append(f"| {name} | {what} | {seconds:.1f} | {how} |")
        lines.append(f"| **{name}** | **total** (cap {cap(v['seconds']):.0f} s) | "
                     f"**{v['seconds']:.1f}** | |")
    verdict = "within" if total <= budget_s else "OVER"
    lines += ["", f"All stages: {total:.0f} s, {verdict} the budget of {budget_s:.0f} s."]
    return "\n".join(lines)
