from pathlib import Path

from ltd.jobs import reporting
from ltd.provenance import log_to

log_to(snakemake.log[0])
reporting.render_table(snakemake.config, snakemake.wildcards.table, list(snakemake.input.evals),
                       snakemake.input.get("tmax"), snakemake.input.paper, stem=Path(snakemake.output.md).with_suffix(""),
                       last=list(snakemake.input.get("last") or []))
