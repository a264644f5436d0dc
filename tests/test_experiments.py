import copy

import pytest

from ltd import experiments as ex
from ltd import jobspec
from ltd.experiments import Run
from ltd.scope import everything


@pytest.mark.parametrize("run", [
    Run("teachers", "cifar10", "wrn-34-10", 0),
    Run("substitutes", "cifar10", "wrn-34-10", 1, method="soft", temperature=50.0),
    Run("students", "cifar100", "wrn-34-10", 0, method="trades-ltd", temperature=0.5, beta=6.0, soft_label_mode="precomputed"),
    Run("students", "cifar10", "wrn-34-10", 0, method="awp-ltd", temperature=5.0, beta=6.0, soft_label_mode="on_the_fly"),
    Run("students", "digits", "preact-resnet18", 3, method="trades", beta=3.5),
    Run("students", "cifar10", "wrn-34-10", 0, method="trades-ltd", temperature=20.0, beta=6.0, soft_label_mode="precomputed",
        precision="bf16"),
    Run("students", "cifar10", "wrn-34-10", 0, method="awp-ltd", temperature=5.0, beta=6.0, soft_label_mode="on_the_fly",
        precision="fp16"),
    Run("students", "cifar10", "wrn-34-10", 0, method="trades", beta=6.0, precision="fp32"),
])
def test_names_round_trip(run):
    assert Run.parse(run.role, run.name) == run
    assert run.dir == f"{run.role}/{run.name}"


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="not a valid students run name"):
        Run.parse("students", "cifar10_wrn-34-10")
    with pytest.raises(ValueError, match="uses one-hot labels: it takes no temperature"):
        Run.parse("students", "cifar10_wrn-34-10_trades_T5_b6_s0")
    with pytest.raises(ValueError, match="unknown method"):
        Run.parse("students", "cifar10_wrn-34-10_awesome_b6_s0")


def test_paper_table4_rows(paper_config):
    entries = ex.table_entries(paper_config, "table4")
    assert [e.label for e in entries] == ["TRADES"] + [
        f"TRADES+LTD T={t}" for t in (1, 2, 3, 5, 8, 10, 12, 15, 20)]
    runs = list(ex.table_students(paper_config, "table4"))
    assert len(set(runs)) == 10
    assert runs[0].name == "cifar10_wrn-34-10_trades_b6_s0"
    assert runs[5].name == "cifar10_wrn-34-10_trades-ltd_T8_b6_s0"
    assert all(r.teacher.name == "cifar10_wrn-34-10_s0" for r in runs)


def test_auto_entry_resolves_through_search(demo_config):
    entries = ex.table_entries(demo_config, "table4")
    auto = [e for e in entries if e.is_auto]
    assert len(auto) == 1 and auto[0].label == "TRADES+LTD T=auto"
    with pytest.raises(ValueError, match="needs the temperature chosen"):
        ex.entry_run(demo_config, auto[0])
    run = ex.entry_run(demo_config, auto[0], chosen_t=5.0)
    # the chosen row is the very same run (and job) as the grid's T=5 row
    assert run == next(r for r in ex.table_students(demo_config, "table4") if r.temperature == 5.0)
    group = ex.search_group(demo_config, auto[0])
    cands = ex.search_candidates(demo_config, group)
    assert [c.temperature for c in cands] == [float(t) for t in demo_config["datasets"]["digits"]["temperature_search"]["grid"]]
    assert all(c.dataset == "digits" and c.arch == "wrn-10-1" for c in cands)


def test_schedule_overrides(demo_config, paper_config):
    assert ex.schedule(demo_config, "teachers", "digits")["epochs"] == demo_config["teacher"]["epochs"]
    assert ex.schedule(demo_config, "students", "digits")["epochs"] == demo_config["train"]["epochs"]
    assert ex.schedule(demo_config, "students", "digits")["nesterov"] is True
    # a data set's own schedule (ImageNet: 90 epochs, batch 320, wd 1e-4) sits between
    in1k = ex.schedule(paper_config, "students", "imagenet")
    assert (in1k["epochs"], in1k["batch_size"], in1k["weight_decay"], in1k["momentum"]) == (90, 320, 1e-4, 0.9)
    assert ex.evaluation(paper_config, "imagenet")["eps"] == pytest.approx(4 / 255)
    assert ex.evaluation(paper_config, "cifar10")["autoattack"]["version"] == "standard"
    assert ex.processes(paper_config, "imagenet") == 4 and ex.processes(paper_config, "cifar10") == 1
    assert ex.resources(paper_config, "train", "imagenet")["mem_mb"] > ex.resources(paper_config, "train", "cifar10")["mem_mb"]


