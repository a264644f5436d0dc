"""A real Snakemake run of the (reduced) demo DAG in a temporary directory."""
import csv
import shutil
import subprocess
import sys

import pytest

from ltd.checkpoint import load_json

from .conftest import ROOT

pytestmark = pytest.mark.slow


def snakemake(cwd, *args, timeout=1200):
    # targets first: --configfile takes every word after it
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", "config/demo.yaml",
           "tests/workflow_small.yaml"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def job_counts(output):
    """Rule -> job count from the first "Job stats" table Snakemake prints."""
    lines = output.splitlines()
    start = lines.index("Job stats:") + 3
    counts = {}
    for line in lines[start:]:
        if not line.strip():
            break
        rule, count = line.split()
        counts[rule] = int(count)
    return counts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wf")
    for name in ("Snakefile", "rules", "workflow_scripts", "config", "envs", "tests/workflow_small.yaml"):
        src = ROOT / name
        dst = d / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return d


def test_dry_run_lists_every_job(workdir):
    proc = snakemake(workdir, "-n", "table4")
    assert proc.returncode == 0, proc.stderr
    # Every job is known before the run except the `auto` row's own evaluation, which
    # the checkpoint adds only if the chosen T is not already a row of the table.
    assert job_counts(proc.stdout + proc.stderr) == {
        "prepare_data": 1, "train_teacher": 1, "teacher_logits": 1, "soft_labels": 4, "train_substitute": 2,
        "tmax": 1, "train_student": 4, "evaluate": 4, "validate": 3, "select_temperature": 1,
        "resolve_auto": 1, "render_table": 1, "figure": 1, "table4": 1, "total": 26}


@pytest.fixture(scope="module")
def finished(workdir):
    proc = snakemake(workdir, "table4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return workdir / "results" / "test"


def test_table4_is_rendered_from_this_run(finished):
    md = (finished / "tables" / "table4.md").read_text()
    assert "OFFLINE DEMO" in md and "'digits' data set, NOT on CIFAR-10" in md and "wrn-10-1 for wrn-34-10" in md
    all_rows = list(csv.DictReader(open(finished / "tables" / "table4.csv")))
    # the paper's rows in its order; those this reduced run did not train say so
    assert [r["Row"] for r in all_rows if r["Source"] == "not run"] == [
        f"TRADES+LTD T={t}" for t in (2, 3, 8, 10, 12, 15)]
    rows = [r for r in all_rows if r["Source"] != "not run"]
    labels = [r["Row"] for r in rows]
    assert labels[:4] == ["TRADES", "TRADES+LTD T=1", "TRADES+LTD T=5", "TRADES+LTD T=20"]
    assert labels[-1].startswith("TRADES+LTD T=auto (chose ")
    assert rows[0]["Clean (paper)"] == "84.92" and rows[0]["AA (paper)"] == "53.08"
    # every "ours" number is the one in the run's own evaluation file
    for row, name in zip(rows, ["trades_b6", "trades-ltd_T1_b6", "trades-ltd_T5_b6", "trades-ltd_T20_b6"]):
        ev = load_json(finished / "students" / f"digits_wrn-10-1_{name}_s0" / "autoattack.json")
        assert float(row["Clean (ours)"]) == pytest.approx(100 * ev["clean_accuracy"], abs=0.006)
        assert float(row["AA (ours)"]) == pytest.approx(100 * ev["robust_accuracy"], abs=0.006)
        assert ev["robust_accuracy"] <= ev["clean_accuracy"]
        assert ev["autoattack"]["n_examples"] == 60 and ev["autoattack"]["max_perturbation"] <= ev["eps"] + 1e-6
    sel = load_json(next((finished / "temperature").glob("*/selection.json")))
    assert labels[-1] == f"TRADES+LTD T=auto (chose {sel['temperature']:g})"
    tmax = load_json(finished / "temperature" / "digits" / "tmax.json")
    assert sel["tmax"] == tmax["tmax"]
    assert (tmax["tmax"] is None) == (not any(l.startswith("Substitute T=") for l in labels))
    assert (finished / "tables" / "table4.tex").read_text().count("\\toprule") == 1
    png = finished / "figures" / "table4_temperature.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_second_run_has_nothing_to_do(finished, workdir):
    proc = snakemake(workdir, "-n", "table4")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def paper_plan(workdir, target):
    proc = subprocess.run([sys.executable, "-m", "snakemake", target, "-n", "--cores", "4",
                           "--resources", "gpu=4"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return job_counts(proc.stdout + proc.stderr)


def test_paper_config_plans_the_full_table4(workdir):
    """The default config (CIFAR-10, WRN-34-10) plans every job of the paper's Table IV."""
    assert paper_plan(workdir, "table4") == {
        "prepare_data": 1, "train_teacher": 1, "teacher_logits": 1,
        "soft_labels": 10,        # T = 1 ... 20 of the grid and 50 of the search (20 is shared)
        "train_substitute": 2, "tmax": 1,
        "train_student": 10,      # the TRADES baseline and nine TRADES+LTD temperatures
        "evaluate": 10, "render_table": 1, "figure": 1, "table4": 1, "total": 39,
    }


def test_paper_config_plans_all_six_tables_sharing_runs(workdir):
    """All six tables: teachers, soft labels and students shared between tables run once."""
    assert paper_plan(workdir, "all") == {
        "prepare_data": 3,        # CIFAR-10, CIFAR-100, ImageNet
        # CIFAR-10 WRN-34-10 (tables I, IV, V), WRN-34-20 (I), CIFAR-100 WRN-34-10 (II, VI),
        # ImageNet WRN-50-2 and ResNet-50 (III)
        "train_teacher": 5, "teacher_logits": 5,
        # CIFAR-10 WRN-34-10: grid 1 ... 20 + search 50; WRN-34-20: 5; CIFAR-100: 2 + search 5, 20;
        # ImageNet: 1 for each of the two teachers
        "soft_labels": 16,
        "train_substitute": 4, "tmax": 2,   # CIFAR-10 and CIFAR-100 searches (ImageNet: T = 1)
        # I: 5 (its TRADES and TRADES+LTD T=5 rows are Table IV's, AWP+LTD beta 6 is Table V's)
        # + IV: 8 more + V: 4 more + II: 1 + VI: 4 more + III: 2
        "train_student": 24, "evaluate": 24,
        "render_table": 6, "figure": 3, "simulation": 1, "all": 1, "total": 94,
    }
