"""The compute budget (ltd/budget.py): job counts from ltd.experiments, GPU-hours from
counted FLOPs."""

import copy

import pytest

from ltd import budget, budget_report, methods
from ltd import experiments as ex

from .conftest import ROOT


@pytest.fixture(scope="module")
def paper_estimate(paper_config):
    return budget.estimate(paper_config).set_index("table")


def test_total_counts_each_job_of_the_paper_config_once(paper_estimate):
    total = paper_estimate.loc["total"]
    # 24 students for the paper's six tables, 4 more (PGD-AT, MART, +LTD) for table7, 5 (bf16) for table8
    # two evaluations each: best.pt (compared with the paper) and the last epoch beside it
    counts = (total.students, total.teachers, total.substitutes, total.evaluations, total.validations)
    assert counts == (33, 5, 4, 66, 0)
    # the CIFAR teachers' precomputed soft labels serve LTD students or substitutes; ImageNet's
    # students label their batches on the fly (config.yaml: datasets.imagenet.soft_labels)
    assert total["teacher logits"] == 3
    # shared jobs are counted under each of their tables, once in the total
    assert paper_estimate.drop("total").students.sum() > total.students


def test_table4_has_ten_students_and_shares_with_table1(paper_config, paper_estimate):
    row = paper_estimate.loc["table4"]
    assert (row.students, row.teachers, row.substitutes, row.evaluations) == (10, 1, 2, 20)  # best and last
    shared = budget_report.shared_jobs(paper_config)
    assert shared["student:cifar10_wrn-34-10_trades_b6_s0"] == ["table1", "table4", "table7"]
    assert shared["student:cifar10_wrn-34-10_trades-ltd_T5_b6_s0"] == ["table1", "table4", "table7", "table8"]
    assert shared["teacher:cifar10_wrn-34-10_s0"] == ["table1", "table4", "table5", "table7", "table8"]
    # 2 students with table1, 4 more with table8 (its fp16 rows), their 12 evaluations (best
    # and last), the teacher and its logits, 2 substitutes
    assert row.shared == 22
    assert shared["evaluation:cifar10_wrn-34-10_trades_b6_s0 (best)"] == ["table1", "table4", "table7"]


def test_forward_flops_are_the_briefs(paper_config):
    assert budget.forward_flops("wrn-34-10", 32, 10) == pytest.approx(13.3e9, rel=0.005)
    assert budget.forward_flops("wrn-34-20", 32, 10) == pytest.approx(53.2e9, rel=0.005)
    assert budget.forward_flops("resnet-50", 224, 1000) == pytest.approx(8.2e9, rel=0.005)
    assert budget.forward_flops("wrn-50-2", 224, 1000) == pytest.approx(22.8e9, rel=0.005)


def test_counted_forward_flops_are_what_ltd_flops_counts():
    from ltd.flops import model_forward_flops

    for (arch, size, classes), flop in budget.COUNTED_FORWARD_FLOPS.items():
        assert model_forward_flops(arch, size, classes) == flop, (arch, size, classes)


def test_the_paper_and_quick_budgets_price_every_job_without_torch():
    """Planning sizes Slurm time limits from the budget: every architecture of the paper
    config and quick.yaml has its FLOPs and launches cached (no torch import)."""
    import subprocess
    import sys

    code = ("import sys; from ltd import budget, config; "
            "[budget.estimate(config.load(*c)) for c in ((), ('config/quick.yaml',))]; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


def _with_epochs(config, epochs):
    c = copy.deepcopy(config)
    for role in ("teacher", "substitute", "student"):  # role sections override every data set's schedule
        c[role] = {**(c.get(role) or {}), "epochs": epochs, "lr_milestones": []}
    c["awp"] = {**c["awp"], "warmup_epochs": 1}  # AWP from the first epoch: every epoch costs the same
    return c


def test_gpu_hours_scale_linearly_with_epochs(paper_config):
    a = budget.estimate(_with_epochs(paper_config, 30)).set_index("table")
    b = budget.estimate(_with_epochs(paper_config, 90)).set_index("table")
    assert b["train GPU-h"].to_numpy() == pytest.approx(3 * a["train GPU-h"].to_numpy(), rel=1e-9)
    assert b["eval GPU-h"].to_numpy() == pytest.approx(a["eval GPU-h"].to_numpy(), rel=1e-9)


def test_gpu_hours_of_a_trades_student_follow_the_formula(paper_config):
    """WRN-34-10 is priced at the rates an H200 measured (config/calibration.yaml): its
    TRADES+LTD step's images/s for the step, the TF32 forward + input gradient's for the
    per-epoch curves (clean test pass, PGD-10 monitor)."""
    run = ex.entry_run(paper_config, ex.table_entries(paper_config, "table4")[0])
    cost = budget.job_cost(paper_config, budget.Job("student", run))
    fe = methods.forward_equivalents("trades", paper_config["datasets"]["cifar10"]["attack"]["trades"]["steps"])
    assert fe == 27  # declared in the registry; tests/test_methods.py checks it against counted FLOPs
    curves = 10_000 + 1_000 * (2 * 10 + 1)  # per epoch: the clean test pass and the PGD-10 monitor
    flop = 13.3178e9 * (fe * 50_000 + curves) * 120
    assert cost.flop == pytest.approx(flop, rel=1e-4)
    seconds = 50_000 * 120 / 750.26 + curves * 120 / (2 * 6591.4)  # measured: TRADES+LTD bf16, attack TF32
    assert cost.gpu_hours == pytest.approx(seconds / 3600, rel=1e-4)
    assert cost.basis == "measured" and "750.26 img/s on NVIDIA H200" in cost.rate


def _calibration(tmp_path, rows=(), launch=1.5e-5, name="calibration.yaml"):
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump({"launch_seconds": {"value": launch, "device": "test", "date": "2026-12-07",
                                                      "source": "a test"}, "rows": list(rows)}))
    return path


