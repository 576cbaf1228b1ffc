"""The agent's main loop wakes up for anything: a message, a signal, an
attempt that ended (its pidfd). This is how."""

from __future__ import annotations

import os
import queue
import selectors


class Inbox:
    """What other threads and signal handlers tell the main loop, and the
    attempts' pidfds.

    A queue plus a self-pipe: :meth:`wait` sleeps in a selector on the pipe,
    which :meth:`put` writes to, and which is also the signal wakeup fd - so a
    signal delivered to any thread wakes the main loop at once. File
    descriptors given to :meth:`watch` (the runner's pidfds) wake it too, and
    come out of :meth:`wait` as ``("ready", data)``.
    """

    def __init__(self) -> None:
        self._items: queue.SimpleQueue = queue.SimpleQueue()  # put() is reentrant
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._r, selectors.EVENT_READ, None)

    def watch(self, fd: int, data: object) -> None:
        self._selector.register(fd, selectors.EVENT_READ, data)

    def unwatch(self, fd: int) -> None:
        self._selector.unregister(fd)

    @property
    def wakeup_fd(self) -> int:
        return self._w

    def put(self, item: tuple) -> None:
        self._items.put(item)
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:  # the pipe is full: the loop is awake anyway
            pass

    def wait(self, timeout: float | None) -> list[tuple]:
        """Items posted so far and watched descriptors that are ready,
        waiting up to ``timeout`` seconds for one."""
        items = []
        try:
            ready = self._selector.select(0 if not self._items.empty() else timeout)
        except InterruptedError:
            ready = []
        for key, _ in ready:
            if key.data is not None:
                items.append(("ready", key.data))
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        while not self._items.empty():
            items.append(self._items.get_nowait())
        return items
