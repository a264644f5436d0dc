"""rules/data.smk: a data set, fetched or built, with its fixed splits recorded."""

from __future__ import annotations

from pathlib import Path

from .. import data
from ..files import save_json
from ..jobspec import Source
from ..provenance import provenance


def prepare_data(spec: Source, out: str | Path) -> None:
    """Fetch (CIFAR: download once, before any parallel job), build (the demo's ImageFolder
    tree, from ``build_from``), unpack (a cifarfolder's ``archive``) or index a data set's
    source, and record what it holds.
    The splits drawn from it (val_size, train_size, test_size, image size) are each job's
    own settings, recorded in its result; changing them does not fetch anything again."""
    data.prepare(spec.data)
    save_json({"name": spec.data.name, **data.describe_source(spec.data),
               "provenance": provenance(spec.machine.results, settings=spec.identity)}, out)