def test_all_tables_share_runs(paper_config):
    """A run two tables name is one run: Table I's TRADES+LTD is Table IV's T = 5 row, its
    AWP+LTD is Table V's beta = 6 row, Table II's is Table VI's beta = 6 row."""
    runs = {t: {r.name for r in ex.table_students(paper_config, t)} for t in ex.table_names(paper_config)}
    assert "cifar10_wrn-34-10_trades-ltd_T5_b6_s0" in runs["table1"] & runs["table4"]
    assert "cifar10_wrn-34-10_trades_b6_s0" in runs["table1"] & runs["table4"]
    assert "cifar10_wrn-34-10_awp-ltd_T5_b6_s0" in runs["table1"] & runs["table5"]
    assert runs["table2"] <= runs["table6"]
    # table7 (beyond the paper): Table I's WRN-34-10 runs and four new ones
    table1_wrn34_10 = {r for r in runs["table1"] if "_wrn-34-10_" in r}
    assert table1_wrn34_10 < runs["table7"] and len(runs["table7"] - table1_wrn34_10) == 4
    assert {r.split("_")[2] for r in runs["table7"] - runs["table1"]} == {"pgd-at", "pgd-at-ltd", "mart", "mart-ltd"}
    # table8 (beyond the paper): Table IV's fp16 runs and their five bf16 twins
    bf16 = runs["table8"] - runs["table4"]
    assert len(bf16) == 5 and all(r.endswith("_bf16_b6_s0") for r in bf16)
    assert len(set().union(*runs.values())) == 33
    labels = [e.label for e in ex.table_entries(paper_config, "table5")]
    assert labels == [f"AWP+LTD T=5 β={b}" for b in (3, 4, 5, 6, 7)]
    assert ex.table_figures(paper_config, "table5") == ["beta"] and ex.table_figures(paper_config, "table4") == ["temperature"]
    assert ex.table_figures(paper_config, "table1") == []


def test_stand_ins_rename_runs_not_rows(demo_config):
    e = ex.table_entries(demo_config, "table1")[0]
    assert (e.dataset, e.arch, e.label) == ("cifar10", "wrn-34-20", "AWP+LTD WRN-34-20 T=5")
    assert ex.entry_run(demo_config, e).name == "digits_wrn-10-2_awp-ltd_T5_b6_s0"
    assert e.matches({"method": "awp-ltd", "arch": "wrn-34-20"}) and not e.matches({"arch": "wrn-34-10"})
    assert {r.dataset for r in ex.table_students(demo_config, "table3")} == {"digitsfolder"}


def test_table_entry_errors_name_the_entry(paper_config):
    from ltd import config as ltd_config

    bad = ltd_config.merge(paper_config, {"tables": {"table4": {"entries": [{"method": "trades-ltd"}]}}})
    with pytest.raises(ValueError, match=r"tables.table4.entries\[0\]: method .trades-ltd. learns from soft labels: it needs a temperature"):
        ex.table_entries(bad, "table4")
    with pytest.raises(KeyError, match="no such table"):
        ex.table_entries(paper_config, "table9")


def test_the_whole_config_reads_the_tables_and_the_published_data_sets(demo_config, paper_config):
    """What the planning checks look for on disk (ltd.scope.everything): the tables' data
    sets as they run (stand-ins) and each published checkpoint's as written (its rule
    evaluates there)."""

    assert everything(paper_config).data == {"cifar10", "cifar100", "imagenet"}
    assert everything(demo_config).data == {"digits", "digits12", "digitsp", "digitsfolder"}  # no ImageNet
    published = {**demo_config, "published": [{"name": "m", "dataset": "cifar10", "arch": "wrn-34-10"}]}
    assert everything(published).data == {"cifar10", "digits", "digits12", "digitsp", "digitsfolder"}


