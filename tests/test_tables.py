import csv

import pytest
import yaml

from ltd import experiments as ex
from ltd import table_notes, tables

from .conftest import ROOT

PAPER = yaml.safe_load((ROOT / "config" / "paper_results.yaml").read_text())


def result(run, clean, robust):
    return [{"run": run.name, "clean_accuracy": clean, "robust_accuracy": robust}]


def test_rows_follow_the_paper_with_reported_rows_and_differences(paper_config, tmp_path):
    entries = ex.table_entries(paper_config, "table1")
    results = [result(ex.entry_run(paper_config, e), 0.80 + i / 100, 0.50) for i, e in enumerate(entries)]
    rows = tables.assemble(entries, results, PAPER["table1"]["rows"])
    assert len(rows) == len(PAPER["table1"]["rows"])  # every paper row, ours matched in place
    first, second, fourth = rows[0], rows[1], rows[3]
    assert first["label"] == "AWP+LTD WRN-34-20 T=5" and first["source"] == "this run"
    assert first["clean"] == pytest.approx(80.0) and first["paper_clean"] == 86.28
    assert first["d_clean"] == pytest.approx(80 - 86.28) and first["d_robust"] == pytest.approx(50 - 58.19)
    assert second["source"] == "reported [45]" and second["clean"] is None and second["paper_robust"] == 58.04
    assert fourth["run"] == "cifar10_wrn-34-10_awp-ltd_T5_b6_s0"
    assert rows[-1]["label"] == "TRADES WRN-34-10" and rows[-1]["paper_clean"] == 84.92
    df = tables.frame(rows)
    caption = table_notes.caption("Table I", "cifar10", "CIFAR-10", ["AutoAttack standard"])
    assert "DEMO" not in caption and caption.endswith("AutoAttack standard.")
    tables.render(df, caption, tmp_path / "t1")
    md = (tmp_path / "t1.md").read_text()
    assert md.startswith("Table I") and "| reported [45]" in md and "–" in md
    assert "\\toprule" in (tmp_path / "t1.tex").read_text()
    got = list(csv.DictReader(open(tmp_path / "t1.csv")))
    assert got[0]["Clean (ours)"] == "80.00" and got[0]["Clean (paper)"] == "86.28" and got[1]["Clean (ours)"] == ""


def test_auto_rows_follow_and_unrun_paper_rows_say_so(demo_config):
    entries = ex.table_entries(demo_config, "table4")
    auto = next(e for e in entries if e.is_auto)
    chosen = ex.entry_run(demo_config, auto, chosen_t=3.0)
    keep = [entries[0], auto]  # only TRADES and the auto row ran
    results = [result(ex.entry_run(demo_config, entries[0]), 0.9, 0.4), result(chosen, 0.95, 0.5)]
    tmax = {"tmax": 20.0, "threshold": 0.9, "substitutes": [{"T": 20.0, "clean_accuracy": 0.8}]}
    rows = tables.assemble(keep, results, PAPER["table4"]["rows"], tmax)
    labels = [r["label"] for r in rows]
    assert labels[0] == "TRADES" and labels[-1] == "TRADES+LTD T=auto (chose 3)"
    assert rows[-1]["paper_clean"] is None and rows[-1]["d_robust"] is None
    assert [r["source"] for r in rows[1:10]] == ["not run"] * 9
    sub = rows[10]
    assert sub["label"] == "Substitute T=20 (T_max); paper: T=50" and sub["clean"] == pytest.approx(80.0)
    assert sub["paper_clean"] == 86.63 and sub["robust"] is None
    caption = table_notes.caption("Table IV", "digits", "CIFAR-10", [], demo=True)
    assert "OFFLINE DEMO" in caption and "NOT on CIFAR-10" in caption and "paper columns" in caption
    # a table the paper lacks (table7) has no paper columns to point at
    caption = table_notes.caption("Table 7", "digits", "CIFAR-10", [], demo=True, paper=False)
    assert "NOT on CIFAR-10" in caption and "paper columns" not in caption


def test_several_seeds_give_mean_and_spread_and_tolerance_marks(paper_config):
    config = {**paper_config, "seeds": [0, 1]}
    entries = ex.table_entries(config, "table4")[:2]  # TRADES, TRADES+LTD T=1
    runs = [[ex.entry_run(config, e, seed=s) for s in (0, 1)] for e in entries]
    assert [r.seed for r in runs[0]] == [0, 1] and runs[0][0].name != runs[0][1].name
    results = [[{"run": r.name, "clean_accuracy": c, "robust_accuracy": 0.53} for r, c in zip(rs, (0.84, 0.86))]
               for rs in runs]
    rows = tables.assemble(entries, results, PAPER["table4"]["rows"], tolerance={"clean": 1.0, "autoattack": 1.0})
    trades = rows[0]
    assert trades["clean"] == pytest.approx(85.0) and trades["clean_sd"] == pytest.approx(1.41421, abs=1e-4)
    assert trades["seeds"] == 2 and trades["runs"] == [r.name for r in runs[0]]
    assert not trades["beyond_tolerance"]  # 85.0 vs 84.92, 53.0 vs 53.08
    assert rows[1]["beyond_tolerance"]      # T=1: 53.0 vs the paper's 54.38
    df = tables.frame(rows)
    assert list(df.columns[-3:]) == ["± Clean", "± AA", "Seeds"]
    assert df.loc[1, "Row"] == "TRADES+LTD T=1 †" and df.loc[0, "Row"] == "TRADES"
    single = tables.frame(tables.assemble(entries[:1], [results[0][:1]], PAPER["table4"]["rows"]))
    assert "Seeds" not in single.columns


