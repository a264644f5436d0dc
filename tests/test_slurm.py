"""The Slurm profile on a real (single-node, throw-away) Slurm cluster.

Installs Debian's slurm-wlm and munge if needed (root + apt-get), starts munged, slurmctld
and slurmd with 4 fake GPUs in a `cpu` and a `gpu` partition (tests/slurm_cluster.py),
then runs part of the demo through `snakemake --profile profiles/slurm` with the
profile's commented GPU/CPU example switched on, on a "login node" of 1 core, with a
60-minute limit per allocation (config `slurm: max_runtime: 60`, tests/workflow_slurm.yaml):

- a student's training and another student's AutoAttack evaluation are each stopped
  twice part-way, by the SIGTERM a time limit's sbatch --signal sends (training writes a
  checkpoint, AutoAttack has saved its state after every batch), resubmitted, and give
  exactly what an uninterrupted local run of the same jobs gives (run at the same time).
  The test sends that SIGTERM once an allocation has made progress (two epochs, three
  state saves), not at a time on the clock: on a slow or loaded machine a clock-set stop
  could fall before the job's start-up was over, at every attempt. That sbatch --signal
  itself reaches a job step before its limit is tested on its own, with a tiny job;
- GPU jobs go to the `gpu` partition with --gpus=a100:1 and the qos, CPU jobs to `cpu`
  with no GPU; every job gets the CPUs its config asks for (the dry run below shows them
  above the 1 core Snakemake is given).

A dry run of the paper config under a 1440-minute limit checks the same rules' CPUs,
runtimes, retries and --signal for ImageNet and CIFAR (no Slurm needed).

Skipped, with the reason, where Slurm cannot be installed (no root, no apt-get, apt-get
failing) or another Slurm already runs here; a cluster that is installed but does not
start is a failure.
"""
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ltd.files import load_json

from .conftest import ROOT, copy_workflow
from .slurm_cluster import LocalCluster, SlurmBusy, SlurmUnavailable, clean_env, ensure_installed

pytestmark = pytest.mark.slow

CONFIGFILES = ["config/demo.yaml", "tests/workflow_slurm.yaml"]
R = "results/slurm"                                    # run: slurm
TRAINED = "students/digits_wrn-10-1_trades_b6_s0"      # trained through Slurm
EVALUATED = "students/digits12_wrn-10-1_trades_b6_s0"  # trained before, evaluated through Slurm
# What the Slurm run builds; its data set is made again there too (a CPU job).
TARGETS = [f"{R}/{TRAINED}/model.pt", f"{R}/{EVALUATED}/autoattack.json"]
DATA = f"{R}/data/digits.json"
# The profile's example (profiles/slurm/config.yaml), as the test cluster is set up for it.
GPU_RULES = {"train_teacher", "train_substitute", "train_student", "teacher_logits", "validate", "evaluate",
             "evaluate_published"}
GPU_SETTINGS = {"slurm_partition": "gpu", "qos": "normal"}
# The workflow is copied whole (Snakefile, rules, scripts, config, envs, profiles, ...) but
# for these top-level entries.
SKIP = {".git", ".venv", "results", ".snakemake", "data", ".pytest_cache"}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.\s*$", re.M)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    t0 = time.monotonic()
    try:
        ensure_installed()
    except SlurmUnavailable as e:
        pytest.skip(f"Slurm could not be installed: {e}")
    t1 = time.monotonic()
    c = LocalCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except SlurmBusy as e:
        c.stop()
        pytest.skip(f"no local Slurm test cluster: {e}")
    except SlurmUnavailable as e:
        # Slurm is installed but our cluster does not come up: a failure, not a skip.
        c.stop()
        pytest.fail(f"the local Slurm cluster did not start: {e}")
    except BaseException:
        c.stop()
        raise
    print(f"slurm: install check {t1 - t0:.0f} s, cluster up in {time.monotonic() - t1:.0f} s")
    yield c
    c.stop()


def slurm(*cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env())


