"""Reports on their way to the boss, kept until it acknowledges them.

Every report but a heartbeat gets a ``msg_id`` unique to this process
(``<incarnation[:8]>-<counter>``) and stays in the unacked table until a boss
message lists that id in ``acks``. A report is sent at once, then again after
2 s, 4 s, 8 s and every 10 s after that; reports that fall due at the same
moment travel together, and reports due within the next half second go along
with them, so a worker with many unacked reports sends few messages. After a
reconnect everything unacked is due at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from attrs import define

from ecloud.events.codec import converter
from ecloud.wire import MAX_PAYLOAD, WorkerPayload, dumps

FIRST_RESEND = 2.0
MAX_RESEND = 10.0
COALESCE = 0.5  # seconds: a report this close to due goes along with a due one


@define
class _Entry:
    report: Any
    due: float
    interval: float


class Outbox:
    def __init__(self, incarnation: str, journal: Any = None) -> None:
        self._journal = journal  # a ecloud_worker.journal.Journal, or None
        self._prefix = incarnation[:8]
        self._counter = itertools.count(1)
        self._unacked: dict[str, _Entry] = {}
        self._fresh: list[Any] = []

    def add(self, make: Callable[[str], Any], now: float, *, first: bool = False) -> Any:
        """Give ``make(msg_id)`` a new id, keep the report until acked, and
        send it with the next :meth:`take` (ahead of the others if ``first``)."""
        report = make(f"{self._prefix}-{next(self._counter)}")
        if self._journal is not None:
            self._journal.made(report)
        self._unacked[report.msg_id] = _Entry(report, now + FIRST_RESEND, FIRST_RESEND)
        self._fresh.insert(0 if first else len(self._fresh), report)
        return report

    def ack(self, msg_ids: Iterable[str]) -> list[str]:
        """Forget acknowledged reports; return the ids that were unacked."""
        return [m for m in msg_ids if self._unacked.pop(m, None) is not None]

    def forget(self, kind: str) -> None:
        """Drop unacked reports of one kind (an older hello, superseded)."""
        for msg_id in [m for m, e in self._unacked.items() if e.report.kind == kind]:
            del self._unacked[msg_id]
            if self._journal is not None:
                self._journal.withdrawn(msg_id)
        self._fresh = [r for r in self._fresh if r.kind != kind]

    def unacked(self, msg_id: str) -> bool:
        return msg_id in self._unacked

    def __len__(self) -> int:
        return len(self._unacked)

    def all_due(self, now: float) -> None:
        """Everything unacked goes with the next :meth:`take` (after a reconnect)."""
        for entry in self._unacked.values():
            entry.due = min(entry.due, now)

    def next_due(self) -> float | None:
        if self._fresh:
            return float("-inf")
        return min((e.due for e in self._unacked.values()), default=None)

    def take(self, now: float) -> tuple[list[Any], list[Any]]:
        """``(new reports, resent reports)`` to send now; the resent ones back off."""
        fresh, self._fresh = self._fresh, []
        for report in fresh:
            self._unacked[report.msg_id].due = now + FIRST_RESEND
        resent = []
        if any(e.due <= now for e in self._unacked.values()):
            for entry in self._unacked.values():
                if entry.due > now + COALESCE:
                    continue
                resent.append(entry.report)
                entry.interval = min(entry.interval * 2, MAX_RESEND)
                entry.due = now + entry.interval
        return fresh, resent


def payloads(worker: str, reports: list[Any], incarnation: str = "") -> list[bytes]:
    """Encode reports as few WorkerPayloads as the boss's size limit allows."""
    limit = MAX_PAYLOAD - 1024
    groups: list[list[Any]] = [[]]
    size = 0
    for report in reports:
        n = len(orjson.dumps(converter.unstructure(report))) + 1
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(report)
        size += n
    return [dumps(WorkerPayload(worker, group, incarnation=incarnation))
            for group in groups if group]
