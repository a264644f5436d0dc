"""config/quick.yaml, the quick reproduction: its plan and budget, and the whole Table IV
DAG of it, reduced (tests/quick_tiny.yaml), on real CIFAR-10 images from the JPEG archive
through config/cifar10_jpeg.yaml."""
import csv
import subprocess
import sys

import pytest
import yaml

from ltd import budget, budget_report, jobspec
from ltd import config as ltd_config
from ltd import experiments as ex
from ltd.files import load_json
from ltd.scope import everything

from .conftest import CIFAR10_JPEG, ROOT, copy_workflow
from .test_workflow import job_counts

QUICK = ROOT / "config" / "quick.yaml"
JPEG = ROOT / "config" / "cifar10_jpeg.yaml"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def quick_config():
    return ltd_config.load(QUICK)


def test_quick_config_is_table4_on_cifar10_with_preact_resnet18(quick_config):
    c = quick_config
    assert ex.table_names(c) == ["table4", "table8"] and everything(c).data == {"cifar10"}
    assert c["datasets"]["cifar10"]["source"] == "cifar10"  # torchvision's, downloaded
    runs = list(ex.table_students(c, "table4"))
    assert [(r.method, r.temperature) for r in runs] == [("trades", None)] + [
        ("trades-ltd", t) for t in (1.0, 5.0, 10.0, 15.0, 20.0)]
    assert {r.arch for r in runs} == {"preact-resnet18"} and ex.search_teacher(c, "cifar10") == runs[1].teacher
    # table8: the same TRADES+LTD rows in fp16 (Table IV's own runs: the paper config trains
    # in fp16) and in bf16 at the cliff's T = 15 and 20 (two more)
    by_precision = list(ex.table_students(c, "table8"))
    assert by_precision[:5] == runs[1:] and [r.temperature for r in by_precision[5:]] == [15.0, 20.0]
    assert len({r.name for r in by_precision}) == 7 and all("bf16" in r.name for r in by_precision[5:])
    sched = ex.schedule(c, "students", "cifar10")
    # the paper's proportions: /10 after 80 and 100 of 120 epochs
    assert sched["epochs"] == 24 and [m / 24 for m in sched["lr_milestones"]] == [80 / 120, 100 / 120]
    ev = ex.evaluation(c, "cifar10")
    assert ev["n_examples"] == 1000 and ev["autoattack"]["version"] == "standard"


def test_quick_config_fits_one_h100_hour(quick_config):
    """`snakemake budget`'s estimate of everything quick.yaml runs (teacher, substitutes,
    students, evaluations): at most one GPU-hour on the H100/H200 the budget assumes,
    PreAct ResNet-18 priced by its own throughput (no GPU measured it: its launch-bound
    training steps, FLOP-bound evaluations)."""
    assert quick_config["budget"]["gpu"] == "H100/H200"
    total = budget.estimate(quick_config).set_index("table").loc["total"]
    assert total["total GPU-h"] <= 1.0
    # two evaluations a student: best.pt (compared with the paper) and the last epoch beside it
    assert (total.students, total.teachers, total.substitutes, total.evaluations) == (8, 1, 2, 16)
    priced = budget_report.jobs_frame(quick_config).set_index("job")["priced by"]
    assert set(priced.loc[["student", "teacher", "substitute"]]) == {"model, launch-bound"}
    assert set(priced.loc[["evaluation"]]) == {"model, FLOP-bound"}


def plan(cwd, *args, overlays=(), timeout=300):
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", *map(str, overlays)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The workflow in a temporary folder (runs write results/ there, not in the checkout)."""
    return copy_workflow(tmp_path_factory.mktemp("quick"), "tests/quick_tiny.yaml", profiles=True)


def _table(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith(("| table ", "| table4 ", "| table8 ", "| total "))]


