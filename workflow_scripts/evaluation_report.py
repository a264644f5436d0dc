from pathlib import Path

from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.render_evaluation_report(list(snakemake.input), stem=Path(snakemake.output.md).with_suffix(""))
