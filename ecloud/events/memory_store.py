"""An in-memory :class:`~ecloud.events.store.LogStore`, and the helpers all backends share.

:class:`MemoryStore` has the same semantics as the SQL backends - seqs from 1
with no gaps, all-or-nothing batches, ``expected_head``, snapshots per reducer
version - and still sends every event through :mod:`ecloud.events.codec`, so a
codec error surfaces exactly as it would from SQLite or MariaDB. It is the
naive model the state-machine test compares the real backends against, and a
quick store for unit tests (``memory://``). Nothing survives the process.

The module-level helpers (batch encoding, index columns, snapshot packing) are
used by every backend so that they agree on validation and error messages.
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ecloud.errors import CodecError, ConcurrencyError, StoreError
from ecloud.events import codec
from ecloud.events.store import LogStore, Snapshot
from ecloud.events.types import Recorded

SCHEMA_VERSION = 1
"""Version of the SQL schema (``meta.schema_version``) this code writes and reads."""

INDEX_MAX = 255
"""Longest ``task_id`` / ``worker_id`` copied into the index columns (VARCHAR(255))."""

DEFAULT_PAGE_SIZE = 10_000
"""Rows fetched per query when reading; a read never holds more than this many."""

#: One encoded event ready for the table: (ts, type, version, body, task_id, worker_id).
Row = tuple[float, str, int, bytes, "str | None", "str | None"]


# ------------------------------------------------------------------------ helpers


def stamp(ts: float | None) -> float:
    """The ``ts`` of a batch: the given one, or now. Must be a finite number."""
    if ts is None:
        return time.time()
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError(f"ts must be a finite number of seconds, got {ts!r}")
    return float(ts)


def _index_value(event: Any, name: str) -> str | None:
    value = getattr(event, name, None)
    if isinstance(value, str) and len(value) <= INDEX_MAX:
        return value
    return None


def encode_batch(events: Iterable[Any], ts: float) -> list[Row]:
    """Encode a whole batch before any transaction starts.

    Raises :class:`CodecError` naming the position of the first event that
    cannot be encoded (unregistered type, or a field value JSON cannot hold),
    so a bad batch never reaches the database. ``task_id`` / ``worker_id`` go
    to the index columns when the event has them as a string of at most
    :data:`INDEX_MAX` characters (else NULL: the columns are a lookup aid, the
    body is the truth).
    """
    rows: list[Row] = []
    for i, event in enumerate(events):
        try:
            tag, version, body = codec.encode(event)
        except CodecError as exc:
            raise CodecError(f"event {i} of the batch: {exc}") from None
        except Exception as exc:  # orjson / cattrs refusing a field value
            raise CodecError(
                f"event {i} of the batch ({type(event).__name__}) cannot be encoded: {exc}"
            ) from None
        rows.append(
            (ts, tag, version, body, _index_value(event, "task_id"), _index_value(event, "worker_id"))
        )
    return rows


def check_expected_head(expected_head: int | None) -> None:
    if expected_head is not None and (
        isinstance(expected_head, bool) or not isinstance(expected_head, int) or expected_head < 0
    ):
        raise ValueError(f"expected_head must be a seq >= 0 or None, got {expected_head!r}")


def type_filter(types: Iterable[str] | None) -> tuple[str, ...] | None:
    """Normalise a ``types`` argument; a single string means one tag."""
    if types is None:
        return None
    if isinstance(types, str):
        return (types,)
    return tuple(dict.fromkeys(types))


def check_snapshot(snapshot: Snapshot) -> bytes:
    """Validate a snapshot before saving it; return its data as bytes."""
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"expected a Snapshot, got {type(snapshot).__name__}")
    if not isinstance(snapshot.reducer_version, str) or not (
        0 < len(snapshot.reducer_version) <= INDEX_MAX
    ):
        raise ValueError("reducer_version must be a non-empty string of at most 255 characters")
    if isinstance(snapshot.seq, bool) or not isinstance(snapshot.seq, int) or snapshot.seq < 0:
        raise ValueError(f"snapshot seq must be an int >= 0, got {snapshot.seq!r}")
    if not isinstance(snapshot.data, (bytes, bytearray, memoryview)):
        raise TypeError(f"snapshot data must be bytes, got {type(snapshot.data).__name__}")
    return bytes(snapshot.data)


def snapshot_created_ts(snapshot: Snapshot) -> float:
    """``created_ts`` as stored: the snapshot's own, or now when it is 0."""
    return float(snapshot.created_ts) if snapshot.created_ts else time.time()


