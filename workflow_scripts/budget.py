"""rule budget: print the compute budget of the config (per table and in total) and write
it, with every job's cost, to results/<run>/budget.md."""
from pathlib import Path

from ltd import budget

text = budget.render(snakemake.config)
Path(snakemake.output[0]).write_text(text)
Path(snakemake.log[0]).write_text(text)
print(budget.render(snakemake.config, jobs=False), flush=True)
print(f"every job's cost: {snakemake.output[0]}", flush=True)