def show_job(jobid):
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge = 1200 s)."""
    out = slurm("scontrol", "-o", "show", "job", str(jobid)).stdout
    return dict(w.split("=", 1) for w in out.split() if "=" in w)


def run_batch_job(options: list[str], command: str, timeout: float) -> dict:
    """``sbatch --wrap command`` and its ``show_job`` once it has ended (a hang guard of
    ``timeout`` seconds, not a timing target)."""
    p = slurm("sbatch", "--parsable", *options, "--wrap", command)
    assert p.returncode == 0, p.stderr
    jobid = p.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while show_job(jobid).get("JobState") in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", None):
        assert time.monotonic() < deadline, show_job(jobid)
        time.sleep(0.5)
    return show_job(jobid)


def test_fake_gpus_are_scheduled(cluster, tmp_path):
    out = tmp_path / "gpus.txt"
    job = run_batch_job(["--nodes=1", "--gpus=2", "-t", "1", "-o", str(out)], "echo GPUS=$SLURM_GPUS_ON_NODE", 60)
    assert job["JobState"] == "COMPLETED" and job["TresPerJob"] == "gres:gpu:2", job
    assert out.read_text().split() == ["GPUS=2"]


def test_sbatch_signal_reaches_the_job_step_before_its_limit(cluster, tmp_path):
    """What the rules' --signal=TERM@<lead> asks Slurm for (the runs below stop their jobs
    with the same SIGTERM, sent by the test): a job step gets SIGTERM well before a
    1-minute limit and can end cleanly (COMPLETED, not TIMEOUT)."""
    out = tmp_path / "signal.txt"
    step = "trap 'echo TERM after $SECONDS s; exit 0' TERM; for i in $(seq 240); do sleep 0.25; done; echo no TERM"
    job = run_batch_job(["-t", "1", "--signal=TERM@55", "-o", str(out)], f"srun bash -c {shlex.quote(step)}", 150)
    assert job["JobState"] == "COMPLETED" and "TERM after" in out.read_text(), (job, out.read_text())


def enable_profile_example(profile):
    """Uncomment the profile's GPU block and its CPU partition line, as a user would."""
    text = profile.read_text()
    lines, out, in_block = text.splitlines(), [], False
    for line in lines:
        if line == "# set-resources:":
            in_block = True
        elif in_block and not line.startswith("#   "):
            in_block = False
        out.append(line[2:] if in_block else line)
    new = re.sub(r"^  # slurm_partition: cpu ", "  slurm_partition: cpu ", "\n".join(out) + "\n", flags=re.M)
    assert new.count("\nset-resources:\n") == 1 and "\n  slurm_partition: cpu " in new, new
    profile.write_text(new)


def snakemake_local(cwd, *targets, nice=0, **kw):
    """The same jobs run by the local scheduler (profiles/default), uninterrupted."""
    return subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-m", "snakemake", *targets, "--cores", "2",
                             "--configfile", *CONFIGFILES], cwd=cwd, text=True, **kw)


def running_jobs():
    """{Slurm job id: rule} of the running jobs (the plugin's comment: rule_<rule>_wildcards_...)."""
    out = slurm("squeue", "-h", "-t", "R", "-o", "%i %k").stdout
    return {w[0]: w[1].removeprefix("rule_").split("_wildcards_")[0] for w in map(str.split, out.splitlines())
            if len(w) == 2}


class Lines:
    """Progress of a training job: the epochs it has appended to history.jsonl."""

    def __init__(self, path):
        self.path = path

    def __call__(self):
        return len(self.path.read_text().splitlines()) if self.path.exists() else 0


class Writes:
    """Progress of an AutoAttack job: how often its state file was (re)written, as polled."""

    def __init__(self, path):
        self.path, self.last, self.count = path, None, 0

    def __call__(self):
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime is not None and mtime != self.last:
            self.count += 1
        self.last = mtime
        return self.count


