"""The fp16 study (issue 27, config/study_fp16.yaml, `make study-fp16`): what it plans, and
that every run, table and note it writes says the fp16 is emulated. The study itself (24
minutes on 2 cores) is a demo target; its results are docs/fp16_study.md. Its code path
(fp16-emulated training through ltd.train.fit) is tested in tests/test_fp16_emulation.py."""
import json
import subprocess
import sys

import pytest

from ltd import config as ltd_config
from ltd import experiments, fp16_emulation

from .conftest import ROOT, copy_workflow
from .test_workflow import job_counts

OVERLAYS = ["config/cifar10_jpeg.yaml", "config/study_fp16.yaml"]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="module")
def study_config():
    return ltd_config.load(*(ROOT / o for o in OVERLAYS))


def test_it_trains_four_students_of_one_teacher_in_emulated_fp16_and_fp32(study_config):
    students = list(experiments.table_students(study_config, "table8"))
    assert sorted((s.temperature, s.name.endswith(f"_{fp16_emulation.PRECISION}_b6_s0")) for s in students) == [
        (5.0, False), (5.0, True), (20.0, False), (20.0, True)]
    assert {s.teacher for s in students} == {students[0].teacher}  # one teacher, trained once
    assert "EMULATED" in study_config["tables"]["table8"]["caption"]


def test_the_make_target_plans_the_study_and_nothing_else(tmp_path):
    """`make study-fp16`'s Snakemake command, planned on a copy (the archive read from
    ../shared/data as the offline overlay says): no T_max search, 4 students, 4 evaluations."""
    if not ARCHIVE.exists():
        pytest.skip(f"{ARCHIVE} is not here")
    work = copy_workflow(tmp_path / "w", profiles=True)
    (tmp_path / "shared").symlink_to(ARCHIVE.parent.parent, target_is_directory=True)
    make = subprocess.run(["make", "-n", "study-fp16"], cwd=ROOT, capture_output=True, text=True)
    assert "table8 --cores" in make.stdout and "config/cifar10_jpeg.yaml config/study_fp16.yaml" in make.stdout
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "table8", "--cores", "2", "--configfile",
                           *OVERLAYS], cwd=work, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_counts(out)
    assert (counts["train_teacher"], counts["train_student"], counts["evaluate"]) == (1, 4, 4), counts
    assert "tmax" not in counts and "evaluate_best" not in counts


def test_the_per_epoch_table_labels_emulated_runs(tmp_path):
    """benchmarks/fp16_study_epochs.py reads each student's history as the loop wrote it."""
    for name, precision, stalled in (("a_T20_fp16-emulated", "fp16-emulated", 0.25), ("a_T20", "fp32", 0.0)):
        run = tmp_path / "students" / name
        run.mkdir(parents=True)
        record = {"epoch": 1, "precision": precision, "train_stalled": stalled, "train_moved": 0.5,
                  "train_adv_accuracy": 0.125, "test_accuracy": 0.5, "test_pgd_accuracy": 0.0625}
        (run / "history.jsonl").write_text(json.dumps(record) + "\n")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fp16_study_epochs.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()[2:]}
    assert rows["a_T20_fp16-emulated"] == ["fp16-EMULATED", "1", "25", "50", "12.5", "50", "6.2"]
    assert rows["a_T20"][0] == "fp32"



def _study_rows() -> dict[str, list[str]]:
    """Our rows of the committed docs/fp16_study/table8.md, by row name: its cells."""
    rows = {}
    for line in (ROOT / "docs" / "fp16_study" / "table8.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 6 and cells[1] == "this run":
            rows[cells[0]] = cells
    return rows


def test_the_docs_quote_the_committed_study_table():
    """docs/fp16_study.md's table and the README's figures are the committed table8.md's
    (the run's own output), not numbers typed apart from it."""
    import re
    made = _study_rows()
    assert len(made) == 4, made
    left = dict(made)
    for line in (ROOT / "docs" / "fp16_study.md").read_text().splitlines():
        m = re.match(r"\| (TRADES\+LTD T=\d+) \| (fp16-EMULATED|fp32) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
                     line)
        if m:
            row = left.pop(m[1] + (" (fp16-emulated)" if m[2] == "fp16-EMULATED" else ""))
            assert [m[3], m[4], m[5], m[6]] == [row[2], row[3], row[5], row[6]], (line, row)
    assert not left, f"rows of table8.md missing from docs/fp16_study.md: {list(left)}"
    readme = " ".join((ROOT / "README.md").read_text().split())
    t20, t5 = made["TRADES+LTD T=20 (fp16-emulated)"], made["TRADES+LTD T=5 (fp16-emulated)"]
    assert f"emulated fp16 stalled {float(t20[5]):.1f} %" in readme
    assert f"({float(t5[5]):.1f} % at T = 5)" in readme