def test_precision_of_an_entry_is_in_its_run_only_where_it_differs_from_the_default(paper_config, demo_config):
    """Like `_fly`: the paper config trains in fp16, so table8's fp16 rows are Table IV's
    runs (same names, same jobs) and its bf16 rows new ones, named `_bf16`."""
    entries = ex.table_entries(paper_config, "table8")
    assert [e.label for e in entries] == [f"TRADES+LTD T={t}" for t in (1, 5, 10, 15, 20)] + [
        f"TRADES+LTD T={t} (bf16)" for t in (1, 5, 10, 15, 20)]
    runs = list(ex.table_students(paper_config, "table8"))
    assert runs[:5] == [r for r in ex.table_students(paper_config, "table4") if r.temperature in (1, 5, 10, 15, 20)]
    assert runs[9].name == "cifar10_wrn-34-10_trades-ltd_T20_bf16_b6_s0"
    assert ex.run_schedule(paper_config, runs[9])["precision"] == "bf16"
    assert ex.run_schedule(paper_config, runs[0])["precision"] == "fp16"
    assert jobspec.training(paper_config, runs[9]).identity["schedule"]["precision"] == "bf16"
    assert [e.trains_in for e in entries] == ["fp16"] * 5 + ["bf16"] * 5
    # the demo trains in fp32 by default: both its precisions are the entries' own, on table8's own data set
    demo = list(ex.table_students(demo_config, "table8"))
    assert [r.name for r in demo[::3]] == ["digitsp_wrn-10-1_trades-ltd_T1_fp16_b6_s0",
                                           "digitsp_wrn-10-1_trades-ltd_T1_bf16_b6_s0"]
    assert ex.table_dataset(demo_config, "table8") == "digitsp" and ex.table_dataset(demo_config, "table4") == "digits"
    # an `auto` row keeps its precision through the search
    demo_config["tables"]["table4"]["entries"] = [{"method": "trades-ltd", "temperature": "auto", "precision": "bf16"}]
    auto = ex.table_entries(demo_config, "table4")[0]
    group = ex.search_group(demo_config, auto)
    assert group == "digits_wrn-10-1_trades-ltd_bf16_b6_s0"
    assert {c.precision for c in ex.search_candidates(demo_config, group)} == {"bf16"}


def test_the_stalled_alarm_is_not_part_of_a_run_identity(paper_config):
    paper_config = copy.deepcopy(paper_config)  # the session's, shared: never edited in place
    run = next(ex.table_students(paper_config, "table4"))
    before = jobspec.training(paper_config, run).identity
    paper_config["train"]["stalled_attacks"] = {"warn": 0.2, "stop": 0.9}
    assert jobspec.training(paper_config, run).identity == before
    paper_config["train"]["precision"] = "bf16"
    assert jobspec.training(paper_config, run).identity != before


def test_a_table_compares_best_weights_and_shows_the_last_beside_them(paper_config):
    """The paper config compares best.pt with the paper (the authors evaluated a best
    checkpoint) and shows the last epoch beside it; `weights: last` shows that alone."""
    paper_config = copy.deepcopy(paper_config)  # the session's, shared: never edited in place
    assert all(ex.shown_weights(paper_config, t) == ["best", "last"] for t in ex.table_names(paper_config))
    assert ex.evaluation_file("last") == "autoattack.json" and ex.evaluation_file("best") == "autoattack_best.json"
    assert ex.WEIGHTS["best"] == ("best.pt", "autoattack_best")
    assert ex.table_identity(paper_config, "table4")["monitor"]["images"] == "first"  # its notes describe it
    paper_config["tables"]["table4"]["weights"] = "last"
    assert ex.table_weights(paper_config, "table4") == "last" and ex.shown_weights(paper_config, "table4") == ["last"]
    assert "monitor" not in ex.table_identity(paper_config, "table4")
    paper_config["tables"]["table4"]["weights"] = "best"
    paper_config["datasets"]["cifar10"]["evaluation"]["monitor"]["n_examples"] = 0  # no monitor, no best epoch
    with pytest.raises(ValueError, match="tables.table4: weights `best` .* monitor"):
        ex.table_weights(paper_config, "table4")
