import pytest

from ltd import experiments as ex
from ltd.experiments import Run


@pytest.mark.parametrize("run", [
    Run("teachers", "cifar10", "wrn-34-10", 0),
    Run("substitutes", "cifar10", "wrn-34-10", 1, method="soft", temperature=50.0),
    Run("students", "cifar100", "wrn-34-10", 0, method="trades-ltd", temperature=0.5, beta=6.0),
    Run("students", "digits", "preact-resnet18", 3, method="trades", beta=3.5),
])
def test_names_round_trip(run):
    assert Run.parse(run.role, run.name) == run
    assert run.dir == f"{run.role}/{run.name}"


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="not a valid students run name"):
        Run.parse("students", "cifar10_wrn-34-10")
    with pytest.raises(ValueError, match="temperature goes with LTD"):
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
    assert [c.temperature for c in cands] == [float(t) for t in demo_config["temperature_search"]["grid"]]


def test_schedule_overrides(demo_config):
    assert ex.schedule(demo_config, "teachers")["epochs"] == demo_config["teacher"]["epochs"]
    assert ex.schedule(demo_config, "students")["epochs"] == demo_config["train"]["epochs"]
    assert ex.schedule(demo_config, "students")["nesterov"] is True