def test_flop_bound_model_rates_are_inverse_in_the_assumed_mfu(paper_config, tmp_path):
    """Without measured rows and with a negligible launch cost every job is priced by its
    FLOPs: half the MFU, twice the hours. Measured rows do not use the MFU."""
    c = copy.deepcopy(paper_config)
    c["budget"]["calibration"] = str(_calibration(tmp_path, launch=1e-12))
    full = budget.estimate(c).set_index("table")
    c["budget"] = {**c["budget"], "mfu": {k: v / 2 for k, v in c["budget"]["mfu"].items()}}
    half = budget.estimate(c).set_index("table")
    assert half["total GPU-h"].to_numpy() == pytest.approx(2 * full["total GPU-h"].to_numpy(), rel=1e-9)
    assert set(budget_report.jobs_frame(c)["priced by"]) == {"model, FLOP-bound"}
    measured = copy.deepcopy(paper_config)
    measured["budget"] = {**measured["budget"], "mfu": {k: v / 2 for k, v in measured["budget"]["mfu"].items()}}
    run = ex.entry_run(paper_config, ex.table_entries(paper_config, "table4")[0])
    job = budget.Job("student", run)
    assert budget.job_cost(measured, job).gpu_hours == pytest.approx(budget.job_cost(paper_config, job).gpu_hours)


def test_a_small_network_is_priced_by_its_kernel_launches(tmp_path):
    """PreAct ResNet-18 (quick.yaml) has no measured row: its TRADES step's FLOPs at
    WRN-34-10's MFU would take 14 ms at batch 128, its ~2,250 launches at 15 us take 34 ms;
    the budget takes the longer and says so. A measured row replaces the model."""
    from ltd import config as ltd_config
    from ltd import throughput

    quick = ltd_config.load(ROOT / "config" / "quick.yaml")
    run = ex.entry_run(quick, ex.table_entries(quick, "table4")[0])
    cost = budget.job_cost(quick, budget.Job("student", run))
    launches = throughput.launches("preact-resnet18", "trades", 10)
    assert 2000 < launches < 2500 and cost.basis == "model, launch-bound"
    assert cost.seconds_per_fe == pytest.approx(launches * 1.5e-5 / 128 / 27)
    flop_bound = 1.111e9 / (0.27 * 989e12)
    assert cost.seconds_per_fe > 2 * flop_bound
    sched = ex.schedule(quick, "students", "cifar10")
    per_student = cost.gpu_hours / sched["epochs"] * 30
    assert 0.09 < per_student < 0.13  # a 30-epoch student: the estimate from its own size
    row = {"arch": "preact-resnet18", "image_size": 32, "precision": "bf16", "step": "trades", "batch_size": 128,
           "img_per_s": 4000.0, "forward_equivalents": 27, "device": "NVIDIA H100", "date": "2026-12-07",
           "source": "a test"}
    quick["budget"]["calibration"] = str(_calibration(tmp_path, [row]))
    measured = budget.job_cost(quick, budget.Job("student", run))  # fp16 training uses the bf16 row
    assert measured.basis == "measured" and measured.seconds_per_fe == pytest.approx(1 / (4000 * 27))
    assert "trades bf16 4000 img/s on NVIDIA H100, 2026-12-07 (a test)" in measured.rate
    text = budget_report.render(quick, jobs=False)
    assert "## Throughput" in text and "| preact-resnet18 | cifar10   | trades fp16" in text
    assert "model, launch-bound" in text and "measured" in text  # the teacher's natural step is still modelled


