"""One check of a GPU machine in at most ``--budget-s`` (480) seconds, on the library's own
loop (``ltd.train.fit``), that returns what it measured even when it is cut off.

    python3 benchmarks/device_check.py --out $OUT            # on the GPU machine (make gpu-check)
    python3 benchmarks/device_check.py --dry --out /tmp/dc   # every stage on the CPU, tiny shapes (CI)
    python3 benchmarks/device_check.py --plan                # each stage's expected seconds on an H100

Stages, in priority order (benchmarks/device_stages.py; docs/performance.md, "Checking a
GPU machine", says what each measures and how to read it):

1. ``correctness``: fp16 and bf16 steps of TRADES, TRADES+LTD, AWP+LTD (WRN-34-10): every
   weight gets a finite non-zero gradient; the loss against fp32; the GradScaler's scale
   after 50 fp16 steps.
2. ``emulation``: ltd.fp16_emulation against real CUDA fp16: zero-gradient and stalled
   fractions at initialisation and after fp16 steps on T = 20 soft labels.
3. ``throughput``: the TRADES+LTD step (PreAct ResNet-18, WRN-34-10; bf16, fp16; eager,
   then the compiled attack): img/s, MFU, calibration rows; the host's cost per launch.
4. ``cifar_slice``: real CIFAR-10 (the JPEG archive): a short natural teacher, then T = 5
   and T = 20 students in fp16 and bf16, the stalled fraction every 50 steps.
5. ``autoattack``: WRN-34-10 forward + input gradient and APGD-CE in fp32 and TF32.

Each stage runs under its own cap (``--cap NAME=SECONDS`` overrides it) and within what is
left of the budget; one that cannot have ``MIN_SECONDS`` is skipped, one over its cap is
stopped (SIGALRM) and recorded as ``timeout`` with what it had measured. After every stage
(and every measurement inside one) ``<out>/<n>_<stage>.json`` is written atomically and
``<out>/summary.md`` and ``<out>/calibration.yaml`` (the measured rows in
config/calibration.yaml's format) are rewritten: a killed run leaves every finished stage.
Needs torch, numpy, pillow, pyyaml, tqdm and pyautoattack (carried: docs/performance.md);
not Snakemake. Exit code 0 when every stage ran ok, else 1.
"""

from __future__ import annotations

import time

START = time.time()  # the budget counts from here: importing torch is part of the wall time

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import itertools  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import device_plan  # noqa: E402
from benchmarks import device_stages as st  # noqa: E402
from ltd import config as ltd_config  # noqa: E402
from ltd import runtime, throughput  # noqa: E402
from ltd.files import atomic_write, save_json, write_text  # noqa: E402
from ltd.provenance import git_commit  # noqa: E402
from ltd.train import Preempted  # noqa: E402

MIN_SECONDS = 5.0  # a stage with less than this left of the budget is skipped
DRY_CAP = 120.0  # each stage's cap under --dry (the GPU caps come from the plan)
TRAVEL_LIMIT_MIB = 60.0  # the limit on what travels to the GPU machine


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    run: Callable[..., None]

    @property
    def file(self) -> str:
        return f"{self.number}_{self.name}.json"


STAGES = (Stage(1, "correctness", st.correctness), Stage(2, "emulation", st.emulation),
          Stage(3, "throughput", st.throughput_stage), Stage(4, "cifar_slice", st.cifar_slice),
          Stage(5, "autoattack", st.autoattack_stage))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/device_check", help="stage JSONs, summary.md, calibration.yaml")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall seconds for all stages (default 480)")
    p.add_argument("--dry", action="store_true", help="on the CPU, tiny shapes, the same code (CI)")
    p.add_argument("--plan", action="store_true", help="print each stage's expected seconds on an H100 and exit")
    p.add_argument("--stages", nargs="+", default=None, help="run only these stages (names or numbers)")
    p.add_argument("--cap", action="append", default=[], metavar="STAGE=SECONDS", help="override a stage's cap")
    p.add_argument("--archive", default=None, help="CIFAR-10's JPEG archive (default: .carry/, data/ or shared/)")
    p.add_argument("--work", default=None, help="scratch folder: checkpoints, the unpacked archive (default: temp)")
    p.add_argument("--write-calibration", default=None, metavar="PATH",
                   help="merge the measured rows (and launch cost) into this calibration file, e.g. "
                        "config/calibration.yaml")
    p.add_argument("--from-calibration", default=None, metavar="FILE",
                   help="with --write-calibration: merge FILE (a device run's calibration.yaml) instead of running")
    return p.parse_args(argv)


