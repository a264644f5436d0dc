import subprocess
import sys

import pytest
import yaml
from snakemake_interface_common.exceptions import WorkflowError

from ltd import config as ltd_config

from .conftest import ROOT


def test_paper_and_demo_configs_validate(paper_config, demo_config):
    assert {t["dataset"] for t in paper_config["tables"].values()} == {"cifar10", "cifar100", "imagenet"}
    assert paper_config["evaluation"]["autoattack"]["version"] == "standard"
    assert set(demo_config["stand_ins"]["datasets"].values()) <= set(demo_config["datasets"])


@pytest.mark.parametrize("key,value,named", [
    (("datasets", "cifar10", "source"), "imagenet-21k", "['datasets']['cifar10']['source']"),
    (("tables", "table1", "arch"), "vit-b-16", "['tables']['table1']['arch']"),
    (("datasets", "cifar10", "evaluation", "eps"), -0.1, "['datasets']['cifar10']['evaluation']['eps']"),
    (("datasets", "cifar100", "attack", "eps"), -1, "['datasets']['cifar100']['attack']['eps']"),
    (("awp", "gamma"), -5e-3, "['awp']['gamma']"),
])
def test_bad_values_name_the_key(tmp_path, key, value, named):
    bad = {}
    node = bad
    for k in key[:-1]:
        node = node.setdefault(k, {})
    node[key[-1]] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(WorkflowError) as err:
        ltd_config.load(path)
    assert named in str(err.value)


def test_snakemake_stops_before_any_job_on_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"cifar10": {"source": "mnist"}}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "table4", "-n", "--configfile", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "['datasets']['cifar10']['source']" in out and "'mnist' is not one of" in out
    assert "train_teacher" not in out


def test_table_naming_an_undefined_data_set_is_named(tmp_path, paper_config):
    from ltd import experiments as ex

    config = ltd_config.merge(paper_config, {"tables": {"table2": {"dataset": "svhn"}}})
    with pytest.raises(KeyError, match="datasets.svhn"):
        ex.dataset_cfg(config, ex.table_dataset(config, "table2"))