@pytest.mark.parametrize("row, message", [
    ({"arch": "wrn-34-10"}, r"rows\[0\]: missing \['date', 'device', 'image_size', 'precision', 'source', 'step'\]"),
    ({"arch": "wrn-34-10", "image_size": 32, "precision": "bf16", "step": "trades", "device": "d", "date": "x",
      "source": "s", "img_per_s": 10.0}, "img_per_s needs the step's forward_equivalents"),
    ({"arch": "wrn-34-10", "image_size": 32, "precision": "fp8", "step": "trades", "device": "d", "date": "x",
      "source": "s", "mfu": 0.3}, "precision 'fp8' is not one of"),
    ({"arch": "wrn-34-10", "image_size": 32, "precision": "bf16", "step": "tades", "device": "d", "date": "x",
      "source": "s", "mfu": 0.3}, "unknown method 'tades'"),
    ({"arch": "wrn-34-10", "image_size": 32, "precision": "bf16", "step": "trades", "device": "d", "date": "x",
      "source": "s", "speed": 3}, r"unknown keys \['speed'\]"),
])
def test_a_bad_calibration_row_is_named(paper_config, tmp_path, row, message):
    c = copy.deepcopy(paper_config)
    c["budget"]["calibration"] = str(_calibration(tmp_path, [row]))
    with pytest.raises(ValueError, match=message):
        budget.estimate(c)


def test_counted_launches_are_what_ltd_launches_counts():
    """ltd.throughput.COUNTED_LAUNCHES (planning imports no torch) against a count now:
    every step kind of the quick reproduction's network; a TRADES step and an attack
    iteration of each other layout (a wider twin, e.g. wrn-34-20 of wrn-34-10, has the
    same layers, hence the same counts). Each attack iteration adds the same launches
    (the count is linear in the steps), and a one-hot method counts within a few launches
    of its LTD variant (the cache keeps one per step kind)."""
    from ltd import launches, throughput

    cached = throughput.COUNTED_LAUNCHES
    twins = {"wrn-34-20": "wrn-34-10", "wrn-50-2": "resnet-50", "wrn-10-4": "wrn-10-2", "wrn-14-2": "resnet-14"}
    for wide, narrow in twins.items():
        assert {k: v for (a, k), v in cached.items() if a == wide} == {
            k: v for (a, k), v in cached.items() if a == narrow and (wide, k) in cached}, wide
    singles = ("preact-resnet18", "wrn-10-1")  # wrn-10-1: no shortcut convolution in its first block
    assert {a for a, _ in cached} == {*singles, *twins, *twins.values()}
    for arch in singles:
        for kind in [k for a, k in cached if a == arch]:
            assert launches.launch_counts(arch, kind) == cached[arch, kind], (arch, kind)
    for arch in sorted(set(twins.values())):
        base, per_step = cached[arch, "trades"]
        assert launches.step_launches(arch, "trades", 1) == base + per_step, arch
        assert launches.launch_counts(arch, "attack") == cached[arch, "attack"], arch
    base, per_step = cached["preact-resnet18", "trades"]
    assert launches.step_launches("preact-resnet18", "trades", 3) == base + 3 * per_step
    launches.KIND_METHODS["trades"] = "trades"
    try:
        one_hot = launches.step_launches("preact-resnet18", "trades", 1)
    finally:
        launches.KIND_METHODS["trades"] = "trades-ltd"
    assert abs(one_hot - (base + per_step)) <= 10, (one_hot, base + per_step)
def test_awp_warm_up_epochs_are_trades_epochs(paper_config):
    assert budget.awp_epochs({"epochs": 120}, {"gamma": 5e-3, "warmup_epochs": 10}) == 111
    assert budget.awp_epochs({"epochs": 120}, {"gamma": 0.0, "warmup_epochs": 10}) == 0
    assert budget.awp_epochs({"epochs": 5}, {"gamma": 5e-3, "warmup_epochs": 10}) == 0


def test_autoattack_standard_attacks_the_robust_images_most(paper_config):
    ev = ex.evaluation(paper_config, "cifar10")
    fe = budget.evaluation_forward_equivalents(ev, 10, (0.85, 0.57))
    assert fe["pgd"] == 41
    # APGD-CE on 85 %, APGD-T (9 x 100), FAB-T (9 x 100) and Square (5,000 queries) on 57 %
    # FAB-T: forward, input-gradient backward (frozen weights) and a check forward per iteration
    assert fe["autoattack"] == pytest.approx(1 + 0.85 * 203 + 0.57 * (9 * 203 + 9 * 302 + 5002))
    fewer = budget.evaluation_forward_equivalents(ev, 10, (0.85, 0.3))
    assert fewer["total"] < fe["total"]


def test_demo_config_counts_its_auto_search(demo_config):
    est = budget.estimate(demo_config).set_index("table")
    row = est.loc["table4"]
    assert row.validations == len(demo_config["datasets"]["digits"]["temperature_search"]["grid"])
    assert row.students == 11  # the grid's T are all rows already; + T = 5 with soft labels on the fly
    assert row.evaluations == 2 * 12  # best and last; the `auto` row's counted apart: an upper bound


def test_render_writes_the_tables(paper_config):
    text = budget_report.render(paper_config)
    assert "| total" in text and "## Shared jobs" in text and "cifar10_wrn-34-10_trades_b6_s0" in text


def test_tf32_evaluation_uses_the_tf32_peak(paper_config):
    from ltd import budget
    from ltd import config as ltd_config

    strict = budget.estimate(paper_config)
    tf32 = budget.estimate(ltd_config.merge(paper_config, {"evaluation": {"precision": "tf32"}}))
    ratio = strict["eval GPU-h"].iloc[-1] / tf32["eval GPU-h"].iloc[-1]
    assert 1 < ratio < 495 / 67  # AutoAttack jobs at the TF32 peak; teacher-logit passes stay fp32
    assert strict["train GPU-h"].iloc[-1] == pytest.approx(tf32["train GPU-h"].iloc[-1])
    # PyTorch's default (TF32 convolutions) is priced as TF32 until its own MFU is measured
    default = budget.estimate(ltd_config.merge(paper_config, {"evaluation": {"precision": "pytorch_default"}}))
    assert default["eval GPU-h"].iloc[-1] == pytest.approx(tf32["eval GPU-h"].iloc[-1])
    measured = ltd_config.merge(paper_config, {"evaluation": {"precision": "pytorch_default"},
                                               "budget": {"mfu": {"eval_pytorch_default": 0.7}}})
    assert budget.estimate(measured)["eval GPU-h"].iloc[-1] < default["eval GPU-h"].iloc[-1]
    line = next(t for t in budget_report.render(paper_config, jobs=False).splitlines() if "by evaluation.precision" in t)
    assert "(configured: fp32): fp32 " in line and "pytorch_default" in line and "one job's rate" in line


def test_jobs_per_gpu_use_the_measured_throughput(paper_config):
    from ltd import budget
    from ltd import config as ltd_config

    one = budget.estimate(paper_config)["total GPU-h"].iloc[-1]
    unmeasured = ltd_config.merge(paper_config, {"jobs_per_gpu": 2})
    assert budget.estimate(unmeasured)["total GPU-h"].iloc[-1] == pytest.approx(one)  # k = 1 figures, said so
    assert "2 job(s) per GPU, priced at one job's rate (not measured for this k)" in budget_report.render(unmeasured)
    measured = ltd_config.merge(unmeasured, {"budget": {"jobs_per_gpu_throughput": [1.0, 1.25]}})
    assert budget.estimate(measured)["total GPU-h"].iloc[-1] == pytest.approx(one / 1.25)


def test_autoattack_plan_per_iteration_costs_are_the_counted_ones():
    """The plan's per-iteration forward-equivalents (FAB-T 3, APGD 2) are what pyautoattack
    really computes on a frozen model (as ltd.jobs.common.load_model hands it over)."""
    import torch
    from pyautoattack import AutoAttack

    from ltd.flops import TotalFlopCounter, forward_flops, one_thread
    from ltd.models import build_model

    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10).eval().requires_grad_(False)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = AutoAttack(model, version="custom", attacks=["apgd-ce", "fab-t"], eps=8 / 255, norm="Linf", seed=0,
                     device="cpu")
    adv.fab.n_target_classes, adv.fab.n_restarts, adv.fab.targeted, adv.apgd.n_restarts = 1, 1, True, 1
    per_iteration = {}
    with one_thread():
        for name, attack in (("apgd", adv.apgd), ("fab-t", adv.fab)):
            for n_iter in (10, 20):
                attack.n_iter = n_iter
                with TotalFlopCounter() as counter:
                    attack.perturb(x, y)
                per_iteration.setdefault(name, []).append(counter.get_total_flops() / forward_flops(model, x))
    # the difference of two lengths removes the fixed start-up cost
    assert (per_iteration["apgd"][1] - per_iteration["apgd"][0]) / 10 == pytest.approx(2.0, abs=0.1)
    assert (per_iteration["fab-t"][1] - per_iteration["fab-t"][0]) / 10 == pytest.approx(3.0, abs=0.1)
    plan = dict((a, c) for a, c, _ in budget.autoattack_plan({"autoattack": {"version": "standard"}}, 10))
    assert plan["fab-t"] == 9 * (3 * 100 + 2) and plan["apgd-ce"] == 2 * 101 + 1
