"""ltd: the library behind the LTD reproduction workflow (data, models, losses, attacks,
AWP, training, evaluation, tables, figures, simulations)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ltd")  # pyproject.toml's, recorded in every result's provenance
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"
