"""Reading the workflow's config outside Snakemake (tests, notebooks): the same layering
as ``snakemake --configfile``: later files update earlier ones key by key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "config" / "config.yaml"
SCHEMA = ROOT / "config" / "schema.yaml"


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(*overlays: str | Path, validate: bool = True) -> dict[str, Any]:
    config = yaml.safe_load(DEFAULT.read_text())
    for path in overlays:
        config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
    if validate:
        from snakemake.utils import validate as snakemake_validate

        snakemake_validate(config, str(SCHEMA))
    return config