class Preempter(threading.Thread):
    """Stops each long job part-way `times` times, as a time limit would: SIGTERM to its
    running allocation (scancel --signal=TERM reaches the job steps, as sbatch --signal
    does) once that allocation has made `needed` progress, whatever the clock says."""

    def __init__(self, plans, times=2):
        super().__init__(daemon=True)
        self.plans, self.times = plans, times  # rule -> (progress(), needed)
        self.sent = {rule: [] for rule in plans}
        self.done = threading.Event()
        self._start = {}  # Slurm job id -> its rule's progress when first seen running

    def run(self):
        while not self.done.wait(0.25):
            progress = {rule: f() for rule, (f, _) in self.plans.items()}  # polled always: Writes counts
            try:
                running = running_jobs()
            except (OSError, subprocess.SubprocessError):
                continue
            for jobid, rule in running.items():
                if rule not in self.plans or len(self.sent[rule]) >= self.times or jobid in self.sent[rule]:
                    continue
                start = self._start.setdefault(jobid, progress[rule])
                if progress[rule] - start >= self.plans[rule][1] and \
                        slurm("scancel", "--signal=TERM", jobid).returncode == 0:
                    self.sent[rule].append(jobid)


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """(reference dir, Slurm dir, Snakemake's log of the Slurm run)."""
    base = tmp_path_factory.mktemp("wf-slurm")
    ref, sl = base / "reference", base / "slurm"
    shutil.copytree(ROOT, ref, ignore=lambda dirpath, names: [
        n for n in names if n == "__pycache__" or (Path(dirpath) == ROOT and n in SKIP)])
    # No GPU here: do not probe for one (ltd.gpu_slots); jobs holding the cluster's fake
    # GPUs run on the CPU (ltd.runtime.FAKE_GPUS) instead of stopping for want of CUDA.
    env = {**clean_env(), "LTD_GPUS": "", "LTD_FAKE_GPUS": "1"}
    t0 = time.monotonic()
    # Both data sets and the student whose evaluation runs through Slurm, locally.
    p = snakemake_local(ref, f"{R}/{EVALUATED}/model.pt", DATA, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT)
    out = p.communicate(timeout=1800)[0]
    assert p.returncode == 0, out[-4000:]
    shutil.copytree(ref, sl, symlinks=True)
    enable_profile_example(sl / "profiles" / "slurm" / "config.yaml")
    (sl / DATA).unlink()  # (--forcerun of it would drop the training from the DAG: its input is ancient())
    t1 = time.monotonic()
    # At once: the Slurm run and the reference (the same two jobs, uninterrupted, locally),
    # the reference at the lowest priority: the Slurm jobs' speed, and so how many
    # allocations they need, hardly depends on it.
    with open(base / "reference.log", "w") as ref_log:
        p = snakemake_local(ref, *TARGETS, nice=19, env=env, stdout=ref_log, stderr=subprocess.STDOUT)
        preempter = Preempter({"train_student": (Lines(sl / R / TRAINED / "history.jsonl"), 2),
                               "evaluate": (Writes(sl / R / EVALUATED / "autoattack_state.json"), 3)})
        preempter.start()
        try:
            cmd = [sys.executable, "-m", "snakemake", *TARGETS, "--profile", "profiles/slurm",
                   "--cores", "1",  # a login node of 1 core: jobs still get the CPUs their config asks for
                   # (the Slurm log folder: the profile's, from `run: slurm`)
                   # no accounting storage here: job states from squeue (the profile's default is sacct)
                   "--slurm-status-command=squeue",
                   "--slurm-init-seconds-before-status-checks=2",  # short jobs: poll after 2 s, not 40 s
                   "--configfile", *CONFIGFILES]
            # (a ceiling for a loaded machine, not a time the run should take)
            proc = subprocess.run(cmd, cwd=sl, capture_output=True, text=True, timeout=3600, env=env)
            log = proc.stdout + proc.stderr
            (sl / "snakemake-slurm.log").write_text(log)
            t2 = time.monotonic()
            assert proc.returncode == 0, log[-8000:]
        finally:
            preempter.done.set()
            rc = p.wait(timeout=1800)
    print(f"slurm: local set-up {t1 - t0:.0f} s, Slurm run {t2 - t1:.0f} s (the reference beside it); "
          f"SIGTERM sent to {preempter.sent}")
    assert rc == 0, (base / "reference.log").read_text()[-4000:]
    assert {rule: len(ids) for rule, ids in preempter.sent.items()} == {"train_student": 2, "evaluate": 2}, \
        (preempter.sent, log[-4000:])
    return ref, sl, log


