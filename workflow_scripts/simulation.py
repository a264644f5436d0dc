from pathlib import Path

from ltd import simulation
from ltd.provenance import log_to

log_to(snakemake.log[0])
out = snakemake.output
simulation.render(snakemake.params.settings, table_dir=Path(out.binary_csv).parent,
                  figure_stem=Path(out.png).with_suffix(""))
