from pathlib import Path

from ltd.jobs import reporting
from ltd.provenance import log_to

log_to(snakemake.log[0])
reporting.render_figure(snakemake.input[0], snakemake.wildcards.kind, stem=Path(snakemake.output.png).with_suffix(""))
