from pathlib import Path

from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.render_curves(snakemake.wildcards.table, list(snakemake.input), stem=Path(snakemake.output.png).with_suffix(""))