def test_rows_made_otherwise_are_drawn_beside_the_curve(demo_config, tmp_path, monkeypatch):
    """Table IV's T=5 row with soft labels on the fly is a point of its own, not a second
    y on the curve at T=5 (the curve varies T alone)."""
    from ltd import figures
    from ltd.files import save_json
    from ltd.jobs import reporting as table_jobs

    entries = [e for e in ex.table_entries(demo_config, "table4") if not e.is_auto]
    assert [e.soft_label_mode for e in entries].count("on_the_fly") == 1 and {e.soft_label_mode for e in entries} == {None, "on_the_fly"}
    results = [result(ex.entry_run(demo_config, e), 0.9 - i / 100, 0.5 - i / 100) for i, e in enumerate(entries)]
    rows = tables.assemble(entries, results, PAPER["table4"]["rows"])
    save_json({"table": "table4", "dataset": "digits", "paper_dataset": "CIFAR-10", "tmax": 20.0, "rows": rows},
              tmp_path / "table4.json")
    drawn = {}
    monkeypatch.setattr(figures, "accuracy_against", lambda kind, points, paper, baseline, tmax, title, stem, **kw:
                        drawn.update(points=points, apart=kw["apart"]))
    table_jobs.render_figure(tmp_path / "table4.json", "temperature", tmp_path / "fig")
    xs = [p["x"] for p in drawn["points"]]
    assert len(xs) == len(set(xs)) == len(entries) - 2  # TRADES is the baseline, on the fly apart
    fly = next(r for r in rows if r.get("soft_label_mode") == "on_the_fly")
    assert drawn["apart"] == [{"x": 5.0, "clean": fly["clean"], "robust": fly["robust"],
                               "label": "TRADES+LTD T=5 (on the fly)"}]
    # and the real figure renders with it
    monkeypatch.undo()
    table_jobs.render_figure(tmp_path / "table4.json", "temperature", tmp_path / "fig")
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_table_by_precision_has_a_curve_per_precision_and_its_training_columns(paper_config, tmp_path, monkeypatch):
    """Paper config's table8: the fp16 rows (Table IV's runs) take the paper's numbers and
    the main curve, the bf16 rows a curve of their own; the training columns come from
    each evaluation's `training` (the evaluated epoch of the run's history)."""
    from ltd import figures
    from ltd.files import save_json
    from ltd.jobs import reporting as table_jobs

    entries = ex.table_entries(paper_config, "table8")
    results = [[{**result(ex.entry_run(paper_config, e), 0.9, 0.5 - i / 100)[0],
                 "training": {"precisions": [e.trains_in], "stalled": 0.9 if e.trains_in == "fp16" else 0.0,
                              "adv_accuracy": 0.95, "robust": 0.01}}] for i, e in enumerate(entries)]
    rows = tables.assemble(entries, results, PAPER["table8"]["rows"])
    df = tables.frame(rows, columns=["precision", "stalled", "adv_accuracy"])
    assert list(df.columns[:7]) == ["Row", "Source", "Clean (ours)", "AA (ours)", "Precision", "Stalled % (train)",
                                    "x' acc. % (train)"]
    assert list(df["Precision"]) == ["fp16"] * 5 + ["bf16"] * 5
    assert list(df["Stalled % (train)"]) == [90.0] * 5 + [0.0] * 5
    assert list(df["Clean (paper)"])[:5] == [84.51, 86.20, 84.72, 94.72, 94.39] and df["Clean (paper)"][5:].isna().all()
    save_json({"table": "table8", "dataset": "cifar10", "paper_dataset": "CIFAR-10", "tmax": None, "rows": rows},
              tmp_path / "table8.json")
    drawn = {}
    monkeypatch.setattr(figures, "accuracy_against", lambda kind, points, paper, baseline, tmax, title, stem, **kw:
                        drawn.update(points=points, paper=paper, **kw))
    table_jobs.render_figure(tmp_path / "table8.json", "temperature", tmp_path / "fig")
    assert [p["x"] for p in drawn["points"]] == [1, 5, 10, 15, 20] and len(drawn["paper"]) == 5
    assert [v["label"] for v in drawn["variants"]] == ["bf16"] and len(drawn["variants"][0]["points"]) == 5
    assert drawn["apart"] == [] and drawn["name"] == "this run, fp16"


