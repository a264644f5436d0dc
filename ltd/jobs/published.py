"""rules/published.smk: published checkpoints (e.g. the LTD authors' RobustBench models)
evaluated by the students' code path, and our students exported in RobustBench's layout."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import data, robustbench
from ..files import write_text
from ..jobspec import Model, Published
from .evaluation import evaluate_model


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def comparison_markdown(e: dict, result: dict) -> str:
    """Our numbers on the published checkpoint beside the reported ones (in %)."""
    rep = e.get("reported") or {}
    rows = [("Clean", rep.get("clean"), 100 * result["clean_accuracy"]),
            ("AutoAttack", rep.get("autoattack"), 100 * result["robust_accuracy"])]
    aa, d = result["autoattack"], result["diagnostics"]
    lines = [f"# {e['name']}: published checkpoint, evaluated here", "",
             f"{e.get('path') or 'RobustBench: ' + e.get('robustbench_name', e['name'])}; {result['dataset']}, {e['arch']}. "
             f"AutoAttack {aa['version']} ({', '.join(aa['attacks'])}), Linf eps={aa['eps']:.5f}, "
             f"{aa['n_examples']} test images, seed {aa['seed']}, batch {aa['batch_size']}, {aa['precision']}, "
             f"pyautoattack {aa['pyautoattack']}.", ""]
    if aa["n_examples"] < 10000 and result["dataset"].startswith("cifar"):
        lines += [f"Only the first {aa['n_examples']} test images: reported numbers use all 10,000.", ""]
    lines += ["| Metric | Reported (%) | Ours (%) | Δ |", "| --- | ---: | ---: | ---: |"]
    for label, r, o in rows:
        lines.append(f"| {label} | {_fmt(r)} | {_fmt(o)} | {_fmt(None if r is None else o - r)} |")
    for a in aa["attacks"]:
        lines.append(f"| after {a.upper()} | – | {_fmt(100 * aa['robust_accuracy_after'][a])} | – |")
    lines += ["", f"Gradient-masking diagnostics: {d['summary']}"
              + (f" (flags: {', '.join(d['flags'])})" if d["flags"] else "") + ".", ""]
    return "\n".join(lines)


def evaluate_published(spec: Published, path: str | Path, out: str | Path, markdown: str | Path, *,
                       state_path: str | Path, device: torch.device) -> dict:
    """Load a `published:` entry's checkpoint ``path`` (the rule's input, resolved once by
    ltd.checks.published_file) strictly (our architecture, ``weights_only``) and evaluate
    it as a student is evaluated; the comparison with its reported numbers goes to ``markdown``."""
    e, ds = spec.entry, spec.evaluation.data
    model, info = robustbench.load_checkpoint(path, e["arch"], data.num_classes(ds))
    result = evaluate_model(spec.evaluation, model, out, state_path=state_path, device=device, model_path=Path(path),
                            extra={"published": {**info.as_dict(), "reported": e.get("reported")}})
    write_text(comparison_markdown(e, result), markdown)
    return result


def export(model: Model, model_pt: str | Path, out: str | Path) -> Path:
    """A student's model.pt as RobustBench loads a model-zoo file, checked to load back
    strictly into its architecture."""
    return robustbench.export(model_pt, out, arch=model.arch,
                              num_classes=data.num_classes(model.data))
