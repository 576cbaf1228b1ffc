"""``ecloud logs``: find an attempt's stdout and stderr wherever they are.

An attempt's output is not in the log (only its last 4 KiB, in the finish
report); it is, in order of preference:

1. **on the datastore**, when the attempt succeeded with staging: the
   worker pushed ``stdout`` and ``stderr`` to the task's results folder,
   and the report names them with their sha256 (checked on the way back);
2. **in a local worker's directory** on this machine (``ecloud run`` and
   ``ecloud-boss --local`` keep them under ``.ecloud-workers/<worker>/``);
3. **on the worker**, asked over MQTT (:mod:`ecloud_worker.logserve`), while it
   lives: the only way to a running attempt on a VM;
4. **in the log**: the tails of the finish report, said to be only tails.

Each place is a :class:`Reader`; :func:`copy_output` copies from one, and
with ``follow`` keeps copying until the log says the attempt is over.
"""

from __future__ import annotations

import base64
import itertools
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from attrs import define

from ecloud.errors import EcloudError, UserError
from ecloud.events import types as ev
from ecloud.log.store import LogStore
from ecloud.projections.state import ACTIVE, State
from ecloud.wire import (
    LOG_CHUNK,
    STREAMS,
    BossPayload,
    LogsReply,
    LogsRequest,
    WireError,
    dumps,
    logs_topic,
    parse_logs_reply,
    to_topic,
)


class Unavailable(EcloudError):
    """This place does not have the output (the reason says why)."""


@define
class Attempt:
    """What the log says about one attempt of a task."""

    task_id: str
    attempt: int
    worker_id: str
    finished: ev.TaskFinished | None = None

    def staged(self, stream: str) -> ev.StagedFile | None:
        """The stream's copy on the datastore, if the attempt pushed one."""
        if self.finished is None:
            return None
        return next((f for f in self.finished.staged
                     if f.direction == "out" and f.name == stream), None)


def find_attempt(store: LogStore, state: State, task_id: str, attempt: int | None) -> Attempt:
    """The attempt (default: the latest) of ``task_id``, from the log."""
    task = state.tasks.get(task_id)
    if task is None:
        raise UserError(f"no task {task_id!r} in the log")
    if task.attempt == 0:
        raise UserError(f"task {task_id} has not been dispatched yet: no output (it is "
                        f"{task.status})")
    wanted = task.attempt if attempt is None else attempt
    if not 1 <= wanted <= task.attempt:
        raise UserError(f"task {task_id} has attempts 1 to {task.attempt}, not {wanted}")
    found: Attempt | None = None
    for rec in store.read(1, state.seq, types=[ev.TaskDispatched.TYPE, ev.TaskFinished.TYPE]):
        e = rec.event
        if e.task_id != task_id or e.attempt != wanted:
            continue
        if isinstance(e, ev.TaskDispatched):
            found = found or Attempt(task_id, wanted, e.worker_id)
        elif found is not None and found.finished is None and e.worker_id == found.worker_id:
            found.finished = e
    if found is None:
        raise UserError(f"the log has no dispatch of {task_id} attempt {wanted}")
    return found


def still_running(store: LogStore, state: State, attempt: Attempt) -> bool:
    """Whether the attempt is still under way, after folding what the log
    gained since ``state`` (which this advances)."""
    from ecloud.log.rebuild import fold_range

    fold_range(store, state)
    task = state.tasks[attempt.task_id]
    return task.attempt == attempt.attempt and task.status in ACTIVE \
        and task.worker == attempt.worker_id


# ---------------------------------------------------------------- the places


class Reader(Protocol):
    #: where the output comes from, for the operator
    where: str

    def read(self, stream: str, offset: int) -> bytes:
        """Bytes of ``stream`` from ``offset`` (empty: none there yet)."""


class DatastoreReader:
    """Both streams fetched once from the datastore, checksums checked."""

    def __init__(self, attempt: Attempt, address: str | None, key_file: str | None,
                 streams: tuple[str, ...]) -> None:
        from ecloud.effects.data.movers import StagingError, mover_for

        files = {s: attempt.staged(s) for s in streams}
        if not address or any(f is None for f in files.values()):
            raise Unavailable("not staged to the datastore")
        self.where = f"the datastore ({address})"
        self._data: dict[str, bytes] = {}
        try:
            with tempfile.TemporaryDirectory(prefix="ecloud-logs-") as tmp, \
                    mover_for(address, key_file=key_file) as mover:
                for stream, staged in files.items():
                    dest = Path(tmp) / stream
                    mover.fetch(staged.path, dest, staged.sha256)
                    self._data[stream] = dest.read_bytes()
        except StagingError as exc:
            raise Unavailable(f"the datastore: {exc}") from None

    def read(self, stream: str, offset: int) -> bytes:
        return self._data[stream][offset:offset + LOG_CHUNK]


