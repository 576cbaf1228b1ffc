"""A fake boss and real worker processes, for tests/test_worker.py.

The broker is the machine's Mosquitto (``ECLOUD_TEST_BROKER``, default
``mqtt://127.0.0.1:1883``); each :class:`FakeBoss` makes a random cluster
name, so tests never hear each other. Every worker process (and so every task
it spawns) carries ``ECLOUD_TEST_TAG=<cluster>`` in its environment, which is
how :func:`reap` finds whatever a failed test left running.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import frozen

from ecloud.effects.messaging.mqtt import Connection
from ecloud.wire import (
    BossPayload,
    DispatchMsg,
    dumps,
    from_all,
    from_topic,
    parse_worker_payload,
    to_topic,
    worker_of,
)

BROKER = os.environ.get("ECLOUD_TEST_BROKER", "mqtt://127.0.0.1:1883")
WAIT = 15.0  # seconds: the longest any single expectation may take
TAG = "ECLOUD_TEST_TAG"

#: a task command that blocks until the file $GATE exists (gives up after 20 s)
GATE_CMD = 'i=0; while [ ! -e "$GATE" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done'


@frozen
class Heard:
    """One report as the boss received it, numbered in arrival order."""

    index: int
    worker: str
    report: Any
    at: float

    @property
    def kind(self) -> str:
        return self.report.kind if self.report is not None else "probe"


class FakeBoss:
    """Plays the boss: hears every worker of its cluster, acknowledges every
    report (unless :attr:`hold` says not to), sends what a test tells it to."""

    def __init__(self, broker: str = BROKER) -> None:
        self.cluster = f"test-{uuid.uuid4().hex[:12]}"
        self.heard: list[Heard] = []
        self.rejected: list[str] = []
        self.cond = threading.Condition()
        #: reports for which this returns True are not acknowledged
        self.hold: Callable[[Any], bool] = lambda report: False
        self.conn = Connection(
            broker,
            f"fakeboss-{self.cluster}",
            on_message=self._message,
            on_connect=lambda: self.conn.subscribe(from_all(self.cluster)),
            # like the real boss: what a worker says while we reconnect waits for us
            clean_session=False,
        )
        self.conn.start(wait=10)
        self.probe()

    def close(self) -> None:
        self.conn.stop()

    # ------------------------------------------------------------- hearing

    def _message(self, topic: str, payload: bytes) -> None:
        worker = worker_of(topic, self.cluster) or "?"
        now = time.monotonic()
        if worker.startswith("probe-"):
            reports = [None]
        else:
            try:
                reports = parse_worker_payload(payload, worker).reports
            except Exception as exc:  # noqa: BLE001 - a test asserts on rejected
                with self.cond:
                    self.rejected.append(f"{worker}: {exc}")
                    self.cond.notify_all()
                return
        acks = []
        with self.cond:
            for report in reports:
                self.heard.append(Heard(len(self.heard), worker, report, now))
                if report is not None and report.msg_id and not self.hold(report):
                    acks.append(report.msg_id)
            self.cond.notify_all()
        if acks:
            self.send(worker, acks=acks)

    def probe(self) -> None:
        """Publish a marker on a ``from`` topic and wait for it to come back:
        the subscription is live, and what the broker routed before it is in.

        The marker is sent again until it comes back: ``Connection`` reports
        "connected" before ``on_connect`` has subscribed, so the first one
        can reach the broker ahead of the SUBSCRIBE and go nowhere."""
        marker = f"probe-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + WAIT
        while True:
            self.conn.publish(from_topic(self.cluster, marker), b"{}")
            try:
                self.wait_for(lambda h: h.worker == marker, timeout=0.5)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def wait_for(self, pred: Callable[[Heard], bool], timeout: float = WAIT,
                 after: int = -1) -> Heard:
        """The first report (with index > ``after``) matching ``pred``."""

        def find() -> Heard | None:
            return next((h for h in self.heard[after + 1:] if pred(h)), None)

        with self.cond:
            found = self.cond.wait_for(find, timeout)
            if found is None:
                seen = [f"{h.worker}:{_brief(h.report)}" for h in self.heard]
                raise AssertionError(f"no matching report within {timeout}s; heard {seen}; "
                                     f"rejected {self.rejected}")
            return found

    def report(self, worker: str, kind: str, task_id: str | None = None, *,
               timeout: float = WAIT, after: int = -1, **fields: Any) -> Heard:
        """The first ``kind`` report of ``worker`` (for ``task_id``, with
        these field values) after index ``after``."""

        def pred(h: Heard) -> bool:
            r = h.report
            return (h.worker == worker and h.kind == kind
                    and (task_id is None or r.task_id == task_id)
                    and all(getattr(r, k) == v for k, v in fields.items()))

        return self.wait_for(pred, timeout, after)

    def reports(self, worker: str, kind: str, task_id: str | None = None) -> list[Any]:
        with self.cond:
            return [h.report for h in self.heard
                    if h.worker == worker and h.kind == kind
                    and (task_id is None or h.report.task_id == task_id)]

    # ------------------------------------------------------------- sending

    def send(self, worker: str, **fields: Any) -> None:
        self.conn.publish(to_topic(self.cluster, worker), dumps(BossPayload(**fields)))

    def dispatch(self, worker: str, task_id: str, command: str | tuple[str, ...],
                 attempt: int = 1, **fields: Any) -> DispatchMsg:
        msg = DispatchMsg(task_id, attempt, command, **fields)
        self.send(worker, dispatch=[msg])
        return msg


def _brief(report: Any) -> str:
    if report is None:
        return "probe"
    task = f"({report.task_id}/{report.attempt})" if hasattr(report, "task_id") else ""
    return report.kind + task


class WorkerProc:
    """A real ``python -m ecloud_worker.agent`` process talking to ``boss``."""

    def __init__(self, boss: FakeBoss, tmp_path: Path, worker_id: str = "w1", *extra: str,
                 slots: int = 2, heartbeat: float = 1.0, debug: bool = True,
                 standard: bool = True, env: dict[str, str] | None = None,
                 broker: str = BROKER) -> None:
        self.worker_id = worker_id
        self.work_dir = tmp_path / f"work-{worker_id}"
        self.stderr_path = tmp_path / f"{worker_id}-{uuid.uuid4().hex[:6]}.stderr"
        args = [sys.executable, "-m", "ecloud_worker.agent"]
        if standard:
            args += ["--broker", broker, "--cluster", boss.cluster, "--worker-id", worker_id,
                     "--slots", str(slots), "--work-dir", str(self.work_dir)]
        args += ["--heartbeat", str(heartbeat), *extra] + (["--debug"] if debug else [])
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ECLOUD_")}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env={**clean, TAG: boss.cluster, **(env or {})})

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_stderr(self, pattern: str, timeout: float = WAIT) -> re.Match:
        """Wait until the worker's stderr has a line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.stderr(), re.MULTILINE)
            if found:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {pattern!r} in the worker's stderr:\n{self.stderr()}")
            time.sleep(0.02)  # a file has no change notification worth the trouble

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------- processes


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has finished running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_dead(pid: int, timeout: float = WAIT) -> None:
    """Wait until ``pid`` has exited (pidfd: woken by the exit itself)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not alive(pid):
            return
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"pid {pid} still alive after {timeout}s"
    finally:
        os.close(fd)


def tagged(tag: str, extra: str = "") -> list[int]:
    """Live processes whose environment has ``ECLOUD_TEST_TAG=tag`` (and
    ``extra``, a ``KEY=value``, when given)."""
    want = {f"{TAG}={tag}".encode()} | ({extra.encode()} if extra else set())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= env and alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def reap(tag: str) -> None:
    """Kill whatever a test left running (workers and their tasks)."""
    for pid in tagged(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
