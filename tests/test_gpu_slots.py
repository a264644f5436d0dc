"""GPU slots on the CPU: fake GPU lists, real flock()s, real concurrent processes.

Child processes are spawned, not forked: a fork after CUDA started (on a GPU machine,
by an earlier test) would be unusable, and a spawned child starts as a job does."""

import contextlib
import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest

from ltd import gpu_slots

GPUS = ["0", "1", "2", "3"]
CTX = mp.get_context("spawn")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("LTD_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LTD_GPU_SLOTS_HELD", raising=False)


def _job(slots_dir, out_dir, i, n, barrier, gpus=GPUS, per_gpu=1):
    barrier.wait()  # all start together so that they contend for the slots
    with gpu_slots.acquire(n, slots_dir, gpus=gpus, job=f"job{i}", per_gpu=per_gpu) as ids:
        start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        cvd = os.environ["CUDA_VISIBLE_DEVICES"]
        time.sleep(random.Random(i).uniform(0.1, 0.4))
        end = time.monotonic()
    Path(out_dir, f"{i}.json").write_text(json.dumps({"ids": ids, "cvd": cvd, "start": start, "end": end}))


def _run_jobs(tmp_path, sizes, gpus=GPUS, per_gpu=1) -> dict[str, list[tuple[float, float]]]:
    """Jobs of ``sizes`` GPUs started together in processes; each GPU's holding spans."""
    out = tmp_path / "out"
    out.mkdir()
    barrier = CTX.Barrier(len(sizes))
    procs = [CTX.Process(target=_job, args=(tmp_path / "slots", out, i, n, barrier, gpus, per_gpu))
             for i, n in enumerate(sizes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * len(procs)

    records = [json.loads((out / f"{i}.json").read_text()) for i in range(len(sizes))]  # every job ran
    spans = {}
    for n, r in zip(sizes, records):
        assert len(r["ids"]) == n and len(set(r["ids"])) == n  # a multi-GPU job: distinct GPUs
        assert r["cvd"] == ",".join(r["ids"])
        for gpu in r["ids"]:
            spans.setdefault(gpu, []).append((r["start"], r["end"]))
    return spans


def _most_at_once(held: list[tuple[float, float]]) -> int:
    """The most spans that overlap at one moment (an end and a start at the same time do not)."""
    events = sorted([(end, -1) for _, end in held] + [(start, 1) for start, _ in held])
    now = most = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


def test_concurrent_jobs_never_share_a_slot(tmp_path):
    sizes = [1, 2, 1, 1, 2, 1, 1, 1]  # some 2-GPU jobs: all-or-nothing taking must not deadlock
    for gpu, held in _run_jobs(tmp_path, sizes).items():
        assert _most_at_once(held) == 1, f"GPU {gpu} held by two jobs at once"


def test_k_jobs_per_gpu_share_it_and_never_more(tmp_path):
    sizes = [1, 2, 1, 1, 3, 1, 2, 1, 1]  # on 3 GPUs with 2 slots each; a 3-GPU job takes one slot on each
    spans = _run_jobs(tmp_path, sizes, gpus=["0", "1", "2"], per_gpu=2)
    for gpu, held in spans.items():
        assert _most_at_once(held) <= 2, f"GPU {gpu} held by more than 2 jobs at once"


def test_slots_per_gpu_in_one_process(tmp_path):
    """flock(2) locks per open file: one process can hold several slots, as several jobs would."""
    with contextlib.ExitStack() as stack:
        first = [stack.enter_context(gpu_slots.acquire(1, tmp_path, gpus=["0", "1"], per_gpu=2)) for _ in range(2)]
        assert first == [["0"], ["1"]]  # every GPU's first slot before any GPU's second: spread
        assert stack.enter_context(gpu_slots.acquire(2, tmp_path, gpus=["0", "1"], per_gpu=2)) == ["0", "1"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu0.lock", "gpu0.slot1.lock", "gpu1.lock",
                                                               "gpu1.slot1.lock"]
        with pytest.raises(TimeoutError, match=r"2 jobs per GPU"):  # all four slots held
            with gpu_slots.acquire(1, tmp_path, gpus=["0", "1"], per_gpu=2, timeout=0.2):
                pass
        with pytest.raises(TimeoutError):  # one slot per GPU (the default): both GPUs taken
            with gpu_slots.acquire(1, tmp_path, gpus=["0", "1"], timeout=0.2):
                pass
    with gpu_slots.acquire(1, tmp_path, gpus=["0"], per_gpu=3) as a, \
            gpu_slots.acquire(1, tmp_path, gpus=["0"], per_gpu=3) as b, \
            gpu_slots.acquire(1, tmp_path, gpus=["0"], per_gpu=3) as c:
        assert a == b == c == ["0"]
        with pytest.raises(TimeoutError):
            with gpu_slots.acquire(1, tmp_path, gpus=["0"], per_gpu=3, timeout=0.2):
                pass
    with pytest.raises(ValueError, match="jobs_per_gpu must be at least 1"):
        with gpu_slots.acquire(1, tmp_path, gpus=["0"], per_gpu=0):
            pass


def _hold_forever(slots_dir, ready):
    with gpu_slots.acquire(1, slots_dir, gpus=["0"]):
        ready.set()
        time.sleep(60)


def test_a_killed_holder_frees_its_slot(tmp_path):
    ready = CTX.Event()
    p = CTX.Process(target=_hold_forever, args=(tmp_path, ready))
    p.start()
    try:
        assert ready.wait(20)
        assert "pid=" in (tmp_path / "gpu0.lock").read_text()  # the holder is named for humans
        with pytest.raises(TimeoutError):
            with gpu_slots.acquire(1, tmp_path, gpus=["0"], timeout=0.3):
                pass
        os.kill(p.pid, signal.SIGKILL)  # no cleanup runs: the kernel must drop the flock
        p.join(10)
        # free again (a generous timeout: a loaded machine may be slow, never wrong)
        with gpu_slots.acquire(1, tmp_path, gpus=["0"], timeout=30) as ids:
            assert ids == ["0"]
    finally:
        if p.is_alive():
            p.kill()


def test_more_gpus_than_exist_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"5 GPUs.*only 4"):
        with gpu_slots.acquire(5, tmp_path, gpus=GPUS):
            pass


def test_cuda_visible_devices_set_inside_and_restored(tmp_path, monkeypatch):
    with gpu_slots.acquire(2, tmp_path, gpus=GPUS) as ids:
        assert ids == ["0", "1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with gpu_slots.acquire(1, tmp_path) as ids:  # the list comes from the job's own CUDA_VISIBLE_DEVICES
        assert ids == ["2"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
        assert gpu_slots.available_gpus() == ["2", "3"]  # as the job started, not as narrowed
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_no_gpu_or_zero_gpus_is_a_no_op(tmp_path):
    for n, gpus in [(1, []), (0, GPUS)]:
        with gpu_slots.acquire(n, tmp_path / "slots", gpus=gpus) as ids:
            assert ids == [] and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "slots").exists()


def test_available_gpus_sources(monkeypatch):
    monkeypatch.setattr(gpu_slots, "_count_cuda_devices", lambda: 2)
    assert gpu_slots.available_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slots.available_gpus() == []  # CUDA's meaning: no GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu_slots.available_gpus() == ["3"]
    monkeypatch.setenv("LTD_GPUS", "0, 1,2")
    assert gpu_slots.available_gpus() == ["0", "1", "2"]


def _setup_job(slots_dir, queue):
    from ltd import runtime

    for job in ("validate", ""):  # the second as a worker it starts would: must not wait on itself
        try:
            runtime.setup("auto", 1, gpus=1, slots_dir=slots_dir, job=job)
        except runtime.NoCudaError:
            pass  # GPU 5 exists on no test machine; the slot is taken before CUDA is asked (tested here)
    queue.put((os.environ.get("CUDA_VISIBLE_DEVICES"), None))
    time.sleep(60)


def test_runtime_setup_holds_for_the_process(tmp_path, monkeypatch):
    from ltd import runtime

    assert runtime.setup("cpu", None, gpus=1, slots_dir=tmp_path).type == "cpu"  # CPU jobs: no slots
    assert not any(tmp_path.iterdir())

    monkeypatch.setenv("LTD_GPUS", "5")  # inherited by the spawned job
    queue = CTX.Queue()
    p = CTX.Process(target=_setup_job, args=(tmp_path, queue))
    p.start()
    try:
        cvd, _ = queue.get(timeout=60)
        assert cvd == "5"
        host_dir = gpu_slots.host_slots_dir(tmp_path)
        assert "job=validate" in (host_dir / "gpu5.lock").read_text()
        with pytest.raises(TimeoutError):  # still held after setup() returned
            with gpu_slots.acquire(1, host_dir, gpus=["5"], timeout=0.2):
                pass
    finally:
        p.kill()
        p.join(10)
    with gpu_slots.acquire(1, host_dir, gpus=["5"], timeout=1.0) as ids:  # the exit released it
        assert ids == ["5"]


def test_the_plan_counts_gpus_as_slots_over_jobs_per_gpu(paper_config):
    """With k jobs per GPU, --resources gpu=N counts slots: a training job's processes need
    N // k distinct GPUs (the paper's ImageNet students run 4 processes)."""
    from ltd import checks
    from ltd import config as ltd_config

    shared = ltd_config.merge(paper_config, {"jobs_per_gpu": 2})
    checks.check(shared, gpus=8)  # 4 GPUs, 2 slots each
    with pytest.raises(checks.ConfigError, match=r"processes = 4: .* --resources gpu / jobs_per_gpu = 6 / 2 = 3"):
        checks.check(shared, gpus=6)