class LocalReader:
    """A local worker's attempt directory on this machine."""

    def __init__(self, attempt: Attempt, work_root: Path) -> None:
        from ecloud_worker.runner import attempt_path

        self.folder = Path(attempt_path(str(work_root / attempt.worker_id), attempt.task_id,
                                        attempt.attempt))
        if not self.folder.is_dir():
            raise Unavailable(f"no local worker directory {self.folder}")
        self.where = f"the local worker directory {self.folder}"

    def read(self, stream: str, offset: int) -> bytes:
        try:
            with open(self.folder / stream, "rb") as f:
                f.seek(offset)
                return f.read(LOG_CHUNK)
        except FileNotFoundError:
            return b""


class WorkerReader:
    """Ask the worker over MQTT (see :mod:`ecloud_worker.logserve`)."""

    def __init__(self, attempt: Attempt, broker: str | None, cluster: str, auth,
                 timeout: float = 3.0) -> None:
        from ecloud.effects.messaging.mqtt import Connection

        if not broker:
            raise Unavailable("no MQTT broker configured (setting broker) to ask the worker")
        _reachable(broker, timeout)
        self.attempt, self.cluster, self.timeout = attempt, cluster, timeout
        self.where = f"worker {attempt.worker_id}"
        self._session = uuid.uuid4().hex[:12]
        self._numbers = itertools.count(1)
        self._replies: dict[str, LogsReply] = {}
        self._arrived = threading.Condition()
        self._subscribed = threading.Event()
        self._conn = Connection(broker, f"ecloud-{cluster}-logs-{self._session}",
                                on_message=self._message, clean_session=True, auth=auth,
                                on_connect=self._subscribe)
        try:
            self._conn.start(wait=timeout)
        except ConnectionError as exc:
            raise Unavailable(str(exc)) from None
        if not self._subscribed.wait(timeout):
            self.close()
            raise Unavailable(f"could not subscribe at the broker {broker}")

    def _subscribe(self) -> None:
        # a broker handles one client's packets in order: a request published
        # after this is answered to a subscription already in place
        self._conn.subscribe(logs_topic(self.cluster, self.attempt.worker_id, "+"))
        self._subscribed.set()

    def _message(self, topic: str, payload: bytes) -> None:
        try:
            reply = parse_logs_reply(payload)
        except WireError:
            return
        with self._arrived:
            self._replies[reply.request_id] = reply
            self._arrived.notify_all()

    def read(self, stream: str, offset: int) -> bytes:
        request_id = f"{self._session}-{next(self._numbers)}"
        request = LogsRequest(request_id, self.attempt.task_id, self.attempt.attempt, stream,
                              offset)
        self._conn.publish(to_topic(self.cluster, self.attempt.worker_id),
                           dumps(BossPayload(logs=[request])))
        with self._arrived:
            if not self._arrived.wait_for(lambda: request_id in self._replies, self.timeout):
                raise Unavailable(f"worker {self.attempt.worker_id} did not answer within "
                                  f"{self.timeout:g}s")
            reply = self._replies.pop(request_id)
        if reply.size < 0:
            raise Unavailable(f"worker {self.attempt.worker_id}: {reply.error}")
        return base64.b64decode(reply.data)

    def close(self) -> None:
        self._conn.stop()


def _reachable(broker: str, timeout: float) -> None:
    """Fail at once on a broker that refuses connections (the MQTT client
    would retry quietly until its deadline)."""
    from ecloud.effects.messaging.mqtt import parse_broker

    host, port, _ = parse_broker(broker)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise Unavailable(f"cannot reach the MQTT broker at {host}:{port}: "
                          f"{exc.strerror or exc}") from None


class TailsReader:
    """The last bytes the finish report carried (all the log has)."""

    def __init__(self, attempt: Attempt) -> None:
        if attempt.finished is None:
            raise Unavailable("the attempt has not finished: the log has no tail of it yet")
        self.where = "the log (only the last 4 KiB of each stream)"
        self._data = {"stdout": attempt.finished.stdout_tail.encode(),
                      "stderr": attempt.finished.stderr_tail.encode()}

    def read(self, stream: str, offset: int) -> bytes:
        return self._data[stream][offset:offset + LOG_CHUNK]


# ------------------------------------------------------------------- copying


def copy_output(reader: Reader, outs: dict[str, IO[bytes]], *, follow: bool = False,
                running: Callable[[], bool] = lambda: False, poll: float = 0.5,
                stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """Copy each stream in ``outs`` from ``reader``; with ``follow``, keep
    going until ``running()`` says the attempt is over and everything it
    wrote was copied. Returns the bytes copied per stream."""
    offsets = dict.fromkeys(outs, 0)
    while True:
        # asked before reading: what was written before the end is read after
        alive = follow and running()
        moved = False
        for stream, out in outs.items():
            while data := reader.read(stream, offsets[stream]):
                out.write(data)
                out.flush()
                offsets[stream] += len(data)
                moved = True
        if not alive or stop():
            return offsets
        if not moved:
            time.sleep(poll)


__all__ = ["STREAMS", "Attempt", "DatastoreReader", "LocalReader", "TailsReader", "Unavailable",
           "WorkerReader", "copy_output", "find_attempt", "still_running"]