def own_lines(log):
    """Snakemake's log without the failed jobs' logs it shows (show-failed-logs)."""
    return re.sub(r"^Logfile .*:\n={80}\n.*?^={80}$", "", log, flags=re.M | re.S)


def slurm_jobs(log):
    """Snakemake's jobs as announced ("rule X:" and its resources), and every Slurm job
    submitted for them: [(rule, {resource: value}, [scontrol records, oldest first])]."""
    jobs = {}
    for m in re.finditer(r"^rule (\w+):\n((?:    .*\n)+)", own_lines(log), re.M):
        jobid = re.search(r"^\s+jobid: (\d+)$", m.group(2), re.M).group(1)
        resources = re.search(r"^\s+resources: (.+)$", m.group(2), re.M).group(1)
        resources = dict(kv.split("=", 1) for kv in resources.split(", "))
        jobs.setdefault(jobid, (m.group(1), resources, []))
    for jobid, slurm_id, _ in SUBMITTED.findall(log):
        jobs[jobid][2].append(show_job(slurm_id))
    return list(jobs.values())


def test_jobs_go_to_their_partitions_with_their_cpus(runs, cluster):
    ref, sl, log = runs
    jobs = slurm_jobs(log)
    assert {rule for rule, _, _ in jobs} == {"prepare_data", "train_student", "evaluate"}, log[-4000:]
    # Snakemake announces each job as "rule X:" (submitted) or "localrule X:" (run in-process)
    assert not re.findall(r"^localrule ", own_lines(log), re.M)
    logdir = sl / R / "logs" / "slurm"
    for rule, resources, allocations in jobs:
        assert allocations, (rule, log[-4000:])
        for job in allocations:
            assert job["WorkDir"] == str(sl) and job["NodeList"] == cluster.host, job
            assert job["Comment"].removeprefix("rule_").split("_wildcards_")[0] == rule, job
            path = Path(job["StdOut"])
            assert path.is_relative_to(logdir / f"rule_{rule}") and path.name == f"{job['JobId']}.log"
            # runtime: min(configured, slurm.max_runtime = 60) -> -t; nodes: 1
            minutes = int(resources["runtime"])
            assert minutes == (60 if rule in ("train_student", "evaluate") else 1), resources
            assert job["TimeLimit"] == f"{minutes // 60:02d}:{minutes % 60:02d}:00" and job["NumNodes"] == "1", job
            # --cpus-per-task from the config's threads and loader workers, not the 1 core
            # (without cpus_per_task the plugin asks for the job's threads: 1 here)
            assert int(job["NumCPUs"]) == int(resources.get("cpus_per_task", 1)), (job, resources)
            if rule in GPU_RULES:   # the profile's GPU block (partition, qos); the config's gpu_type: --gpus=a100:1
                assert job["Partition"] == "gpu" and job["TresPerJob"] == "gres:gpu:a100:1", job
                assert {k: resources.get(k) for k in GPU_SETTINGS} == GPU_SETTINGS, resources
            else:                   # default-resources: the CPU partition, no GPU
                assert job["Partition"] == "cpu" and "TresPerJob" not in job, job
                assert not {"gpu_model", "qos", "gres"} & set(resources) and resources.get("gpu", "0") == "0", resources
    res = {rule: r for rule, r, _ in jobs}
    # SIGTERM 40 s before the limit for the long jobs, none for the others
    assert res["evaluate"]["slurm_extra"] == res["train_student"]["slurm_extra"] == "--signal=TERM@40", res
    assert "slurm_extra" not in res["prepare_data"], res


