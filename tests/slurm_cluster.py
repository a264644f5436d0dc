"""A throw-away single-node Slurm cluster for tests (Debian's slurm-wlm + munge, run as root).

    ensure_installed()            # apt-get install slurm-wlm munge, if slurmctld is missing
    with LocalCluster(tmp) as c:  # munged + slurmctld + slurmd, node idle on entry
        ...                       # sbatch, squeue, snakemake --executor slurm ...

Everything the cluster writes (munge key and socket, state, spool, logs, pid files, fake
GPU device files) lives in `tmp`, except the configuration: the Snakemake Slurm plugin
strips every SLURM_* variable (SLURM_CONF included) before its job step runs `srun`, so
slurm.conf and gres.conf must sit at the default path /etc/slurm/. Existing files there
are backed up and restored on exit. Exit stops only the daemons this object started, by
the pids in their pid files (checked against the process name), after cancelling the
cluster's own jobs. Raises SlurmUnavailable with the reason when a step cannot be done
(SlurmBusy when the machine is already taken by another Slurm).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from . import debian

ETC = Path("/etc/slurm")
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged")
LOCK = Path("/tmp/ltd-test-slurm.lock")  # one test cluster per machine: /etc/slurm is shared
MARKER = "# Written by tests/slurm_cluster.py"


class SlurmUnavailable(Exception):
    """Slurm cannot be installed or started here; the message says which step failed."""


class SlurmBusy(SlurmUnavailable):
    """Another Slurm (not ours) runs on this machine, or another test cluster holds the lock."""


BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo")


def ensure_installed(timeout=1200):
    """Install Debian's slurm-wlm and munge with apt-get if slurmctld is missing."""
    try:
        debian.ensure(PACKAGES, BINARIES, timeout)
    except debian.Unavailable as e:
        raise SlurmUnavailable(str(e)) from None


def clean_env():
    """The environment for Slurm clients: the default config path, no inherited job context."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _running(name):
    """Pids of processes called `name` (to detect a Slurm that is not ours; never to kill)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(p.name) == name]


def _mem_mb():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


def _restore(backup, made_etc):
    """Put back /etc/slurm as it was before a test cluster wrote its config there."""
    for f in ("slurm.conf", "gres.conf"):
        (ETC / f).unlink(missing_ok=True)
        if backup is not None and (backup / f).exists():
            shutil.copy2(backup / f, ETC / f)
    if made_etc:
        shutil.rmtree(ETC, ignore_errors=True)


class LocalCluster:
    """munged + slurmctld + slurmd on this machine: one node with `gpus` fake GPUs of type
    `gpu_type` and at least `cpus` CPUs, in two partitions, `cpu` (the default) and `gpu`."""

    def __init__(self, tmp, gpus=4, gpu_type="a100", cpus=4, lock_timeout=600):
        self.tmp = Path(tmp)
        self.gpus = gpus
        self.gpu_type = gpu_type
        self.cpus = max(cpus, os.cpu_count() or 1)
        self.lock_timeout = lock_timeout
        self.host = socket.gethostname().split(".")[0]
        self.pids = {}              # daemon -> pid we started
        self._lock = None
        self._backup = self.tmp / "etc-backup"
        self._made_etc = False
        self.munge_dir = None
        self._wrote_conf = False

    # -- set-up ------------------------------------------------------------------------

    def _acquire_lock(self):
        self._lock = open(LOCK, "w")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SlurmBusy(f"another test cluster held {LOCK} for {self.lock_timeout} s") from None
                time.sleep(2)

    def _write_config(self):
        t = self.tmp
        for d in ("state", "spool", "log", "run", "dev"):
            (t / d).mkdir(mode=0o700, exist_ok=True)
        # munged insists that every directory above its socket is searchable by all, which
        # pytest's private temp dirs are not: its files go to a directory of their own in /tmp.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="ltd-test-munge-"))
        self.munge_dir.chmod(0o755)
        for i in range(self.gpus):
            (t / "dev" / f"gpu{i}").touch()
        mem = max(_mem_mb() - 2048, 1024)
        self.socket = self.munge_dir / "munge.socket"
        if ETC.exists():
            self._backup.mkdir()
            for f in ("slurm.conf", "gres.conf"):
                if (ETC / f).exists():
                    shutil.copy2(ETC / f, self._backup / f)
        else:
            ETC.mkdir(parents=True)
            self._made_etc = True
        conf = f"""\
{MARKER} for a test; the original (if any) is restored afterwards.
# backup={self._backup if self._backup.exists() else ''} made-etc={int(self._made_etc)}
ClusterName=ltdtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={t / 'state'}
SlurmdSpoolDir={t / 'spool'}
SlurmctldPidFile={t / 'run' / 'slurmctld.pid'}
SlurmdPidFile={t / 'run' / 'slurmd.pid'}
SlurmctldLogFile={t / 'log' / 'slurmctld.log'}
SlurmdLogFile={t / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol this long: the tests read every job's
# state after runs of several minutes (and the plugin's squeue status needs >= 3 x its
# first check delay).
MinJobAge=1200
# SIGTERM -> SIGKILL at a time limit: a job that was told to stop ends 5 s later (the
# tests' training writes its small checkpoint in well under a second).
KillWait=5
# The node may declare more CPUs than this machine has (a job's --cpus-per-task comes from
# the workflow's config, not from the machine Snakemake runs on).
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} Gres=gpu:{self.gpu_type}:{self.gpus} Feature={self.gpu_type} State=UNKNOWN
PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP
"""
        gres = f"NodeName={self.host} Name=gpu Type={self.gpu_type} File={t / 'dev'}/gpu[0-{self.gpus - 1}]\n"
        self._wrote_conf = True
        (ETC / "slurm.conf").write_text(conf)
        (ETC / "gres.conf").write_text(gres)

    def _start(self, name, cmd, pidfile, timeout=30):
        p = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=timeout)
        if p.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(map(str, cmd))}` failed (exit {p.returncode}): "
                                   f"{(p.stderr or p.stdout).strip()[-800:]}{self._log_tail(name)}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = int(Path(pidfile).read_text().split()[0])
                if _comm(pid) == name:
                    self.pids[name] = pid
                    return
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.2)
        raise SlurmUnavailable(f"{name} did not write its pid file {pidfile} within {timeout} s{self._log_tail(name)}")

    def _log_tail(self, name):
        log = (self.munge_dir if name == "munged" else self.tmp / "log") / f"{name}.log"
        try:
            return f"\n--- {log} ---\n" + "\n".join(log.read_text().splitlines()[-15:])
        except OSError:
            return ""

    def _reap_stale(self):
        """A test run that was killed (the lock is ours now, so its owner is gone) left its
        daemons and config: stop those daemons by their pid files and restore /etc/slurm."""
        conf = ETC / "slurm.conf"
        try:
            text = conf.read_text()
        except OSError:
            return
        if MARKER not in text:
            return
        keys = {}
        for line in text.splitlines():
            for word in line.lstrip("# ").split():
                if "=" in word:
                    k, v = word.split("=", 1)
                    keys.setdefault(k, v)
        pidfiles = {"slurmd": keys.get("SlurmdPidFile"), "slurmctld": keys.get("SlurmctldPidFile")}
        if keys.get("AuthInfo", "").startswith("socket="):
            pidfiles["munged"] = str(Path(keys["AuthInfo"][len("socket="):]).parent / "munged.pid")
        for name, pidfile in pidfiles.items():
            try:
                self.pids[name] = int(Path(pidfile).read_text().split()[0])
            except (TypeError, OSError, ValueError, IndexError):
                continue
            self._stop(name)
        _restore(Path(keys["backup"]) if keys.get("backup") else None, keys.get("made-etc") == "1")
        if "munged" in pidfiles and Path(pidfiles["munged"]).parent.name.startswith("ltd-test-munge-"):
            shutil.rmtree(Path(pidfiles["munged"]).parent, ignore_errors=True)

    def start(self):
        self._acquire_lock()
        self._reap_stale()
        if _running("slurmctld") or _running("slurmd"):
            raise SlurmBusy("a Slurm daemon (slurmctld/slurmd) not started by this test already runs here; "
                                   "not replacing its /etc/slurm configuration")
        self._write_config()
        m = self.munge_dir
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._start("munged", ["munged", f"--key-file={key}", f"--socket={self.socket}",
                               f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                               f"--seed-file={m / 'munged.seed'}"], m / "munged.pid")
        run = self.tmp / "run"
        self._start("slurmctld", ["slurmctld", "-c"], run / "slurmctld.pid")
        self._start("slurmd", ["slurmd"], run / "slurmd.pid")
        self.wait_idle()
        return self

    def wait_idle(self, timeout=90):
        """Until slurmd has registered and the node takes jobs (State=IDLE, no flags)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            p = subprocess.run(["scontrol", "-o", "show", "node", self.host], capture_output=True, text=True,
                               env=clean_env())
            state = next((w for w in (p.stdout or p.stderr).split() if w.startswith("State=")), p.stderr.strip())
            if state == "State=IDLE":
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"the node did not become idle within {timeout} s ({state!r})"
                               f"{self._log_tail('slurmctld')}{self._log_tail('slurmd')}")

    # -- tear-down ---------------------------------------------------------------------

    def _cancel_jobs(self, timeout=30):
        if "slurmctld" not in self.pids:
            return
        env = clean_env()
        ids = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env).stdout.split()
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, env=env)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                left = subprocess.run(["squeue", "-h", "-t", "PD,R,CG,CF,S", "-o", "%i"],
                                      capture_output=True, text=True, env=env).stdout.split()
                if not left:
                    break
                time.sleep(1)

    def _stop(self, name, timeout=20):
        pid = self.pids.pop(name, None)
        if pid is None or _comm(pid) != name:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _comm(pid) == name:
            time.sleep(0.2)
        if _comm(pid) == name:
            os.kill(pid, signal.SIGKILL)

    def stop(self):
        try:
            self._cancel_jobs()
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                try:
                    self._stop(name)
                except OSError:
                    pass
            if self._wrote_conf:
                _restore(self._backup, self._made_etc)
                self._wrote_conf = False
            if self.munge_dir is not None:
                shutil.rmtree(self.munge_dir, ignore_errors=True)
                self.munge_dir = None
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
