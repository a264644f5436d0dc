"""A real Snakemake run of the (reduced) demo DAG in a temporary directory."""
import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ltd.files import load_json

from . import debian
from .conftest import copy_workflow

pytestmark = pytest.mark.slow


def snakemake(cwd, *args, timeout=1200, overlays=()):
    # targets first: --configfile takes every word after it
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", "config/demo.yaml",
           "tests/workflow_small.yaml", *overlays]
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
    d = copy_workflow(tmp_path_factory.mktemp("wf"), "tests/workflow_small.yaml", profiles=True)
    for split in ("train", "val"):  # the paper config's ImageNet tree, as a user has it (checked by the plan)
        (d / "data" / "imagenet" / split / "n01440764").mkdir(parents=True)
    return d


def test_dry_run_lists_every_job(workdir):
    proc = snakemake(workdir, "-n", "table4")
    assert proc.returncode == 0, proc.stderr
    # Every job is known before the run except the `auto` row's own evaluation, which
    # the checkpoint adds only if the chosen T is not already a row of the table.
    assert job_counts(proc.stdout + proc.stderr) == {
        "prepare_data": 1, "train_teacher": 1, "teacher_logits": 1, "soft_labels": 4, "train_substitute": 2,
        "tmax": 1, "train_student": 4, "evaluate": 4, "evaluate_best": 4, "validate": 3, "select_temperature": 1,
        "resolve_auto": 1, "resolve_auto_best": 1, "render_table": 1, "figure": 1, "figure_tmax": 1, "curves": 1,
        "table4": 1, "total": 33}


