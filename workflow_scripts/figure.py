from pathlib import Path

from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.render_figure(snakemake.input[0], snakemake.wildcards.kind, stem=Path(snakemake.output.png).with_suffix(""))
