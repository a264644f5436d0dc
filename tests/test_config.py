import subprocess
import sys

import pytest
import yaml

from ltd import config as ltd_config
from ltd.scope import requested

from .conftest import ROOT, copy_workflow


def test_paper_and_demo_configs_validate(paper_config, demo_config):
    assert {t["dataset"] for t in paper_config["tables"].values()} == {"cifar10", "cifar100", "imagenet"}
    assert paper_config["evaluation"]["autoattack"]["version"] == "standard"
    assert set(demo_config["stand_ins"]["datasets"].values()) <= set(demo_config["datasets"])


@pytest.mark.parametrize("key,value,named", [
    (("datasets", "cifar10", "source"), "imagenet-21k", "datasets.cifar10.source = 'imagenet-21k': not one of"),
    (("tables", "table1", "arch"), "vit-b-16", "tables.table1.arch = 'vit-b-16'"),
    (("datasets", "cifar10", "evaluation", "eps"), -0.1, "datasets.cifar10.evaluation.eps = -0.1: must be >= 0"),
    (("datasets", "cifar100", "attack", "eps"), -1, "datasets.cifar100.attack.eps"),
    (("awp", "gamma"), -5e-3, "awp.gamma = -0.005"),
    (("tabels",), {}, "tabels: not a config key; did you mean tables"),
    (("datasets", "cifar10", "atack"), {}, "datasets.cifar10.atack: not a config key; did you mean attack?"),
    (("train", "epochs"), "120", "train.epochs = '120': a string where a whole number is expected; write it "
                                 "without quotes: 120"),
    (("evaluation", "autoattack", "version"), "standrd", "did you mean 'standard'?"),
])
def test_bad_values_name_the_key(tmp_path, key, value, named):
    """The schema's error in one line (ltd.config_errors.schema_problem): the key as the config
    writes it, the value, what is expected or the closest valid names."""
    from ltd import checks

    bad = {}
    node = bad
    for k in key[:-1]:
        node = node.setdefault(k, {})
    node[key[-1]] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(checks.ConfigError) as err:
        ltd_config.load(path)
    assert named in str(err.value) and len(str(err.value).splitlines()) == 2, str(err.value)


def test_snakemake_stops_before_any_job_on_bad_config(tmp_path):
    """A misspelt key or a quoted number: a few lines naming the key, not Snakemake's dump
    of the whole schema after the message."""
    for text, named in (({"datasets": {"cifar10": {"source": "mnist"}}},
                         "datasets.cifar10.source = 'mnist': not one of"),
                        ({"tabels": {}}, "tabels: not a config key; did you mean tables"),
                        ({"train": {"epochs": "120"}}, "train.epochs = '120': a string where a whole number")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(text))
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "table4", "-n", "--configfile", str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        out = proc.stdout + proc.stderr
        assert named in out and len(out.splitlines()) < 15, out[-3000:]
        assert "train_teacher" not in out and "Failed validating" not in out


def test_table_naming_an_undefined_data_set_is_named(tmp_path, paper_config):
    from ltd import experiments as ex

    config = ltd_config.merge(paper_config, {"tables": {"table2": {"dataset": "svhn"}}})
    with pytest.raises(KeyError, match="datasets.svhn"):
        ex.dataset_cfg(config, ex.table_dataset(config, "table2"))


# ---- checks the schema cannot express (ltd/checks.py): each stops the plan, naming the key ----

def _set(config, dotted, value):
    node = config
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


