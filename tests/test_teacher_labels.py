"""Soft labels on the fly (ltd/teacher_labels.py): the teacher labels the augmented batch."""

import copy
import dataclasses

import pytest
import torch

from ltd import budget, checkpoint, jobspec
from ltd import experiments as ex
from ltd.experiments import Run
from ltd.files import load_json
from ltd.jobs import training
from ltd.loaders import DeviceLoader, Split
from ltd.losses import tempered_softmax
from ltd.models import build_model
from ltd.teacher_labels import TeacherLabels


@pytest.fixture
def loader_and_teacher():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.rand(40, 3, 12, 12, generator=g), torch.randint(0, 10, (40,), generator=g), None)
    torch.manual_seed(0)
    return DeviceLoader(split, 16, crop_padding=2, seed=3), build_model("wrn-10-1", 10).eval()


def test_labels_follow_the_augmented_batch(loader_and_teacher):
    loader, teacher = loader_and_teacher
    fly = TeacherLabels(loader, copy.deepcopy(teacher), 5.0, torch.device("cpu"), "fp32")
    assert len(fly) == len(loader) and fly.bounds == loader.bounds
    for (x, y, q), (x0, y0, q0) in zip(fly.epoch(1), loader.epoch(1)):
        assert torch.equal(x, x0) and torch.equal(y, y0) and q0 is None
        with torch.no_grad():
            torch.testing.assert_close(q, tempered_softmax(teacher(x), 5.0))
        assert torch.allclose(q.sum(1), torch.ones(len(q)))
    # a preempted epoch resumes after its finished steps with the same batches and labels
    whole = list(fly.epoch(2))
    for (x, _, q), (x1, _, q1) in zip(whole[1:], fly.epoch(2, start=1)):
        assert torch.equal(x, x1) and torch.equal(q, q1)


def test_the_teacher_never_trains(loader_and_teacher):
    loader, teacher = loader_and_teacher
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    fly = TeacherLabels(loader, teacher, 2.0, torch.device("cpu"), "fp32")
    x, _, q = next(fly.epoch(0))
    assert not q.requires_grad and not teacher.training
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # BN statistics too


def test_on_the_fly_student_trains_from_the_teacher_file(demo_config, tmp_path):
    c = demo_config
    c["datasets"]["digits"].update(train_size=64, image_size=12)
    c["train"].update(epochs=1, batch_size=32, lr_milestones=[])
    c["student"] = {}
    c["evaluation"]["monitor"] = {"n_examples": 0, "pgd_steps": 1}
    run = ex.student(c, "digits", "wrn-10-1", "trades-ltd", 5, 6.0, soft_label_mode="on_the_fly")
    assert run.name == "digits_wrn-10-1_trades-ltd_T5_fly_b6_s0" and Run.parse("students", run.name) == run
    torch.manual_seed(0)
    checkpoint.save(build_model("wrn-10-1", 10).state_dict(), tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="no teacher was given"):
        training.train_run(jobspec.training(c, run), out_dir=tmp_path / "s", device=torch.device("cpu"))
    training.train_run(jobspec.training(c, run), out_dir=tmp_path / "s", teacher=tmp_path / "teacher.pt",
                       device=torch.device("cpu"))
    m = load_json(tmp_path / "s" / "metrics.json")
    assert m["soft_labels"] == "on_the_fly" and m["epochs"] == 1


def test_on_the_fly_costs_one_more_forward_and_no_logits_job(paper_config):
    entry = next(e for e in ex.table_entries(paper_config, "table4") if e.temperature == 5.0)
    pre = ex.entry_run(paper_config, entry)
    fly = ex.entry_run(paper_config, dataclasses.replace(entry, soft_label_mode="on_the_fly"))
    assert (pre.soft_label_mode, fly.soft_label_mode) == ("precomputed", "on_the_fly") and fly.name.endswith("_T5_fly_b6_s0")
    cost = {r: budget.job_cost(paper_config, budget.Job("student", r)).forward_equivalents for r in (pre, fly)}
    assert cost[fly] == cost[pre] + 1
    # ImageNet labels on the fly: Table III needs its teachers but none of their logits
    kinds = [j.kind for j in budget.table_jobs(paper_config, "table3")]
    assert kinds.count("teacher") == 2 and "logits" not in kinds
