"""The first real-data numbers: a slice of the quick reproduction (config/quick.yaml) on
real CIFAR-10, for one GPU, in at most 8 minutes, with the workflow's own job functions.

    python3 benchmarks/quick_gpu.py --out results/quick_gpu --export $OUT/quick_gpu   # on the GPU machine
    python3 benchmarks/quick_gpu.py --dry --out /tmp/q                                 # CPU, a handful of images (CI)

The question it answers: does the paper's collapse at T >= 15 (high clean accuracy, no
robustness) appear when TRADES+LTD trains in fp16, and not in bf16? It runs, one after
the other, exactly what the workflow's jobs run (ltd.jobs: prepare_data, train_run,
teacher_logits, write_soft_labels, evaluate_run; ltd.train.fit and the steps inside them),
under config/quick.yaml + config/cifar10_jpeg.yaml with a shorter schedule:

1. ``data``: CIFAR-10's JPEG archive (``--archive``; default ../shared/data/ beside the
   checkout, else shared/data/ inside it, else data/ inside it) unpacked into ``--data``
   by prepare_data.
2. ``teacher``: the natural PreAct ResNet-18 teacher (``--teacher-epochs``, fp16 with a
   loss scaler: the configs' ``train.precision``, as the paper config's teachers train), on
   the students' ``--train-size`` training images (soft labels belong to those images).
3. ``students``: TRADES+LTD at T = 15 and T = 5, each in fp16 and in bf16 (T = 15
   first: the question's pair), ``--epochs`` epochs (/10 after 2/3 and 5/6 of them, the
   paper's proportions) on the ``--train-size`` images (all 50,000 by default), with
   per epoch: clean accuracy on the test set, PGD-10 accuracy on its last 1,000 images
   (the workflow's monitor), the TRADES KL term (``train_robust``) and the fraction of
   stalled attacks (``train_stalled``). --dry: the
   T = 15 pair only (T = 5 runs the same code).
4. ``autoattack``: each student's evaluation (evaluate_run: clean, PGD-20, AutoAttack
   standard in TF32 on the first ``--aa-n`` test images, the masking diagnostics).

Each part writes ``<out>/<part>.json`` when it ends (the runs' own outputs lie under
``<out>/runs/``, as the workflow lays them out); a part whose JSON says "ok" is skipped on
a rerun unless ``--force`` (a --dry result never counts for a real run). A part that
would not finish within ``--time-limit`` seconds of the start is skipped ("time"), so a
slow machine still returns the parts it finished. ``<out>/summary.json`` and
``summary.md`` (every part's record; written after each part) come last, and ``--export
DIR`` copies those two there (a GPU machine returns few files). Needs torch,
torchvision, numpy, pillow, pandas, tqdm, pyyaml, tabulate (all on the GPU machines'
image) and pyautoattack (a wheel: docs/quick_gpu.md); not Snakemake.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ltd import budget, jobspec, runtime  # noqa: E402
from ltd import config as ltd_config  # noqa: E402
from ltd import experiments as ex  # noqa: E402
from ltd.files import load_json, save_json  # noqa: E402
from ltd.jobs import data as data_jobs  # noqa: E402
from ltd.jobs import evaluate as evaluate_jobs  # noqa: E402
from ltd.jobs import temperature as temperature_jobs  # noqa: E402
from ltd.jobs import train as train_jobs  # noqa: E402
from ltd.provenance import git_commit  # noqa: E402

DATASET = "cifar10"
ARCHIVE = "data/cifar10-jpeg.tar.gz"  # under shared/, beside the checkout (../shared) or inside it
# (T, precision): T = 15 first (the paper's collapse; fp16 against bf16), then T = 5.
STUDENTS = ((15.0, "fp16"), (15.0, "bf16"), (5.0, "fp16"), (5.0, "bf16"))
HISTORY_KEYS = ("epoch", "lr", "precision", "train_loss", "train_accuracy", "train_robust", "train_stalled",
                "train_adv_accuracy", "test_accuracy", "test_pgd_accuracy", "seconds")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/quick_gpu", help="outputs: part JSONs, summary, the runs")
    p.add_argument("--export", default=None, help="copy summary.json and summary.md here after each part")
    p.add_argument("--dry", action="store_true", help="on the CPU, a tiny model on a handful of images (CI)")
    p.add_argument("--force", action="store_true", help="rerun parts whose JSON says ok")
    p.add_argument("--archive", default=None, help=f"CIFAR-10 JPEG archive (default: shared/{ARCHIVE} found "
                                                   "beside or inside the checkout)")
    p.add_argument("--data", default="data/cifar10-jpeg", help="where the archive is unpacked (kept if done)")
    p.add_argument("--time-limit", type=float, default=450.0, help="seconds for the whole slice (default 7.5 min)")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default 4; dry 1)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="default 10; dry 1")
    p.add_argument("--train-size", type=int, default=None, help="training images of teacher and students "
                                                                "(default all 50,000; dry 64)")
    p.add_argument("--aa-n", type=int, default=None, help="AutoAttack's test images (default 256; dry 8)")
    return p.parse_args(argv)


def find_archive(arg: str | None) -> Path:
    # ../shared beside the checkout (CI), shared/ inside it, or a copy in the git-ignored data/
    candidates = ([Path(arg)] if arg else
                  [ROOT.parent / "shared" / ARCHIVE, ROOT / "shared" / ARCHIVE, ROOT / "data" / Path(ARCHIVE).name])
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"CIFAR-10's JPEG archive is not at {', '.join(map(str, candidates))}; "
                            "give --archive PATH")


def milestones(epochs: int) -> list[int]:
    """The paper's /10 after 80 and 100 of 120 epochs, for a shorter schedule."""
    return sorted({max(1, round(epochs * 80 / 120)), max(1, round(epochs * 100 / 120))})


