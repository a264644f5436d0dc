import copy
from pathlib import Path

import pytest
import torch

from ltd import config as ltd_config

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def paper_config():
    return ltd_config.load()


@pytest.fixture(scope="session")
def _demo_config():
    return ltd_config.load(ROOT / "config" / "demo.yaml")


@pytest.fixture
def demo_config(_demo_config):
    return copy.deepcopy(_demo_config)
