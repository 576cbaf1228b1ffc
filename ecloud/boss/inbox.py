"""What reaches the boss from other threads - MQTT messages (paho's thread),
provider outcomes (the cloud side's pool), events to log (the owner's
:meth:`~ecloud.boss.loop.Boss.submit`) - waits here for the boss's thread,
which alone turns them into events and touches the state."""

from __future__ import annotations

import queue
from collections.abc import Callable

#: inbox items per transaction
MAX_BATCH = 5000


class Inbox:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, item: tuple) -> None:
        """Thread-safe: ``("mqtt", topic, payload)`` or ``("events", [...])``
        (what the cloud side and the owner send)."""
        self._queue.put(item)

    def drain(self, timeout: float, convert: Callable[[tuple, list], None]) -> list:
        """Everything waiting (waiting up to ``timeout`` for the first item;
        at most :data:`MAX_BATCH` items), turned into events by ``convert``."""
        events: list = []
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return events
        count = 0
        while True:
            convert(item, events)
            count += 1
            if count >= MAX_BATCH:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return events


__all__ = ["MAX_BATCH", "Inbox"]