def slice_config(args: argparse.Namespace, archive: Path) -> dict:
    """config.yaml + quick.yaml + cifar10_jpeg.yaml (as the workflow layers them), with
    the slice's shorter schedule; --dry: a tiny model on a handful of images."""
    cfg = ltd_config.load(ROOT / "config" / "quick.yaml", ROOT / "config" / "cifar10_jpeg.yaml", validate=False)
    epochs = args.epochs or (1 if args.dry else 4)
    t_epochs = args.teacher_epochs or (1 if args.dry else 10)
    ds = {"path": str(Path(args.data).resolve()), "archive": str(archive),
          "evaluation": {"n_examples": args.aa_n or (8 if args.dry else 256)}}
    if args.train_size or args.dry:
        ds["train_size"] = args.train_size or 64
    over = {
        "run": "quick_gpu", "device": "cpu" if args.dry else "cuda",
        "data_dir": str(Path(args.data).resolve().parent),
        "student": {"epochs": epochs, "lr_milestones": milestones(epochs)},
        # teacher and students train on the same --train-size images (soft labels are per image)
        "teacher": {"epochs": t_epochs, "lr_milestones": milestones(t_epochs)},
        "datasets": {DATASET: ds},
    }
    if args.dry:
        # the monitor under the data set: quick.yaml's CIFAR-10 monitor is its own (replacing the default)
        ds.update({"test_size": 64, "attack": {"trades": {"steps": 2}}})
        ds["evaluation"]["monitor"] = {"n_examples": 16, "pgd_steps": 2}
        over.update({"threads": 2, "stand_ins": {"archs": {"wrn-34-10": "wrn-10-1"}},
                     "train": {"batch_size": 32, "eval_batch_size": 64},
                     "evaluation": {"batch_size": 16, "pgd_steps": 2,
                                    "diagnostics": {"square_queries": 20, "square_n_examples": 8},
                                    "autoattack": {"version": "custom", "attacks": ["apgd-ce"]}}})
        ds["temperature_search"] = {"arch": "wrn-10-1"}
        over["teacher"]["lr_milestones"] = over["student"]["lr_milestones"] = []
    cfg = ltd_config.merge(cfg, over)
    ds_cfg = cfg["datasets"][DATASET]
    if ds_cfg["source"] != "cifarfolder":
        raise ValueError("config/cifar10_jpeg.yaml no longer makes CIFAR-10 a cifarfolder source")
    return cfg


