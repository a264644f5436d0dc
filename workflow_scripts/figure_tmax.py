from pathlib import Path

from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.render_tmax_figure(snakemake.input[0], stem=Path(snakemake.output.png).with_suffix(""))
