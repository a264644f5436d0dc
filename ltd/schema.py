"""The config's schema (config/schema.yaml) and its defaults.

Defaults are said once, as ``default:`` in config/schema.yaml, and code reads each key
plainly. Snakemake's ``validate`` fills them (the Snakefile; ``load`` here), at every
``properties`` it visits: top-level sections, nested ones, through ``$ref``/``allOf``,
and inside ``additionalProperties`` objects (``datasets.<name>``) alike. Where a key
also appears in override layers (a data set's ``train``/``evaluation``, ``teacher``,
``student``...), its default sits at the top-level section only, so that no layer is
filled with a value that would override the section below it. Two exceptions:

* A data set's section has no ``default:``s: its data identity (ltd.jobspec
  ``Data.identity``) copies the image settings the section holds, so a filled
  ``val_size: 0`` would change the identity, and rerun every finished run, of each
  config that left it out. Its defaults are the schema's ``dataset_defaults``, which no
  section refers to (no validator fills them); ``ltd.experiments.dataset_cfg`` lays them
  under the section as it is read. An identity so lists what the user wrote.
* Without Snakemake (a bare GPU machine: benchmarks/device_check.py) ``fill_defaults``
  fills the same ``default:``s by hand (tests/test_config.py checks both agree).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "config" / "schema.yaml"


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _resolve(node: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    if not ref.startswith("#/definitions/"):
        raise ValueError(f"config/schema.yaml: $ref {ref!r}: only #/definitions/... refs are followed")
    return _resolve(_schema()["definitions"][ref.rsplit("/", 1)[1]])


def _fill(node: dict, instance: Any) -> None:
    """Snakemake's set_default, hand-written for the keywords our schema fills through
    (``properties``, ``$ref``, ``allOf``, ``additionalProperties``); config/schema.yaml
    puts no ``default:`` under ``oneOf``/``anyOf``/``if``, where Snakemake fills the
    defaults of every branch it tries."""
    node = _resolve(node)
    for sub in node.get("allOf", []):
        _fill(sub, instance)
    if not isinstance(instance, dict):
        return
    props = node.get("properties", {})
    for key, sub in props.items():
        if "default" in sub:
            instance.setdefault(key, copy.deepcopy(sub["default"]))
        if key in instance:
            _fill(sub, instance[key])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in instance.keys() - props.keys():
            _fill(extra, instance[key])


def fill_defaults(config: dict) -> dict:
    """``config`` with the schema's defaults filled in place, as Snakemake's validate fills
    them (for a machine without Snakemake); returns it."""
    _fill(_schema(), config)
    return config


@functools.cache
def _dataset_defaults() -> dict[str, Any]:
    return {k: v["default"] for k, v in _schema()["definitions"]["dataset_defaults"]["properties"].items()}


def dataset_defaults() -> dict[str, Any]:
    """A data set section's defaults (the schema's ``dataset_defaults``; see above)."""
    return copy.deepcopy(_dataset_defaults())


def train_defaults() -> dict[str, Any]:
    """The schema's defaults of the top-level ``train`` (speed switches off, the
    stalled-attack alarm): what a schedule written by hand (tests, benchmarks) leaves out.
    A workflow job's schedule has them already (Snakemake's validate filled ``train``)."""
    out: dict[str, Any] = {}
    _fill(_schema()["properties"]["train"], out)
    return out