BAD = [  # (base config, edits, named key, a fragment of the fix)
    ("demo", {"datasets.digits.val_size": 0}, "tables.table4.entries[1]", "val_size: 5000"),
    ("demo", {"datasets.digits.temperature_search": None}, "tables.table4.entries[1]",
     "needs datasets.digits.temperature_search"),
    ("demo", {"datasets.digits.attack.default.eps": 8}, "datasets.digits.attack.default.eps", "0.0313725"),
    ("demo", {"datasets.digits.evaluation.eps": 8}, "datasets.digits.evaluation.eps", "for 8/255 write"),
    ("demo", {"datasets.digits.evaluation.pgd_step_size": 2}, "datasets.digits.evaluation.pgd_step_size",
     "0.00784313"),
    ("paper", {"datasets.cifar10.temperature_search.threshold": 90}, "datasets.cifar10.temperature_search.threshold",
     "write 0.9"),
    ("paper", {"evaluation.diagnostics.pgd_gap": 10}, "evaluation.diagnostics.pgd_gap", "write 0.1"),
    ("paper", {"gpus_per_node": 2}, "datasets.imagenet.processes", "processes <= 2"),
    ("paper", {"tables.table4.entries": [{"method": "trades_ltd", "temperature": 5}]},
     "tables.table4.entries[0].method", "trades-ltd"),
    ("paper", {"tables.table4.entries": [{"method": "trades", "temperature": 5}]}, "tables.table4.entries[0]",
     "its LTD variant, 'trades-ltd', does"),
    ("paper", {"tables.table9": {"caption": "mine", "dataset": "svhn", "entries": [{"method": "trades"}]}},
     "tables.table9.dataset", "defined: cifar10, cifar100, imagenet"),
    ("demo", {"stand_ins.datasets.cifar100": "digits100"}, "stand_ins.datasets.cifar100", "no such data set"),
    ("demo", {"stand_ins.archs.wrn-34-10": "wrn-12-2"}, "stand_ins.archs.wrn-34-10", "neither 6n+4"),
    ("demo", {"awp.warmup_epochs": 50}, "awp.warmup_epochs", "write at most 6"),
    ("demo", {"evaluation.autoattack.attacks": []}, "evaluation.autoattack", "list some"),
    ("demo", {"datasets.digits.val_size": 1400}, "datasets.digits.val_size", "leaves no training images"),
    ("demo", {"evaluation.autoattack.version": "standard"}, "evaluation.autoattack", "write version: custom"),
    # a training attack that cannot move trains on (nearly) clean images
    ("demo", {"datasets.digits.attack.default.step_size": 0}, "datasets.digits.attack.default.step_size = 0: the "
     "training attack of awp-ltd, tables.table1.entries[0] never moves", "step_size > 0"),
    ("demo", {"datasets.digits.attack.default.eps": 0}, "datasets.digits.attack.default.eps = 0", "allows no "
     "perturbation"),
    ("paper", {"datasets.cifar10.attack.trades.steps": 0}, "datasets.cifar10.attack.trades.steps = 0", "steps >= 1"),
    # a batch larger than the training set: one step per epoch
    ("demo", {"train.batch_size": 5000}, "train.batch_size = 5000 is larger than the 1200 training images of "
     "datasets.digits", "batch_size <= 1200"),
    ("demo", {"student.batch_size": 700, "datasets.digits12.train_size": 600},
     "student.batch_size = 700 is larger than the 600 training images of datasets.digits12", "batch_size <= 600"),
]


@pytest.mark.parametrize("base,edits,key,fix", BAD, ids=[next(iter(b[1])) for b in BAD])
def test_bad_config_is_stopped_with_the_key_and_the_fix(paper_config, demo_config, base, edits, key, fix):
    import copy

    from ltd import checks

    config = copy.deepcopy(paper_config if base == "paper" else demo_config)
    for k, v in edits.items():
        _set(config, k, v)
    with pytest.raises(checks.ConfigError) as err:
        checks.units(config)
        checks.check(config)
    assert key in str(err.value) and fix in str(err.value), str(err.value)


def test_missing_attack_family_is_named(paper_config):
    import copy

    from ltd import checks

    config = copy.deepcopy(paper_config)
    del config["datasets"]["cifar10"]["attack"]["awp"]
    with pytest.raises(checks.ConfigError, match=r"datasets.cifar10.attack: no `awp` \(the training attack of "
                                                 r"awp-ltd, tables.table1.entries\[0\]\)"):
        checks.check(config)


def test_paper_and_demo_configs_pass_the_checks(paper_config, demo_config):
    from ltd import checks

    for c in (paper_config, demo_config):
        checks.units(c)
        checks.check(c)
    checks.check(paper_config, gpus=4)  # ImageNet's 4 processes fit 4 GPUs