def student_config(cfg: dict, precision: str) -> dict:
    """The students' precision through their schedule (`student.precision`), as
    ltd.jobs.train.train_run passes it to ltd.train.fit (the CPU trains in fp32)."""
    out = copy.deepcopy(cfg)
    out["student"] = {**out["student"], "precision": precision}
    return out


class Slice:
    """The slice's state: config, device, output folder, clock; runs parts."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.dry, self.start = args, args.dry, time.time()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.archive = find_archive(args.archive)
        self.config = slice_config(args, self.archive)
        self.device = runtime.setup(self.config["device"], self.config["threads"])
        self.runs = self.out / "runs"
        self.teacher = ex.teacher(self.config, DATASET, ex.search(self.config, DATASET)["arch"])
        self.records: dict[str, dict] = {}  # part -> its record, as written to <part>.json

    def left(self) -> float:
        return self.args.time_limit - (time.time() - self.start)

    def part(self, name: str, fn, *, needs: float = 0.0) -> dict | None:
        """Run ``fn`` as part ``name`` unless its JSON says ok (a dry result never counts
        for a real run) or fewer than ``needs`` seconds are left; write its JSON and the
        summary so far."""
        path = self.out / f"{name}.json"
        old = load_json(path) if path.exists() and not self.args.force else None
        if old and old["status"] == "ok" and old["dry"] == self.dry:
            print(f"[{name}] ok (from {path})", flush=True)
            record = old
        else:
            record = {"part": name, "dry": self.dry, "device": self.device.type}
            if self.left() < needs:
                record.update(status="time", reason=f"{self.left():.0f} s left of --time-limit, about {needs:.0f} "
                                                    "needed")
            else:
                t0 = time.time()
                try:
                    result = fn()
                    record.update(status="skipped" if isinstance(result, str) else "ok",
                                  **({"reason": result} if isinstance(result, str) else {"result": result}))
                except Exception as e:  # the slice goes on: the other parts may still run
                    record.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
                record["seconds"] = time.time() - t0
            save_json(record, path)
            print(f"[{name}] {record['status']}" + (f": {record.get('reason') or record.get('error')}"
                                                    if record["status"] != "ok" else f" ({record['seconds']:.0f} s)"),
                  flush=True)
        self.records[name] = record
        self.write_summary()
        return record.get("result")

    def seconds_of(self, prefix: str) -> float:
        """The longest part of a kind so far: what the next one of that kind may need."""
        return max((r.get("seconds", 0.0) for k, r in self.records.items() if k.startswith(prefix)), default=0.0)

    def write_summary(self) -> dict:
        """summary.json (every part's record) and summary.md; both copied to --export (two
        files: a GPU machine returns few)."""
        summary = {"environment": self.environment(), "seconds": time.time() - self.start,
                   "status": {k: r["status"] for k, r in self.records.items()}, "parts": self.records,
                   "projection": self.projection()}
        save_json(summary, self.out / "summary.json")
        (self.out / "summary.md").write_text(render(summary))
        if self.args.export:
            dest = Path(self.args.export)
            dest.mkdir(parents=True, exist_ok=True)
            for f in ("summary.json", "summary.md"):
                shutil.copy2(self.out / f, dest / f)
        return summary

    # ---- the parts -----------------------------------------------------------------------

    def data(self) -> dict:
        out = self.out / "data.json"
        data_jobs.prepare_data(jobspec.source(self.config, DATASET), out)  # unpacks the archive (sha256 checked) if needed
        rec = load_json(out)
        return {k: rec[k] for k in ("source", "path", "classes", "lossy", "train", "test", "archive")}

    def train_teacher(self) -> dict:
        run = self.teacher
        m = train_jobs.train_run(jobspec.training(self.config, run), out_dir=self.runs / run.dir, device=self.device)
        return {"run": run.name, "epochs": m["epochs"], "clean_accuracy": m["clean_accuracy"],
                "precision": m["precision"], "history": m["history"],
                "seconds": m["train_seconds_this_attempt"]}

    def soft_label_file(self, t: float) -> Path:
        logits = self.runs / "soft_labels" / f"{self.teacher.name}_logits.pt"
        if not logits.exists():
            logits.parent.mkdir(parents=True, exist_ok=True)
            temperature_jobs.teacher_logits(jobspec.logits(self.config, self.teacher),
                                            self.runs / self.teacher.dir / "model.pt", logits, self.device)
        q = logits.with_name(f"{self.teacher.name}_T{ex.fmt_num(t)}.pt")
        temperature_jobs.write_soft_labels(logits, t, q)
        return q

    def student_run(self, t: float):
        return ex.student(self.config, DATASET, self.teacher.arch, "trades-ltd", t, self.config["beta"])

    def student_dir(self, t: float, precision: str) -> Path:
        return self.runs / f"{self.student_run(t).dir}_{precision}"

    def train_student(self, t: float, precision: str) -> dict:
        cfg, run = student_config(self.config, precision), self.student_run(t)
        m = train_jobs.train_run(jobspec.training(cfg, run), out_dir=self.student_dir(t, precision),
                                 soft_label_file=self.soft_label_file(t), device=self.device)
        history = [{k: h.get(k) for k in HISTORY_KEYS} for h in m["history"]]
        return {"run": run.name, "temperature": t, "precision_asked": precision, "precision": m["precision"],
                "train_images": m["provenance"]["splits"]["train"]["n"], "epochs": m["epochs"],
                "clean_accuracy": m["clean_accuracy"], "history": history,
                "stalled_logged": any(h.get("train_stalled") is not None for h in history),
                "seconds": m["train_seconds_this_attempt"], "seconds_per_epoch": sum(h["seconds"] for h in history)
                / max(len(history), 1)}

    def autoattack(self, t: float, precision: str) -> dict | str:
        folder = self.student_dir(t, precision)
        if not (folder / "model.pt").exists():
            student = self.records.get(f"student_T{ex.fmt_num(t)}_{precision}", {})
            return f"no trained model (its training: {student.get('status')})"
        ev = evaluate_jobs.evaluate_run(jobspec.student_evaluation(self.config, self.student_run(t)), folder / "model.pt",
                                        folder / "autoattack.json", state_path=folder / "autoattack_state.json",
                                        device=self.device)
        return {"clean_accuracy": ev["clean_accuracy"], "pgd_accuracy": ev["pgd"]["accuracy"],
                "robust_accuracy": ev["robust_accuracy"], "n_examples": ev["n_examples"],
                "precision": ev["precision"], "attacks": ev["autoattack"]["attacks"],
                "flags": ev["diagnostics"].get("flags"), "seconds": ev["provenance"].get("wall_seconds")}

    # ---- what the GPU says about quick.yaml ----------------------------------------------

    def projection(self) -> dict | None:
        """quick.yaml's student on this GPU, from the seconds per image measured here,
        beside `snakemake budget`'s estimate of the same job."""
        timed = [r["result"] for k, r in self.records.items()
                 if k.startswith("student_") and r["status"] == "ok" and r["result"]["precision_asked"] == "bf16"]
        if not timed:
            return None
        quick = ltd_config.load(ROOT / "config" / "quick.yaml", validate=False)
        per_image = sum(r["seconds_per_epoch"] / r["train_images"] for r in timed) / len(timed)
        epochs = ex.schedule(quick, "students", DATASET)["epochs"]
        job = budget.Job("student", next(ex.table_students(quick, "table4")))
        return {"epochs": epochs, "student_hours_measured": per_image * budget.train_images(quick, DATASET) * epochs / 3600,
                "student_hours_budget": budget.job_cost(quick, job).gpu_hours, "seconds_per_training_image": per_image}

    def run(self) -> int:
        self.part("data", self.data)
        self.part("teacher", self.train_teacher)
        pairs = STUDENTS[:2] if self.dry else STUDENTS  # --dry: T = 15 (T = 5 runs the same code)
        for t, p in pairs:
            self.part(f"student_T{ex.fmt_num(t)}_{p}", lambda t=t, p=p: self.train_student(t, p),
                      needs=self.seconds_of("student_"))
        for t, p in pairs:
            self.part(f"autoattack_T{ex.fmt_num(t)}_{p}", lambda t=t, p=p: self.autoattack(t, p),
                      needs=self.seconds_of("autoattack_"))
        print(render(self.write_summary()), flush=True)
        return 0 if all(r["status"] in ("ok", "skipped") for r in self.records.values()) else 1

    def environment(self) -> dict:
        env = {"dry": self.dry, "device": self.device.type, "torch": torch.__version__, **git_commit(),
               "date": time.strftime("%Y-%m-%d"), "archive": str(self.archive),
               "config": {"student": self.config["student"], "teacher": self.config["teacher"],
                          "dataset": {k: v for k, v in self.config["datasets"][DATASET].items()
                                      if k in ("source", "train_size", "test_size", "evaluation", "attack")},
                          "arch": self.teacher.arch}}
        if self.device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(self.device)
        return env


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def render(summary: dict) -> str:
    """Per-epoch curves of each student, then the evaluations, as Markdown."""
    env, parts = summary["environment"], summary["parts"]
    lines = [f"# Quick reproduction slice on {env.get('gpu', env['device'])} "
             f"({'DRY RUN on the CPU: these numbers measure nothing' if env['dry'] else 'real CIFAR-10 JPEGs'})", "",
             f"commit {env.get('git_commit')}, {env['date']}, torch {env['torch']}, {env['config']['arch']}, "
             f"{summary['seconds']:.0f} s in this invocation; parts: "
             + ", ".join(f"{k} {r['status']}" for k, r in parts.items()), "",
             "| student | epoch | precision | train loss | KL (robust term) | stalled | clean (test) | PGD-10 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rec in parts.items():
        if not name.startswith("student_"):
            continue
        if rec["status"] != "ok":
            lines.append(f"| {name} | – | {rec['status']}: {rec.get('reason') or rec.get('error')} | | | | | |")
            continue
        for h in rec["result"]["history"]:
            kl = "–" if h.get("train_robust") is None else f"{h['train_robust']:.4f}"
            stalled = "not logged" if h.get("train_stalled") is None else _pct(h["train_stalled"])
            lines.append(f"| {name} | {h['epoch']} | {h['precision']} | {h['train_loss']:.4f} | {kl} | {stalled} | "
                         f"{_pct(h.get('test_accuracy'))} | {_pct(h.get('test_pgd_accuracy'))} |")
    lines += ["", "| student | clean | PGD-20 | AutoAttack | images | precision | masking flags |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rec in parts.items():
        if not name.startswith("autoattack_"):
            continue
        if rec["status"] != "ok":
            lines.append(f"| {name} | {rec['status']}: {rec.get('reason') or rec.get('error')} | | | | | |")
            continue
        r = rec["result"]
        lines.append(f"| {name} | {_pct(r['clean_accuracy'])} | {_pct(r['pgd_accuracy'])} | "
                     f"{_pct(r['robust_accuracy'])} | {r['n_examples']} | {r['precision']} | "
                     f"{', '.join(r['flags'] or []) or 'none'} |")
    p = summary.get("projection")
    if p:
        lines += ["", f"quick.yaml's student ({p['epochs']} epochs on 50,000 images) at the rate measured here: "
                      f"{p['student_hours_measured']:.3f} h; snakemake budget: {p['student_hours_budget']:.3f} h"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return Slice(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