def allocations(log, rule):
    (job,) = [a for r, _, a in slurm_jobs(log) if r == rule]
    return job


def resubmitted_until_done(log, rule):
    """The rule's Slurm allocations, asserting that SIGTERM stopped it at least once
    (FAILED: it ended itself, not TIMEOUT) and it was resubmitted until it finished."""
    jobs = allocations(log, rule)
    states = [j["JobState"] for j in jobs]
    print(f"{rule}: {len(jobs)} allocations {states}")
    assert len(jobs) >= 2 and states[-1] == "COMPLETED" and set(states[:-1]) == {"FAILED"}, states
    return jobs


def test_training_outlives_its_time_limit_and_ends_as_if_uninterrupted(runs):
    ref, sl, log = runs
    jobs = resubmitted_until_done(log, "train_student")
    # Each stop wrote a checkpoint that the next allocation continued (the failed attempts'
    # logs are in Snakemake's: show-failed-logs).
    stops = log.count("stopped by SIGTERM")
    print(f"train_student: {stops} checkpoints written on SIGTERM")
    assert 1 <= stops <= len(jobs) - 1, log[-3000:]
    got = torch.load(sl / R / TRAINED / "model.pt", weights_only=True)
    want = torch.load(ref / R / TRAINED / "model.pt", weights_only=True)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    metrics = load_json(sl / R / TRAINED / "metrics.json")
    assert [h["test_accuracy"] for h in metrics["history"]] == \
        [h["test_accuracy"] for h in load_json(ref / R / TRAINED / "metrics.json")["history"]]


def test_autoattack_outlives_its_time_limit_and_ends_as_if_uninterrupted(runs):
    ref, sl, log = runs
    resubmitted_until_done(log, "evaluate")
    eval_log = (sl / R / "logs" / "evaluate" / f"{EVALUATED.split('/')[1]}.log").read_text()
    assert "AutoAttack: resuming from" in eval_log, eval_log[-3000:]  # the last allocation's
    got, want = load_json(sl / R / EVALUATED / "autoattack.json"), load_json(ref / R / EVALUATED / "autoattack.json")
    # the state file carried the earlier allocations' work: this one did less than all of it
    assert got["autoattack"]["seconds_this_attempt"] < got["autoattack"]["seconds"]
    assert want["autoattack"]["seconds_this_attempt"] == pytest.approx(want["autoattack"]["seconds"], abs=0.01)
    for key in ("robust_accuracy_after", "max_perturbation"):
        assert got["autoattack"][key] == want["autoattack"][key], key
    assert (got["robust_accuracy"], got["clean_accuracy"]) == (want["robust_accuracy"], want["clean_accuracy"])
    # The report's columns too, PGD's included (its random start comes from the evaluation
    # seed), with the gradient-masking flags they raise.
    assert got["report"] == want["report"] and len(want["report"]) >= 10, got["report"]
    assert got["pgd"]["accuracy"] == want["pgd"]["accuracy"]


