import subprocess
import sys

import pytest
import yaml
from snakemake_interface_common.exceptions import WorkflowError

from ltd import config as ltd_config

from .conftest import ROOT


def test_paper_and_demo_configs_validate(paper_config, demo_config):
    assert paper_config["dataset"]["name"] == "cifar10" and paper_config["arch"] == "wrn-34-10"
    assert paper_config["evaluation"]["autoattack"]["version"] == "standard"
    assert demo_config["dataset"]["name"] == "digits"


@pytest.mark.parametrize("key,value,named", [
    (("dataset", "name"), "imagenet-21k", "['dataset']['name']"),
    (("arch",), "vit-b-16", "['arch']"),
    (("evaluation", "eps"), -0.1, "['evaluation']['eps']"),
    (("trades", "eps"), -1, "['trades']['eps']"),
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
    path.write_text(yaml.safe_dump({"dataset": {"name": "mnist"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "table4", "-n", "--configfile", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "['dataset']['name']" in out and "'mnist' is not one of" in out
    assert "train_teacher" not in out
