"""AutoAttack record and resume, gradient-masking diagnostics, published checkpoints.

CPU only, tiny models on the digits data (8x8): a WRN-10-1 trained for a second, a
constant-logit model (masking by construction) and an input-quantised model (zero
gradients, so white-box attacks fail where a black-box one succeeds). WRN-34-10 is only
built for key/shape checks, never run.
"""
import copy
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import yaml

from ltd import autoattack, checkpoint, checks, diagnostics, evaluate, experiments, jobspec, robustbench, runtime
from ltd import config as ltd_config
from ltd.data import load_split
from ltd.files import load_json
from ltd.jobs.evaluation import evaluate_model
from ltd.known_answer import MeanIntensityNet, known_answer_data
from ltd.models import build_model, count_parameters

from .conftest import ROOT, copy_workflow
from .graphs import Recorder

DIGITS = {"source": "digits", "image_size": 8, "test_size": 397}
EPS = 8 / 255


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny convolutions: a second thread only adds contention on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def test_split():
    return load_split(jobspec.Data.of(DIGITS), "test")


@pytest.fixture(scope="module")
def trained():
    """WRN-10-1 trained naturally for 3 epochs on the digits (~95 % test accuracy, ~1 s)."""
    tr = load_split(jobspec.Data.of(DIGITS), "train")
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        perm = torch.randperm(len(tr.y), generator=g)
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = torch.nn.functional.cross_entropy(model(tr.x[idx]), tr.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class ConstantLogits(torch.nn.Module):
    """The same logits for every input: gradients are exactly zero (masking by construction)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.linspace(1, 0, num_classes))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


class Quantised(torch.nn.Module):
    """A trained model behind input rounding: the gradient is zero, the decision is not."""

    def __init__(self, model, levels=16):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(torch.round(x * self.levels) / self.levels)


# ---- the AutoAttack record ----

def direct_pyautoattack(model, x, y, attacks, eps, batch_size, square_queries=None):
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, attacks=attacks, version="custom", eps=eps, norm="Linf", seed=0, device="cpu")
    adversary.apgd.n_restarts = 1
    if square_queries:
        adversary.square.n_queries = square_queries
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.parametrize("attacks", [["apgd-ce"], ["apgd-ce", "square"]])
def test_wrapper_equals_direct_pyautoattack(trained, test_split, attacks):
    x, y = test_split.x[:48], test_split.y[:48]
    eps = 16 / 255  # robust accuracy strictly between 0 and clean (8-px digits are robust at 8/255)
    direct = direct_pyautoattack(trained, x, y, attacks, eps, batch_size=16, square_queries=30)
    rec, flags = autoattack.run_autoattack(trained, x, y, eps=eps, version="custom", attacks=attacks,
                                         square_queries=30, batch_size=16, seed=0)
    clean = evaluate.clean_accuracy(trained, x, y, 48)
    assert 0 < rec["robust_accuracy"] < clean
    assert rec["robust_accuracy"] == direct.sum().item() / 48
    assert torch.equal(flags[attacks[-1]], direct)
    assert rec["clean_accuracy"] == clean
    assert list(rec["robust_accuracy_after"]) == attacks and rec["robust_accuracy_after"][attacks[-1]] == \
        rec["robust_accuracy"]
    import pyautoattack
    assert {k: rec[k] for k in ("eps", "norm", "n_examples", "seed", "batch_size", "version", "precision")} == \
        {"eps": eps, "norm": "Linf", "n_examples": 48, "seed": 0, "batch_size": 16, "version": "custom",
         "precision": "fp32"}
    assert rec["pyautoattack"] == pyautoattack.__version__
    assert rec["square_queries"] == (30 if "square" in attacks else None)
    assert 0 < rec["max_perturbation"] <= eps + 1e-6


def test_standard_version_records_its_four_attacks(test_split):
    model = ConstantLogits()  # attacks cannot move it: the four attacks finish at once
    rec = autoattack.autoattack(model, test_split.x[:20], test_split.y[:20], eps=EPS, version="standard",
                              batch_size=20, seed=0)
    assert rec["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(rec["robust_accuracy_after"]) == rec["attacks"]
    assert rec["square_queries"] == 5000


def test_precision_is_read_from_the_flags():
    assert runtime.tf32_mode("cpu") == "fp32"
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
        assert runtime.tf32_mode("cuda") == "fp32"
        torch.backends.cudnn.allow_tf32 = True  # convolutions in TF32 (torch's default)
        assert runtime.tf32_mode("cuda") == "pytorch_default"
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        assert runtime.tf32_mode("cuda") == "tf32_matmul"
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        assert runtime.tf32_mode("cuda") == "tf32"
        # every setting of evaluation.precision reads back as itself (flags only: no GPU needed)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
        for name in ("fp32", "pytorch_default", "tf32"):
            with runtime.in_tf32_mode("cuda", name) as ran:
                assert ran == name == runtime.tf32_mode("cuda")
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
            with runtime.in_tf32_mode("cpu", name) as ran:  # the CPU has no TF32: says what ran
                assert ran == "fp32"
        with pytest.raises(ValueError, match="unknown precision 'tf16'"):
            runtime.in_tf32_mode("cuda", "tf16").__enter__()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_bf16_model_is_refused(test_split):
    with pytest.raises(RuntimeError, match="fp32"):
        autoattack.autoattack(build_model("wrn-10-1", 10).to(torch.bfloat16), test_split.x[:4], test_split.y[:4],
                            eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=4)


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at_batch", [0, 1], ids=["after-first-attack", "mid-second-attack"])
def test_state_file_resume_equals_uninterrupted_run(trained, test_split, tmp_path, monkeypatch, kill_at_batch):
    from pyautoattack.autopgd_base import APGDAttack
    from pyautoattack.square import SquareAttack

    x, y = test_split.x[:48], test_split.y[:48]
    kw = dict(eps=16 / 255, version="custom", attacks=["apgd-ce", "square"], square_queries=30, batch_size=16, seed=0)
    whole = autoattack.autoattack(trained, x, y, **kw)
    state = tmp_path / "autoattack_state.json"

    square_perturb, calls = SquareAttack.perturb, []

    def dies(self, *a, **k):
        calls.append(1)
        if len(calls) > kill_at_batch:
            raise Killed
        return square_perturb(self, *a, **k)

    monkeypatch.setattr(SquareAttack, "perturb", dies)
    with pytest.raises(Killed):
        autoattack.autoattack(trained, x, y, state_path=state, **kw)
    saved = load_json(state)
    assert list(saved["done"]) == ["apgd-ce"]  # attack 1 is on disk the moment it finishes
    assert saved["current"]["attack"] == "square" and saved["current"]["batches_done"] == kill_at_batch

    def must_not_run(self, *a, **k):
        raise AssertionError("APGD-CE ran again after a resume")

    monkeypatch.setattr(SquareAttack, "perturb", square_perturb)
    monkeypatch.setattr(APGDAttack, "perturb", must_not_run)
    resumed = autoattack.autoattack(trained, x, y, state_path=state, **kw)
    assert resumed["resumed_attacks"] == ["apgd-ce"]
    assert resumed["robust_accuracy"] == whole["robust_accuracy"]
    assert resumed["robust_accuracy_after"] == whole["robust_accuracy_after"]
    assert resumed["clean_accuracy"] == whole["clean_accuracy"]


def test_state_of_other_settings_is_not_resumed(trained, test_split, tmp_path):
    x, y = test_split.x[:16], test_split.y[:16]
    state = tmp_path / "s.json"
    kw = dict(version="custom", attacks=["apgd-ce"], batch_size=16, seed=0, state_path=state)
    first = autoattack.autoattack(trained, x, y, eps=16 / 255, **kw)
    again = autoattack.autoattack(trained, x, y, eps=16 / 255, **kw)
    assert again["resumed_attacks"] == ["apgd-ce"] and again["robust_accuracy"] == first["robust_accuracy"]
    other = autoattack.autoattack(trained, x, y, eps=8 / 255, **kw)  # same file, another eps
    assert other["resumed_attacks"] == [] and load_json(state)["settings"]["eps"] == 8 / 255
    x2 = x.clone()
    x2[0, 0, 0, 0] += 0.5
    assert autoattack.autoattack(trained, x2, y, eps=8 / 255, **kw)["resumed_attacks"] == []  # other images
    state.write_text("{truncated")
    assert autoattack.autoattack(trained, x2, y, eps=8 / 255, **kw)["resumed_attacks"] == []


# ---- diagnostics ----

def test_assess_on_the_papers_numbers(paper_config):
    t = paper_config["evaluation"]["diagnostics"]
    masked = diagnostics.assess(clean=0.9472, robust=0.0, pgd=0.01, thresholds=t)  # Table IV, T = 15
    assert masked["flags"] == ["near_zero_robust"] and masked["flagged"]
    sound = diagnostics.assess(clean=0.8492, robust=0.5308, pgd=0.56, thresholds=t,
                               black_box={"square_accuracy": 0.60, "apgd_ce_accuracy": 0.55},
                               gradients={"zero_fraction": 0.0, "nonfinite_fraction": 0.0})
    assert sound["flags"] == [] and not sound["flagged"] and sound["not_run"] == ["stalled_training"]
    weak_pgd = diagnostics.assess(clean=0.85, robust=0.30, pgd=0.55, thresholds=t,
                                  black_box={"square_accuracy": 0.25, "apgd_ce_accuracy": 0.50})
    assert weak_pgd["flags"] == ["pgd_gap", "black_box"]
    assert weak_pgd["not_run"] == ["zero_gradients", "stalled_training"]
    assert weak_pgd["cause"] == "masked at evaluation" and masked["cause"] == "robustness near zero"
    assert weak_pgd["pgd_gap"]["gap"] == pytest.approx(0.25)
    strict = diagnostics.assess(clean=0.85, robust=0.30, pgd=0.55, thresholds={**t, "pgd_gap": 0.3})
    assert strict["flags"] == []


def test_a_stalled_training_attack_is_told_apart_from_masking(paper_config):
    """Table IV's T = 15 numbers twice: once from a student whose training attacks moved
    (near-zero robustness, cause unknown), once from one whose x' never moved in training
    (history train_stalled): then the attack failed during training, not at evaluation."""
    t = paper_config["evaluation"]["diagnostics"]
    moved = diagnostics.assess(clean=0.9472, robust=0.0, pgd=0.01, thresholds=t,
                               training={"stalled": 0.02, "adv_accuracy": 0.55, "epoch": 120})
    assert moved["flags"] == ["near_zero_robust"] and not moved["stalled_training"]["flagged"]
    stalled = diagnostics.assess(clean=0.9472, robust=0.0, pgd=0.01, thresholds=t,
                                 training={"stalled": 0.97, "adv_accuracy": 0.99, "epoch": 120, "precisions": ["fp16"]})
    assert stalled["flags"] == ["near_zero_robust", "stalled_training"]
    assert stalled["cause"] == "attack failed during training" and "failed during training" in stalled["summary"]
    row = diagnostics.report_row({"run": "r", "clean_accuracy": 0.9472, "robust_accuracy": 0.0, "diagnostics": stalled,
                                  "training": {"stalled": 0.97, "adv_accuracy": 0.99, "precisions": ["fp16"]},
                                  "autoattack": {"eps": 8 / 255, "n_examples": 10, "attacks": [],
                                                 "robust_accuracy_after": {}}})
    assert (row["Trained in"], row["Stalled (train)"], row["Cause"]) == ("fp16", 97.0, "attack failed during training")


def tiny_config(eps=EPS, **diag):
    """The demo config with a 'tiny' data set: digits at 8 px, 40 test images."""
    cfg = ltd_config.load(ROOT / "config" / "demo.yaml", validate=False)
    cfg = copy.deepcopy(cfg)
    cfg["datasets"]["tiny"] = {"source": "digits", "image_size": 8, "test_size": 397,
                               "attack": {"default": {"eps": EPS, "step_size": 2 / 255, "steps": 2}},
                               "evaluation": {"eps": eps, "n_examples": 40, "pgd_step_size": eps / 4}}
    cfg["evaluation"] = {**cfg["evaluation"], "batch_size": 40, "pgd_steps": 5, "seed": 0, "precision": "fp32",
                         "autoattack": {"version": "custom", "attacks": ["apgd-ce"]},
                         "diagnostics": {**cfg["evaluation"]["diagnostics"], "square_queries": 100,
                                         "square_n_examples": 40, **diag}}
    return cfg


def tiny_evaluation(config: dict, name: str) -> jobspec.Evaluation:
    return jobspec.evaluation(config, jobspec.Model(name, "wrn-10-1", jobspec.data(config, "tiny")))


def evaluation_identity(config: dict, dataset: str) -> dict:
    return jobspec.evaluation(config, jobspec.Model("m", "wrn-10-1", jobspec.data(config, dataset))).identity


def test_constant_model_is_flagged(tmp_path):
    res = evaluate_model(tiny_evaluation(tiny_config(), "constant"), ConstantLogits(), tmp_path / "autoattack.json",
                         state_path=tmp_path / "autoattack_state.json", device=torch.device("cpu"))
    d = res["diagnostics"]
    assert d["flagged"] and "zero_gradients" in d["flags"]
    assert d["zero_gradients"]["zero_fraction"] == 1.0
    # nothing can move a constant model: robust = clean, Square = APGD-CE
    assert res["robust_accuracy"] == res["clean_accuracy"]
    assert d["black_box"]["square_accuracy"] == d["black_box"]["apgd_ce_accuracy"]
    assert d["black_box"]["apgd_ce_source"] == "first attack of the main AutoAttack run"
    saved = load_json(tmp_path / "autoattack.json")
    assert saved["diagnostics"]["flags"] == d["flags"] and saved["report"]["Masking flags"] == ", ".join(d["flags"])
    csv = (tmp_path / "evaluation_report.csv").read_text().splitlines()
    assert csv[0].startswith("Run,Weights,eps,n,Precision,Clean,PGD-5,AA,after APGD-CE,PGD − AA,Square alone")
    assert not list(tmp_path.glob("*state*"))  # state files are removed once the result is written
    assert saved["precision"] == "fp32" and saved["precision_setting"] == "fp32"  # the CPU runs fp32 whatever asked
    assert saved["layout"] == {"channels_last": False, "compiled": False}


@pytest.mark.parametrize("eps", [8 / 255, 64 / 255], ids=["8/255", "64/255"])
def test_naturally_trained_model(trained, tmp_path, eps):
    """No flag where the tiny model keeps its accuracy (8/255: 8-px digits are coarse);
    near_zero_robust where AutoAttack breaks every image (64/255), as for Table IV's T = 15."""
    res = evaluate_model(tiny_evaluation(tiny_config(eps), "natural"), trained, tmp_path / "a.json",
                         state_path=tmp_path / "s.json", device=torch.device("cpu"))
    d = res["diagnostics"]
    assert res["clean_accuracy"] >= 0.9
    assert d["zero_gradients"]["zero_fraction"] == 0.0 and not d["pgd_gap"]["flagged"]
    if eps < 0.1:
        assert res["robust_accuracy"] > 0.5 and d["flags"] == []
    else:
        assert res["robust_accuracy"] <= 0.01 and d["flags"] == ["near_zero_robust"]
    assert d["black_box"]["square_accuracy"] >= d["black_box"]["apgd_ce_accuracy"]


def test_quantised_input_model_black_box_beats_white_box(trained, test_split, paper_config):
    model = Quantised(trained, levels=8)
    x, y = test_split.x[:40], test_split.y[:40]
    clean = evaluate.clean_accuracy(model, x, y, 40)
    d = diagnostics.run(model, x, y, clean=clean, robust=clean, pgd=clean, eps=32 / 255, seed=0, batch_size=40,
                        device="cpu", cfg={**paper_config["evaluation"]["diagnostics"], "square_queries": 100,
                                           "square_n_examples": 40})
    bb = d["black_box"]
    assert bb["apgd_ce_accuracy"] == pytest.approx(clean)  # zero gradient: APGD-CE finds nothing
    assert bb["square_accuracy"] < bb["apgd_ce_accuracy"] and bb["square_only_successes"] > 0
    assert bb["apgd_ce_source"] == "separate APGD-CE run"
    assert {"black_box", "zero_gradients"} <= set(d["flags"])


# ---- published checkpoints ----

def robustbench_style_load(path, model):
    """What robustbench.utils.load_model does with a downloaded CIFAR file."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # our own file; robustbench omits the flag
    sd = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    for sub in ("module.", "model."):
        sd = OrderedDict((k[len(sub):] if sub in k else k, v) for k, v in sd.items())
    model.load_state_dict(sd, strict=True)
    return model


@pytest.mark.parametrize("classes, sub_block1", [(10, False), (100, True)], ids=["cifar10", "cifar100"])
def test_robustbench_wrn34_10_loads_strictly(classes, sub_block1):
    """A RobustBench-layout WRN-34-10 state dict (key/shape check only, no forward)."""
    torch.manual_seed(0)
    src = build_model("wrn-34-10", classes, sub_block1=sub_block1)
    sd = src.state_dict()
    # RobustBench's names and shapes, independently of our model
    assert sd["block1.layer.0.convShortcut.weight"].shape == (160, 16, 1, 1)
    assert sd["block3.layer.4.conv2.weight"].shape == (640, 640, 3, 3)
    assert sd["fc.weight"].shape == (classes, 640) and "fc.bias" in sd
    assert ("sub_block1.layer.4.conv2.weight" in sd) == sub_block1
    if not sub_block1:
        assert count_parameters(src) == 46_160_474
    wrapped = {"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items()), "epoch": 120}
    model, info = robustbench.from_state_dict(wrapped, "wrn-34-10", classes)
    assert info.sub_block1 == sub_block1
    assert any("'state_dict'" in n for n in info.notes) and any("module." in n for n in info.notes)
    assert torch.equal(model.state_dict()["fc.weight"], sd["fc.weight"])
    assert torch.equal(model.state_dict()["block2.layer.0.bn1.running_mean"], sd["block2.layer.0.bn1.running_mean"])


def test_mismatch_lists_keys_and_shapes():
    sd = build_model("wrn-10-1", 10).state_dict()
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["fc.weight"] = torch.zeros(100, 64)
    with pytest.raises(robustbench.StateDictMismatch) as err:
        robustbench.from_state_dict({"model_state_dict": sd}, "wrn-10-1", 10)
    msg = str(err.value)
    assert "missing keys (1): fc.bias" in msg and "unexpected keys (1): extra.weight" in msg
    assert "fc.weight: checkpoint [100, 64], model [10, 64]" in msg
    assert err.value.missing == ["fc.bias"] and isinstance(err.value, ValueError)
    half = OrderedDict((("module." + k) if i % 2 else k, v)
                       for i, (k, v) in enumerate(build_model("wrn-10-1", 10).state_dict().items()))
    with pytest.raises(robustbench.StateDictMismatch, match=r"unexpected keys \(23\): .*module.fc.bias"):
        robustbench.from_state_dict(half, "wrn-10-1", 10)  # only whole-checkpoint prefixes are removed


def test_code_in_a_checkpoint_is_refused(tmp_path):
    import argparse

    torch.save({"state_dict": build_model("wrn-10-1", 10).state_dict(), "args": argparse.Namespace(lr=0.1)},
               tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        robustbench.load_checkpoint(tmp_path / "ckpt.pt", "wrn-10-1", 10)


def test_export_robustbench_round_trip(trained, test_split, tmp_path):
    checkpoint.save(trained.state_dict(), tmp_path / "model.pt")  # a student's model.pt
    out = robustbench.export(tmp_path / "model.pt", tmp_path / "rb.pt", arch="wrn-10-1")
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert list(raw) == ["state_dict"] and list(raw["state_dict"]) == list(trained.state_dict())
    rb = robustbench_style_load(out, build_model("wrn-10-1", 10)).eval()
    ours, info = robustbench.load_checkpoint(out, "wrn-10-1", 10)
    x = test_split.x[:32]
    with torch.no_grad():
        assert torch.equal(rb(x), trained(x)) and torch.equal(ours(x), trained(x))
    assert info.notes == ["weights taken from the checkpoint's 'state_dict' entry"] and not info.sub_block1


def test_robustbench_name_is_found_in_the_model_dir(trained, tmp_path):
    """The layout robustbench.load_model keeps: <model_dir>/<dataset>/Linf/<name>.pt."""
    import importlib.util

    checkpoint.save(trained.state_dict(), tmp_path / "model.pt")
    where = robustbench.model_path(tmp_path / "models", "Chen2021LTD_WRN34_10", "cifar10")
    assert where == tmp_path / "models" / "cifar10" / "Linf" / "Chen2021LTD_WRN34_10.pt"
    if importlib.util.find_spec("robustbench") is None:
        with pytest.raises(FileNotFoundError, match="is not at .*cifar10/Linf/Chen2021LTD_WRN34_10.pt"):
            robustbench.find(tmp_path / "models", "Chen2021LTD_WRN34_10", "cifar10")
    robustbench.export(tmp_path / "model.pt", where)
    assert robustbench.find(tmp_path / "models", "Chen2021LTD_WRN34_10", "cifar10") == where


def test_published_target_evaluates_a_checkpoint(trained, tmp_path):
    """`snakemake published` on a RobustBench-format file of our tiny model (real run)."""
    copy_workflow(tmp_path, profiles=True)
    checkpoint.save(trained.state_dict(), tmp_path / "model.pt")
    robustbench.export(tmp_path / "model.pt", tmp_path / "tiny_published.pt")
    cfg = tiny_config()
    overlay = {"run": "pub", "device": "cpu", "threads": 1, "datasets": {"tiny": cfg["datasets"]["tiny"]},
               "evaluation": cfg["evaluation"],
               "published": [{"name": "TinyLTD", "path": str(tmp_path / "tiny_published.pt"), "dataset": "tiny",
                              "arch": "wrn-10-1", "reported": {"clean": 90.0, "autoattack": 40.0}}]}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    bad = copy.deepcopy(overlay)
    bad["published"][0]["reported"]["clean"] = 190  # a percentage: the schema refuses it
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    bad = copy.deepcopy(overlay)
    bad["evaluation"]["diagnostics"]["pgd_gaps"] = 0.1  # a misspelt threshold
    (tmp_path / "bad2.yaml").write_text(yaml.safe_dump(bad))

    def snakemake(overlay_file, *args):
        return subprocess.run([sys.executable, "-m", "snakemake", "published", *args, "--cores", "1",
                               "--configfile", "config/demo.yaml", overlay_file], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    proc = snakemake("bad.yaml", "-n")
    assert proc.returncode != 0 and "190" in proc.stdout + proc.stderr
    proc = snakemake("bad2.yaml", "-n")
    assert proc.returncode != 0 and "pgd_gaps" in proc.stdout + proc.stderr
    proc = snakemake("overlay.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "results" / "pub" / "published" / "TinyLTD"
    res = load_json(out / "autoattack.json")
    test = load_split(jobspec.Data.of(DIGITS), "test").head(40)
    with torch.no_grad():
        assert res["clean_accuracy"] == (trained(test.x).argmax(1) == test.y).sum().item() / 40
    assert res["published"]["wrappers"] == ["weights taken from the checkpoint's 'state_dict' entry"]
    assert res["autoattack"]["n_examples"] == 40 and "diagnostics" in res
    md = (out / "comparison.md").read_text()
    assert "| Clean | 90.00 |" in md and f"{100 * res['clean_accuracy'] - 90:.2f}" in md
    assert "Only the first 40 test images" not in md  # not a CIFAR data set


def test_pgd_is_seeded_and_leaves_the_global_rng_alone(trained, test_split):
    """PGD's random start comes from the evaluation seed: the same number in every run and
    resume (a masking flag depends on it), and a student's per-epoch monitor does not move
    the training's random stream."""
    x, y = test_split.x[:40], test_split.y[:40]
    kw = dict(eps=32 / 255, step_size=8 / 255, steps=2, batch_size=40)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = evaluate.pgd_accuracy(trained, x, y, seed=0, **kw)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # whatever the caller's stream, the same number
    assert evaluate.pgd_accuracy(trained, x, y, seed=0, **kw) == a
    others = {evaluate.pgd_accuracy(trained, x, y, seed=s, **kw) for s in range(1, 6)}
    assert len(others | {a}) > 1  # the seed does set the start (else the check above proves nothing)


# ---- evaluation precision and layout ----

def test_the_old_tf32_key_names_its_replacement(tmp_path):
    overlay = tmp_path / "old.yaml"
    overlay.write_text("evaluation: {tf32: true}\ndatasets: {cifar10: {evaluation: {tf32: false}}}\n")
    with pytest.raises(checks.ConfigError) as e:
        ltd_config.load(overlay)
    assert "evaluation.tf32 is now evaluation.precision: write precision: tf32" in str(e.value)
    assert "datasets.cifar10.evaluation.tf32 is now datasets.cifar10.evaluation.precision: write precision: fp32" \
        in str(e.value)


def test_precision_keeps_the_identity_of_finished_evaluations(paper_config):
    """evaluation.precision replaced the boolean evaluation.tf32: fp32 and tf32 keep the
    identity (the rule's params) the boolean gave, so finished evaluations do not rerun;
    the speed switches are no part of it."""
    ev = evaluation_identity(paper_config, "cifar10")["evaluation"]
    assert ev["tf32"] is False and not {"precision", "channels_last", "compile"} & set(ev)
    # exactly what the boolean's config gave (Snakemake compares params by repr: key order counts)
    old = copy.deepcopy(paper_config)
    old["evaluation"] = {("tf32" if k == "precision" else k): (False if k == "precision" else v)
                         for k, v in old["evaluation"].items() if k not in ("channels_last", "compile")}
    before = {"data": jobspec.data(old, "cifar10").identity("test"),
              "evaluation": {k: v for k, v in experiments.evaluation(old, "cifar10").items() if k not in ("monitor", "weights")}}
    assert repr(evaluation_identity(paper_config, "cifar10")) == repr(before)
    for precision, expected in (("tf32", {"tf32": True}), ("pytorch_default", {"precision": "pytorch_default"})):
        cfg = ltd_config.merge(paper_config, {"evaluation": {"precision": precision, "channels_last": True,
                                                             "compile": True}})
        ev = evaluation_identity(cfg, "cifar10")["evaluation"]
        assert {k: ev[k] for k in expected} == expected and not {"channels_last", "compile"} & set(ev)


def test_known_answer_flags_in_every_layout():
    """channels_last and a compiled frozen model (evaluation.channels_last, .compile) find
    exactly the known answer, as the reference layout does; the compiled model's backward
    computes input gradients only. Compiled by AOTAutograd without code generation
    (tests/test_compiled.py says why); APGD-CE alone finds every break on this model."""
    eps = 8 / 255
    x, y, clean, robust = known_answer_data(MeanIntensityNet(), 40, eps, image_size=16)
    rec_graphs = Recorder()
    for channels_last, compile in ((False, False), (True, False), (True, True)):
        model = evaluate.evaluation_model(MeanIntensityNet(), channels_last=channels_last, compile=compile,
                                          backend=rec_graphs.backend)
        assert evaluate.layout(model) == {"channels_last": channels_last, "compiled": compile}
        record, flags = autoattack.run_autoattack(model, x, y, eps=eps, version="custom", attacks=["apgd-ce"],
                                                  batch_size=40, progress=False)
        assert torch.equal(flags["apgd-ce"], robust), (channels_last, compile)
        assert record["clean_accuracy"] == clean.sum().item() / len(y)
    masks = rec_graphs.conv_backward_masks()
    assert masks and all(not weight for _, weight, _ in masks)
