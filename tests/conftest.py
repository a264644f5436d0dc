import copy
import shutil
from pathlib import Path

import pytest
import torch

from ltd import config as ltd_config

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(2)

WORKFLOW = ("Snakefile", "rules", "workflow_scripts", "config", "envs", "report")


def copy_workflow(dest: Path, *extra: str, profiles: bool = False) -> Path:
    """The workflow's files copied into ``dest`` (a run there writes results/ there, not in
    the checkout), with ``extra`` paths of the checkout at the same relative place.
    ``profiles``: profiles/ too, so that Snakemake picks up profiles/default as in a clone."""
    for name in (*WORKFLOW, *(("profiles",) if profiles else ()), *extra):
        dst = dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, dst)
    return dest


@pytest.fixture(scope="session")
def paper_config():
    return ltd_config.load()


@pytest.fixture(scope="session")
def _demo_config():
    return ltd_config.load(ROOT / "config" / "demo.yaml")


@pytest.fixture
def demo_config(_demo_config):
    return copy.deepcopy(_demo_config)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run last, and are skipped with the reason when torch sees no
    CUDA device. Last: once a test starts CUDA in this process it stays started, and the
    GPU-slot tests need a process where it has not (CUDA reads CUDA_VISIBLE_DEVICES once)."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    items[:] = [item for item in items if not item.get_closest_marker("cuda")] + cuda_items
    if not torch.cuda.is_available():
        why = (f"needs CUDA: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device; "
               "run `pytest -m cuda` on a GPU machine")
        for item in cuda_items:
            item.add_marker(pytest.mark.skip(reason=why))


# CIFAR-10 as JPEG files (../shared/data, beside the clone; README there): CI has it.
CIFAR10_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_JPEG_SHA256 = "ba71b9da469a0642b511b82cb7e817f919872cb21e6b3681ebca2fc4bdd50bf3"


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory):
    """The real CIFAR-10 archive unpacked once (by ltd.image_files.unpack_archive) into a
    temporary folder: a cifarfolder data set section for it."""
    if not CIFAR10_JPEG.is_file():
        pytest.skip(f"{CIFAR10_JPEG} is not here (CI has it beside the clone)")
    from ltd import image_files

    cfg = {"source": "cifarfolder", "path": str(tmp_path_factory.mktemp("cifar10") / "cifar10-jpeg"),
           "archive": str(CIFAR10_JPEG), "archive_sha256": CIFAR10_JPEG_SHA256, "crop_padding": 4}
    image_files.unpack_archive(cfg)
    return cfg
