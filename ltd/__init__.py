"""ltd: the library behind the LTD reproduction workflow (data, models, losses, attacks,
AWP, training, evaluation, tables, figures, simulations)."""

__version__ = "0.1.0"
