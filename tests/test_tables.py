import csv

import pytest

from ltd import tables


def test_table_puts_ours_beside_paper_with_difference(tmp_path):
    rows = [{"label": "TRADES", "clean": 0.80, "robust": 0.40},
            {"label": "TRADES+LTD T=5", "clean": 0.9, "robust": 0.5},
            {"label": "TRADES+LTD T=auto (chose 5)", "clean": 0.9, "robust": 0.5, "paper_label": None},
            {"label": "Substitute T=50", "clean": 0.7, "robust": None}]
    paper = {"TRADES": [84.92, 53.08], "TRADES+LTD T=5": [86.20, 55.09], "Substitute T=50": [86.63, None]}
    df = tables.build(rows, paper)
    assert df.loc[0, "Δ Clean"] == pytest.approx(80 - 84.92)
    assert df.loc[1, "Δ AA"] == pytest.approx(50 - 55.09)
    assert df.loc[2, ["Clean (paper)", "AA (paper)", "Δ AA"]].isna().all()
    assert df.loc[3, "Clean (paper)"] == 86.63 and df.loc[3, ["AA (ours)", "AA (paper)", "Δ AA"]].isna().all()
    caption = tables.caption_for("Table IV", "digits", "cifar10", ["AutoAttack standard"])
    assert "NOT on cifar10" in caption and caption.endswith("AutoAttack standard.")
    tables.render(df, caption, tmp_path / "t4")
    md = (tmp_path / "t4.md").read_text()
    assert md.startswith("Table IV") and "| TRADES " in md and "84.92" in md and "–" in md
    tex = (tmp_path / "t4.tex").read_text()
    assert "\\toprule" in tex and "\\caption{Table IV" in tex
    got = list(csv.DictReader(open(tmp_path / "t4.csv")))
    assert got[1]["Clean (ours)"] == "90.00" and got[1]["Clean (paper)"] == "86.20"
    assert caption_for_same_dataset_has_no_warning()


def caption_for_same_dataset_has_no_warning():
    return "NOT" not in tables.caption_for("Table IV", "cifar10", "cifar10", [])
