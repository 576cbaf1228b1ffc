"""A big input through the whole system, and a worker killed in the middle of
staging it: a real boss, real local workers and a real sshd datastore.

The mover's own tests (tests/test_movers.py) cover a broken transfer and the
fetching process's memory; here the same promises are checked where they
matter to a user - a VM dies while its task's 200 MB input is arriving, and
the task still succeeds on the next attempt, with no partial file under the
input's name and every worker process staying small while it stages.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from ecloud.log.url import open_store
from tests.support.brokers import wait_for
from tests.support.datastores import datastore_events
from tests.support.e2e import Cluster, finished_events
from tests.support.sshd import _descendants

BIG = 200 * 1024 * 1024
#: per process: the agent and the staging wrapper are Python (~30 MB each);
#: holding the input whole would take at least BIG on top
RSS_BOUND = 80 * 1024 * 1024


def write_random(path: Path, size: int) -> str:
    """``size`` random bytes at ``path`` (1 MiB at a time); their sha256."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(size // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def tree(pid: int) -> list[int]:
    return [pid, *_descendants(pid)]


def hwm(pid: int) -> int | None:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


@pytest.fixture
def big_run(sqlite_url, broker, sshd, tmp_path: Path):
    """Two local workers, a datastore on the test's sshd holding a 200 MB
    input, and one task that needs it (not started yet)."""
    sha = write_random(Path(sshd.datastore) / "data" / "big.bin", BIG)
    with open_store(sqlite_url) as store:
        store.append(datastore_events(sshd.address, sshd.datastore))
    cluster = Cluster(sqlite_url, broker.url, tmp_path, f"s{uuid.uuid4().hex[:6]}")
    cluster.env["ECLOUD_DATASTORE_KEY"] = str(sshd.key_file)
    cluster.push([{"id": "big", "command": "sha256sum big.bin | cut -c1-64 > sum.txt",
                   "inputs": [{"path": "data/big.bin", "sha256": sha}],
                   "outputs": ["sum.txt"]}])
    try:
        yield cluster, Path(sshd.datastore), sha
    finally:
        cluster.close()


def running_on(cluster: Cluster, attempt: int) -> str:
    """The worker the task's ``attempt`` was dispatched to."""
    def check():
        task = cluster.state().tasks["big"]
        return task.worker if task.attempt == attempt and task.worker else None
    return wait_for(check, 60, f"attempt {attempt} of 'big' dispatched", interval=0.05)


def test_a_worker_killed_mid_transfer_leaves_no_partial_input_and_the_next_attempt_succeeds(
        big_run) -> None:
    cluster, datastore, sha = big_run
    cluster.start_boss(workers=2, slots=1)
    first = running_on(cluster, 1)
    attempt_dir = cluster.workdir / ".ecloud-workers" / first / "big" / "1"
    staging = attempt_dir / ".big.bin.ecloud-fetch"

    def arriving() -> int | None:  # bytes of the input received so far
        files = [p for p in staging.rglob("*") if p.is_file()] if staging.is_dir() else []
        got = sum(p.stat().st_size for p in files)
        return got if got >= 8 << 20 else None

    got = wait_for(arriving, 60, "the input arriving on the first worker", interval=0.01)
    pids = tree(cluster.worker_pid(first))
    for pid in pids:  # the VM dies: its agent, the wrapper, rsync and ssh at once
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert got < BIG, "the transfer was over before the worker was killed"
    assert not (attempt_dir / "big.bin").exists()

    second = running_on(cluster, 2)
    assert second != first
    peaks = watch_memory(cluster, second)
    state = cluster.wait_all(timeout=120)

    assert not (attempt_dir / "big.bin").exists()  # the dead attempt never completed it
    assert state.tasks["big"].attempt == 2
    (done,) = [e for e in finished_events(cluster.log(), "big") if e.exit_code == 0]
    assert done.attempt == 2 and done.worker_id == second
    (fetched,) = [f for f in done.staged if f.direction == "in"]
    assert (fetched.path, fetched.sha256, fetched.bytes) == ("data/big.bin", sha, BIG)
    assert (datastore / "results" / "big" / "sum.txt").read_text().strip() == sha
    assert peaks, "no process of the second worker was measured"
    worst = max(peaks.items(), key=lambda kv: kv[1])
    assert worst[1] < RSS_BOUND, f"{worst[0]} peaked at {worst[1] / 2**20:.0f} MiB"
    stager = [k for k in peaks if "ecloud_worker.stage" in k]
    assert stager, f"the staging wrapper was not seen among {sorted(peaks)}"
    top = sorted(peaks.items(), key=lambda kv: -kv[1])[:4]
    print(f"\npeak RSS while staging {BIG >> 20} MiB, largest processes: " + "; ".join(
        f"{k.split(' ', 1)[1][:60]} {v / 2**20:.0f} MiB" for k, v in top))


def watch_memory(cluster: Cluster, worker: str) -> dict[str, int]:
    """Sample the peak RSS (VmHWM) of every process of ``worker`` - the
    agent, the staging wrapper, rsync, ssh, the command - until the task
    finishes; ``{"pid command": bytes}``."""
    peaks: dict[str, int] = {}
    root = cluster.worker_pid(worker)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for pid in tree(root):
            peak = hwm(pid)
            if peak is not None:
                key = f"{pid} {command_of(pid)}"
                peaks[key] = max(peaks.get(key, 0), peak)
        task = cluster.state().tasks["big"]
        if task.status in ("succeeded", "failed"):
            return peaks
        time.sleep(0.02)  # a sampling period, not a wait for a condition
    raise AssertionError("the second attempt did not finish within 120 s")
