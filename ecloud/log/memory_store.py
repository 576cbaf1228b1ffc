"""An in-memory :class:`~ecloud.log.store.LogStore`,

:class:`MemoryStore` has the same semantics as the SQL backends - seqs from 1
with no gaps, all-or-nothing batches, ``expected_head``, snapshots per reducer
version - and still sends every event through :mod:`ecloud.events.codec`, so a
codec error surfaces exactly as it would from SQLite or MariaDB. It is the
naive model the state-machine test compares the real backends against, and a
quick store for unit tests (``memory://``). Nothing survives the process.

The helpers every backend shares live in :mod:`ecloud.log.backend`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

from ecloud.errors import ConcurrencyError, StoreError
from ecloud.log import backend
from ecloud.log.store import Snapshot

# -------------------------------------------------------------------------- store


class MemoryStore(backend.RowStore):
    """A log held in this process's memory; see the module docstring."""

    def __init__(self, url: str = "memory://", *, page_size: int = backend.DEFAULT_PAGE_SIZE) -> None:
        self.url = url
        self.page_size = page_size
        # seq -> (ts, type, version, body, task_id, worker_id). A dict rather
        # than a list so that the model behaves like a table with a primary key.
        self._rows: dict[int, backend.Row] = {}
        self._head = 0
        self._max_seq = 0  # highest key of _rows (== _head unless rows were planted)
        self._snapshots: list[tuple[Snapshot, str, bytes]] = []  # (meta, sha256, data)
        self._closed = False
        self._log_id = uuid.uuid4().hex

    def log_id(self) -> str:
        return self._log_id

    def _ready(self) -> None:
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")

    # ---------------------------------------------------------------- appending

    def _append_rows(self, rows, expected_head: int | None) -> list[int]:
        last = self._head
        if expected_head is not None and last != expected_head:
            raise ConcurrencyError(expected_head, last)
        if callable(rows):  # one thread at a time: nothing can append meanwhile
            rows = rows(last)
        if not rows:
            return []
        seqs = list(range(last + 1, last + 1 + len(rows)))
        for seq in seqs:
            if seq in self._rows:  # what a primary key would refuse
                raise StoreError(f"{self.url}: append failed: seq {seq} already exists")
        for seq, row in zip(seqs, rows, strict=True):
            self._rows[seq] = tuple(row)  # type: ignore[assignment]
        self._max_seq = max(self._max_seq, seqs[-1])
        self._head = seqs[-1]  # last: a reader in another thread never sees a head without rows
        return seqs

    # ------------------------------------------------------------------ reading

    def head(self) -> int:
        self._check_open()
        return self._head

    def _pages(
        self, start: int, end: int | None, types: tuple[str, ...] | None
    ) -> Iterator[tuple[int, float, str, int, bytes]]:
        self._check_open()
        start = max(start, 1)
        if end is None:
            end = self._head
        end = min(end, self._max_seq)
        wanted = None if types is None else set(types)
        for seq in range(start, end + 1):
            row = self._rows.get(seq)
            if row is None:
                continue
            ts, tag, version, body = row[:4]
            if wanted is None or tag in wanted:
                yield seq, ts, tag, version, backend.as_bytes(body)

    # ---------------------------------------------------------------- snapshots

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._check_open()
        data = backend.check_snapshot(snapshot)
        backend.check_snapshot_seq(self.url, snapshot.seq, self._head)
        meta = Snapshot(snapshot.seq, snapshot.reducer_version, b"", backend.snapshot_created_ts(snapshot))
        self._snapshots.append((meta, hashlib.sha256(data).hexdigest(), data))

    def load_snapshot(self, reducer_version: str, at_most: int | None = None) -> Snapshot | None:
        self._check_open()
        best: tuple[int, int] | None = None
        for i, (meta, _sha, _data) in enumerate(self._snapshots):
            if meta.reducer_version != reducer_version:
                continue
            if at_most is not None and meta.seq > at_most:
                continue
            key = (meta.seq, i)
            if best is None or key > best:
                best = key
        if best is None:
            return None
        meta, _sha, data = self._snapshots[best[1]]
        return Snapshot(meta.seq, meta.reducer_version, data, meta.created_ts)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self._closed = True

    def drop(self) -> None:
        """DESTRUCTIVE: forget every event and snapshot, and close the store."""
        self._rows.clear()
        self._snapshots.clear()
        self._head = self._max_seq = 0
        self._closed = True