class StageTimeout(Exception):
    pass


class Stopped(Exception):
    """SIGTERM (e.g. `timeout`): the stage in progress is recorded, no later one starts."""


SIGTERMED = {"set": False}  # as alarm's flag: the exception may come back wrapped


def stop_on_sigterm(signum, frame):
    SIGTERMED["set"] = True
    raise Stopped("stopped by SIGTERM")


@contextlib.contextmanager
def alarm(seconds: float, what: str):
    """StageTimeout raised in the main thread after ``seconds`` (between two Python
    bytecodes: a CUDA kernel already queued finishes on the GPU)."""
    rang = {"reason": None}  # set when it rang: code that wraps the exception (dynamo does) still timed out

    def ring(signum, frame):
        rang["reason"] = f"over {what} of {seconds:.3g} s"
        raise StageTimeout(rang["reason"])

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield rang
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Context:
    """What every stage reads: shapes, device, config, folders; ``save()`` writes the
    running stage's record as it stands."""

    def __init__(self, args: argparse.Namespace, out: Path, work: Path):
        self.sizes = st.DRY if args.dry else st.GPU
        self.device = torch.device("cpu" if args.dry else "cuda")
        if args.dry:  # tiny ops: two threads on a busy 2-core machine wait on each other (ltd.flops.one_thread)
            torch.set_num_threads(1)
        self.device_name = runtime.describe(self.device)["device_name"] + (" (dry)" if args.dry else "")
        self.date = datetime.date.today().isoformat()
        self.config = ltd_config.load(validate=False)
        self.out, self.work, self.runs = out, work, itertools.count()
        self.archive = find_archive(args.archive)
        self.records: dict[str, dict] = {}
        self.current: tuple[Stage, dict] | None = None

    def save(self) -> None:
        stage, record = self.current
        record["seconds"] = time.time() - record["started"]
        save_json(record, self.out / stage.file)


def find_archive(arg: str | None) -> Path | None:
    for c in ([Path(arg)] if arg else st.archive_default(ROOT)):
        if c.is_file():
            return c.resolve()
    if arg:
        raise FileNotFoundError(f"--archive {arg}: no such file")
    return None


