"""benchmarks/quick_gpu.py, the quick reproduction's slice for a GPU machine: its --dry
mode runs every part on the CPU (a tiny model on a handful of real CIFAR-10 images), so
the script the GPU machine will run is tested here."""
import os
import subprocess
import sys

import pytest

from ltd.files import load_json

from .conftest import CIFAR10_JPEG, ROOT

SCRIPT = ROOT / "benchmarks" / "quick_gpu.py"
STUDENTS = ("T15_fp16", "T15_bf16")  # --dry: T = 15 only (T = 5 runs the same code)


# As on the GPU machine: neither Snakemake nor jsonschema is importable.
BARE = ("import runpy, sys; sys.modules.update(snakemake=None, jsonschema=None); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _run(out, data, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", BARE, str(SCRIPT), "--dry", "--out", str(out), "--data", data,
                           "--archive", str(CIFAR10_JPEG), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def dry(tmp_path_factory, cifar10_jpeg):
    out = tmp_path_factory.mktemp("quick_gpu")
    return out, _run(out / "run", cifar10_jpeg["path"], "--export", out / "export")


@pytest.mark.slow
def test_dry_slice_runs_every_part_on_real_images(dry):
    out, stdout = dry
    run = out / "run"
    data = load_json(run / "data.json")
    assert data["status"] == "ok" and data["result"]["source"] == "cifarfolder" and data["result"]["lossy"]
    assert data["result"]["train"]["images"] == 50_000 and data["result"]["classes"][0] == "airplane"
    teacher = load_json(run / "teacher.json")["result"]
    assert teacher["run"] == "cifar10_wrn-10-1_s0" and [h["epoch"] for h in teacher["history"]] == [1]
    for name in STUDENTS:
        rec = load_json(run / f"student_{name}.json")
        assert rec["status"] == "ok", rec
        r = rec["result"]
        assert r["precision_asked"] == name.split("_")[1] and r["precision"] == "fp32"  # the CPU trains in fp32
        assert r["train_images"] == 64 and r["temperature"] == 15
        h = r["history"][0]
        assert 0 <= h["test_accuracy"] <= 1 and 0 <= h["test_pgd_accuracy"] <= 1 and h["train_robust"] >= 0
        assert 0 <= h["train_stalled"] <= 1 and r["stalled_logged"]  # the loop logs the stalled fraction
        ev = load_json(run / f"autoattack_{name}.json")["result"]
        assert ev["n_examples"] == 8 and ev["robust_accuracy"] <= ev["clean_accuracy"] and ev["attacks"] == ["apgd-ce"]
    summary = load_json(run / "summary.json")
    assert summary["environment"]["dry"] and summary["projection"]["student_hours_budget"] > 0
    assert summary["parts"]["student_T15_bf16"] == load_json(run / "student_T15_bf16.json")
    md = (run / "summary.md").read_text()
    assert "DRY RUN" in md and "| student_T15_bf16 | 1 | fp32 |" in md and md in stdout
    assert not (run / "student_T5_bf16.json").exists()
    # the export: the two summary files (a GPU machine returns few files)
    assert sorted(p.name for p in (out / "export").iterdir()) == ["summary.json", "summary.md"]
    assert load_json(out / "export" / "summary.json")["status"] == summary["status"]


@pytest.mark.slow
def test_dry_slice_rerun_keeps_finished_parts(dry, cifar10_jpeg):
    out, _ = dry
    stdout = _run(out / "run", cifar10_jpeg["path"], timeout=300)
    assert "[teacher] ok (from" in stdout and "[autoattack_T15_bf16] ok (from" in stdout


def test_config_layers_alike_without_snakemake(monkeypatch):
    """ltd.config.merge without Snakemake (the GPU machine) layers as Snakemake does."""
    import yaml

    from ltd import config as ltd_config

    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    overlays = [yaml.safe_load((ROOT / "config" / f).read_text()) for f in ("quick.yaml", "cifar10_jpeg.yaml")]
    overlays.append({"tables": {"table4": None}, "datasets": {"cifar10": {"evaluation": None}}, "train": 3})
    with_snakemake = base
    for o in overlays:
        with_snakemake = ltd_config.merge(with_snakemake, o)
    monkeypatch.setitem(sys.modules, "snakemake.utils", None)
    bare = base
    for o in overlays:
        bare = ltd_config.merge(bare, o)
    assert bare == with_snakemake and bare["train"] == 3 and bare["datasets"]["cifar10"]["source"] == "cifarfolder"


def test_the_teacher_trains_in_the_paper_configs_precision():
    """The docstring's teacher precision is what the slice's teacher job gets: fp16 (with a
    loss scaler), config.yaml's train.precision, as the paper config's teachers."""
    from benchmarks import quick_gpu
    from ltd import config as ltd_config
    from ltd import experiments as ex
    from ltd import jobspec

    for dry in (True, False):
        args = quick_gpu.parse_args(["--out", "unused", *(["--dry"] if dry else [])])
        cfg = quick_gpu.slice_config(args, CIFAR10_JPEG)
        teacher = ex.teacher(cfg, quick_gpu.DATASET, ex.search(cfg, quick_gpu.DATASET)["arch"])
        assert jobspec.training(cfg, teacher).schedule["precision"] == "fp16"
    paper = ltd_config.load()
    paper_teacher = ex.teacher(paper, "cifar10", ex.search(paper, "cifar10")["arch"])
    assert jobspec.training(paper, paper_teacher).schedule["precision"] == "fp16"
    assert "fp16 with a\n   loss scaler" in quick_gpu.__doc__