def test_a_table_of_best_weights_renders_the_last_epoch_beside_them(tmp_path):
    """config/quick.yaml's Table IV: ours (compared with the paper, Δ) are best.pt's, with
    their epoch, and the same runs' last epoch stands beside them in every format; the
    notes say which is which and which images chose the best epoch."""
    from ltd import config as ltd_config
    from ltd.files import load_json, save_json
    from ltd.jobs import reporting as table_jobs

    config = ltd_config.load(ROOT / "config" / "quick.yaml")
    entries = ex.table_entries(config, "table4")
    aa = {"version": "standard", "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"], "eps": 8 / 255, "n_examples": 1000}

    def evaluation(run, weights, epoch, robust):
        return {"run": run.name, "clean_accuracy": 0.80, "robust_accuracy": robust, "precision": "tf32",
                "autoattack": aa, "training": {"weights": weights, "epoch": epoch, "epochs": 30, "precisions": ["fp16"]}}

    best, last = [], []
    for i, e in enumerate(entries):
        run = ex.entry_run(config, e)
        best.append(tmp_path / f"best{i}.json")
        last.append(tmp_path / f"last{i}.json")
        save_json(evaluation(run, "best", 21 + i, 0.50), best[-1])  # robust overfitting: best above last
        save_json(evaluation(run, "last", 30, 0.45), last[-1])
    tmax = tmp_path / "tmax.json"
    save_json({"tmax": 50.0, "threshold": 0.9, "substitutes": [{"T": 20.0, "clean_accuracy": 0.92},
                                                                {"T": 50.0, "clean_accuracy": 0.85}]}, tmax)
    table_jobs.render_table(config, "table4", best, tmax, ROOT / "config" / "paper_results.yaml", tmp_path / "t4",
                            last=last)
    rows = list(csv.DictReader(open(tmp_path / "t4.csv")))
    assert list(rows[0])[:8] == ["Row", "Source", "Clean (ours)", "AA (ours)", "Epoch (ours)", "Clean (last)",
                                 "AA (last)", "Stalled % (train)"]
    trades = rows[0]
    assert trades["Row"].startswith("TRADES") and trades["Epoch (ours)"] == "21/30"
    assert (trades["AA (ours)"], trades["AA (last)"], trades["Clean (last)"]) == ("50.00", "45.00", "80.00")
    assert float(trades["Δ AA"]) == pytest.approx(50.0 - 53.08, abs=0.006)  # the paper is compared with best.pt
    md, tex = (tmp_path / "t4.md").read_text(), (tmp_path / "t4.tex").read_text()
    assert "AA (last) |" in md and "AA (last)" in tex and "Epoch (ours)" in tex
    assert "Ours (compared with the paper's, Δ): each run's epoch with the best monitored PGD accuracy (best.pt, " in md
    assert "their criterion is unstated; this one is our reading" in md
    assert ("chosen by PGD-10 accuracy on the last 1,000 of the 10,000 test images (9,001-10,000), disjoint from the "
            "first 1,000 test images evaluated") in md
    assert "(last): the same runs' last epoch (model.pt), evaluated alike and not compared" in md
    saved = load_json(tmp_path / "t4.json")
    assert saved["weights"] == ["best", "last"] and saved["rows"][0]["robust_last"] == pytest.approx(45.0)
    assert saved["rows"][0]["epoch"] == "21/30" and len(saved["provenance"]["evaluations"]) == 2 * len(entries)
    with pytest.raises(ValueError, match="0 last-epoch evaluations"):  # both are planned for every row
        table_jobs.render_table(config, "table4", best, tmax, ROOT / "config" / "paper_results.yaml",
                                tmp_path / "t4", last=[])


def test_a_table_of_last_weights_renders_from_its_evaluations_alone(tmp_path):
    """`weights: last` (config/study_fp16.yaml's table8): one evaluation per row, no second
    set beside it, no (last) columns; the notes say the last epoch was evaluated."""
    from ltd import config as ltd_config
    from ltd.files import save_json
    from ltd.jobs import reporting as table_jobs

    config = ltd_config.load(ROOT / "config" / "quick.yaml")
    config["tables"]["table4"]["weights"] = "last"
    aa = {"version": "standard", "attacks": ["apgd-ce"], "eps": 8 / 255, "n_examples": 1000}
    last = []
    for i, e in enumerate(ex.table_entries(config, "table4")):
        last.append(tmp_path / f"last{i}.json")
        save_json({"run": ex.entry_run(config, e).name, "clean_accuracy": 0.8, "robust_accuracy": 0.45,
                   "precision": "tf32", "autoattack": aa,
                   "training": {"weights": "last", "epoch": 24, "epochs": 24, "precisions": ["fp16"]}}, last[-1])
    tmax = tmp_path / "tmax.json"
    save_json({"tmax": 50.0, "threshold": 0.9, "substitutes": [{"T": 50.0, "clean_accuracy": 0.85}]}, tmax)
    table_jobs.render_table(config, "table4", last, tmax, ROOT / "config" / "paper_results.yaml", tmp_path / "t4")
    rows = list(csv.DictReader(open(tmp_path / "t4.csv")))
    assert "AA (last)" not in rows[0] and rows[0]["AA (ours)"] == "45.00"
    assert "Evaluated: each run's last epoch (model.pt)" in (tmp_path / "t4.md").read_text()
