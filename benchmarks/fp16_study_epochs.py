"""The fp16 study's per-epoch records (config/study_fp16.yaml, `make study-fp16`) as one
Markdown table, from each student's own history.jsonl: the training attack's stalled
fraction and mean moved-pixel fraction, training accuracy on x', clean test accuracy and
the PGD-10 monitor's accuracy (on test images that AutoAttack does not evaluate).

    .venv/bin/python benchmarks/fp16_study_epochs.py results/study_fp16 > docs/fp16_study/epochs.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

COLUMNS = {"train_stalled": "stalled", "train_moved": "moved", "train_adv_accuracy": "x' acc.",
           "test_accuracy": "clean", "test_pgd_accuracy": "PGD-10"}


def epochs(results: Path) -> pd.DataFrame:
    rows = []
    for history in sorted(results.glob("students/*/history.jsonl")):
        for line in history.read_text().splitlines():
            r = json.loads(line)
            label = "fp16-EMULATED" if r["precision"] == "fp16-emulated" else r["precision"]
            rows.append({"run": history.parent.name, "precision": label, "epoch": r["epoch"],
                         **{name: r.get(key) for key, name in COLUMNS.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the study's results folder (results/study_fp16)")
    frame = epochs(parser.parse_args().results)
    pct = list(COLUMNS.values())
    frame[pct] = (100 * frame[pct]).round(1)
    print(frame.to_markdown(index=False))


if __name__ == "__main__":
    main()