def rule_retries(workdir, configfiles):
    """{rule: its `retries`} as the Snakefile in `workdir` sets them under `configfiles`."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings
    with SnakemakeApi() as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path(workdir) / "Snakefile",
                          workdir=Path(workdir), config_settings=ConfigSettings(configfiles=list(configfiles)))
        return {r.name: r._restart_times for r in wf._workflow.rules}  # no public getter


def test_retries_follow_the_data_sets_in_use():
    """The demo config keeps the paper's ImageNet entry (a 7-day runtime) but never uses it:
    under a 60-minute limit its jobs get ceil(180 / 60) + 1 = 4 retries, not 169
    resubmissions of a job that fails for good (as a job holding no CUDA does)."""
    retries = rule_retries(ROOT, [ROOT / f for f in CONFIGFILES])
    assert {k: retries[k] for k in ("train_student", "evaluate", "prepare_data")} == {
        "train_student": 4, "evaluate": 4, "prepare_data": None}


def test_paper_plan_under_a_48_hour_limit(tmp_path):
    """The paper config on a cluster whose jobs may run 1440 min (no Slurm needed): CPUs
    from threads and loader workers x processes, runtimes capped, retries to match, the
    long jobs' early SIGTERM."""
    copy_workflow(tmp_path)  # no ImageNet tree: the plan lists its jobs all the same
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text("slurm: {max_runtime: 1440}\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "table3", "table1", "--cores", "1",
                           "--configfile", str(overlay)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from ltd import budget
    from ltd import config as ltd_config
    from ltd.experiments import Run

    config = ltd_config.merge(ltd_config.load(), {"slurm": {"max_runtime": 1440}})
    kinds = {"train_teacher": ("teachers", "teacher"), "train_substitute": ("substitutes", "substitute"),
             "train_student": ("students", "student"), "evaluate": ("students", "evaluation")}
    seen = {}  # (rule, data set) -> resources of its first job
    for m in re.finditer(r"^rule (\w+):\n((?:    .*\n)+)", proc.stdout, re.M):
        wildcards = re.search(r"^\s+wildcards: (.+)$", m.group(2), re.M)
        dataset = wildcards and re.search(r"(?:name|dataset)=([a-z0-9]+)", wildcards.group(1))
        r = dict(kv.split("=", 1) for kv in re.search(r"^\s+resources: (.+)$", m.group(2), re.M).group(1).split(", "))
        if m.group(1) in kinds:  # time limits from the budget's estimate of this very job, capped
            role, kind = kinds[m.group(1)]
            job = budget.Job(kind, Run.parse(role, re.search(r"name=(\S+)", wildcards.group(1)).group(1)))
            assert int(r["runtime"]) == min(budget.time_limit(config, job), 1440), (job, r)
            r["runtime"] = "budget"
        seen.setdefault((m.group(1), dataset and dataset.group(1)),
                        {k: r.get(k) for k in ("gpu", "cpus_per_task", "runtime", "slurm_extra", "mem_mb")})
    signal = "--signal=TERM@300"
    # ImageNet: 4 GPUs x (1 thread + 8 loader workers) for training, 4 threads + 8 workers for
    # one-GPU jobs; CIFAR-10: the 4 threads; whatever the 1 core given here. Memory per process.
    assert seen["train_teacher", "imagenet"] == seen["train_student", "imagenet"] == {
        "gpu": "4", "cpus_per_task": "36", "runtime": "budget", "slurm_extra": signal, "mem_mb": "256000"}
    assert seen["evaluate", "imagenet"] == {"gpu": "1", "cpus_per_task": "12", "runtime": "budget",
                                            "slurm_extra": signal, "mem_mb": "64000"}
    # ImageNet's students label their batches on the fly: no teacher-logit or soft-label jobs
    assert ("teacher_logits", "imagenet") not in seen and ("soft_labels", "imagenet") not in seen
    assert seen["train_student", "cifar10"] == seen["evaluate", "cifar10"] == {
        "gpu": "1", "cpus_per_task": "4", "runtime": "budget", "slurm_extra": signal, "mem_mb": "16000"}
    assert seen["soft_labels", "cifar10"] == {"gpu": None, "cpus_per_task": None, "runtime": "60",
                                              "slurm_extra": None, "mem_mb": "8000"}
    assert seen["prepare_data", "imagenet"]["runtime"] == "600"  # ImageNet's own `light` resources
    # A natural teacher asks for far less than a student; the longest jobs are capped.
    teacher = budget.time_limit(config, budget.Job("teacher", Run.parse("teachers", "cifar10_wrn-34-10_s0")))
    student = budget.time_limit(config, budget.Job("student", Run.parse(
        "students", "cifar10_wrn-34-10_trades-ltd_T5_b6_s0")))
    assert 30 <= teacher <= 120 and 4 * teacher <= student <= 600, (teacher, student)
    # retries: ceil(longest estimate / 1440) + 1 (training: ImageNet's WRN-50-2 student; evaluation:
    # CIFAR-10's WRN-34-20); the profile's `retries` elsewhere (None)
    jobs = budget.job_tables(config)
    longest = {k: max(budget.time_limit(config, j) for j in jobs if j.kind in kinds)
               for k, kinds in (("train", ("teacher", "substitute", "student")), ("evaluate", ("evaluation",)))}
    want = {k: -(-m // 1440) + 1 for k, m in longest.items()}
    assert want["train"] >= 2 and want["evaluate"] >= 2, longest
    retries = rule_retries(tmp_path, [overlay])
    assert {k: retries[k] for k in ("train_teacher", "train_substitute", "train_student", "evaluate",
                                    "evaluate_published", "prepare_data", "validate")} == {
        "train_teacher": want["train"], "train_substitute": want["train"], "train_student": want["train"],
        "evaluate": want["evaluate"], "evaluate_published": want["evaluate"], "prepare_data": None, "validate": None}


def test_nothing_is_left_to_do(runs):
    ref, sl, log = runs
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *TARGETS, "--profile", "profiles/slurm",
                           "--configfile", *CONFIGFILES],
                          cwd=sl, capture_output=True, text=True, timeout=300, env=clean_env())
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stderr[-3000:]


# ---- how a GPU job asks for its GPUs: config slurm.gpu_request / gpu_type, on the real cluster ----

class _Resources(dict):
    __getattr__ = dict.__getitem__


def _planned_resources(rule, overlay, tmp_path):
    """The resources Snakemake plans for the first job of `rule` (a dry run through the Slurm profile)."""
    path = tmp_path / "route.yaml"
    path.write_text(overlay)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", f"{R}/{TRAINED}/model.pt", "--profile",
                           "profiles/slurm", "--configfile", *CONFIGFILES,
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(rf"^rule {rule}:\n((?:    .*\n)+)", proc.stdout, re.M)
    line = re.search(r"^\s+resources: (.+)$", m.group(1), re.M).group(1)
    return dict(kv.split("=", 1) for kv in line.split(", "))


ROUTES = {  # config overlay -> (the one GPU flag, what Slurm records)
    "gpus": ("slurm: {gpu_type: a100}", "--gpus=a100:1", ("TresPerJob", "gres:gpu:a100:1")),
    "gres": ("slurm: {gpu_request: gres, gpu_type: a100}", "--gres=gpu:a100:1", ("TresPerNode", "gres:gpu:a100:1")),
    # (the type from tests/workflow_slurm.yaml)
    "gpus-per-node": ("slurm: {gpu_request: gpus-per-node}", "--gpus-per-node=a100:1",
                      ("TresPerNode", "gres:gpu:a100:1")),
    "type by constraint": ("slurm: {gpu_type: a100, gpu_type_as_constraint: true}", "--gpus=1", ("Features", "a100")),
}


@pytest.mark.parametrize("route", ROUTES)
def test_each_gpu_route_asks_slurm_with_one_flag(route, cluster, tmp_path):
    """The sbatch flags the plugin (snakemake-executor-plugin-slurm 2.8) builds from the
    resources the workflow plans, submitted (held) to the local Slurm: one GPU flag, the
    GPUs and type Slurm records, and the rule's --signal kept beside --gpus-per-node."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    overlay, flag, (field, value) = ROUTES[route]
    res = _planned_resources("train_student", overlay, tmp_path)
    job = type("Job", (), {"resources": _Resources({k: v for k, v in res.items()})})()
    flags = set_gres_string(job).split() + ([f"-C {res['constraint']}"] if "constraint" in res else []) \
        + res.get("slurm_extra", "").split()
    gpu_flags = [f for f in flags if re.match(r"--(gpus|gres|gpus-per-node)\b", f)]
    assert gpu_flags == [flag], flags
    assert "--signal=TERM@40" in flags, flags  # merged, not replaced
    p = slurm("sbatch", "--parsable", "--hold", "-p", "gpu", "-t", "1", "-o", "/dev/null",
              *" ".join(flags).split(), "--wrap", "true")
    assert p.returncode == 0, p.stderr
    jobid = p.stdout.strip().split(";")[0]
    try:
        assert show_job(jobid).get(field) == value, show_job(jobid)
    finally:
        slurm("scancel", jobid)


def test_site_flags_are_merged_and_a_profile_slurm_extra_is_refused(tmp_path):
    """The config's slurm.extra joins the rule's own --signal; a slurm_extra under the
    profile's set-resources would replace it, and the plan says so."""
    res = _planned_resources("train_student", 'slurm: {extra: "--mail-type=FAIL --exclusive"}', tmp_path)
    assert res["slurm_extra"] == "--mail-type=FAIL --exclusive --signal=TERM@40", res
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", f"{R}/{TRAINED}/model.pt", "--profile",
                           "profiles/slurm", "--set-resources",
                           "train_student:slurm_extra='--exclusive'", "--configfile", *CONFIGFILES], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=clean_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "set-resources: train_student: a `slurm_extra` there replaces" in out, out[-3000:]
    assert "slurm: extra:" in out


