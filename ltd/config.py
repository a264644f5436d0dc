"""Reading the workflow's config outside Snakemake (tests, notebooks): the same layering
as ``snakemake --configfile``: later files update earlier ones key by key, then the
schema's defaults (ltd.schema) filled as Snakemake's validate fills them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .schema import ROOT, SCHEMA, fill_defaults

DEFAULT = ROOT / "config" / "config.yaml"


def merge(base: dict, update: dict) -> dict:
    """``base`` updated key by key with ``update`` (a new dict): Snakemake's own
    ``update_config``, as ``--configfile`` layers files. Where Snakemake is not installed
    (a bare GPU machine running benchmarks/device_check.py) the same rule by hand: a mapping
    updates a mapping key by key, anything else replaces (tests/test_config.py checks
    both agree)."""
    out = copy.deepcopy(base)
    try:
        from snakemake.utils import update_config
    except ImportError:
        return _update(out, update)
    update_config(out, update)
    return out


def _update(config: Any, update: dict) -> dict:
    config = config if isinstance(config, dict) else {}
    for key, value in update.items():
        config[key] = _update(config.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return config


def load(*overlays: str | Path, validate: bool = True, gpus: int | None = None) -> dict[str, Any]:
    """config.yaml with ``overlays`` layered on; ``validate``: the checks the Snakefile runs
    before any job (ltd.checks: units, the schema, cross-field; ``gpus`` as --resources gpu)."""
    config = yaml.safe_load(DEFAULT.read_text())
    for path in overlays:
        config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
    if validate:
        from snakemake.utils import validate as snakemake_validate

        from . import checks, config_errors

        checks.units(config)
        with config_errors.schema_errors():  # one line naming the key, as the Snakefile prints it
            snakemake_validate(config, str(SCHEMA))
        checks.check(config, gpus=gpus)
    return fill_defaults(config)  # validate filled them already; not validated: filled here