def test_readme_shows_the_budget_the_tool_prints(copy):
    """The README's budget of the quick reproduction is what `snakemake budget
    --configfile config/quick.yaml` prints, as typed there (a copy of the checkout)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The quick reproduction"):]
    section = section[:section.index("\n## ", 1)]
    assert "make quick " in section and ".venv/bin/snakemake budget --configfile config/quick.yaml" in section
    proc = subprocess.run([sys.executable, "-m", "snakemake", "budget", "--configfile", "config/quick.yaml"],
                          cwd=copy, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = _table(proc.stdout + proc.stderr)
    assert len(printed) == 4 and printed == _table(section)  # header, table4, table8, total
    total = float(printed[-1].strip("|").split("|")[-1])
    assert 0 < total <= 1.0  # at most one H100-hour by the tool


def test_make_quick_runs_the_readme_commands():
    out = subprocess.run(["make", "-n", "quick", "QUICK_OVERLAYS=config/cifar10_jpeg.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60).stdout
    assert "snakemake budget --cores 1 --configfile config/quick.yaml config/cifar10_jpeg.yaml" in out
    assert ("snakemake all --cores all --resources gpu=1 --configfile config/quick.yaml config/cifar10_jpeg.yaml"
            in out)


def test_quick_config_plans_only_its_table():
    """`make quick`'s run of `all`: Table IV's jobs (six students, their teacher and the
    T_max search) and table8's two bf16 students, one GPU, nothing of the tables quick.yaml leaves out (nor ImageNet's
    four-GPU jobs, which `--resources gpu=1` would refuse)."""
    proc = plan(ROOT, "-n", "all", "--resources", "gpu=1", overlays=[QUICK])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout + proc.stderr) == {
        "download_data": 1, "train_teacher": 1, "teacher_logits": 1, "soft_labels": 6, "train_substitute": 2,
        "tmax": 1, "train_student": 8, "evaluate": 8, "evaluate_best": 8, "render_table": 2, "figure": 2,
        "figure_tmax": 1, "curves": 2, "simulation": 1, "evaluation_report": 1, "all": 1, "total": 46}


def test_offline_source_plans_from_the_archive_beside_the_clone():
    """config/cifar10_jpeg.yaml as written: its archive is ../shared/data/ (CI has it)."""
    if not CIFAR10_JPEG.is_file():
        pytest.skip(f"{CIFAR10_JPEG} is not here")
    proc = plan(ROOT, "-n", "table4", overlays=[QUICK, JPEG])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout + proc.stderr)["train_student"] == 6


def test_offline_source_without_its_archive_stops_before_any_job(copy, tmp_path):
    """The plan lists the jobs and warns; the run stops before its first job (issue 30)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run": "checks", "datasets": {"cifar10": {"archive": "nowhere/c10.tar.gz"}}}))
    missing = "datasets.cifar10.archive = 'nowhere/c10.tar.gz': no such file"
    proc = plan(copy, "-n", "all", overlays=[QUICK, JPEG, bad])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and missing in out and "rule prepare_data" in out, out[-2000:]
    proc = plan(copy, "all", overlays=[QUICK, JPEG, bad])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and missing in out, out[-2000:]
    assert "rule prepare_data" not in out and not (copy / "results" / "checks").exists()


@pytest.fixture(scope="module")
def workdir(copy, cifar10_jpeg):
    # the archive beside the clone, unpacked once for the session (prepare_data finds it
    # unpacked from the same archive and keeps it)
    (copy / "tests" / "archive.yaml").write_text(yaml.safe_dump(
        {"datasets": {"cifar10": {"archive": str(CIFAR10_JPEG), "path": cifar10_jpeg["path"]}}}))
    return copy


OVERLAYS = ["config/quick.yaml", "config/cifar10_jpeg.yaml", "tests/archive.yaml", "tests/quick_tiny.yaml"]