def check_snapshot_seq(url: str, seq: int, head: int) -> None:
    if seq > head:
        raise StoreError(f"{url}: snapshot at seq {seq} is beyond the head of the log ({head})")


def pack_snapshot(data: bytes, chunk_size: int) -> tuple[str, list[bytes]]:
    """zlib-compress ``data`` and split it into chunks of at most ``chunk_size``
    bytes; return (sha256 of the uncompressed data, chunks)."""
    packed = zlib.compress(data, 1)
    chunks = [packed[i : i + chunk_size] for i in range(0, len(packed), chunk_size)] or [b""]
    return hashlib.sha256(data).hexdigest(), chunks


def unpack_snapshot(chunks: Sequence[bytes], size: int, sha256: str) -> bytes | None:
    """Undo :func:`pack_snapshot`; None when the result does not check out."""
    try:
        data = zlib.decompress(b"".join(bytes(c) for c in chunks))
    except zlib.error:
        return None
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        return None
    return data


def decode_rows(rows: Iterable[tuple[int, float, str, int, bytes | str]]) -> Iterator[Recorded]:
    """Decode raw rows into :class:`Recorded` (a CodecError names the seq)."""
    decode = codec.decode
    for seq, ts, tag, version, body in rows:
        yield Recorded(seq, ts, decode(tag, version, body, seq=seq))


def as_bytes(body: bytes | str | memoryview | bytearray) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


# -------------------------------------------------------------------------- store


class MemoryStore(LogStore):
    """A log held in this process's memory; see the module docstring."""

    def __init__(self, url: str = "memory://", *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.url = url
        self.page_size = page_size
        # seq -> (ts, type, version, body, task_id, worker_id). A dict rather
        # than a list so that the model behaves like a table with a primary key.
        self._rows: dict[int, Row] = {}
        self._head = 0
        self._max_seq = 0  # highest key of _rows (== _head unless rows were planted)
        self._snapshots: list[tuple[Snapshot, str, bytes]] = []  # (meta, sha256, data)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")

    # ---------------------------------------------------------------- appending

    def append(
        self,
        events: Sequence[Any],
        *,
        ts: float | None = None,
        expected_head: int | None = None,
    ) -> list[int]:
        self._check_open()
        check_expected_head(expected_head)
        rows = encode_batch(events, stamp(ts))
        return self._append_rows(rows, expected_head)

    def _append_rows(self, rows: Sequence[Row], expected_head: int | None) -> list[int]:
        last = self._head
        if expected_head is not None and last != expected_head:
            raise ConcurrencyError(expected_head, last)
        if not rows:
            return []
        seqs = list(range(last + 1, last + 1 + len(rows)))
        for seq in seqs:
            if seq in self._rows:  # what a primary key would refuse
                raise StoreError(f"{self.url}: append failed: seq {seq} already exists")
        for seq, row in zip(seqs, rows):
            self._rows[seq] = tuple(row)  # type: ignore[assignment]
        self._max_seq = max(self._max_seq, seqs[-1])
        self._head = seqs[-1]  # last: a reader in another thread never sees a head without rows
        return seqs

    # ------------------------------------------------------------------ reading

    def head(self) -> int:
        self._check_open()
        return self._head

    def read_raw(
        self, start: int = 1, end: int | None = None
    ) -> Iterator[tuple[int, float, str, int, bytes]]:
        return self._raw(start, end, None)

    def read(
        self,
        start: int = 1,
        end: int | None = None,
        *,
        types: Iterable[str] | None = None,
    ) -> Iterator[Recorded]:
        return decode_rows(self._raw(start, end, type_filter(types)))

    def _raw(
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
                yield seq, ts, tag, version, as_bytes(body)

    # ---------------------------------------------------------------- snapshots

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._check_open()
        data = check_snapshot(snapshot)
        check_snapshot_seq(self.url, snapshot.seq, self._head)
        meta = Snapshot(snapshot.seq, snapshot.reducer_version, b"", snapshot_created_ts(snapshot))
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
