"""benchmarks/gpu_check.py runs end to end: its --dry mode takes every part through the
CPU with a tiny model, so the script the GPU machine will run is tested here."""
import os
import subprocess
import sys

import pytest

from ltd import budget
from ltd.files import load_json

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ("tests", "train", "natural", "autoattack", "compile")


def _run(*args, timeout=240, returncode=0):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == returncode, out.stdout[-3000:] + out.stderr[-3000:]  # 1: a part is not ok
    return out.stdout


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    stdout = _run("--dry", "--out", out)
    return out, stdout


def test_dry_run_writes_every_part(dry):
    out, stdout = dry
    records = {p: load_json(out / f"{p}.json") for p in PARTS}
    assert {p: r["status"] for p, r in records.items()} == {p: "ok" for p in PARTS}
    assert all(r["dry"] and r["device"] == "cpu" for r in records.values())
    summary = load_json(out / "summary.json")
    assert summary["status"] == {p: "ok" for p in PARTS} and summary["environment"]["dry"]
    # each part's result is printed as it comes, the table last
    assert stdout.index("[train] ok") < stdout.index("[autoattack] ok") < stdout.index("| part")

    tests = records["tests"]["result"]
    assert tests["failed"] == 0 and tests["skipped"] > 0 and tests["passed"] == 0  # no CUDA here: all skipped

    train = records["train"]["result"]
    for method, fe in (("trades-ltd", 27.0), ("awp-ltd", 33.0)):  # 2k + 7 (+ AWP's 6), k = 10 (config.yaml)
        r = train[method]
        assert r["forward_equivalents"] == fe and r["precision"] == "fp16" and r["losses_finite"]
        assert r["images_per_s"] > 0 and r["tflop_per_s"] > 0 and r["mfu"] is None  # no peak for a CPU
        assert len(r["step_seconds"]) == r["steps"] and r["attack"]["steps"] == 10
        run = r["run"]
        assert run["epochs"] == 120 and run["train_images"] == 50_000 and run["test_images"] == 10_000
        assert 0 < run["hours_test_pass"] < run["hours_training"] < run["projected_hours"]
    assert train["awp-ltd"]["awp_on"] and not train["trades-ltd"]["awp_on"]

    natural = records["natural"]["result"]
    assert natural["natural"]["forward_equivalents"] == 3.0 and natural["loader"]["images_per_s"] > 0
    assert natural["loader"]["share_of_trades_step_time"] > 0  # train.json was there to compare with

    aa = records["autoattack"]["result"]
    assert list(aa["runs"]) == ["fp32"]  # TF32 exists on CUDA only
    run = aa["runs"]["fp32"]
    known = run["known_answer_model"]
    assert known["flags_equal_the_known_answer"] and 0 < known["robust_accuracy"] == known["expected_robust_accuracy"]
    plan = budget.autoattack_plan({"autoattack": {"version": "standard"}}, 10)
    assert [a for a, _, _ in plan] == list(known["per_attack"]) == list(run["projection"]["per_attack"])
    assert known["per_attack"]["apgd-ce"]["fraction_attacked"] == known["clean_accuracy"]
    assert known["per_attack"]["square"]["fraction_attacked"] == known["robust_accuracy"]
    assert 0 < run["projection"]["projected_hours"] <= run["projection"]["projected_hours_with_small_model_time"]

    comp = records["compile"]["result"]["trades-ltd"]
    assert comp["compile"] == "eager" and comp["compile_seconds"] > 0 and comp["images_per_s"] > 0
    assert comp["first_loss_relative_difference"] < 0.05  # dynamo's trace computes what eager does


def test_finished_parts_are_skipped_unless_forced(dry):
    out, _ = dry
    before = (out / "train.json").stat().st_mtime_ns
    stdout = _run("--dry", "--out", out, "--parts", "train")
    assert "[train] done before" in stdout and (out / "train.json").stat().st_mtime_ns == before
    assert load_json(out / "summary.json")["status"] == {p: "ok" for p in PARTS}  # the others read back
    if not __import__("torch").cuda.is_available():  # a real run never takes a --dry result for its own
        stdout = _run("--out", out, "--parts", "train", returncode=1)
        assert "done before" not in stdout and load_json(out / "train.json")["status"].startswith("skipped: no CUDA")


def test_without_cuda_the_parts_say_so(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    stdout = _run("--out", tmp_path, "--parts", "train", "autoattack", returncode=1)
    for part in ("train", "autoattack"):
        assert load_json(tmp_path / f"{part}.json")["status"].startswith("skipped: no CUDA")
    assert "skipped: no CUDA" in stdout
