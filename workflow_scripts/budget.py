"""rule budget_estimate: write the compute budget of the config (per table and in total,
and every job's cost) to results/<run>/budget.md; rule budget prints it."""
from pathlib import Path

from ltd import budget_report

text = budget_report.render(snakemake.config)
Path(snakemake.output[0]).write_text(text)
Path(snakemake.log[0]).write_text(text)