@pytest.mark.slow
def test_quick_reduced_runs_table4_on_real_cifar10(workdir, cifar10_jpeg):
    proc = plan(workdir, "table4", overlays=OVERLAYS, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = workdir / "results" / "quicktest"
    src = load_json(res / "data" / "cifar10.json")
    assert (src["source"], src["train"]["images"], src["test"]["images"]) == ("cifarfolder", 50_000, 10_000)
    assert src["classes"] == CIFAR10_CLASSES and src["lossy"] and src["archive"]["sha256"] == cifar10_jpeg["archive_sha256"]
    md = (res / "tables" / "table4.md").read_text()
    assert md.startswith("Quick reproduction of Table IV") and "OFFLINE DEMO" not in md
    assert "Data: image files under" in md and "JPEG is lossy" in md and "Stand-ins: wrn-10-1 for wrn-34-10" in md
    rows = [r for r in csv.DictReader(open(res / "tables" / "table4.csv")) if r["Source"] == "this run"]
    assert [r["Row"].removesuffix(" †") for r in rows] == [
        "TRADES", "TRADES+LTD T=1", "TRADES+LTD T=15", "Substitute T=20 (T_max); paper: T=50"]
    for row, name in zip(rows, ["trades_b6", "trades-ltd_T1_b6", "trades-ltd_T15_b6"]):
        run = res / "students" / f"cifar10_wrn-10-1_{name}_s0"
        ev, metrics = load_json(run / "autoattack_best.json"), load_json(run / "metrics.json")
        last = load_json(run / "autoattack.json")  # the last epoch, beside best.pt
        assert float(row["Clean (ours)"]) == pytest.approx(100 * ev["clean_accuracy"], abs=0.006)
        assert float(row["AA (ours)"]) == pytest.approx(100 * ev["robust_accuracy"], abs=0.006)
        assert float(row["AA (last)"]) == pytest.approx(100 * last["robust_accuracy"], abs=0.006)
        assert ev["training"]["chosen_by"]["images"] == "last" and row["Epoch (ours)"].endswith("/2")
        assert ev["autoattack"]["n_examples"] == 60 and ev["robust_accuracy"] <= ev["clean_accuracy"]
        # which images: real CIFAR-10 files, 32 px as stored, named in each result's provenance
        for splits, split, n in ((metrics["provenance"]["splits"], "train", 256),
                                 (ev["provenance"]["splits"], "test", 200)):
            assert splits["source"] == "cifarfolder" and splits["lossy"] and splits["classes"] == CIFAR10_CLASSES
            assert splits[split]["n"] == n and splits[split]["shape"] == [3, 32, 32]
        assert [h["epoch"] for h in metrics["history"]] == [1, 2] and "test_pgd_accuracy" in metrics["history"][-1]
    assert (res / "figures" / "table4_temperature.png").stat().st_size > 10_000

    # The source is part of every result's identity: torchvision's CIFAR-10 instead reruns it all
    other = workdir / "torchvision.yaml"
    other.write_text(yaml.safe_dump({"datasets": {"cifar10": {"source": "cifar10"}}}))
    proc = plan(workdir, "-n", "table4", overlays=[*OVERLAYS, other])
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["download_data"] == 1 and counts["train_teacher"] == 1 and counts["train_student"] == 3


def test_the_source_is_part_of_every_result_identity():
    """Switching CIFAR-10 between torchvision's and the JPEG files (or another archive, or
    another class order) changes the identity of every split, hence every job's params."""
    tv, jpeg = ltd_config.load(QUICK, validate=False), ltd_config.load(QUICK, JPEG, validate=False)
    for split in ("train", "val", "test"):
        a, b = jobspec.data(tv, "cifar10").identity(split), jobspec.data(jpeg, "cifar10").identity(split)
        assert a != b and b["archive_sha256"] == jpeg["datasets"]["cifar10"]["archive_sha256"]
        other = ltd_config.merge(jpeg, {"datasets": {"cifar10": {"classes": CIFAR10_CLASSES[::-1]}}})
        assert jobspec.data(other, "cifar10").identity(split) != b
    assert ex.source_identity(jpeg["datasets"]["cifar10"]) == {k: jpeg["datasets"]["cifar10"][k] for k in (
        "source", "path", "archive", "archive_sha256")}
