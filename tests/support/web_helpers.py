"""Helpers for the status page's tests: a gated 300-task DAG, ``ecloud run``
and ``ecloud web`` as subprocesses, and the page's data read back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ecloud.errors import EcloudError
from ecloud.log.url import open_store
from tests.support.brokers import wait_for
from tests.support.e2e import ROOT, write_tasks

SIMS = 240
POSTS = 48
PLOTS = 10
FAILING = "sim-013"
#: prep + sims + posts + plots + report
TOTAL = 1 + SIMS + POSTS + PLOTS + 1


def gated_dag(folder: Path) -> tuple[Path, Path]:
    """A 300-task sweep: ``prep``, 240 ``sim-NNN`` (one fails with a message
    on stderr), 48 ``post-NN`` of 5 sims each that wait until the gate file
    exists, 10 ``plot-N`` over the posts, and a ``report``. Returns the
    task file and the gate: until the gate is opened, the run holds still
    with the sims done and the posts running or queued."""
    gate = folder / "gate"
    tasks = [{"id": "prep", "command": "true"}]
    for i in range(SIMS):
        tid = f"sim-{i:03d}"
        command = ("echo 'sim-013: mesh file missing' >&2; exit 3" if tid == FAILING else "true")
        tasks.append({"id": tid, "command": command, "depends_on": ["prep"]})
    for p in range(POSTS):
        tasks.append({"id": f"post-{p:02d}",
                      "command": f"while [ ! -e {gate} ]; do sleep 0.05; done",
                      "depends_on": [f"sim-{i:03d}" for i in range(p * 5, p * 5 + 5)]})
    for k in range(PLOTS):
        tasks.append({"id": f"plot-{k}", "command": "true",
                      "depends_on": [f"post-{p:02d}" for p in range(k, POSTS, PLOTS)]})
    tasks.append({"id": "report", "command": "true",
                  "depends_on": [f"plot-{k}" for k in range(PLOTS)]})
    assert len(tasks) == TOTAL
    return write_tasks(folder / "sweep.json", tasks), gate


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_run(cwd: Path, task_file: Path, *args: str) -> subprocess.Popen:
    """``ecloud run FILE`` in ``cwd`` (SQLite log ecloud.db, embedded broker)."""
    return subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", "run", str(task_file),
                             "--db", f"sqlite:///{cwd}/ecloud.db", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


class Web:
    """``ecloud web`` on a free loopback port, for the log ``db``."""

    def __init__(self, cwd: Path, db: str) -> None:
        self.log = open(cwd / "web.log", "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecloud.cli.main", "web", "--db", db,
             "--address", "127.0.0.1:0"], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
            stderr=self.log, text=True, start_new_session=True)
        line = self.proc.stdout.readline()  # printed once the socket listens
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if not found:
            self.stop()
            pytest.fail(f"ecloud web did not start: {line!r} {(cwd / 'web.log').read_text()}")
        self.url = found.group(1)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10) as response:
            return response.read()

    def json(self, path: str) -> dict:
        return json.loads(self.get(path))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def stop_run(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_for_tasks(db: str, timeout: float = 60.0) -> None:
    """Wait until the run has pushed its tasks (the log exists and has them)."""
    def pushed() -> bool:
        try:
            with open_store(db, create=False) as store:
                return any(True for _ in store.read(1, None, types=["tasks.submitted"]))
        except EcloudError:
            return False

    wait_for(pushed, timeout, "the run to push its tasks", 0.05)


def wait_until_held(web: Web, timeout: float = 120.0) -> dict:
    """Wait until the run holds at the gate: every sim finished, the posts
    that may run are running. Returns the page's data then."""
    def held() -> dict | None:
        page = web.json("/api/page")
        counts = page["progress"]["counts"]
        if counts["succeeded"] == 1 + SIMS - 1 and counts["failed"] == 1 and counts["running"] > 0:
            return page
        return None

    return wait_for(held, timeout, "the sims to finish and the posts to wait at the gate", 0.1)


def artifacts_dir() -> Path:
    """Where tests leave files for people (screenshots): $ECLOUD_TEST_ARTIFACTS
    or ``test-artifacts/`` in the checkout."""
    folder = Path(os.environ.get("ECLOUD_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


#: the small log of :func:`varied_log`: what each task ends as
VARIED = {"prep": "succeeded", "sim-01": "failed", "sim-02": "succeeded", "post-1": "blocked",
          "post-2": "blocked", "moved": "running", "dropped": "cancelled", "later": "waiting"}


def varied_log(db: str) -> None:
    """A small log, written event by event (one append each, one second
    apart), with a task in most states: ``sim-01`` fails twice with
    something on stderr (a retry, then for good) and blocks ``post-1`` and
    ``post-2``; ``moved`` loses its worker and runs again elsewhere;
    ``dropped`` is cancelled; ``later`` waits for ``moved``."""
    from ecloud.events import types as ev
    from ecloud.events.types import TaskSpec

    specs = (TaskSpec("prep", "true"),
             TaskSpec("sim-01", "simulate --mesh m1", depends_on=("prep",), retries=1,
                      retry_backoff=0.0, env={"MESH_TOKEN": "not-for-the-page"}),
             TaskSpec("sim-02", "simulate --mesh m2", depends_on=("prep",)),
             TaskSpec("post-1", "post", depends_on=("sim-01", "sim-02")),
             TaskSpec("post-2", "post", depends_on=("post-1",)),
             TaskSpec("moved", "sleep 100"),
             TaskSpec("dropped", "sleep 100"),
             TaskSpec("later", "true", depends_on=("moved",)))
    events = [
        ev.WorkerAnnounced("w1", "node-1", 4, 1, "i1", msg_id="a1"),
        ev.WorkerAnnounced("w2", "node-2", 4, 1, "i2", msg_id="a2"),
        ev.TasksSubmitted("b1", specs),
        ev.TaskDispatched("prep", 1, "w1"),
        ev.TaskFinished("prep", 1, "w1", 0, 0.5, stdout_tail="prepared\n", msg_id="f1"),
        ev.TaskDispatched("sim-01", 1, "w1"),
        ev.TaskStarted("sim-01", 1, "w1", msg_id="s1"),
        ev.TaskFinished("sim-01", 1, "w1", 3, 1.0, stderr_tail="boom: mesh m1 missing\n",
                        msg_id="f2"),
        ev.TaskDispatched("sim-02", 1, "w1"),
        ev.TaskFinished("sim-02", 1, "w1", 0, 1.0, msg_id="f3"),
        ev.TaskDispatched("sim-01", 2, "w1"),
        ev.TaskFinished("sim-01", 2, "w1", 4, 1.0, stderr_tail="boom again: mesh m1 missing\n",
                        msg_id="f4"),
        ev.TaskDispatched("moved", 1, "w2"),
        ev.TaskStarted("moved", 1, "w2", msg_id="s2"),
        ev.WorkerLost("w2", "connection lost"),
        ev.TaskDispatched("moved", 2, "w1"),
        ev.TaskStarted("moved", 2, "w1", msg_id="s3"),
        ev.TaskCancelled("dropped", "not needed"),
    ]
    with open_store(db) as store:
        for i, event in enumerate(events):
            store.append([event], ts=1_800_000_000.0 + i)
