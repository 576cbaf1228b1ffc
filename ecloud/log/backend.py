"""What every log backend shares, so they agree on validation, index
columns, snapshot packing and error messages: turning a batch of events into
rows, checking arguments, packing snapshots into chunks and back.
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ecloud.errors import CodecError, StoreError
from ecloud.events import codec
from ecloud.events.types import Recorded
from ecloud.log.store import LogStore, Snapshot

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


class RowStore(LogStore):
    """A backend that keeps encoded rows. Appending and reading are the same
    for all of them; each supplies ``_ready`` (fail if the store is closed or
    unreachable), ``_append_rows`` (the locked, all-or-nothing insert) and
    ``_pages`` (rows in seq order, a bounded page at a time)."""

    def _ready(self) -> None:
        raise NotImplementedError

    def _append_rows(self, rows: Sequence[Row] | Callable[[int], Sequence[Row]],
                     expected_head: int | None) -> list[int]:
        """``rows``, or a function of the head (read under the write lock)
        returning them."""
        raise NotImplementedError

    def _pages(
        self, start: int, end: int | None, types: tuple[str, ...] | None
    ) -> Iterator[tuple[int, float, str, int, bytes]]:
        raise NotImplementedError

    def append(
        self,
        events: Sequence[Any],
        *,
        ts: float | None = None,
        expected_head: int | None = None,
    ) -> list[int]:
        self._ready()
        check_expected_head(expected_head)
        return self._append_rows(encode_batch(events, stamp(ts)), expected_head)

    def append_built(self, build: Callable[[int], Sequence[Any]], *, ts: float | None = None,
                     ) -> list[int]:
        self._ready()
        stamped = stamp(ts)
        return self._append_rows(lambda head: encode_batch(build(head), stamped), None)

    def read_raw(
        self, start: int = 1, end: int | None = None
    ) -> Iterator[tuple[int, float, str, int, bytes]]:
        for seq, ts, tag, version, body in self._pages(start, end, None):
            yield seq, ts, tag, version, as_bytes(body)

    def read(
        self,
        start: int = 1,
        end: int | None = None,
        *,
        types: Iterable[str] | None = None,
    ) -> Iterator[Recorded]:
        return decode_rows(self._pages(start, end, type_filter(types)))
