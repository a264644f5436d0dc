"""The Slurm profile on a real (single-node, throw-away) Slurm cluster.

Installs Debian's slurm-wlm and munge if needed (root + apt-get), starts munged, slurmctld
and slurmd with 4 fake GPUs (tests/slurm_cluster.py), then runs a reduced part of the
demo through `snakemake --profile profiles/slurm` and checks that every non-local job
went through sbatch and finished as a Slurm job. Skipped, with the reason, where Slurm
cannot be installed (no root, no apt-get, apt-get failing) or another Slurm already runs
here; a cluster that is installed but does not start is a failure.
"""
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .slurm_cluster import LocalCluster, SlurmBusy, SlurmUnavailable, clean_env, ensure_installed

pytestmark = pytest.mark.slow

# What the test builds through Slurm. Targets come before --configfile (which takes every
# word after it); `run` is the config's run name (outputs under results/<run>/);
# `gpu_rule` gets gpu=1 on the command line so that the profile's gpu -> --gpus mapping is
# exercised although the demo config (device: cpu) gives every rule gpu=0.
WORKFLOW = {
    # data, teacher, its logits, then two soft-label jobs side by side: 5 Slurm jobs, 4 levels
    "targets": ["results/test/soft_labels/digits_wrn-10-1_s0/T20.pt",
                "results/test/soft_labels/digits_wrn-10-1_s0/T100.pt"],
    "configfiles": ["config/demo.yaml", "tests/workflow_small.yaml"],
    "run": "test",
    "gpu_rule": "train_teacher",
}
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
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge = 300 s)."""
    out = slurm("scontrol", "-o", "show", "job", str(jobid)).stdout
    return dict(w.split("=", 1) for w in out.split() if "=" in w)


def test_fake_gpus_are_scheduled(cluster, tmp_path):
    out = tmp_path / "gpus.txt"
    p = slurm("sbatch", "--parsable", "--nodes=1", "--gpus=2", "-t", "1", "-o", str(out),
              "--wrap", "echo GPUS=$SLURM_GPUS_ON_NODE")
    assert p.returncode == 0, p.stderr
    jobid = p.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while show_job(jobid).get("JobState") in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", None):
        assert time.monotonic() < deadline, show_job(jobid)
        time.sleep(0.5)
    job = show_job(jobid)
    assert job["JobState"] == "COMPLETED" and job["TresPerJob"] == "gres:gpu:2", job
    assert out.read_text().split() == ["GPUS=2"]


@pytest.fixture(scope="module")
def workflow_run(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("wf-slurm") / "wf"
    shutil.copytree(ROOT, d, ignore=lambda dirpath, names: [
        n for n in names if n == "__pycache__" or (Path(dirpath) == ROOT and n in SKIP)])
    run = WORKFLOW["run"]
    cmd = [sys.executable, "-m", "snakemake", *WORKFLOW["targets"], "--profile", "profiles/slurm",
           # the profile's log dir is the paper run's; this run's is results/<run>/logs/slurm
           f"--slurm-logdir=results/{run}/logs/slurm",
           # short jobs: poll Slurm after 2 s instead of 40 s
           "--slurm-init-seconds-before-status-checks=2",
           f"--set-resources={WORKFLOW['gpu_rule']}:gpu=1",
           "--configfile", *WORKFLOW["configfiles"]]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=900, env=clean_env())
    log = proc.stdout + proc.stderr
    (d / "snakemake-slurm.log").write_text(log)
    print(f"slurm workflow run: {time.monotonic() - t0:.0f} s")
    assert proc.returncode == 0, log[-8000:]
    return d, log


def test_every_cluster_job_went_through_sbatch(workflow_run, cluster):
    d, log = workflow_run
    submitted = SUBMITTED.findall(log)
    # Snakemake announces each job as "rule X:" (submitted) or "localrule X:" (run in-process)
    remote = re.findall(r"^rule (\w+):$", log, re.M)
    assert len(remote) >= 3 and len(submitted) == len(remote), (remote, submitted, log[-4000:])
    assert len({jobid for _, jobid, _ in submitted}) == len(submitted)
    assert WORKFLOW["gpu_rule"] in remote
    logdir = d / "results" / WORKFLOW["run"] / "logs" / "slurm"
    for _, jobid, logfile in submitted:
        job = show_job(jobid)
        assert job.get("JobState") == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["WorkDir"] == str(d) and job["NodeList"] == cluster.host
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        assert rule in remote
        # one log per Slurm job, kept under results/<run>/logs/slurm/rule_<rule>/.../<jobid>.log
        path = Path(logfile)
        assert path == Path(job["StdOut"]) and path.is_relative_to(logdir / f"rule_{rule}"), (path, job)
        assert path.name == f"{jobid}.log" and path.stat().st_size > 0
        # profile -> sbatch: --cpus-per-task from threads, --nodes=1, and gpu=N -> --gpus=N
        assert job["NumNodes"] == "1" and int(job["NumCPUs"]) >= 1
        assert job.get("TresPerJob") == ("gres:gpu:1" if rule == WORKFLOW["gpu_rule"] else None), job


def test_outputs_exist_and_nothing_is_left_to_do(workflow_run):
    d, log = workflow_run
    outputs = [p for line in re.findall(r"^\s+output: (.+)$", log, re.M) for p in line.split(", ")]
    assert outputs and all((d / p).exists() for p in outputs), [p for p in outputs if not (d / p).exists()]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *WORKFLOW["targets"], "--profile",
                           "profiles/slurm", "--configfile", *WORKFLOW["configfiles"]],
                          cwd=d, capture_output=True, text=True, timeout=300, env=clean_env())
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stderr[-3000:]
