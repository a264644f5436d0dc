"""A newcomer's first commands on a fresh clone (no data/, no results/): the plan lists
every job before the data is there and says once what is missing; a real run stops
before its first job; the budget prints whenever asked; `--report` before the run says
what to run first; and no "Shell command: None" for script jobs."""
import subprocess
import sys

import pytest

from .conftest import copy_workflow

pytestmark = pytest.mark.slow

IMAGENET = ("table3 needs datasets.imagenet.path = 'data/imagenet': no such folder (ImageFolder layout: "
            "train/<class>/*, val/<class>/*")


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    d = copy_workflow(tmp_path_factory.mktemp("newcomer"), profiles=True)
    assert not (d / "data").exists() and not (d / "results").exists()
    return d


def snakemake(clone, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=clone, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def test_the_plan_lists_every_job_then_names_the_missing_data_once(clone):
    rc, out, err = snakemake(clone, "-n", "all")
    assert rc == 0, err[-3000:]
    assert "rule train_student:" in out and "imagenet_resnet-50" in out  # ImageNet's jobs too
    assert err.count(IMAGENET) == 1 and out.count(IMAGENET) == 0, err[-3000:]
    # after the plan: the last thing printed
    assert err.rstrip().splitlines()[-1].startswith("  - table3 needs"), err[-1000:]
    rc, out, err = snakemake(clone, "-n", "table4")  # Table IV reads no ImageNet: nothing to say
    assert rc == 0 and "not on disk" not in out + err, err[-3000:]


def test_a_real_run_stops_before_its_first_job_naming_the_same(clone):
    rc, out, err = snakemake(clone, "table3", "--cores", "1")
    assert rc != 0 and IMAGENET in err and "MissingData" in err, err[-3000:]
    assert "Warning: data these targets read" not in err  # said once, as the error
    assert "Finished job" not in out + err and not (clone / "results").exists()


def test_the_budget_prints_each_time_it_is_asked_for(clone):
    for attempt in range(2):
        rc, out, err = snakemake(clone, "budget", "--configfile", "config/quick.yaml", "--cores", "1")
        assert rc == 0, err[-3000:]
        assert "| total " in out and "every job's cost: results/quick/budget.md" in out, (attempt, out[-2000:])
        assert "Shell command: None" not in out + err  # profiles/default prints no shell commands
    assert "Nothing to be done" not in out + err and (clone / "results" / "quick" / "budget.md").is_file()
    rc, out, err = snakemake(clone, "-n", "budget")  # the plan of it: the paper config, no ImageNet needed
    assert rc == 0 and "rule budget_estimate:" in out and "not on disk" not in err, err[-3000:]


def test_a_report_before_the_run_says_what_to_run_first(clone):
    rc, out, err = snakemake(clone, "table4", "--report", "results/demo/report.html", "--configfile",
                             "config/demo.yaml")
    assert rc != 0 and "results/demo/tables/table4.md is not made yet: run `make demo`" in err, err[-3000:]
    assert "marked for report but does not exist" not in err
    rc, out, err = snakemake(clone, "--report", "report.html")  # bare: the paper run's `all`
    assert rc != 0 and "the same command without --report" in err and "(and 5 more)" in err, err[-3000:]


def test_an_evaluation_larger_than_the_test_set_is_said_before_the_plan(clone, tmp_path):
    overlay = tmp_path / "big.yaml"
    # (all 397 then include the monitor's images that choose best.pt: the plan refuses that
    # unless told, so the overlay says it is meant)
    overlay.write_text("evaluation: {monitor: {overlap_ok: true}}\ndatasets: {digits: {evaluation: {n_examples: 5000}}}\n")
    rc, out, err = snakemake(clone, "-n", "table4", "--configfile", "config/demo.yaml", str(overlay))
    assert rc == 0 and err.count("datasets.digits.evaluation.n_examples = 5000 (for datasets.digits) is more than "
                                 "its 397 test images") == 1, err[-3000:]
