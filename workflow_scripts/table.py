from pathlib import Path

from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.render_table(snakemake.config, snakemake.wildcards.table, list(snakemake.input.evals),
                  snakemake.input.get("tmax"), snakemake.input.paper, stem=Path(snakemake.output.md).with_suffix(""))
