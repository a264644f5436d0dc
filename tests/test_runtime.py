"""ltd.runtime: a job that holds a GPU never runs on the CPU by accident; autocast does
what the caller asks on any device."""
import os
import subprocess
import sys

import pytest
import torch

from ltd import runtime

from .conftest import ROOT

SMI_OK = """#!/bin/sh
cat <<'EOF'
Tue Nov 25 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05     CUDA Version: 12.2     |
|-----------------------------------------+------------------------+----------------------+
EOF
"""
SMI_FAILS = """#!/bin/sh
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
exit 9
"""


def _fake_smi(folder, script):
    folder.mkdir(exist_ok=True)
    path = folder / "nvidia-smi"
    path.write_text(script)
    path.chmod(0o755)
    return folder


@pytest.fixture
def no_cuda(monkeypatch, tmp_path):
    """torch sees no CUDA device; no GPU slots to take (LTD_GPUS="" is read by gpu_slots only)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LTD_GPUS", "")
    monkeypatch.delenv("LTD_GPU_SLOTS_HELD", raising=False)
    return tmp_path / "slots"


def test_gpu_job_without_cuda_stops_naming_build_driver_and_fix(no_cuda, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", f"{_fake_smi(tmp_path / 'bin', SMI_OK)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(runtime.NoCudaError) as e:
        runtime.setup("auto", 1, gpus=1, slots_dir=no_cuda)
    msg = str(e.value)
    assert "holds 1 GPU" in msg and "built for CUDA 13.0" in msg
    assert "535.104.05" in msg and "CUDA up to 12.2" in msg
    assert "older than the CUDA 13.0" in msg  # the usual cause, said outright
    assert "Installing torch for your CUDA version" in msg and "whl/cu122" in msg
    assert "torch.cuda.is_available(), torch.version.cuda" in msg and "config/demo.yaml" in msg


def test_without_a_driver_the_message_says_so(no_cuda, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no nvidia-smi anywhere
    with pytest.raises(runtime.NoCudaError, match="nvidia-smi is not on PATH"):
        runtime.setup("auto", None, gpus=2, slots_dir=no_cuda)
    monkeypatch.setenv("PATH", str(_fake_smi(tmp_path / "bin", SMI_FAILS)))
    with pytest.raises(runtime.NoCudaError, match=r"nvidia-smi failed \(exit code 9\): NVIDIA-SMI has failed"):
        runtime.setup("cuda", None, gpus=0, slots_dir=no_cuda)  # device: cuda, no GPU held: stops as well


def test_a_numbered_cuda_device_is_checked_as_cuda_is(no_cuda, monkeypatch):
    """`cuda:N` (the benchmarks' --device) stops as `cuda` does where torch sees no GPU,
    instead of returning a device that fails at its first tensor."""
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(runtime.NoCudaError, match="CPU-only build"):
        runtime.setup("cuda:0", None, gpus=0, slots_dir=no_cuda)


def test_cpu_only_torch_build_is_named(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(runtime.NoCudaError, match="CPU-only build"):
        runtime.setup("auto", None, gpus=1, slots_dir=no_cuda)


def test_auto_without_gpus_and_explicit_cpu_stay_on_the_cpu(no_cuda):
    assert runtime.setup("auto", None, gpus=0).type == "cpu"
    assert runtime.setup("cpu", None, gpus=1, slots_dir=no_cuda).type == "cpu"  # asked for: no check, no slot
    assert not no_cuda.exists()


def test_fake_gpus_of_a_test_cluster_run_on_the_cpu(no_cuda, monkeypatch):
    """Only LTD_FAKE_GPUS=1 (tests/test_slurm.py's cluster) lets a job holding GPUs use the CPU."""
    monkeypatch.setenv(runtime.FAKE_GPUS, "1")
    assert runtime.setup("auto", None, gpus=1, slots_dir=no_cuda).type == "cpu"
    with pytest.raises(runtime.NoCudaError):  # device: cuda is still checked
        runtime.setup("cuda", None, gpus=1, slots_dir=no_cuda)
    monkeypatch.setenv(runtime.FAKE_GPUS, "0")
    with pytest.raises(runtime.NoCudaError):
        runtime.setup("auto", None, gpus=1, slots_dir=no_cuda)


def test_gpu_job_with_cuda_hidden_fails_in_a_real_process(tmp_path):
    """CUDA_VISIBLE_DEVICES="" hides every GPU from CUDA itself (no monkeypatching): the
    job exits at once with the message, on a GPU machine as on this one."""
    code = ("from ltd import runtime; "
            f"runtime.setup('auto', 1, gpus=1, slots_dir={str(tmp_path / 'slots')!r}); print('TRAINING ON THE CPU')")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT),
           "PATH": f"{_fake_smi(tmp_path / 'bin', SMI_OK)}{os.pathsep}{os.environ['PATH']}"}
    env.pop("LTD_GPUS", None)
    env.pop("LTD_GPU_SLOTS_HELD", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "TRAINING ON THE CPU" not in out.stdout
    assert "NoCudaError" in out.stderr and "535.104.05" in out.stderr
    assert f"torch {torch.__version__}" in out.stderr and "CUDA_VISIBLE_DEVICES=''" in out.stderr


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_honours_the_precision_on_the_cpu(precision, dtype):
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with runtime.autocast(torch.device("cpu"), precision):
        assert layer(x).dtype == dtype
    with runtime.autocast(torch.device("cpu"), "fp32"):
        assert layer(x).dtype == torch.float32
    # the workflow's jobs train a schedule's precision in fp32 on the CPU, a table entry's
    # own (explicit) one as asked: that is effective_precision's decision
    assert runtime.effective_precision(torch.device("cpu"), precision) == "fp32"
    assert runtime.effective_precision(torch.device("cpu"), precision, explicit=True) == precision
    assert runtime.effective_precision(torch.device("cuda"), precision) == precision
    # only fp16 has a loss scaler
    assert runtime.grad_scaler(torch.device("cpu"), precision).is_enabled() == (precision == "fp16")
    with pytest.raises(KeyError):  # no such precision (the schema refuses it first)
        runtime.autocast(torch.device("cpu"), "fp8")
