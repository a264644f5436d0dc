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
    for name in ("Snakefile", "rules", "workflow_scripts", "config", "tests/workflow_small.yaml"):
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
        "resolve_auto": 1, "table4": 1, "total": 24}


@pytest.fixture(scope="module")
def finished(workdir):
    proc = snakemake(workdir, "table4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return workdir / "results" / "test"


def test_table4_is_rendered_from_this_run(finished):
    md = (finished / "tables" / "table4.md").read_text()
    assert "digits" in md and "NOT on cifar10" in md
    rows = list(csv.DictReader(open(finished / "tables" / "table4.csv")))
    labels = [r["Row"] for r in rows]
    assert labels[:4] == ["TRADES", "TRADES+LTD T=1", "TRADES+LTD T=5", "TRADES+LTD T=20"]
    assert labels[4].startswith("TRADES+LTD T=auto (chose ")
    assert rows[0]["Clean (paper)"] == "84.92" and rows[0]["AA (paper)"] == "53.08"
    # every "ours" number is the one in the run's own evaluation file
    for row, name in zip(rows, ["trades_b6", "trades-ltd_T1_b6", "trades-ltd_T5_b6", "trades-ltd_T20_b6"]):
        ev = load_json(finished / "students" / f"digits_wrn-10-1_{name}_s0" / "autoattack.json")
        assert float(row["Clean (ours)"]) == pytest.approx(100 * ev["clean_accuracy"], abs=0.006)
        assert float(row["AA (ours)"]) == pytest.approx(100 * ev["robust_accuracy"], abs=0.006)
        assert ev["robust_accuracy"] <= ev["clean_accuracy"]
        assert ev["autoattack"]["n_examples"] == 60 and ev["autoattack"]["max_perturbation"] <= ev["eps"] + 1e-6
    sel = load_json(next((finished / "temperature").glob("*/selection.json")))
    assert labels[4] == f"TRADES+LTD T=auto (chose {sel['temperature']:g})"
    tmax = load_json(finished / "temperature" / "digits_wrn-10-1_s0" / "tmax.json")
    assert sel["tmax"] == tmax["tmax"]
    assert (tmax["tmax"] is None) == (not any(l.startswith("Substitute T=") for l in labels))
    assert (finished / "tables" / "table4.tex").read_text().count("\\toprule") == 1
    png = finished / "figures" / "table4_temperature.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_second_run_has_nothing_to_do(finished, workdir):
    proc = snakemake(workdir, "-n", "table4")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_paper_config_plans_the_full_table4(workdir):
    """The default config (CIFAR-10, WRN-34-10) plans every job of the paper's Table IV."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "table4", "-n", "--cores", "4",
                           "--resources", "gpu=4"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts == {
        "prepare_data": 1, "train_teacher": 1, "teacher_logits": 1,
        "soft_labels": 10,        # T = 1 ... 20 of the grid and 50 of the search (20 is shared)
        "train_substitute": 2, "tmax": 1,
        "train_student": 10,      # the TRADES baseline and nine TRADES+LTD temperatures
        "evaluate": 10, "table4": 1, "total": 37,
    }, counts
