"""What the boss remembers of the reports it heard, so that a resend is
neither logged twice nor left unanswered: the reports committed (and acked),
those on their way into the log, and the workers that never announced
themselves. The input side of the edge (:mod:`ecloud.boss.edge`); the outbox
(:mod:`ecloud.effects.messaging.outbox`) only sends."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

REMEMBERED_ACKS = 2000  # per worker: how many acked msg_ids to recognise resends by
INFLIGHT_FOR = 60.0  # seconds a report counts as on its way into the log
MAX_INFLIGHT = 100_000  # reports on their way before old claims are swept
STRANGER_EVERY = 600.0  # seconds between two records of one unannounced worker


class HeardReports:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._acked: dict[str, OrderedDict[str, None]] = {}
        # reports turned into events but not yet committed and acked: a resend
        # of one of these (several pile up at the broker while a boss is down)
        # is neither logged again nor acked before the original commits
        self._inflight: dict[tuple[str, str], float] = {}
        self._strangers: dict[str, float] = {}  # see stranger_due

    def remember(self, worker_id: str, msg_id: str) -> None:
        """Know ``msg_id`` as committed without sending an ack now (a boss
        starting learns this from the log's tail)."""
        self._inflight.pop((worker_id, msg_id), None)
        seen = self._acked.setdefault(worker_id, OrderedDict())
        seen[msg_id] = None
        if len(seen) > REMEMBERED_ACKS:
            seen.popitem(last=False)

    def in_flight(self, worker_id: str, msg_id: str) -> bool:
        """Whether this report is already on its way into the log. Claims
        it if not (for ``INFLIGHT_FOR`` seconds: a report whose event never
        brings an ack is logged again if resent after that)."""
        key = (worker_id, msg_id)
        now = self._clock()
        since = self._inflight.get(key)
        if since is not None and now - since < INFLIGHT_FOR:
            return True
        if len(self._inflight) > MAX_INFLIGHT:
            self._inflight = {k: t for k, t in self._inflight.items() if now - t < INFLIGHT_FOR}
        self._inflight[key] = now
        return False

    def already_acked(self, worker_id: str, msg_id: str) -> bool:
        """A report committed and acked before: its resend needs only an ack."""
        seen = self._acked.get(worker_id)
        return seen is not None and msg_id in seen

    def stranger_due(self, worker_id: str) -> bool:
        """Whether a worker that never announced itself (it heartbeats) is
        due to be recorded again: once, then at most every
        :data:`STRANGER_EVERY` seconds, so that it cannot flood the log."""
        now = self._clock()
        last = self._strangers.get(worker_id)
        if last is not None and now - last < STRANGER_EVERY:
            return False
        if len(self._strangers) > MAX_INFLIGHT:
            self._strangers.clear()
        self._strangers[worker_id] = now
        return True


__all__ = ["HeardReports"]
