"""benchmarks/device_check.py, the one check of a GPU machine: its --dry run takes every
stage through the same code on the CPU, as `make gpu-check` runs it; a run killed after
stage 1 keeps stage 1; a stage over its cap is recorded as timed out, one without budget
as skipped; the measured rows merge into a calibration file the budget reads; the plan
fits the budget. And benchmarks/ imports no private name of ltd. (The GPU's numbers are
never asserted: they are the check's output.)"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .private_names import private_names

ROOT = Path(__file__).resolve().parent.parent
# As on the GPU machine: neither Snakemake nor jsonschema is importable.
BARE = ("import runpy, sys; sys.modules.update(snakemake=None, jsonschema=None); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
STAGE_FILES = ["1_correctness.json", "2_emulation.json", "3_throughput.json", "4_cifar_slice.json",
               "5_autoattack.json"]


def make_command(out: Path, args: str) -> list[str]:
    """The Makefile's gpu-check command as written, with its variables set."""
    return ["make", "--no-print-directory", "gpu-check", f"GPU_CHECK_OUT={out}", f"GPU_CHECK_ARGS={args}"]


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory) -> Path:
    """A cifarfolder archive (train/<class>/*.png, test/<class>/*.png) of a few 16 px
    images: stage 4's unpack, decode and loaders on the CPU, in a second."""
    import tarfile

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny_cifar")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in range(10):
            folder = root / "tiny" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    archive = root / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "tiny", arcname="tiny")
    return archive


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, tiny_archive):
    out = tmp_path_factory.mktemp("device_check")
    t0 = time.time()
    proc = subprocess.run(make_command(out, f"--dry --archive {tiny_archive}"), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    print(f"dry run: {time.time() - t0:.0f} s")
    return out, proc


def test_the_dry_run_writes_every_stage(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in STAGE_FILES:
        record = json.loads((out / name).read_text())
        assert record["status"] == "ok", (name, record.get("reason"))
        assert record["environment"]["dry"] is True
        assert record["results"]["summary"]
    summary = (out / "summary.md").read_text()
    assert "DRY" in summary and all(f"| {i} " in summary for i in range(1, 6))
    assert re.search(r"travel: [\d.]+ MiB \(.*\): within the 60 MiB limit", proc.stdout)


def test_the_dry_run_measures_what_the_stages_promise(dry_run):
    out, _ = dry_run
    r1 = json.loads((out / "1_correctness.json").read_text())["results"]
    assert set(r1["gradients"]) == {f"{m} {p}" for m in ("trades", "trades-ltd", "awp-ltd") for p in ("fp16", "bf16")}
    assert all(g["ok"] for g in r1["gradients"].values()), r1["gradients"]
    assert r1["grad_scaler"]["scale"] > 0
    r2 = json.loads((out / "2_emulation.json").read_text())["results"]
    assert {"zero_grad", "stalled"} <= set(r2["init_gap_points"]) and "fp16-emulated" in r2["trained"]
    r3 = json.loads((out / "3_throughput.json").read_text())["results"]
    assert [(r["compile_attack"]) for r in r3["runs"]] == [False] * 4 + [True] * 4
    assert r3["launch"]["seconds_per_launch"] > 0
    r4 = json.loads((out / "4_cifar_slice.json").read_text())["results"]
    assert set(r4["students"]) == {"T=5 fp16", "T=5 bf16", "T=20 fp16", "T=20 bf16"}
    assert all(len(v) == 2 + 1 for v in r4["students"].values())  # 4 steps read every 2, then the test accuracy
    r5 = json.loads((out / "5_autoattack.json").read_text())["results"]
    assert {r["precision"] for r in r5["rows"]} == {"fp32", "tf32"}


def test_the_measured_calibration_is_one_the_budget_reads(dry_run, tmp_path):
    from benchmarks import device_check
    from ltd import throughput

    out, _ = dry_run
    cal = throughput.calibration({"budget": {"calibration": str(out / "calibration.yaml")}})
    assert len(cal["rows"]) == 4 + 2 and cal["launch_seconds"]["device"].endswith("(dry)")
    target = tmp_path / "calibration.yaml"
    target.write_text((ROOT / "config" / "calibration.yaml").read_text())
    before = yaml.safe_load(target.read_text())["rows"]
    device_check.write_calibration(yaml.safe_load((out / "calibration.yaml").read_text()), target)
    merged = throughput.calibration({"budget": {"calibration": str(target)}})
    assert merged["rows"][: len(before)] == before  # other architectures' rows kept (dry: wrn-10-1)
    assert merged["rows"][len(before):] == cal["rows"] and merged["launch_seconds"] == cal["launch_seconds"]
    assert target.read_text().startswith("# The calibration that `snakemake budget` reads")


def test_a_killed_run_keeps_the_stages_it_finished(tmp_path, tiny_archive):
    out = tmp_path / "out"
    proc = subprocess.Popen(make_command(out, f"--dry --archive {tiny_archive} --stages correctness emulation "
                                              "throughput"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / STAGE_FILES[0]
    try:
        deadline = time.time() + 300
        while not (first.is_file() and json.loads(first.read_text())["status"] == "ok"):
            assert proc.poll() is None and time.time() < deadline, "stage 1 never finished"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert json.loads(first.read_text())["status"] == "ok"
    assert "| 1 correctness | ok |" in (out / "summary.md").read_text()
    later = [json.loads((out / n).read_text())["status"] for n in STAGE_FILES[1:3] if (out / n).is_file()]
    assert all(s in ("running", "ok") for s in later)  # a stage cut off says it never ended


def test_sigterm_records_the_stage_it_stopped_and_starts_no_other(tmp_path):
    """As `timeout` stops it: the stage in progress says "stopped", the exit code is 143."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", BARE, "benchmarks/device_check.py", "--out", str(out), "--dry",
                             "--stages", "correctness", "throughput", "autoattack"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    third = out / STAGE_FILES[2]
    try:
        deadline = time.time() + 300
        while not third.is_file():  # stage 3 began (its first measurement takes seconds)
            assert proc.poll() is None and time.time() < deadline, "stage 3 never began"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert json.loads((out / STAGE_FILES[0]).read_text())["status"] == "ok"
    assert json.loads(third.read_text())["status"] == "stopped"
    assert not (out / STAGE_FILES[4]).exists()


def test_dry_rows_never_enter_the_repositorys_calibration():
    from benchmarks import device_check

    before = (ROOT / "config" / "calibration.yaml").read_text()
    row = {"arch": "wrn-10-1", "image_size": 16, "precision": "bf16", "step": "attack", "batch_size": 8,
           "img_per_s": 1.0, "device": "cpu (dry)", "date": "2026-12-07", "source": "test"}
    with pytest.raises(SystemExit, match="--dry run's"):
        device_check.write_calibration({"rows": [row]}, ROOT / "config" / "calibration.yaml")
    assert (ROOT / "config" / "calibration.yaml").read_text() == before


def _device_check(out, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/device_check.py --dry as on the GPU machine: neither Snakemake nor jsonschema importable."""
    return subprocess.run([sys.executable, "-c", BARE, "benchmarks/device_check.py", "--out", str(out), "--dry",
                           *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)


def test_a_stage_over_its_cap_times_out_keeping_what_it_measured(tmp_path):
    # stage 3 takes 10-30 s dry on a 2-core machine (compiling the attack alone takes seconds),
    # its first run under 1 s; the cap's alarm starts with the stage, so the script's imports
    # do not shorten it, and the budget (480 s) is not what stops it
    out = tmp_path / "out"
    assert _device_check(out, "--stages", "throughput", "--cap", "throughput=5").returncode == 1  # not all ok
    timed_out = json.loads((out / "3_throughput.json").read_text())
    assert timed_out["status"] == "timeout" and timed_out["reason"].startswith("over "), timed_out
    assert timed_out["results"]["runs"], "the runs measured before the cap are kept"
    assert not (out / "1_correctness.json").exists()


def test_a_stage_without_budget_left_is_skipped(tmp_path):
    out = tmp_path / "out"  # 1 s of budget leaves no stage its MIN_SECONDS (5), however fast the imports
    assert _device_check(out, "--stages", "autoattack", "--budget-s", "1").returncode == 1
    skipped = json.loads((out / "5_autoattack.json").read_text())
    assert skipped["status"] == "skipped" and "left of the budget" in skipped["reason"]


def test_the_plan_fits_the_budget_and_names_its_sources():
    proc = subprocess.run([sys.executable, "benchmarks/device_check.py", "--plan"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    total = re.search(r"All stages: (\d+) s, within the budget of 480 s", proc.stdout)
    assert total, proc.stdout[-2000:]
    stages = re.findall(r"\| \*\*(\w+)\*\* \| \*\*total\*\* .*? \| \*\*([\d.]+)\*\*", proc.stdout)
    assert [s for s, _ in stages] == ["correctness", "emulation", "throughput", "cifar_slice", "autoattack"]
    assert abs(sum(float(v) for _, v in stages) - int(total.group(1))) <= 1
    assert "measured: trades-ltd bf16" in proc.stdout and "launch-bound" in proc.stdout


def test_benchmarks_import_no_private_name_of_ltd():
    bad = {str(p.relative_to(ROOT)): names for p in sorted((ROOT / "benchmarks").glob("*.py"))
           if (names := private_names(p))}
    assert not bad, f"private names of ltd used in benchmarks/: {bad}"


def test_the_private_name_check_finds_them(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from ltd.train import _Totals, fit\nfrom ltd import data\nimport ltd.steps as s\n"
                 "data._shard(0, 1, 0, 1)\ns._Replay\nfrom ltd import _hidden\n")
    assert sorted(private_names(f)) == sorted(["ltd.train: _Totals", "ltd: _hidden", "data._shard", "s._Replay"])


def doc_section() -> str:
    doc = (ROOT / "docs" / "performance.md").read_text()
    return doc[doc.index("## Checking a GPU machine"):doc.index("### Measured on a GPU")]


def test_the_documented_device_line_runs_this_script_with_the_carried_folder():
    section = doc_section()
    line = next(ln for ln in section.splitlines() if ln.startswith("set -o pipefail;"))
    assert "PYTHONPATH=.:.carry/site" in line and "benchmarks/device_check.py --out $OUT" in line
    assert 'carry: [".carry"]' in section and "make device-carry" in section
    assert len(line) <= 2000  # a device run's command limit


def test_the_documented_calibration_merge_runs_as_written(dry_run, tmp_path):
    """The docs' merge command, with the dry run's folder and a copy of the calibration."""
    from ltd import throughput

    out, _ = dry_run
    line = next(ln for ln in doc_section().splitlines() if "--from-calibration" in ln and ln.startswith(".venv"))
    target = tmp_path / "calibration.yaml"
    target.write_text((ROOT / "config" / "calibration.yaml").read_text())
    argv = shlex.split(line.replace("results/device_check/", f"{out}/").replace("config/calibration.yaml",
                                                                              str(target)))
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(throughput.calibration({"budget": {"calibration": str(target)}})["rows"]) == 5 + 6


def test_the_committed_plan_is_the_one_the_script_computes():
    proc = subprocess.run([sys.executable, "benchmarks/device_check.py", "--plan"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    plan = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("travel:"))
    assert plan.strip() == (ROOT / "docs" / "gpu" / "device_check_plan.md").read_text().strip(), \
        "rerun: python3 benchmarks/device_check.py --plan | grep -v ^travel > docs/gpu/device_check_plan.md"