def test_a_best_epoch_chosen_on_evaluated_images_stops_the_plan(workdir, tmp_path):
    """The monitor on the first 100 test images, which the evaluation (the first 60) reports
    on: Snakemake stops before any job, naming the key and the ways out."""
    path = tmp_path / "first.yaml"
    path.write_text(yaml.safe_dump({"evaluation": {"monitor": {"images": "first"}}}))
    proc = snakemake(workdir, "-n", "table4", overlays=[str(path)], timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out, out[-3000:]
    assert ("evaluation.monitor: the best epoch (best.pt, which table4 reports) would be chosen on the first "
            "100 test images, 60 of which are among the first 60 test images") in out, out[-3000:]
    assert "evaluation.monitor.images: last with n_examples <= 337" in out and "overlap_ok: true" in out


@pytest.fixture(scope="module")
def finished(workdir):
    proc = snakemake(workdir, "table4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return workdir / "results" / "test"


def test_table4_is_rendered_from_this_run(finished):
    md = (finished / "tables" / "table4.md").read_text()
    assert "OFFLINE DEMO" in md and "'digits' data set, NOT on CIFAR-10" in md and "wrn-10-1 for wrn-34-10" in md
    # how the rows were trained and evaluated, and how the paper's baseline number was obtained
    assert "The paper's TRADES row: RobustBench's AutoAttack of the official TRADES checkpoint" in md
    assert "Our rows, baselines included, are trained with this config's schedule: 2 epochs, batch 64" in md
    assert "Training precision: fp32" in md
    # ours are best.pt's, chosen apart from the evaluated images; the last epoch beside them
    assert "Ours (compared with the paper's, Δ): each run's epoch with the best monitored PGD accuracy" in md
    assert ("chosen by PGD-5 accuracy on the last 100 of the 397 test images (298-397), disjoint from the first 60 "
            "test images evaluated") in md
    all_rows = list(csv.DictReader(open(finished / "tables" / "table4.csv")))
    # the paper's rows in its order; those this reduced run did not train say so
    assert [r["Row"] for r in all_rows if r["Source"] == "not run"] == [
        f"TRADES+LTD T={t}" for t in (2, 3, 8, 10, 12, 15)]
    rows = [r for r in all_rows if r["Source"] != "not run"]
    # a difference from the paper beyond the configured tolerance (1 point) is marked
    for r in rows:
        far = any(r[d] and abs(float(r[d])) > 1.0 for d in ("Δ Clean", "Δ AA"))
        assert r["Row"].endswith(" †") == far, r
    labels = [r["Row"].removesuffix(" †") for r in rows]
    assert labels[:4] == ["TRADES", "TRADES+LTD T=1", "TRADES+LTD T=5", "TRADES+LTD T=20"]
    assert labels[-1].startswith("TRADES+LTD T=auto (chose ")
    assert rows[0]["Clean (paper)"] == "84.92" and rows[0]["AA (paper)"] == "53.08"
    # every "ours" number is the one in the run's own evaluation file of best.pt, the last
    # epoch's in its own; the monitor chose best.pt on the images it was told
    for row, name in zip(rows, ["trades_b6", "trades-ltd_T1_b6", "trades-ltd_T5_b6", "trades-ltd_T20_b6"]):
        run = finished / "students" / f"digits_wrn-10-1_{name}_s0"
        ev, last, metrics = (load_json(run / f) for f in ("autoattack_best.json", "autoattack.json", "metrics.json"))
        assert float(row["Clean (ours)"]) == pytest.approx(100 * ev["clean_accuracy"], abs=0.006)
        assert float(row["AA (ours)"]) == pytest.approx(100 * ev["robust_accuracy"], abs=0.006)
        assert float(row["AA (last)"]) == pytest.approx(100 * last["robust_accuracy"], abs=0.006)
        assert float(row["Clean (last)"]) == pytest.approx(100 * last["clean_accuracy"], abs=0.006)
        assert row["Epoch (ours)"] == f"{metrics['best']['epoch']}/2" and last["training"]["epoch"] == 2
        assert ev["training"]["chosen_by"] == metrics["best"]["monitor"] and metrics["best"]["monitor"]["images"] == "last"
        assert ev["robust_accuracy"] <= ev["clean_accuracy"]
        assert ev["autoattack"]["n_examples"] == 60 and ev["autoattack"]["max_perturbation"] <= ev["eps"] + 1e-6
    sel = load_json(next((finished / "temperature").glob("*/selection.json")))
    assert labels[-1] == f"TRADES+LTD T=auto (chose {sel['temperature']:g})"
    tmax = load_json(finished / "temperature" / "digits" / "tmax.json")
    assert sel["tmax"] == tmax["tmax"]
    assert (tmax["tmax"] is None) == (not any(l.startswith("Substitute T=") for l in labels))
    assert (finished / "tables" / "table4.tex").read_text().count("\\toprule") == 1
    for fig in ("table4_temperature", "table4_curves", "tmax_digits"):
        png = finished / "figures" / f"{fig}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG", fig
    metrics = load_json(finished / "students" / "digits_wrn-10-1_trades-ltd_T5_b6_s0" / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and "test_pgd_accuracy" in metrics["history"][-1]
    prov = metrics["provenance"]
    assert prov["seed"] == 0 and prov["precision"] == "fp32" and prov["gpu_hours"] == 0 and prov["packages"]["torch"]
    assert prov["settings"]["attack"]["steps"] == 2 and len(prov["git_commit"] or "") in (0, 40)


def test_second_run_has_nothing_to_do(finished, workdir):
    proc = snakemake(workdir, "-n", "table4")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_student_exports_for_robustbench_and_loads_back(finished, workdir):
    """`snakemake results/<run>/robustbench/<student>.pt`: the model-zoo layout, loaded as
    robustbench.utils.load_model does, gives the student's own outputs."""
    import torch

    from ltd.data import load_split
    from ltd.jobspec import Data
    from ltd.models import build_model

    name = "digits_wrn-10-1_trades-ltd_T5_b6_s0"
    proc = snakemake(workdir, f"results/test/robustbench/{name}.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = torch.load(finished / "robustbench" / f"{name}.pt", map_location="cpu", weights_only=True)
    ours = torch.load(finished / "students" / name / "model.pt", map_location="cpu", weights_only=True)
    assert list(raw) == ["state_dict"] and list(raw["state_dict"]) == list(ours)
    rb, model = build_model("wrn-10-1", 10), build_model("wrn-10-1", 10)
    rb.load_state_dict(raw["state_dict"], strict=True)
    model.load_state_dict(ours)
    x = load_split(Data.of({"source": "digits", "image_size": 16, "test_size": 397}), "test").x[:16]
    with torch.no_grad():
        assert torch.equal(rb.eval()(x), model.eval()(x))


# Results follow the config: after a finished run, editing one setting plans exactly the
# jobs whose output it defines (ltd.experiments' identities in each rule's params, or the
# run names), and what depends on them; speed and resource settings plan nothing.
DOWNSTREAM = {"render_table": 1, "figure": 1, "table4": 1}  # the table itself, always
EVALUATIONS = {"evaluate": 4, "evaluate_best": 4, "resolve_auto": 1, "resolve_auto_best": 1}  # best.pt and last
STUDENTS = {"train_student": 4, **EVALUATIONS, "validate": 3, "select_temperature": 1,
            "curves": 1, **DOWNSTREAM}  # every student of the reduced Table IV and the `auto` search
TEACHER = {"train_teacher": 1, "teacher_logits": 1, "soft_labels": 4, "train_substitute": 2, "tmax": 1,
           "figure_tmax": 1}
EDITS = {
    "student schedule": ({"student": {"epochs": 3}}, STUDENTS),
    "teacher schedule": ({"teacher": {"epochs": 3}}, {**TEACHER, **STUDENTS, "train_student": 3, "evaluate": 3,
                                                      "evaluate_best": 3}),
    "training attack": ({"datasets": {"digits": {"attack": {"default": {"eps": 0.02}}}}}, STUDENTS),
    "beta": ({"beta": 5.0}, STUDENTS),
    "temperature": ({"tables": {"table4": {"entries": [{"method": "trades"},
                                                      {"method": "trades-ltd", "temperature": [1, 2, 20, "auto"]}]}}},
                    {"soft_labels": 1, "train_student": 1, "evaluate": 1, "evaluate_best": 1, "curves": 1,
                     **DOWNSTREAM}),
    "soft-label mode": ({"datasets": {"digits": {"soft_labels": "on_the_fly"}}},
                        {**STUDENTS, "train_student": 3, "evaluate": 3, "evaluate_best": 3}),
    # the split is every job's setting; the source itself (prepare_data) is unchanged
    "data set size": ({"datasets": {"digits": {"train_size": 250}}}, {**TEACHER, **STUDENTS}),
    "image size": ({"datasets": {"digits": {"image_size": 12}}}, {**TEACHER, **STUDENTS}),
    "data set source": ({"datasets": {"digits": {"source": "cifar10"}}}, None),  # planned, not counted here
    # the students' PGD monitor attacks at the evaluation's eps and picks best.pt, which
    # the table evaluates: each student's training identity holds it, so they all rerun
    "evaluation eps": ({"datasets": {"digits": {"evaluation": {"eps": 0.02}}}}, STUDENTS),
    "evaluation images": ({"datasets": {"digits": {"evaluation": {"n_examples": 50}}}}, {**EVALUATIONS, **DOWNSTREAM}),
    "evaluation attacks": ({"evaluation": {"autoattack": {"attacks": ["apgd-ce"]}}}, {**EVALUATIONS, **DOWNSTREAM}),
    "evaluation precision": ({"evaluation": {"precision": "pytorch_default"}}, {**EVALUATIONS, **DOWNSTREAM}),
    "architecture": ({"stand_ins": {"archs": {"wrn-34-10": "wrn-10-2"}}},
                     {"train_teacher": 1, "teacher_logits": 1, "soft_labels": 3, **STUDENTS}),
    "seed": ({"seed": 1}, {**TEACHER, **STUDENTS}),
    "caption": ({"tables": {"table4": {"caption": "My Table IV"}}}, DOWNSTREAM),
    "resources": ({"resources": {"train": {"mem_mb": 3000, "runtime": 60}}}, {}),
    "threads": ({"threads": 2}, {}),
    "speed switches": ({"train": {"channels_last": False, "compile": True, "eval_batch_size": 100},
                        "evaluation": {"channels_last": True, "compile": True}}, {}),
    # the compiled attack rounds x' otherwise (ltd/jobspec.py): the students' attacks use it
    "compiled training attack": ({"train": {"compile_attack": True}}, STUDENTS),
    "stalled-attack alarm": ({"train": {"stalled_attacks": {"warn": 0.1, "stop": 0.9}}}, {}),
    "training precision": ({"train": {"precision": "bf16"}}, {**TEACHER, **STUDENTS}),
    "students' precision": ({"student": {"precision": "bf16"}}, STUDENTS),
    "evaluated weights": ({"tables": {"table4": {"weights": "last"}}}, DOWNSTREAM),  # the last epoch's alone
    # best.pt is its training's output: a monitor edit retrains the students and evaluates
    # both weights again (nothing of the teacher, its soft labels, the T_max search)
    "training curves' monitor": ({"evaluation": {"monitor": {"n_examples": 10}}}, STUDENTS),
    "monitor's overlap_ok": ({"evaluation": {"monitor": {"overlap_ok": True}}}, {}),  # computes nothing
    "AWP (not in Table IV)": ({"awp": {"gamma": 0.01}}, {}),
    # each step of the search reruns for its own setting (jobspec.Search.identity), and the
    # `auto` row's choice, which reads T_max, after it
    "T_max threshold": ({"datasets": {"digits": {"temperature_search": {"threshold": 0.5}}}},
                        {"tmax": 1, "figure_tmax": 1, "select_temperature": 1, "resolve_auto": 1,
                         "resolve_auto_best": 1, **DOWNSTREAM}),
    "auto row's criterion": ({"datasets": {"digits": {"temperature_search": {"criterion": "eq9_kl"}}}},
                             {"select_temperature": 1, "resolve_auto": 1, "resolve_auto_best": 1, **DOWNSTREAM}),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_editing_a_setting_reruns_exactly_what_it_defines(finished, workdir, tmp_path, edit):
    overlay, expected = EDITS[edit]
    path = tmp_path / "edit.yaml"
    path.write_text(yaml.safe_dump(overlay))
    proc = snakemake(workdir, "-n", "table4", overlays=[str(path)], timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    if expected is None:  # a new source (here: a download) re-prepares the data set and reruns everything
        # (33: 28 jobs and the 5 students' best.pt evaluations)
        assert job_counts(out)["download_data"] == 1 and job_counts(out)["total"] == 33
    elif not expected:
        assert "Nothing to be done" in out, out[-3000:]
    else:
        assert job_counts(out) == {**expected, "total": sum(expected.values())}, edit


@pytest.fixture(scope="module")
def finished_more(workdir):
    proc = snakemake(workdir, "table3", "table5", "table7", "table8", "table9", "simulation")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return workdir / "results" / "test"


def test_imagefolder_table_trains_two_processes_from_png_files(finished_more, workdir):
    pngs = list((workdir / "data" / "digits_folder" / "train").rglob("*.png"))
    assert len(pngs) == 1400  # the 1,797 digits less the 397 test images, written as files
    rows = list(csv.DictReader(open(finished_more / "tables" / "table3.csv")))
    assert [r["Source"] for r in rows] == ["not run", "reported [49]", "this run", "reported [49]", "reported [50]",
                                           "reported [29]", "reported [49]"]
    assert rows[1]["Row"] == "WRN-50-2" and rows[1]["AA (paper)"] == "38.14" and rows[1]["Clean (ours)"] == ""
    ours = rows[2]
    run = finished_more / "students" / "digitsfolder_resnet-14_trades-ltd_T1_fly_b6_s0"  # labels on the fly
    ev, metrics = load_json(run / "autoattack_best.json"), load_json(run / "metrics.json")
    assert float(ours["Clean (ours)"]) == pytest.approx(100 * ev["clean_accuracy"], abs=0.006)
    assert float(ours["AA (ours)"]) == pytest.approx(100 * ev["robust_accuracy"], abs=0.006)
    assert ev["eps"] == pytest.approx(4 / 255) and ev["n_examples"] == 40
    assert metrics["processes"] == 2 and metrics["epochs"] == 2 and metrics["soft_labels"] == "on_the_fly"
    assert "resnet-14 for resnet-50" in (finished_more / "tables" / "table3.md").read_text()


def test_awp_beta_table_and_figure(finished_more):
    rows = list(csv.DictReader(open(finished_more / "tables" / "table5.csv")))
    assert [r["Row"].removesuffix(" †") for r in rows if r["Source"] == "this run"] == ["AWP+LTD T=5 β=3", "AWP+LTD T=5 β=6"]
    assert [r["Clean (paper)"] for r in rows] == ["87.66", "86.61", "85.81", "85.15", "84.97"]
    for beta in (3, 6):
        m = load_json(finished_more / "students" / f"digits_wrn-10-1_awp-ltd_T5_b{beta}_s0" / "metrics.json")
        assert m["method"] == "awp-ltd" and m["beta"] == beta and m["awp"]["gamma"] == 5e-3
    png = finished_more / "figures" / "table5_beta.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert (finished_more / "simulation" / "binary.csv").exists()
    assert (finished_more / "figures" / "simulation_discrepancy.pdf").exists()


def test_a_table_of_ones_own_renders_with_our_columns_only(finished_more):
    rows = list(csv.DictReader(open(finished_more / "tables" / "table9.csv")))
    assert list(rows[0]) == ["Row", "Source", "Clean (ours)", "AA (ours)", "Epoch (ours)", "Clean (last)", "AA (last)"]
    assert [r["Row"] for r in rows] == ["TRADES", "TRADES+LTD T=1"] and {r["Source"] for r in rows} == {"this run"}
    ev = load_json(finished_more / "students" / "digits_wrn-10-1_trades-ltd_T1_b6_s0" / "autoattack_best.json")
    assert float(rows[1]["AA (ours)"]) == pytest.approx(100 * ev["robust_accuracy"], abs=0.006)
    assert "Not a table of the paper" in (finished_more / "tables" / "table9.md").read_text()


def test_editing_awp_reruns_the_awp_students(finished_more, workdir, tmp_path):
    path = tmp_path / "edit.yaml"
    path.write_text(yaml.safe_dump({"awp": {"gamma": 0.01}}))
    proc = snakemake(workdir, "-n", "table5", overlays=[str(path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout + proc.stderr) == {"train_student": 2, "evaluate": 2, "evaluate_best": 2,
                                                     "render_table": 1, "figure": 1, "curves": 1, "table5": 1,
                                                     "total": 10}


def test_ltd_across_methods_table_trains_pgd_at_and_mart_students(finished_more):
    """table7 (not in the paper): a PGD-AT+LTD and a MART+LTD student, trained and
    evaluated by the workflow; our columns only."""
    rows = list(csv.DictReader(open(finished_more / "tables" / "table7.csv")))
    assert [r["Row"] for r in rows] == ["PGD-AT+LTD T=5", "MART+LTD T=5"]
    assert "Clean (paper)" not in rows[0] and {r["Source"] for r in rows} == {"this run"}
    md = (finished_more / "tables" / "table7.md").read_text()
    assert "NOT part of the paper" in md and "Not a table of the paper" in md and "paper columns are" not in md
    for row, method in zip(rows, ["pgd-at-ltd", "mart-ltd"]):
        run = finished_more / "students" / f"digits_wrn-10-1_{method}_T5_b6_s0"
        ev, metrics = load_json(run / "autoattack_best.json"), load_json(run / "metrics.json")
        assert float(row["Clean (ours)"]) == pytest.approx(100 * ev["clean_accuracy"], abs=0.006)
        assert float(row["AA (ours)"]) == pytest.approx(100 * ev["robust_accuracy"], abs=0.006)
        assert ev["robust_accuracy"] <= ev["clean_accuracy"]
        assert metrics["method"] == method and metrics["temperature"] == 5 and metrics["attack"]["steps"] == 2
        assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    mart = load_json(finished_more / "students" / "digits_wrn-10-1_mart-ltd_T5_b6_s0" / "metrics.json")
    assert {"train_adversarial", "train_robust"} <= set(mart["history"][-1])  # MART's two terms, logged


@pytest.fixture(scope="module")
def chromium():
    try:
        debian.ensure(("chromium",), ("chromium",))
    except debian.Unavailable as e:
        pytest.skip(f"Chromium could not be installed: {e}")
    return shutil.which("chromium")


def test_report_shows_tables_and_figures_in_a_browser(finished, finished_more, workdir, chromium, tmp_path):
    """`snakemake --report` of the runs above, rendered by headless Chromium: the page the
    browser builds lists the tables and figures (checked in the DOM after its scripts ran)."""
    report = finished / "report.html"
    proc = snakemake(workdir, "table3", "table4", "table5", "simulation", "--report", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=180).stdout
    # what the page shows once its scripts ran (the report is a single-page app: without
    # JavaScript it only says "Loading Snakemake Report...")
    shown = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    shown = " ".join(re.sub(r"<[^>]+>", " ", shown).split())
    assert "Reproduction of Low Temperature Distillation" in shown and "OFFLINE DEMO" in shown
    for category in ("Tables", "Figures", "Training curves", "Appendix B"):
        assert category in shown, category
    html = report.read_text()  # the results themselves are embedded in the page's data
    for name in ("table3.csv", "table4.csv", "table5.csv", "table4_temperature.png", "table5_beta.png",
                 "tmax_digits.png", "table4_curves.png", "simulation_discrepancy.png"):
        assert name in html, name


def paper_plan(workdir, target):
    proc = subprocess.run([sys.executable, "-m", "snakemake", target, "-n", "--cores", "4",
                           "--resources", "gpu=4"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return job_counts(proc.stdout + proc.stderr)


def test_paper_config_plans_the_full_table4(workdir):
    """The default config (CIFAR-10, WRN-34-10) plans every job of the paper's Table IV."""
    assert paper_plan(workdir, "table4") == {
        "download_data": 1,       # CIFAR-10, where Snakemake runs (rules/data.smk)
        "train_teacher": 1, "teacher_logits": 1,
        "soft_labels": 10,        # T = 1 ... 20 of the grid and 50 of the search (20 is shared)
        "train_substitute": 2, "tmax": 1,
        "train_student": 10,      # the TRADES baseline and nine TRADES+LTD temperatures
        "evaluate": 10, "evaluate_best": 10,  # the last epoch and best.pt (compared with the paper) of each
        "render_table": 1, "figure": 1, "figure_tmax": 1, "curves": 1, "table4": 1, "total": 51,
    }


def test_paper_config_plans_all_six_tables_sharing_runs(workdir):
    """All six tables and table7: teachers, soft labels and students shared between tables run once."""
    assert paper_plan(workdir, "all") == {
        "download_data": 2,       # CIFAR-10, CIFAR-100 (downloads: where Snakemake runs)
        "prepare_data": 1,        # ImageNet (indexed in a job)
        # CIFAR-10 WRN-34-10 (tables I, IV, V), WRN-34-20 (I), CIFAR-100 WRN-34-10 (II, VI),
        # ImageNet WRN-50-2 and ResNet-50 (III); ImageNet's students label on the fly: no logits
        "train_teacher": 5, "teacher_logits": 3,
        # CIFAR-10 WRN-34-10: grid 1 ... 20 + search 50; WRN-34-20: 5; CIFAR-100: 2 + search 5, 20
        "soft_labels": 14,
        "train_substitute": 4, "tmax": 2,   # CIFAR-10 and CIFAR-100 searches (ImageNet: T = 1)
        # I: 5 (its TRADES and TRADES+LTD T=5 rows are Table IV's, AWP+LTD beta 6 is Table V's)
        # + IV: 8 more + V: 4 more + II: 1 + VI: 4 more + III: 2; table7 (beyond the paper):
        # PGD-AT, MART and their LTD variants (its TRADES and AWP rows are Table I's)
        # table8 (beyond the paper): Table IV's fp16 runs and five bf16 twins
        "train_student": 33, "evaluate": 33, "evaluate_best": 33,
        "render_table": 8, "figure": 4, "figure_tmax": 2, "curves": 8, "simulation": 1, "evaluation_report": 1,
        "all": 1, "total": 155,
    }


@pytest.mark.parametrize("overlay", [[], ["--configfile", "config/demo.yaml"]], ids=["paper", "demo"])
def test_budget_counts_the_jobs_snakemake_plans(workdir, overlay):
    """ltd/budget.py's job counts come from the same run records as the DAG: equal to
    Snakemake's own dry run of `all` (the `auto` row's evaluation is planned after the
    search, by resolve_auto; the budget counts it ahead as an evaluation)."""
    from ltd import budget
    from ltd import config as ltd_config

    proc = subprocess.run([sys.executable, "-m", "snakemake", "all", "-n", "--cores", "4", *overlay],
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    plan = job_counts(proc.stdout + proc.stderr)
    total = budget.estimate(ltd_config.load(*[workdir / o for o in overlay[1:]])).set_index("table").loc["total"]
    assert (total.students, total.teachers, total.substitutes, total["teacher logits"], total.validations) == (
        plan["train_student"], plan["train_teacher"], plan["train_substitute"], plan["teacher_logits"],
        plan.get("validate", 0))
    assert total.evaluations == (plan["evaluate"] + plan.get("resolve_auto", 0)
                                 + plan.get("evaluate_best", 0) + plan.get("resolve_auto_best", 0))


def test_table_by_precision_trains_fp16_and_bf16_on_the_cpu_and_shows_stalled_attacks(finished_more):
    """table8 in miniature: a table entry's own precision runs as asked on the CPU (fp16
    with its loss scaler, bf16), in its own run (`_fp16`, `_bf16`); the table shows each
    run's precision and its stalled-attack fraction beside its accuracies, the paper's
    Table IV numbers beside the fp16 row, and says how the rows were trained. Its
    `weights: best` evaluates each run's best.pt: the epoch of best monitored PGD accuracy."""
    rows = list(csv.DictReader(open(finished_more / "tables" / "table8.csv")))
    ours = {r["Precision"]: r for r in rows if r["Source"] == "this run"}
    assert set(ours) == {"fp16", "bf16"}
    assert list(rows[0])[:10] == ["Row", "Source", "Clean (ours)", "AA (ours)", "Epoch (ours)", "Clean (last)",
                                  "AA (last)", "Precision", "Stalled % (train)", "x' acc. % (train)"]
    assert ours["fp16"]["Clean (paper)"] == "84.51" and ours["bf16"]["Clean (paper)"] == ""
    for precision, row in ours.items():
        run = finished_more / "students" / f"digits_wrn-10-1_trades-ltd_T1_{precision}_b6_s0"
        metrics, ev = load_json(run / "metrics.json"), load_json(run / "autoattack_best.json")
        assert load_json(run / "autoattack.json")["training"]["weights"] == "last"  # beside best.pt
        assert metrics["precision"] == precision and {h["precision"] for h in metrics["history"]} == {precision}
        assert ("loss_scale" in metrics["history"][-1]) == (precision == "fp16")
        best = max(metrics["history"], key=lambda h: h["test_pgd_accuracy"])  # the first of equals
        assert ev["training"]["weights"] == "best"
        assert ev["training"]["epoch"] == best["epoch"] == metrics["best"]["epoch"]
        assert float(row["Clean (ours)"]) == pytest.approx(100 * ev["clean_accuracy"], abs=0.006)
        assert float(row["Stalled % (train)"]) == pytest.approx(100 * best["train_stalled"], abs=0.006)
        assert float(row["x' acc. % (train)"]) == pytest.approx(100 * best["train_adv_accuracy"], abs=0.006)
        assert ev["training"]["precisions"] == [precision] and ev["diagnostics"]["stalled_training"] is not None
        assert (run / "evaluation_report_best.csv").exists()
    md = (finished_more / "tables" / "table8.md").read_text()
    assert "Training precision: fp16 (autocast + loss scaler): TRADES+LTD T=1 (fp16)" in md
    assert "Our rows are trained with this config's schedule: 2 epochs" in md
    assert "each run's epoch with the best monitored PGD accuracy (best.pt" in md
    assert (finished_more / "figures" / "table8_curves.png").exists()


def test_every_job_writes_tensorboard_files_and_each_run_its_own_curves(finished, finished_more):
    """tensorboard --logdir results/<run>: per epoch and at each sync point for training,
    the final numbers for an evaluation; a run's curves are drawn when it finishes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = finished / "students" / "digits_wrn-10-1_trades-ltd_T5_b6_s0"
    training = EventAccumulator(str(run / "tensorboard" / "training"))
    training.Reload()
    tags = set(training.Tags()["scalars"])
    for key in ("train_loss", "train_stalled", "train_adv_accuracy", "train_robust", "test_pgd_accuracy"):
        assert f"epoch/{key}" in tags, key
    assert {"running/loss", "running/accuracy", "running/stalled"} <= tags
    history = load_json(run / "metrics.json")["history"]
    steps_per_epoch = 5  # 300 images, batch 64
    assert [(e.step, e.value) for e in training.Scalars("epoch/train_stalled")] == [
        (h["epoch"] * steps_per_epoch, pytest.approx(h["train_stalled"])) for h in history]
    evaluation = EventAccumulator(str(run / "tensorboard" / "autoattack"))
    evaluation.Reload()
    ev = load_json(run / "autoattack.json")
    assert evaluation.Scalars("evaluation/autoattack_accuracy")[0].value == pytest.approx(ev["robust_accuracy"])
    # as docs/running.md says: `tensorboard --inspect --logdir results/<run>` (the virtualenv's)
    tensorboard = Path(sys.executable).parent / "tensorboard"
    proc = subprocess.run([str(tensorboard), "--inspect", "--logdir", "results/test"], cwd=finished.parent.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "epoch/train_stalled" in proc.stdout and "running/stalled" in proc.stdout
    assert f"{run.name}/tensorboard/autoattack" in proc.stdout
    for role, name in (("teachers", "digits_wrn-10-1_s0"), ("students", "digits_wrn-10-1_trades-ltd_T1_fp16_b6_s0")):
        png = finished_more / role / name / "curves.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG", name