def environment(args) -> dict:
    d = runtime.describe(torch.device("cpu" if args.dry else "cuda"))
    if args.dry:
        d["device_name"] += " (dry)"
    return {**d, "dry": args.dry, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": sys.version.split()[0], **git_commit(), "budget_s": args.budget_s}


def run_stage(ctx: Context, stage: Stage, cap: float, left: float, env: dict) -> dict:
    """One stage under min(cap, ``left``), its record written whatever happens."""
    record = {"stage": stage.name, "number": stage.number, "status": "running", "cap_s": cap, "started": time.time(),
              "environment": env, "results": {}}
    ctx.current, ctx.records[stage.name] = (stage, record), record
    seconds = min(cap, left)
    if left < MIN_SECONDS:
        record.update(status="skipped", reason=f"{left:.0f} s left of the budget after the later stages' planned "
                                               f"seconds (needs {MIN_SECONDS:.0f})")
    else:
        print(f"== stage {stage.number} {stage.name}: up to {seconds:.0f} s", flush=True)
        rang = {"reason": None}
        try:
            with alarm(seconds, "its cap" if cap <= left else "what the budget had left for it") as rang:
                stage.run(ctx, record["results"])
            record["status"] = "ok"
        except Exception as e:  # noqa: BLE001 (sorted by failure())
            record.update(failure(e, rang["reason"]))
            if record["status"] == "error":
                print(record["traceback"], file=sys.stderr, flush=True)
    ctx.save()
    print(f"   {stage.name}: {record['status']} in {record['seconds']:.1f} s", flush=True)
    for line in record["results"].get("summary", []):
        print(f"   {line}", flush=True)
    return record


def failure(e: BaseException, timed_out: str | None) -> dict:
    """How a stage ended that raised ``e``: stopped (SIGTERM; Preempted is SIGTERM inside
    ltd.train.fit), timeout (the alarm rang, whatever exception it came back as), or error
    (recorded; the next stage runs: one failure must not hide the rest)."""
    if SIGTERMED["set"] or isinstance(e, (Stopped, Preempted)):
        return {"status": "stopped", "reason": f"stopped by SIGTERM ({type(e).__name__})"}
    if timed_out:
        return {"status": "timeout", "reason": timed_out + ("" if isinstance(e, StageTimeout) else
                                                             f" (raised as {type(e).__name__})")}
    return {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def summary_markdown(records: dict[str, dict], env: dict, travel: dict | None) -> str:
    dry = " (DRY: CPU, tiny shapes, numbers measure nothing)" if env["dry"] else ""
    commit = f"{env['git_commit']}{' (dirty)' if env['git_dirty'] else ''}"
    facts = (f"{env['date']}, torch {env['torch']}, Python {env['python']}, commit {commit}, "
             f"budget {env['budget_s']:.0f} s" + (f"; travel {travel['total_mib']:.1f} MiB" if travel else ""))
    lines = [f"# Device check, {env['device_name']}{dry}", "", facts, "",
             "| stage | status | seconds | cap | result |", "| --- | --- | ---: | ---: | --- |"]
    for r in records.values():
        what = "; ".join(r["results"].get("summary", [])) or r.get("reason", "")
        lines.append(f"| {r['number']} {r['stage']} | {r['status']} | {r.get('seconds', 0):.1f} | {r['cap_s']:.0f} | "
                     f"{what} |")
    return "\n".join(lines) + "\n"


def measured_calibration(records: dict[str, dict]) -> dict:
    """The rows stages 3 and 5 measured and the launch cost, as a calibration file."""
    # dates as YAML dates, as config/calibration.yaml writes them (the JSONs hold strings)
    rows = [{**row, "date": datetime.date.fromisoformat(row["date"])}
            for r in records.values() for row in r["results"].get("rows", [])]
    launch = records.get("throughput", {}).get("results", {}).get("launch")
    cal = {"rows": rows}
    if launch:
        env = records["throughput"]["environment"]
        cal = {"launch_seconds": {"value": float(f"{launch['seconds_per_launch']:.3g}"), "device": env["device_name"],
                                  "date": datetime.date.fromisoformat(env["date"][:10]),
                                  "source": f"benchmarks/device_check.py stage 3: {launch['arch']} TRADES+LTD step at "
                                            f"batch {launch['batch']} / {launch['launches']} counted launches"},
               **cal}
    return cal


def write_calibration(measured: dict, path: Path) -> None:
    """Merge ``measured`` into the calibration file at ``path``: a measured row replaces
    the rows of the same (arch, image_size, precision, step), the measured launch cost
    the old one; the file's leading comment is kept; the result is checked as the budget
    reads it (ltd.throughput.calibration) before it replaces the file."""
    dry = [r for r in [*measured["rows"], measured.get("launch_seconds") or {}] if str(r.get("device")).endswith("(dry)")]
    if dry and path.resolve() == (ROOT / "config" / "calibration.yaml").resolve():
        raise SystemExit(f"{path}: the measured rows are a --dry run's (device {dry[0]['device']!r}): they measure "
                         "nothing and are never merged into the repository's calibration")
    text = path.read_text()
    head = text[: text.find("launch_seconds:")] if "launch_seconds:" in text else ""
    old = yaml.safe_load(text) or {}

    def key(r):
        return r["arch"], r["image_size"], r["precision"], r["step"]

    new_keys = {key(r) for r in measured["rows"]}
    merged = {"launch_seconds": measured.get("launch_seconds", old.get("launch_seconds")),
              "rows": [r for r in old.get("rows") or [] if key(r) not in new_keys] + measured["rows"]}
    body = yaml.safe_dump(merged, sort_keys=False, width=120, default_flow_style=None)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "calibration.yaml"
        trial.write_text(head + body)
        throughput.calibration({"budget": {"calibration": str(trial)}})  # ValueError naming a bad row
    write_text(head + body, path)


def write_outputs(ctx: Context, env: dict, travel: dict | None) -> None:
    write_text(summary_markdown(ctx.records, env, travel), ctx.out / "summary.md")
    cal = measured_calibration(ctx.records)
    if cal["rows"] or "launch_seconds" in cal:
        header = (f"# Measured by benchmarks/device_check.py on {env['device_name']}, {env['date']}: rows in "
                  "config/calibration.yaml's format (--write-calibration merges them there)\n")
        atomic_write(ctx.out / "calibration.yaml",
                     lambda tmp: Path(tmp).write_text(header + yaml.safe_dump(cal, sort_keys=False, width=120)))


def travel_size(archive: Path | None) -> dict:
    """MiB that a device run carries: the working tree git would send (tracked and
    untracked-not-ignored files) and .carry/ (pyautoattack without its example
    checkpoint, the archive); where .carry/ is not made yet, what `make device-carry` puts there."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    tree = sum((ROOT / f).stat().st_size for f in out.split("\0") if f and (ROOT / f).is_file())
    carry = ROOT / ".carry"
    if carry.is_dir():
        extra = {"carry": sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())}
    else:
        import pyautoattack

        pkg = Path(pyautoattack.__file__).parent
        extra = {"pyautoattack": sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file()
                                     and "examples" not in f.parts and "__pycache__" not in f.parts),
                 "archive": archive.stat().st_size if archive else 0}
    parts = {"tree": tree, **extra}
    total = sum(parts.values()) / 2**20
    return {**{k: v / 2**20 for k, v in parts.items()}, "total_mib": total, "limit_mib": TRAVEL_LIMIT_MIB,
            "within": total <= TRAVEL_LIMIT_MIB}


def chosen(args) -> list[Stage]:
    if not args.stages:
        return list(STAGES)
    pick = [s for s in STAGES if s.name in args.stages or str(s.number) in args.stages]
    unknown = set(args.stages) - {s.name for s in pick} - {str(s.number) for s in pick}
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; the stages are {[s.name for s in STAGES]}")
    return pick


def caps(args, plan: dict[str, float]) -> dict[str, float]:
    """Each stage's cap: ``device_plan.cap`` of its planned seconds on the GPU, DRY_CAP under --dry, or --cap's."""
    out = {s.name: DRY_CAP if args.dry else device_plan.cap(plan[s.name]) for s in STAGES}
    for item in args.cap:
        name, _, seconds = item.partition("=")
        if name not in out:
            raise SystemExit(f"--cap {item}: no stage {name!r}; the stages are {list(out)}")
        out[name] = float(seconds)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    config = ltd_config.load(validate=False)
    plan = device_plan.plan(config, st.GPU)
    if args.from_calibration:
        if not args.write_calibration:
            raise SystemExit("--from-calibration needs --write-calibration PATH (the file to merge it into)")
        write_calibration(yaml.safe_load(Path(args.from_calibration).read_text()), Path(args.write_calibration))
        print(f"{args.from_calibration}: merged into {args.write_calibration}")
        return 0
    if args.plan:
        print(device_plan.render(plan, args.budget_s))
        print(_travel_line(travel_size(find_archive(args.archive))))
        return 0
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry on the CPU, or on a GPU machine")
    t0 = START
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args)
    travel = None
    if args.dry:
        travel = travel_size(find_archive(args.archive))
        print(_travel_line(travel), flush=True)
    limits = caps(args, {k: v["seconds"] for k, v in plan.items()})
    with tempfile.TemporaryDirectory(prefix="device_check.") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(args, out, work)
        stages = chosen(args)
        for i, stage in enumerate(stages):
            # what the later stages are planned to need stays theirs: an earlier stage over
            # its plan is cut at its cap, not at the end of the budget (none under --dry)
            later = 0.0 if args.dry else sum(plan[s.name]["seconds"] for s in stages[i + 1:])
            record = run_stage(ctx, stage, limits[stage.name], args.budget_s - (time.time() - t0) - later, env)
            write_outputs(ctx, env, travel)
            if record["status"] == "stopped":
                return 128 + signal.SIGTERM
    if args.write_calibration:
        write_calibration(measured_calibration(ctx.records), Path(args.write_calibration))
        print(f"calibration rows merged into {args.write_calibration}")
    print(f"device check: {time.time() - t0:.0f} s; {out / 'summary.md'}")
    return 0 if all(r["status"] == "ok" for r in ctx.records.values()) else 1


def _travel_line(t: dict) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in t.items() if k not in ("total_mib", "limit_mib", "within"))
    return (f"travel: {t['total_mib']:.1f} MiB ({parts} MiB): " +
            ("within" if t["within"] else "OVER") + f" the {t['limit_mib']:.0f} MiB limit")


if __name__ == "__main__":
    sys.exit(main())
