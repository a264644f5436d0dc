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
PARTS = ("tests", "train", "compile_attack", "autoattack", "jobs_per_gpu", "natural")  # by default


def _run(*args, timeout=600, returncode=0):
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
    # each part's result is printed as it comes, the table last, then the targets as ratios
    assert stdout.index("[train] ok") < stdout.index("[autoattack] ok") < stdout.index("| part")
    assert "target training step: " in stdout and summary["targets"]["training step"]["target"] == 1.25
    # AutoAttack's target needs a faster variant with the known answer's flags: on the CPU
    # only fp32 runs the known-answer model (channels_last's flags: tests/test_evaluation.py)
    assert "AutoAttack" not in summary["targets"]

    tests = records["tests"]["result"]
    assert tests["failed"] == 0 and tests["skipped"] > 0 and tests["passed"] == 0  # no CUDA here: all skipped

    train = records["train"]["result"]
    for method, fe in (("trades-ltd", 27.0), ("awp-ltd", 33.0)):  # 2k + 7 (+ AWP's 6), k = 10 (config.yaml)
        r = train[method]
        assert r["precision"] == "fp16" and r["losses_finite"] and r["attack"]["steps"] == 10
        for variant in ("today", "no_syncs"):
            v = r[variant]
            assert v["forward_equivalents"] == fe and v["steps"] == 2
            assert v["images_per_s"] > 0 and v["tflop_per_s"] > 0 and v["mfu"] is None  # no peak for a CPU
            assert v["syncs"]["cuda_per_step"] is None  # CUDA's sync debug mode: on a GPU only
            run = v["run"]
            assert run["epochs"] == 120 and run["train_images"] == 50_000 and run["test_images"] == 10_000
            assert 0 < run["hours_test_pass"] < run["hours_training"] < run["projected_hours"]
        # counted on the meta device: today's 3 copies per batch + 1 per step (the first step: + the
        # epoch's order); now the epoch's one copy with its first batch, then none
        assert r["today"]["syncs"]["meta_per_step"] == [5, 4, 4] and r["no_syncs"]["syncs"]["meta_per_step"] == [1, 0, 0]
        assert r["no_syncs_over_today"] > 0
    assert train["awp-ltd"]["awp_on"] and not train["trades-ltd"]["awp_on"]
    assert train["monitor"]["precision_now"] == "fp32" and train["monitor"]["hours_now"] > 0  # TF32: CUDA only

    comp = records["compile_attack"]["result"]
    r = comp["trades-ltd"]
    assert comp["backend"] == "aot_eager" and r["compile_seconds"] > 0 and r["compiled_attack"]["images_per_s"] > 0
    assert r["first_loss_relative_difference"] < 5e-3 and r["x_adv_fraction_of_pixels_differing"] <= 0.01
    assert r["compiled_attack_over_today"] > 0 and r["compiled_attack_over_eager"] > 0
    assert comp["awp-ltd"]["status"] == "skipped: --dry"

    jobs = records["jobs_per_gpu"]["result"]
    assert list(jobs["runs"]) == ["1", "2"] and jobs["mps"] == "no CUDA (--dry)"
    assert jobs["runs"]["1"]["in_process"] and not jobs["runs"]["2"]["in_process"]
    assert [len(r["workers"]) for r in jobs["runs"].values()] == [1, 2] and jobs["throughput"][0] == 1.0
    assert all(w["steps"] > 0 and w["images_per_s"] > 0 for r in jobs["runs"].values() for w in r["workers"])

    natural = records["natural"]["result"]
    assert natural["natural"]["forward_equivalents"] == 3.0 and natural["loader"]["images_per_s"] > 0
    assert natural["loader"]["share_of_trades_step_time"] > 0  # train.json was there to compare with

    aa = records["autoattack"]["result"]
    assert list(aa["runs"]) == ["fp32", "fp32+channels_last"]  # TF32 exists on CUDA only
    cl = aa["runs"]["fp32+channels_last"]  # rates only, the fractions attacked fp32's (as tf32 on a GPU)
    assert not cl["known_answer_model"]["ran"] and cl["model_rates"]["channels_last"]
    assert cl["projection"]["projected_hours"] > 0 and aa["speedup_over_fp32"]["fp32"] == 1.0
    run = aa["runs"]["fp32"]
    known = run["known_answer_model"]
    assert known["flags_equal_the_known_answer"] and 0 < known["robust_accuracy"] == known["expected_robust_accuracy"]
    plan = budget.autoattack_plan({"autoattack": {"version": "standard"}}, 10)
    assert [a for a, _, _ in plan] == list(known["per_attack"]) == list(run["projection"]["per_attack"])
    assert known["per_attack"]["apgd-ce"]["fraction_attacked"] == known["clean_accuracy"]
    assert known["per_attack"]["square"]["fraction_attacked"] == known["robust_accuracy"]
    assert 0 < run["projection"]["projected_hours"] <= run["projection"]["projected_hours_with_small_model_time"]


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
