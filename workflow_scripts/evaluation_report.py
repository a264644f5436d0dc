from pathlib import Path

from ltd.jobs import reporting
from ltd.provenance import log_to

log_to(snakemake.log[0])
reporting.render_evaluation_report(list(snakemake.input), stem=Path(snakemake.output.md).with_suffix(""))
