"""The temperature search (ltd/temperature.py, ltd/jobs/temperature_search.py): T_max, and a
step 2 that a gradient-masked candidate cannot win."""

import copy

import pytest
import torch

from ltd import config as ltd_config
from ltd import jobspec, temperature
from ltd.data import load_split
from ltd.experiments import Run
from ltd.jobs.temperature_search import validate_model
from ltd.models import build_model

from .conftest import ROOT


def test_tmax_is_smallest_temperature_below_threshold():
    subs = [(100, 0.5), (20, 0.93), (50, 0.8663), (30, 0.91)]
    assert temperature.find_tmax(subs, 0.9) == 50
    assert temperature.find_tmax(subs, 0.95) == 20
    assert temperature.find_tmax(subs, 0.4) is None


def _cand(t, robust, kl, flags=()):
    return {"temperature": t, "robust_accuracy": robust, "eq9_kl": kl, "flags": list(flags)}


def test_choose_respects_tmax_flags_and_criterion():
    cands = [_cand(1, 0.50, 0.9), _cand(5, 0.55, 1.0), _cand(10, 0.53, 0.8), _cand(15, 0.90, 0.1, ["pgd_gap"]),
             _cand(20, 0.95, 0.05)]
    t, decisions = temperature.choose(cands, tmax=20, criterion="robust_accuracy")
    assert t == 5
    why = {d["T"]: d["reason"] for d in decisions}
    assert why[15] == "dropped: gradient masking (pgd_gap)" and why[20] == "dropped: T >= T_max = 20"
    assert why[5].startswith("chosen") and why[1] == "kept"
    assert temperature.choose(cands, tmax=None, criterion="robust_accuracy")[0] == 20
    assert temperature.choose(cands, tmax=20, criterion="eq9_kl")[0] == 10
    with pytest.raises(ValueError, match="free of gradient-masking flags"):
        temperature.choose(cands, tmax=1, criterion="robust_accuracy")
    with pytest.raises(ValueError, match="criterion"):
        temperature.choose(cands, tmax=None, criterion="pgd_accuracy")


class Scaled(torch.nn.Module):
    """A trained model with its logits multiplied by a large constant: the softmax
    saturates, cross-entropy gradients vanish in fp32 and PGD stalls (gradient masking),
    while its decisions are the unscaled model's."""

    def __init__(self, model, scale=1e4):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.scale * self.model(x)


@pytest.fixture(scope="module")
def search_config():
    cfg = ltd_config.load(ROOT / "config" / "demo.yaml")
    ds = cfg["datasets"]["digits"]
    ds.update(image_size=8, val_size=120)
    ds["attack"]["default"]["steps"] = 3
    cfg["evaluation"].update(batch_size=120, pgd_steps=10)
    cfg["evaluation"]["diagnostics"].update(square_queries=50, square_n_examples=60)
    return cfg


def _train(epochs, seed=0):
    split = load_split(jobspec.Data.of({"source": "digits", "image_size": 8, "test_size": 397, "val_size": 120}), "train")
    torch.manual_seed(seed)
    model = build_model("wrn-10-1", 10)
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(split.y), generator=g)
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = torch.nn.functional.cross_entropy(model(split.x[idx]), split.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_a_masked_candidate_has_the_best_pgd_accuracy_and_is_not_chosen(search_config):
    torch.set_num_threads(1)
    teacher = _train(3)
    # the masked candidate (lowest T) makes its twin's decisions; T = 2 is a weak model
    candidates = {1.0: Scaled(copy.deepcopy(teacher)), 2.0: _train(1, seed=1), 3.0: teacher}
    vals = []
    for t, model in candidates.items():
        run = Run("students", "digits", "wrn-10-1", 0, method="trades-ltd", temperature=t, beta=6.0)
        vals.append(validate_model(jobspec.validation(search_config, run), model, teacher, torch.device("cpu")))
    by_t = {v["temperature"]: v for v in vals}
    masked, twin = by_t[1.0], by_t[3.0]
    assert masked["pgd_accuracy"] == max(v["pgd_accuracy"] for v in vals)  # PGD would have picked it
    assert masked["pgd_accuracy"] > twin["pgd_accuracy"]  # ... over its own unscaled twin
    assert "zero_gradients" in masked["flags"] and masked["robust_accuracy"] < masked["pgd_accuracy"]
    # AutoAttack sees through the scaling: within a few of 120 images of the twin (not bitwise:
    # CPUs and thread counts round differently near a decision boundary)
    assert abs(masked["robust_accuracy"] - twin["robust_accuracy"]) <= 0.05
    chosen, decisions = temperature.choose(vals, tmax=None, criterion="robust_accuracy")
    assert chosen == 3.0
    assert decisions[0]["T"] == 1.0 and decisions[0]["reason"].startswith("dropped: gradient masking")
    # Without the diagnostics it would have won against every candidate but its own twin
    # (one with the same decisions, which only the flags tell apart).
    unflagged = [{**v, "flags": []} for v in vals if v is not twin]
    assert temperature.choose(unflagged, tmax=None, criterion="robust_accuracy")[0] == 1.0
    # the KL form of Eq. 9 is comparable across T: >= 0, 0 only for a perfect fit
    assert all(v["eq9_kl"] >= 0 for v in vals)
