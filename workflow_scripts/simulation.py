from pathlib import Path

from ltd import jobs, simulation

jobs.log_to(snakemake.log[0])
out = snakemake.output
simulation.render(snakemake.params.settings, table_dir=Path(out.binary_csv).parent,
                  figure_stem=Path(out.png).with_suffix(""))
