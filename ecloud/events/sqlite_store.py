"""The SQLite :class:`~ecloud.events.store.LogStore`: the whole log in one file.

Layout (schema version :data:`~ecloud.events.memory_store.SCHEMA_VERSION`)::

    events(seq INTEGER PRIMARY KEY, ts REAL, type TEXT, version INTEGER,
           body BLOB, task_id TEXT NULL, worker_id TEXT NULL)
           + indexes on type, task_id, worker_id
    head(id = 1, last_seq)                 the one-row head of the log
    snapshots(id, reducer_version, seq, created_ts, size, chunks, sha256)
    snapshot_chunks(snapshot_id, n, data)  zlib-compressed data, <= 4 MiB each
    meta(k, v)                             schema_version

``seq INTEGER PRIMARY KEY`` is SQLite's 64-bit rowid, i.e. the BIGINT key of
the MariaDB schema without a second index.

**Ordering.** Appends run in ``BEGIN IMMEDIATE`` transactions, which take the
database's single write lock before the head is read, so seqs are assigned
and committed strictly one batch after another: commit order == seq order.
Other processes wait for the lock up to ``busy_timeout`` seconds instead of
failing.

**Durability.** The file runs in WAL mode (readers never block the writer and
vice versa) with ``synchronous=FULL``: every COMMIT is fsynced before append
returns, as with MariaDB's ``innodb_flush_log_at_trx_commit=1``. (WAL with
``synchronous=NORMAL`` would also never corrupt the file, but could lose the
last commits on power loss; an event log whose appends announce decisions
already acted upon should not.) Pass ``synchronous="NORMAL"`` to trade that
for speed.

**Threads.** A store belongs to the thread that opened it (sqlite3's default
``check_same_thread``); open one store per thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ecloud.errors import ConcurrencyError, MissingLogError, StoreError, UserError
from ecloud.events import backend
from ecloud.events.store import Snapshot

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK = 4 * 1024 * 1024

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (
        k TEXT NOT NULL PRIMARY KEY,
        v TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        type TEXT NOT NULL,
        version INTEGER NOT NULL,
        body BLOB NOT NULL,
        task_id TEXT,
        worker_id TEXT)""",
    "CREATE INDEX IF NOT EXISTS events_type ON events (type)",
    "CREATE INDEX IF NOT EXISTS events_task_id ON events (task_id)",
    "CREATE INDEX IF NOT EXISTS events_worker_id ON events (worker_id)",
    """CREATE TABLE IF NOT EXISTS head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_seq INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO head (id, last_seq) VALUES (1, 0)",
    """CREATE TABLE IF NOT EXISTS snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        reducer_version TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created_ts REAL NOT NULL,
        size INTEGER NOT NULL,
        chunks INTEGER NOT NULL,
        sha256 TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS snapshots_version_seq ON snapshots (reducer_version, seq)",
    """CREATE TABLE IF NOT EXISTS snapshot_chunks (
        snapshot_id INTEGER NOT NULL,
        n INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (snapshot_id, n))""",
    f"INSERT OR IGNORE INTO meta (k, v) VALUES ('schema_version', '{backend.SCHEMA_VERSION}')",
]

