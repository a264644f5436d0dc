def table_evaluations(table):
    """AutoAttack results behind a table's rows, in order; `auto` rows wait for the
    temperature-search checkpoint."""

    def f(w):
        paths = []
        for entry in ex.table_entries(config, table):
            chosen = None
            if entry.is_auto:
                sel = checkpoints.select_temperature.get(group=ex.search_group(config, entry)).output[0]
                chosen = load_json(sel)["temperature"]
            paths.append(run_path(ex.entry_run(config, entry, chosen), "autoattack.json"))
        return paths

    return f


rule table4:
    """Table IV and its figure: accuracy against the teacher temperature."""
    input:
        evals=table_evaluations("table4"),
        tmax=rules.tmax.output[0],
        paper="config/paper_results.yaml",
    output:
        md=f"{R}/tables/table4.md",
        tex=f"{R}/tables/table4.tex",
        csv=f"{R}/tables/table4.csv",
        png=f"{R}/figures/table4_temperature.png",
        pdf=f"{R}/figures/table4_temperature.pdf",
    log:
        f"{R}/logs/tables/table4.log",
    script:
        "../workflow_scripts/table4.py"
