"""Which worker reports the log already holds, read from its tail on start.

A worker resends every report until the boss acks it. When a boss dies
between committing a report and sending its ack, the worker resends it to the
next boss; that boss must ack it again without logging it a second time (the
chaos suite checks that every report is in the log exactly once). The next
boss learns which reports are committed by reading the tail of the log: a
worker resends within seconds of a reconnect, so its unacked reports are among
the last events appended before the crash.

Only the bodies that carry a ``msg_id`` are parsed, so reading a window of
tens of thousands of events costs a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from ecloud.log.store import LogStore

#: how many of the newest events to look through for committed reports
WINDOW = 50_000

_MARK = b'"msg_id"'


def committed_reports(store: LogStore, window: int = WINDOW) -> Iterator[tuple[str, str]]:
    """``(worker_id, msg_id)`` of every report among the newest ``window``
    events, oldest first."""
    head = store.head()
    if head == 0 or window <= 0:
        return
    for _seq, _ts, _type, _version, body in store.read_raw(max(1, head - window + 1), head):
        if _MARK not in body:
            continue
        fields = orjson.loads(body)
        worker_id, msg_id = fields.get("worker_id"), fields.get("msg_id")
        if isinstance(worker_id, str) and isinstance(msg_id, str) and msg_id:
            yield worker_id, msg_id