@pytest.mark.parametrize("edits,key", [
    ({"datasets": {"digits": {"val_size": 0}}}, "val_size is 0"),
    ({"datasets": {"digits": {"attack": {"default": {"eps": 8}}}}}, "datasets.digits.attack.default.eps = 8"),
    ({"datasets": {"digits": {"temperature_search": {"threshold": 90}}}},
     "datasets.digits.temperature_search.threshold = 90"),
])
def test_snakemake_stops_before_any_job(tmp_path, edits, key):
    """The same checks in a real plan and in a real run: nothing starts, nothing is written."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"run": "checks", **edits}))
    for dry in (["-n"], []):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "table4", *dry, "--cores", "1", "--configfile",
                               "config/demo.yaml", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and key in out, out[-2000:]
        assert "rule prepare_data" not in out and "rule train_" not in out
    assert not (ROOT / "results" / "checks").exists()


# ---- the checks judge what the requested targets run (scope.requested) ----

def _check(config, targets, gpus=None):
    from ltd import checks

    checks.check(config, gpus=gpus, scope=requested(config, targets))


@pytest.mark.parametrize("targets,scoped", [
    (["table4"], {"tables": {"table4"}, "train": {"cifar10"}}),
    (["table3", "table1"], {"tables": {"table1", "table3"}, "train": {"cifar10", "imagenet"}}),
    ([], {"tables": {f"table{i}" for i in range(1, 9)}, "train": {"cifar10", "cifar100", "imagenet"}}),
    (["budget"], {"tables": {f"table{i}" for i in range(1, 9)}, "train": set(), "data": set(), "files": False}),
    (["simulation"], {"tables": set(), "train": set()}),
    (["results/paper/tables/table2.md"], {"tables": {"table2"}, "train": {"cifar100"}}),
    (["results/paper/figures/table5_beta.png"], {"tables": {"table5"}}),
    (["results/paper/students/imagenet_resnet-50_trades-ltd_T1_fly_b6_s0/model.pt"],
     {"tables": {"table3"}, "train": {"imagenet"}}),
    (["results/paper/data/imagenet.json"], {"tables": {"table3"}, "train": set(), "data": {"imagenet"}}),
    (["results/paper/temperature/cifar100/tmax.json"], {"tables": {"table2", "table6"}, "train": {"cifar100"}}),
    (["results/paper/elsewhere.txt"], {"tables": {f"table{i}" for i in range(1, 9)}}),  # unplaced: everything
])
def test_targets_are_placed_in_the_config(paper_config, targets, scoped):

    scope = requested(paper_config, targets)
    for field, want in scoped.items():
        assert getattr(scope, field) == want, (field, scope)


def test_gpu_check_follows_the_targets(paper_config):
    """ImageNet's 4 processes stop a plan with 1 GPU only when ImageNet is trained."""
    from ltd import checks

    _check(paper_config, ["table4", "table2"], gpus=1)
    _check(paper_config, ["budget"], gpus=1)   # prices ImageNet's jobs, runs none
    with pytest.raises(checks.ConfigError, match=r"datasets.imagenet.processes = 4: .* --resources gpu = 1"):
        _check(paper_config, ["table3"], gpus=1)
    with pytest.raises(checks.ConfigError, match="datasets.imagenet.processes"):
        _check(paper_config, [], gpus=2)  # all


def test_awp_warmup_check_follows_the_targets(demo_config):
    """The demo's Table IV trains no AWP student; Table I does."""
    from ltd import checks

    demo_config["awp"]["warmup_epochs"] = 50
    _check(demo_config, ["table4"])
    with pytest.raises(checks.ConfigError, match="awp.warmup_epochs = 50"):
        _check(demo_config, ["table1"])


@pytest.mark.parametrize("edits,named", [
    ({"train.lr_milestones": [80, 130]}, "train.lr_milestones = [80, 130]: 130 lie(s) beyond the 120 epochs (train.epochs)"),
    ({"student.lr_milestones": [80, 121]}, "student.lr_milestones = [80, 121]: 121"),
    ({"datasets.cifar10.train": {"epochs": 60}}, "train.lr_milestones = [80, 100]: 80, 100 lie(s) beyond the 60 "
                                                  "epochs (datasets.cifar10.train.epochs) of the students on cifar10"),
])
def test_lr_milestones_beyond_the_last_epoch_are_named(paper_config, edits, named):
    import copy
    import dataclasses

    from ltd import checks

    config = copy.deepcopy(paper_config)
    for k, v in edits.items():
        _set(config, k, v)
    with pytest.raises(checks.ConfigError) as err:
        _check(config, ["table4"])
    assert named in str(err.value), str(err.value)
    # ImageNet's own schedule: [50, 90] of 90 epochs, the last one without effect, as the paper writes it
    checks.check(paper_config, scope=dataclasses.replace(requested(paper_config, ["table3"]), files=False))


