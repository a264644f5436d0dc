from pathlib import Path

from ltd import jobs

jobs.log_to(snakemake.log[0])
out = snakemake.output
jobs.render_table4(snakemake.config, list(snakemake.input.evals), snakemake.input.tmax, snakemake.input.paper,
                   stem=Path(out.md).with_suffix(""), figure_stem=Path(out.png).with_suffix(""))
