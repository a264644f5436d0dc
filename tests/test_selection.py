"""Which images choose best.pt (ltd/selection.py): apart from the evaluated ones where the
config allows it, refused before any job where they are not and the config does not say
so, and part of what a student's training is."""

import copy

import pytest
import torch

from ltd import checks, data, jobspec, selection
from ltd import config as ltd_config
from ltd import experiments as ex

from .conftest import ROOT


@pytest.fixture(scope="module")
def quick_config():
    return ltd_config.load(ROOT / "config" / "quick.yaml")


def _datasets(config):
    return sorted({ex.table_dataset(config, t) for t in ex.table_names(config)})


def test_quick_and_demo_choose_the_best_epoch_on_images_they_do_not_evaluate(quick_config, demo_config):
    for config in (quick_config, demo_config):
        for dataset in _datasets(config):
            chosen, evaluated = selection.chosen_on(config, dataset), selection.evaluated(config, dataset)
            assert len(chosen) and len(evaluated) and chosen.overlap(evaluated) == 0, dataset
            assert "disjoint from" in selection.note(config, dataset)
    assert selection.chosen_on(quick_config, "cifar10") == selection.Images("test", 9000, 10000)
    assert selection.evaluated(quick_config, "cifar10") == selection.Images("test", 0, 1000)


def test_the_monitor_loads_the_last_images_of_the_split(demo_config):
    """What the training job's monitor takes (``last``) is the split's tail: none of the
    first images the evaluation takes."""
    digits = jobspec.data(demo_config, "digits")
    test = data.load_split(digits, "test")
    chosen = selection.chosen_on(demo_config, "digits")
    x, y = zip(*data.eval_batches(digits, "test", "cpu", 64, n=len(chosen), last=True))
    assert torch.equal(torch.cat(x), test.x[chosen.start:chosen.stop]) and torch.equal(torch.cat(y), test.y[-len(chosen):])
    evaluated = torch.cat([b for b, _ in data.eval_batches(digits, "test", "cpu", 64, n=100)])
    assert torch.equal(evaluated, test.x[:100]) and chosen.start >= 100


def test_the_paper_config_says_its_cifar_selection_is_on_evaluated_images(paper_config):
    """All 10,000 CIFAR test images are evaluated: the paper config chooses on the first
    1,000 of them, as the authors most likely did, and says so (overlap_ok, the notes);
    ImageNet evaluates 5,000 of 50,000 and chooses apart."""
    for dataset in ("cifar10", "cifar100"):
        assert selection.chosen_on(paper_config, dataset).overlap(selection.evaluated(paper_config, dataset)) == 1000
        assert "selected on its own test images" in selection.note(paper_config, dataset)
    assert selection.problems(paper_config, ex.table_names(paper_config)) == []
    assert "disjoint from the first 5,000" in selection.note(paper_config, "imagenet")


def test_the_plan_refuses_a_best_epoch_chosen_on_evaluated_images(quick_config, paper_config):
    config = copy.deepcopy(quick_config)
    config["datasets"]["cifar10"]["evaluation"]["monitor"]["images"] = "first"
    with pytest.raises(checks.ConfigError, match=r"datasets\.cifar10\.evaluation\.monitor: the best epoch .* "
                       r"1,000 of which are among the first 1,000 test images .*images: last with "
                       r"n_examples <= 9000.*overlap_ok: true"):
        checks.check(config)
    config["datasets"]["cifar10"]["evaluation"]["monitor"]["overlap_ok"] = True  # said explicitly: accepted
    checks.check(config)
    config = copy.deepcopy(paper_config)  # no test image left: a held-out split is the way out
    config["datasets"]["cifar10"]["evaluation"]["monitor"]["overlap_ok"] = False
    with pytest.raises(checks.ConfigError, match=r"datasets\.cifar10\.val_size\) and write "
                       r"datasets\.cifar10\.evaluation\.monitor\.split: val"):
        checks.check(config)
    config["datasets"]["cifar10"]["evaluation"]["monitor"]["split"] = "val"
    with pytest.raises(checks.ConfigError, match=r"split = val: datasets\.cifar10\.val_size is 0"):
        checks.check(config)
    config["datasets"]["cifar10"]["val_size"] = 1000
    checks.check(config)
    config["datasets"]["cifar10"].update(val_size=0)
    config["datasets"]["cifar10"]["evaluation"]["monitor"].update(split="test", images="first")
    config["tables"]["table4"]["weights"] = "last"  # its best.pt is not reported: not its problem
    with pytest.raises(checks.ConfigError) as err:  # the other CIFAR-10 tables still compare best.pt
        checks.check(config)
    assert "table4" not in str(err.value) and "tables table1, table5, table7, table8 report)" in str(err.value)
    config["evaluation"]["weights"] = "last"  # no table reports best.pt
    checks.check(config)


def test_the_monitor_is_part_of_a_students_training_not_of_its_evaluation(quick_config):
    """best.pt is written by the training job: a changed monitor retrains the student (and
    so re-evaluates best.pt); nothing else changes, and `overlap_ok` changes nothing."""
    config = copy.deepcopy(quick_config)
    student = next(ex.table_students(config, "table4"))
    teacher = ex.search_teacher(config, "cifar10")
    before = {"student": jobspec.training(config, student).identity, "teacher": jobspec.training(config, teacher).identity,
              "evaluation": jobspec.student_evaluation(config, student).identity}
    assert before["student"]["monitor"]["images"] == "last" and "monitor" not in before["teacher"]
    config["datasets"]["cifar10"]["evaluation"]["monitor"]["overlap_ok"] = True
    assert jobspec.training(config, student).identity == before["student"]
    for key, value in (("images", "first"), ("n_examples", 500), ("pgd_steps", 20), ("split", "val")):
        edited = copy.deepcopy(config)
        edited["datasets"]["cifar10"]["evaluation"]["monitor"][key] = value
        assert jobspec.training(edited, student).identity != before["student"], key
        assert jobspec.training(edited, teacher).identity == before["teacher"]
        assert jobspec.student_evaluation(edited, student).identity == before["evaluation"]
