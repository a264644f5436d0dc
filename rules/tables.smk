def selected_evaluation(w):
    """The AutoAttack result of the student the search chose (known after the checkpoint)."""
    sel = checkpoints.select_temperature.get(group=w.group).output[0]
    group = ex.search_candidates(config, w.group)[0]
    return run_path(ex.with_temperature(group, load_json(sel)["temperature"]), "autoattack.json")


rule resolve_auto:
    """An `auto` row's result, under a path known before the search ran: only this
    rule waits for the checkpoint, so a dry run still lists every other job."""
    input:
        evaluation=selected_evaluation,
        selection=f"{R}/temperature/{{group}}/selection.json",
    output:
        f"{R}/temperature/{{group}}/autoattack.json",
    log:
        f"{R}/logs/temperature/{{group}}.resolve.log",
    script:
        "../workflow_scripts/resolve_auto.py"


def table_evaluations(table):
    """AutoAttack results behind a table's rows, in row order."""
    paths = []
    for entry in ex.table_entries(config, table):
        if entry.is_auto:
            paths.append(f"{R}/temperature/{ex.search_group(config, entry)}/autoattack.json")
        else:
            paths.append(run_path(ex.entry_run(config, entry), "autoattack.json"))
    return paths


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
