"""A job's spec (ltd.jobspec): resolved from the config once, carried by the rule's params
and, for a multi-process training job, through job.json to its torchrun workers."""

import copy
import json

from ltd import experiments as ex
from ltd import jobspec
from ltd.provenance import fingerprint


def test_a_training_spec_survives_job_json_with_its_identity(paper_config):
    """What a torchrun worker reads back from job.json is the spec the rule built: the same
    run, schedule, attack, AWP settings, and so the same checkpoint fingerprint."""
    awp = next(r for r in ex.table_students(paper_config, "table5") if r.method == "awp-ltd")
    for run in (awp, ex.teacher(paper_config, "cifar10", "wrn-34-10")):
        spec = jobspec.training(paper_config, run)
        back = jobspec.Training.from_json(json.loads(json.dumps(spec.to_json())))
        assert back == spec and back.run.name == run.name
        assert fingerprint(back.identity) == fingerprint(spec.identity)
    assert spec.attack is None and spec.awp is None and spec.monitor is None  # a teacher: natural, no monitor
    student = jobspec.training(paper_config, awp)
    assert student.attack == ex.attack(paper_config, "cifar10", "awp-ltd") and student.awp == paper_config["awp"]
    assert student.monitor["n_examples"] == paper_config["evaluation"]["monitor"]["n_examples"]


def test_speed_switches_change_the_spec_not_the_identity(paper_config):
    config = copy.deepcopy(paper_config)
    run = next(ex.table_students(config, "table4"))
    before = jobspec.training(config, run)
    config["train"].update(channels_last=False, compile=True, eval_batch_size=7)
    config["jobs_per_gpu"] = 2
    after = jobspec.training(config, run)
    assert after.schedule["eval_batch_size"] == 7 and after.machine.jobs_per_gpu == 2
    assert after.identity == before.identity
    config["train"]["lr"] = 0.2
    assert jobspec.training(config, run).identity != before.identity


def test_a_spec_is_a_copy_of_the_config(paper_config):
    """Editing what a spec holds never edits the config it came from (nor another job's spec)."""
    config = copy.deepcopy(paper_config)
    run = next(ex.table_students(config, "table4"))
    spec = jobspec.training(config, run)
    spec.schedule["lr"] = 99.0
    spec.attack["steps"] = 99
    spec.data.section["source"] = spec.data.written["source"] = "other"
    assert config == paper_config


def test_evaluation_and_validation_identities(demo_config):
    run = next(r for r in ex.search_candidates(demo_config, "digits_wrn-10-1_trades-ltd_b6_s0"))
    ev = jobspec.student_evaluation(demo_config, run)
    assert ev.model.name == run.name and ev.data.name == "digits"
    assert set(ev.identity) == {"data", "evaluation"} and "monitor" not in ev.identity["evaluation"]
    val = jobspec.validation(demo_config, run)
    assert val.identity["search_attacks"] == demo_config["datasets"]["digits"]["temperature_search"]["attacks"]
    assert val.identity["data"] == jobspec.data(demo_config, "digits").identity("val")
    assert val.teacher.name == run.teacher.name


def test_a_compiled_training_attack_is_another_run_and_off_changes_no_identity(paper_config):
    """train.compile_attack rounds x' otherwise than the eager attack (ltd/jobspec.py): a
    run whose step takes it is another run; switched off, identities are as they were
    (the key absent: no finished run reruns); a run without a TRADES/AWP/MART attack
    (teachers, PGD-AT, whose steps never call it) keeps its identity either way."""
    config = copy.deepcopy(paper_config)
    runs = [*(next(r for r in ex.table_students(config, t) if r.method == m)
              for t, m in (("table4", "trades-ltd"), ("table5", "awp-ltd"))),
            ex.student(config, "cifar10", "wrn-34-10", "mart-ltd", 5.0, 6.0),
            ex.student(config, "cifar10", "wrn-34-10", "pgd-at", None, 6.0),
            ex.teacher(config, "cifar10", "wrn-34-10")]
    assert config["train"]["compile_attack"] is False
    before = {r.name: jobspec.training(config, r).identity for r in runs}
    assert all("compile_attack" not in i["schedule"] for i in before.values())
    config["train"]["compile_attack"] = True
    for r in runs:
        after = jobspec.training(config, r).identity
        if r.method in ("trades-ltd", "awp-ltd", "mart-ltd"):
            assert after == {**before[r.name], "schedule": {**before[r.name]["schedule"], "compile_attack": True}}
        else:
            assert after == before[r.name], r.name
