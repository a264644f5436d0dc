"""The run a Snakemake command line selects (config `run:`), for profiles/slurm: the
profile's Slurm log folder is results/<run>/logs/slurm, with the run's other results.

A profile is read before the config (Snakemake parses its command line, profiles
included, before it loads any config file), so it cannot see `run:` itself; the profile
is a YTE template (``__use_yte__``) that calls ``slurm_logdir`` here, which layers the
files the command line names as Snakemake does: config/config.yaml, then every
``--configfile`` in order, then ``--config run=...``. The Snakefile checks that the
result is the run it loaded (rules/resources.smk ``check_slurm_logdir``). No torch here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

DEFAULT = Path("config/config.yaml")  # the Snakefile's `configfile:`, relative to the working directory


def run_name(argv: list[str] | None = None) -> str | None:
    """The `run:` of the config a Snakemake command line (default: this process's) loads;
    None where config/config.yaml is not in the working directory."""
    from snakemake.cli import get_argument_parser, parse_config

    # Snakemake's own parser, without profiles (this runs while a profile is read)
    args, _ = get_argument_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if not DEFAULT.is_file():
        return None
    run = (yaml.safe_load(DEFAULT.read_text()) or {}).get("run")
    for path in args.configfile or []:
        if Path(path).is_file():
            run = (yaml.safe_load(Path(path).read_text()) or {}).get("run", run)
    return str(parse_config(args.config or []).get("run", run))


def slurm_logdir(argv: list[str] | None = None) -> str | None:
    """results/<run>/logs/slurm (None: the plugin's default, .snakemake/slurm_logs)."""
    run = run_name(argv)
    return None if run is None else f"results/{run}/logs/slurm"