def test_missing_data_and_checkpoints_are_named_for_the_targets_that_read_them(paper_config, tmp_path, monkeypatch):
    import copy

    from ltd import checks

    def missing(targets):
        scope = requested(config, targets)
        checks.check(config, scope=scope)  # the config itself holds together
        return "\n".join(checks.missing_data(config, scope))

    monkeypatch.chdir(tmp_path)  # relative paths are the working directory's
    config = copy.deepcopy(paper_config)
    config["published"] = [{"name": "Chen2021LTD_WRN34_20", "dataset": "cifar10", "arch": "wrn-34-20"},
                           {"name": "mine", "path": "ckpt/mine.pt", "dataset": "cifar10", "arch": "wrn-34-10"}]
    assert missing(["table4", "budget"]) == ""  # neither reads ImageNet nor a published file
    assert missing(["budget"]) == missing(["results/paper/budget.md"]) == ""  # prices ImageNet's jobs, runs none
    assert ("table3 needs datasets.imagenet.path = 'data/imagenet': no such folder (ImageFolder layout: "
            "train/<class>/*, val/<class>/*") in missing(["table3"])
    (tmp_path / "data" / "imagenet" / "train").mkdir(parents=True)
    assert "no val/ folder in it" in missing(["results/paper/data/imagenet.json"])
    (tmp_path / "data" / "imagenet" / "val").mkdir()
    assert missing(["table3"]) == ""
    msg = missing(["published"])
    assert ("target published needs published[0] (in robustbench_model_dir): checkpoint 'Chen2021LTD_WRN34_20' is "
            "not at models/cifar10/Linf/Chen2021LTD_WRN34_20.pt" in msg
            and "load_model(model_name='Chen2021LTD_WRN34_20'" in msg), msg
    assert "published[1].path: checkpoint 'mine' is not at ckpt/mine.pt" in msg, msg
    msg = missing(["results/paper/published/mine/comparison.md"])  # one entry, its own target
    assert "published[1]" in msg and "published[0]" not in msg


def test_an_evaluation_larger_than_the_test_set_is_named(demo_config):
    """Clamped to the test split by the job: said once before any job (a warning)."""
    from ltd import checks

    assert checks.warnings(demo_config, requested(demo_config, ["table4"])) == []
    _set(demo_config, "datasets.digits.evaluation.n_examples", 5000)
    assert checks.warnings(demo_config, requested(demo_config, ["table4"])) == [
        "datasets.digits.evaluation.n_examples = 5000 (for datasets.digits) is more than its 397 test images: its "
        "evaluations use all 397; write n_examples: 397 to say so"]
    assert checks.warnings(demo_config, requested(demo_config, ["simulation"])) == []