def test_slurm_logs_follow_the_run(tmp_path):
    """The profile's slurm-logdir is results/<run>/logs/slurm of the run the command line
    loads (the runs above show the jobs' logs there); one of another run is refused."""
    from ltd.run_name import slurm_logdir

    assert slurm_logdir(["all", "--profile", "profiles/slurm"]) == "results/paper/logs/slurm"
    assert slurm_logdir(["-n", "all", "--configfile", "config/quick.yaml", "--profile", "x"]) == \
        "results/quick/logs/slurm"
    assert slurm_logdir(["all", "--configfile", "config/quick.yaml", "--config", "run=mine"]) == \
        "results/mine/logs/slurm"
    copy_workflow(tmp_path, profiles=True)  # the quick reproduction's plan on Slurm, as the README has it
    proc = subprocess.run([sys.executable, "-m", "snakemake", "all", "--profile", "profiles/slurm", "-n",
                           "--configfile", "config/quick.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=clean_env())
    assert proc.returncode == 0 and "rule train_student:" in proc.stdout, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", f"{R}/{TRAINED}/model.pt", "--profile",
                           "profiles/slurm", "--slurm-logdir", "results/paper/logs/slurm", "--configfile",
                           *CONFIGFILES],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=clean_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"or write --slurm-logdir {R}/logs/slurm" in out, out[-3000:]


def test_downloads_run_where_snakemake_runs():
    """CIFAR is fetched by a local rule (compute nodes often have no internet); ImageNet is
    indexed, and the demo's folder built, by Slurm jobs."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    with SnakemakeApi() as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=ROOT / "Snakefile", workdir=ROOT,
                          config_settings=ConfigSettings())._workflow
        rules = {r.name: r for r in wf.rules}
        local = wf._localrules  # what a non-local executor runs in Snakemake's own process (no public getter)
        assert "download_data" in local and "prepare_data" not in local
        produces = {d: [r for r in ("download_data", "prepare_data") if rules[r].is_producer(
            f"results/paper/data/{d}.json")] for d in ("cifar10", "cifar100", "imagenet")}
    assert produces == {"cifar10": ["download_data", "prepare_data"], "cifar100": ["download_data", "prepare_data"],
                        "imagenet": ["prepare_data"]}  # ruleorder: download_data first


def test_the_controller_batch_script(cluster, tmp_path):
    """profiles/slurm/controller.sbatch: Slurm accepts its #SBATCH lines, and it runs the
    profile with the Slurm log folder of the run its config names (here as a dry run)."""
    p = slurm("sbatch", "--test-only", str(ROOT / "profiles" / "slurm" / "controller.sbatch"))
    assert p.returncode == 0 and "to start at" in p.stderr, p.stderr
    proc = subprocess.run(["bash", "profiles/slurm/controller.sbatch", "-n", "table4", "--configfile",
                           "config/demo.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "This was a dry-run" in proc.stdout + proc.stderr
