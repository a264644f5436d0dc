"""The benchmark scripts run (tiny sizes): a benchmark that no test starts rots unseen.
What they measure is not checked here (speed belongs to the benchmarks, not to tests)."""
import json
import subprocess
import sys

import pytest

from .conftest import CIFAR10_JPEG, ROOT


def _run(script, *args, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_train_step_benchmark_runs(tmp_path):
    r = _run("train_step.py", "--arch", "wrn-10-1", "--image-size", "8", "--batch-size", "4", "--steps", "1",
             "--attack-steps", "2", "--threads", "1", tmp_path=tmp_path)
    assert r["ours"]["forward_equivalents"] < r["official"]["forward_equivalents"]  # 2k + 7 against 3k + 9


def test_evaluate_benchmark_runs(tmp_path):
    r = _run("evaluate.py", "--arch", "wrn-10-1", "--image-size", "8", "--n", "8", "--batch-size", "8",
             "--pgd-steps", "2", "--attacks", "apgd-ce", "--threads", "1", tmp_path=tmp_path)
    assert r and json.dumps(r)


def test_simulation_benchmark_runs(tmp_path):
    r = _run("simulation.py", "--repeat", "1", "--n-examples", "2000", tmp_path=tmp_path)
    assert len(r["seconds"]) == 1 and r["n_examples"] == {"binary": 2000, "dirichlet": 2000}


def test_compile_attack_benchmark_runs(tmp_path):
    r = _run("compile_attack.py", "--arch", "wrn-10-1", "--image-size", "8", "--batch-size", "4", "--steps", "1",
             "--warmup", "0", "--attack-steps", "2", "--threads", "1", "--backend", "aot_eager",
             "--variants", "eager", "attack", tmp_path=tmp_path)
    assert r["attack"]["first_loss_relative_difference"] < 5e-3 and r["attack_over_eager"] > 0


def test_stalled_attacks_benchmark_runs(tmp_path):
    r = _run("stalled_attacks.py", "--digits", "8", "--arch", "wrn-10-1", "--n", "8", "--states", "random",
             "--attack-steps", "2", "--threads", "1", tmp_path=tmp_path)
    assert [row["attack"] for row in r["rows"]] == ["trades", "mart", "pgd"]
    assert all(0 <= row["moved_min"] <= row["moved_mean"] <= 1 for row in r["rows"])


def test_compiled_attack_bits_benchmark_runs(tmp_path):
    r = _run("compiled_attack_bits.py", "--image-size", "8", "--batch-size", "4", "--attack-steps", "2",
             "--backend", "aot_eager", "--precisions", "bf16", tmp_path=tmp_path)
    assert 0 <= r["bf16"]["pixels_differing"] <= 1


def test_autocast_cache_benchmark_runs(tmp_path):
    r = _run("autocast_cache.py", "--arch", "wrn-10-1", "--image-size", "8", "--batch-size", "4", "--steps", "1",
             "--warmup", "0", "--attack-steps", "2", "--threads", "1", tmp_path=tmp_path)
    assert r["gradient_check"]["ours uncached"]["with_gradient"] == r["gradient_check"]["ours uncached"]["weights"]


def test_awp_proxy_fp16_benchmark_runs(tmp_path):
    r = _run("awp_proxy_fp16.py", "--arch", "wrn-10-1", "--image-size", "8", "--batch-size", "4", "--attack-steps",
             "1", "--threads", "1", tmp_path=tmp_path)
    assert 0 <= r["fp16 unscaled (the step)"]["underflowed_fraction"] <= 1


@pytest.mark.skipif(not CIFAR10_JPEG.exists(), reason=f"needs {CIFAR10_JPEG}")
def test_fp16_emulation_benchmark_runs(tmp_path):
    r = _run("fp16_emulation.py", "--arch", "wrn-10-1", "--batch-size", "4", "--steps", "1", "--attack-steps", "2",
             "--threads", "1", "--archive", str(CIFAR10_JPEG), tmp_path=tmp_path)
    assert set(r["step"]["ratios"]) == {"emulated/fp32", "real fp16/fp32", "real fp16/emulated"}
    assert r["step"]["fp32"]["zero_grad"] == 0.0 and set(r["probe"]) == {"1.0", "0.05"}