def test_a_plan_needs_only_what_its_targets_run(tmp_path):
    """Snakemake itself: Table IV plans on one GPU although ImageNet's training takes 4;
    Table III does not, and says why."""
    copy_workflow(tmp_path)

    def plan(target):
        return subprocess.run([sys.executable, "-m", "snakemake", target, "-n", "--cores", "all", "--resources",
                               "gpu=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    ok, stopped = plan("table4"), plan("table3")
    assert ok.returncode == 0, ok.stderr[-3000:]
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and "datasets.imagenet.processes = 4" in out, out[-3000:]


def _sparse(config):
    """A config that leaves out every key with a schema default (and writes a data set's
    override layers), as a user's own file may."""
    import copy

    c = copy.deepcopy(config)
    for k in ("jobs_per_gpu", "gpus_per_node", "seeds", "slurm"):
        c.pop(k, None)
    for k in ("channels_last", "compile", "compile_attack", "stalled_attacks"):
        c["train"].pop(k, None)
    for k in ("channels_last", "compile", "weights"):
        c["evaluation"].pop(k, None)
    for ev in (c["evaluation"], *(d.get("evaluation") or {} for d in c["datasets"].values())):
        for k in ("split", "images", "overlap_ok"):  # the monitor's, in any layer that writes one
            (ev.get("monitor") or {}).pop(k, None)
    c["budget"].pop("jobs_per_gpu_throughput", None)
    c["student"] = {"stalled_attacks": {"stop": 0.9}}
    return c


@pytest.mark.parametrize("overlays", [[], ["config/demo.yaml"], ["config/quick.yaml"]])
def test_defaults_filled_alike_with_and_without_snakemake(overlays):
    """ltd.schema.fill_defaults (a machine without Snakemake) fills what Snakemake's
    validate fills: the same config, shipped or sparse; override layers keep only the
    keys they wrote (the speed switches' defaults would override `train`'s)."""
    import copy

    from snakemake.utils import validate

    raw = yaml.safe_load(ltd_config.DEFAULT.read_text())
    for o in overlays:
        raw = ltd_config.merge(raw, yaml.safe_load((ROOT / o).read_text()))
    for config in (raw, _sparse(raw)):
        by_snakemake, by_hand = copy.deepcopy(config), copy.deepcopy(config)
        validate(by_snakemake, str(ltd_config.SCHEMA))
        assert ltd_config.fill_defaults(by_hand) == by_snakemake
    sparse = ltd_config.fill_defaults(_sparse(raw))
    assert sparse["slurm"] == {"max_runtime": None, "signal_seconds": 0, "budget_safety": 2.0, "budget_startup": 15,
                               "gpu_request": "gpus", "gpu_type": None, "gpu_type_as_constraint": False, "extra": None}
    assert sparse["train"]["stalled_attacks"] == {"warn": 0.5, "stop": None} and sparse["jobs_per_gpu"] == 1
    assert sparse["student"] == {"stalled_attacks": {"warn": 0.5, "stop": 0.9}}  # no speed switch filled in
    # a monitor, the default one or a data set's (which replaces it whole), gets the schema's
    for monitor in (sparse["evaluation"]["monitor"], sparse["datasets"]["cifar10"]["evaluation"]["monitor"]):
        assert {k: monitor[k] for k in ("split", "images", "overlap_ok")} == {"split": "test", "images": "last",
                                                                               "overlap_ok": False}


def test_data_set_defaults_are_laid_under_not_written_in(paper_config):
    """A data set's defaults come from ex.dataset_cfg; its section (what data identities
    copy) stays as written, so a default never enters a finished run's identity."""
    from ltd import experiments as ex
    from ltd import jobspec

    config = ltd_config.merge(paper_config, {"datasets": {"extra": {"source": "cifar10", "attack": {}, "evaluation": {}}}})
    assert "val_size" not in config["datasets"]["extra"]
    cfg = ex.dataset_cfg(config, "extra")
    assert (cfg["val_size"], cfg["crop_padding"], cfg["processes"]) == (0, 0, 1)
    assert "val_size" not in jobspec.data(config, "extra").identity("train")
    assert jobspec.data(config, "cifar10").identity("train")["val_size"] == 0  # written: kept


def test_config_layers_alike_without_snakemake(monkeypatch):
    """ltd.config.merge without Snakemake (a bare GPU machine) layers as Snakemake does."""
    import yaml

    from ltd import config as ltd_config

    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    overlays = [yaml.safe_load((ROOT / "config" / f).read_text()) for f in ("quick.yaml", "cifar10_jpeg.yaml")]
    overlays.append({"tables": {"table4": None}, "datasets": {"cifar10": {"evaluation": None}}, "train": 3})
    with_snakemake = base
    for o in overlays:
        with_snakemake = ltd_config.merge(with_snakemake, o)
    monkeypatch.setitem(sys.modules, "snakemake.utils", None)
    bare = base
    for o in overlays:
        bare = ltd_config.merge(bare, o)
    assert bare == with_snakemake and bare["train"] == 3 and bare["datasets"]["cifar10"]["source"] == "cifarfolder"