_INSERT = (
    "INSERT INTO events (seq, ts, type, version, body, task_id, worker_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteStore(backend.RowStore):
    """The log in the SQLite file at ``path``; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        url: str | None = None,
        page_size: int = backend.DEFAULT_PAGE_SIZE,
        busy_timeout: float = 60.0,
        synchronous: str = "FULL",
    ) -> None:
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.url = url or f"sqlite:///{self.path}"
        self.page_size = page_size
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        if not create and not os.path.exists(self.path):
            raise MissingLogError(
                f"no event log at {self.path} (the file does not exist; "
                "`ecloud push` creates one; check the path)"
            )
        self._conn: sqlite3.Connection | None = None
        try:
            if create:
                conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
            else:
                conn = sqlite3.connect(
                    Path(self.path).as_uri() + "?mode=rw",
                    uri=True,
                    timeout=busy_timeout,
                    isolation_level=None,
                )
        except sqlite3.Error as exc:
            raise UserError(f"cannot open event log {self.path}: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch the journal to WAL (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._conn = conn
            self._init_schema(create)
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._conn = None
            if "not a database" in str(exc):
                raise UserError(f"{self.path} is not an SQLite database: {exc}") from None
            raise StoreError(f"cannot open event log {self.path}: {exc}") from None
        except BaseException:
            conn.close()
            self._conn = None
            raise

    # ------------------------------------------------------------------ plumbing

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.url}: the store is closed")
        return self._conn

    def _init_schema(self, create: bool) -> None:
        conn = self._db()
        has_log = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone()
        if not has_log:
            if not create:
                raise MissingLogError(f"no event log at {self.path} (an SQLite file without ecloud tables)")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        row = conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version != backend.SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: event log schema version {version}, this ecloud reads {backend.SCHEMA_VERSION}"
            )

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _begin_write(self, what: str) -> sqlite3.Connection:
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {what} could not start: {exc}") from None
        return conn

    # ----------------------------------------------------------------- appending

    def _append_rows(self, rows, expected_head: int | None) -> list[int]:
        if not callable(rows) and not rows:
            if expected_head is not None and (last := self.head()) != expected_head:
                raise ConcurrencyError(expected_head, last)
            return []
        conn = self._begin_write("append")
        try:
            last = conn.execute("SELECT last_seq FROM head WHERE id = 1").fetchone()[0]
            if expected_head is not None and last != expected_head:
                raise ConcurrencyError(expected_head, last)
            if callable(rows):  # under BEGIN IMMEDIATE: reading is fine, no one else writes
                rows = rows(last)
                if not rows:
                    conn.execute("ROLLBACK")
                    return []
            first = last + 1
            conn.executemany(_INSERT, ((first + i, *row) for i, row in enumerate(rows)))
            conn.execute("UPDATE head SET last_seq = ? WHERE id = 1", (last + len(rows),))
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.url}: append failed, nothing appended: {exc}") from None
            raise
        return list(range(first, first + len(rows)))

    # ------------------------------------------------------------------- reading

    def head(self) -> int:
        try:
            return self._db().execute("SELECT last_seq FROM head WHERE id = 1").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: cannot read the head: {exc}") from None

    def _ready(self) -> None:
        self._db()

    def _pages(
        self, start: int, end: int | None, types: tuple[str, ...] | None
    ) -> Iterator[tuple[int, float, str, int, bytes]]:
        """Rows in pages of ``page_size``. Each page is fetched whole, so no
        statement (and no read snapshot) stays open while the caller works on
        the rows - it may even append to this store in between."""
        if types is not None and not types:
            return
        conn = self._db()
        start = max(start, 1)
        if end is None:
            end = self.head()
        where = ""
        if types is not None:
            where = f" AND type IN ({', '.join('?' * len(types))})"
        sql = (
            "SELECT seq, ts, type, version, body FROM events"
            f" WHERE seq >= ? AND seq <= ?{where} ORDER BY seq LIMIT ?"
        )
        page = max(1, int(self.page_size))
        while start <= end:
            try:
                rows = conn.execute(sql, (start, end, *(types or ()), page)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.url}: cannot read events from seq {start}: {exc}") from None
            yield from rows
            if len(rows) < page:
                return
            start = rows[-1][0] + 1

    # ----------------------------------------------------------------- snapshots

    def save_snapshot(self, snapshot: Snapshot) -> None:
        data = backend.check_snapshot(snapshot)
        sha, chunks = backend.pack_snapshot(data, SNAPSHOT_CHUNK)
        conn = self._begin_write("saving a snapshot")
        try:
            backend.check_snapshot_seq(
                self.url,
                snapshot.seq,
                conn.execute("SELECT last_seq FROM head WHERE id = 1").fetchone()[0],
            )
            cur = conn.execute(
                "INSERT INTO snapshots (reducer_version, seq, created_ts, size, chunks, sha256)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    snapshot.reducer_version,
                    snapshot.seq,
                    backend.snapshot_created_ts(snapshot),
                    len(data),
                    len(chunks),
                    sha,
                ),
            )
            sid = cur.lastrowid
            conn.executemany(
                "INSERT INTO snapshot_chunks (snapshot_id, n, data) VALUES (?, ?, ?)",
                ((sid, n, chunk) for n, chunk in enumerate(chunks)),
            )
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.url}: saving the snapshot failed: {exc}") from None
            raise

    def load_snapshot(self, reducer_version: str, at_most: int | None = None) -> Snapshot | None:
        conn = self._db()
        sql = "SELECT id, seq, created_ts, size, chunks, sha256 FROM snapshots WHERE reducer_version = ?"
        params: list[Any] = [reducer_version]
        if at_most is not None:
            sql += " AND seq <= ?"
            params.append(at_most)
        sql += " ORDER BY seq DESC, id DESC"
        try:
            # One read transaction: the snapshot row and its chunks are seen together.
            conn.execute("BEGIN")
            try:
                for sid, seq, created_ts, size, n_chunks, sha in conn.execute(sql, params).fetchall():
                    chunks = [
                        row[0]
                        for row in conn.execute(
                            "SELECT data FROM snapshot_chunks WHERE snapshot_id = ? ORDER BY n",
                            (sid,),
                        )
                    ]
                    data = backend.unpack_snapshot(chunks, size, sha) if len(chunks) == n_chunks else None
                    if data is not None:
                        return Snapshot(seq, reducer_version, data, created_ts)
                    log.warning("%s: snapshot %s (seq %s) is damaged; skipped", self.url, sid, seq)
                return None
            finally:
                self._rollback()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: cannot load a snapshot: {exc}") from None

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def drop(self) -> None:
        """DESTRUCTIVE: close the store and delete its file (and WAL files)."""
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass
