"""The append-only event log: one interface, several backends.

A :class:`LogStore` holds events in ``seq`` order (1, 2, 3, ... with no gaps)
and snapshots of folded state. Backends: SQLite (embedded default, one file),
MySQL/MariaDB (production) and memory (tests). Pick one with :func:`open_store`
and a URL::

    sqlite:///relative/or/absolute/path.db   (sqlite:////abs/path.db also works)
    mysql://user:password@host:3306/database
    memory://

**Ordering.** Every backend assigns seqs under a lock taken inside the append
transaction, so commit order equals seq order: a follower reading
``seq > last`` can never see seq N+1 while N is still uncommitted (the hazard
of docs/design.md, "The log").

**Optimistic concurrency.** ``append(..., expected_head=N)`` appends only if
the log still ends at N, else raises :class:`ConcurrencyError`. ``ecloud
push`` validates a task file against the state at head N and appends with
``expected_head=N``, so two concurrent pushes can never both add the same id.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from attrs import frozen

from ecloud.events.types import Recorded


@frozen
class Snapshot:
    """Folded state at ``seq``, valid only for the reducer that wrote it."""

    seq: int
    reducer_version: str
    data: bytes
    created_ts: float = 0.0


class LogStore(abc.ABC):
    """What every backend offers. Methods are safe to call from one thread."""

    url: str

    def log_id(self) -> str:
        """The log's own random id, made with it ("" where a backend has
        none): what ties the processes of a run to this very log."""
        return ""

    # ------------------------------------------------------------------ appending

    @abc.abstractmethod
    def append(
        self,
        events: Sequence[Any],
        *,
        ts: float | None = None,
        expected_head: int | None = None,
    ) -> list[int]:
        """Append ``events`` in one transaction; return their seqs in order.

        All or nothing: on any error no event of the batch is in the log.
        ``ts`` (default: now) is stamped on every event of the batch.
        An empty batch appends nothing and returns ``[]``.
        """

    @abc.abstractmethod
    def append_built(self, build: Callable[[int], Sequence[Any]], *, ts: float | None = None,
                     ) -> list[int]:
        """Append what ``build(head)`` returns, holding the log's write lock
        from before ``build`` is called until the commit: no other writer
        appends in between, so what ``build`` decided on the log up to
        ``head`` (it may read it) still holds when its events land. For a
        writer that keeps losing optimistic appends (``expected_head``) to a
        busy boss; the boss waits meanwhile, so ``build`` should be quick.
        ``build`` may raise to append nothing."""

    # -------------------------------------------------------------------- reading

    @abc.abstractmethod
    def head(self) -> int:
        """The highest committed seq, 0 for an empty log."""

    @abc.abstractmethod
    def read(
        self,
        start: int = 1,
        end: int | None = None,
        *,
        types: Iterable[str] | None = None,
    ) -> Iterator[Recorded]:
        """Yield events with ``start <= seq <= end`` (``end`` None: to head) in
        seq order, optionally only those whose type tag is in ``types``.
        Streams: never holds the whole range in memory."""

    @abc.abstractmethod
    def read_raw(
        self, start: int = 1, end: int | None = None
    ) -> Iterator[tuple[int, float, str, int, bytes]]:
        """Like :meth:`read` but yields undecoded rows
        ``(seq, ts, type, version, body)``; used by tools that filter cheaply
        before decoding."""

    def follow(
        self,
        after: int = 0,
        *,
        poll: float = 0.2,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[Recorded]:
        """Yield every event with seq > ``after`` as it is committed, forever
        (or until ``stop()`` returns true between polls)."""
        last = after
        while True:
            progressed = False
            for rec in self.read(last + 1):
                last = rec.seq
                progressed = True
                yield rec
            if stop is not None and stop():
                return
            if not progressed:
                time.sleep(poll)

    # ------------------------------------------------------------------ snapshots

    @abc.abstractmethod
    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot atomically (a reader never sees half of one)."""

    @abc.abstractmethod
    def load_snapshot(self, reducer_version: str, at_most: int | None = None) -> Snapshot | None:
        """The newest snapshot written by ``reducer_version`` with
        ``seq <= at_most`` (None: any), or None. Snapshots of other reducer
        versions are never returned."""

    # ------------------------------------------------------------------ lifecycle

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
