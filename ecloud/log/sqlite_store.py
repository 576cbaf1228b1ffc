"""The SQLite :class:`~ecloud.log.store.LogStore`: the whole log in one file.

Layout (schema version :data:`~ecloud.log.memory_store.SCHEMA_VERSION`)::

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

**Whose file.** An ecloud log carries SQLite's ``application_id``
:data:`APPLICATION_ID` ("ecld"). A file that holds tables of another program
(or another application id) is refused before anything is written to it -
not even its journal mode is changed; a log written before the id existed
(its own tables, id 0) gets it. A new log file is made mode 0600 (its WAL
and shared-memory files take the same): it holds the tasks' environments.

**Read-only.** With ``read_only`` the file is opened ``mode=ro`` and nothing
is set on it, so commands that only read work on a read-only filesystem (or a
file they may not write); where SQLite cannot even make its shared-memory
file there, the file is opened ``immutable`` - nobody can be writing it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ecloud.errors import ConcurrencyError, MissingLogError, StoreError, UserError
from ecloud.log import backend
from ecloud.log.store import Snapshot

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK = 4 * 1024 * 1024
#: SQLite's application_id of an ecloud log: "ecld"
APPLICATION_ID = 0x65636C64

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


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Put the file in WAL mode (once; later opens find it so). The switch
    needs the file to itself, and SQLite answers "database is locked" at
    once, without its busy handler, while another process is opening the
    same new file: two ``ecloud run`` started in one instant. Try again
    until ``busy_timeout``."""
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() == "wal":
        return mode
    deadline = time.monotonic() + busy_timeout
    pause = 0.005
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


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
        read_only: bool = False,
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
        self.read_only = read_only
        try:
            if create and not read_only:
                _make_private(self.path)
            mode = "ro" if read_only else "rwc" if create else "rw"
            conn = sqlite3.connect(Path(self.path).as_uri() + f"?mode={mode}", uri=True,
                                   timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open event log {self.path}: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn = conn
            self._check_owner()  # before anything is written, the journal mode included
            if not read_only:
                mode = _switch_to_wal(conn, busy_timeout)
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: cannot switch the journal to WAL (got {mode})")
                conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._init_schema(create and not read_only)
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

    def _check_owner(self) -> None:
        """Refuse a file that is another program's (see the module docstring);
        open a read-only file ``immutable`` when plain reading fails."""
        try:
            app, tables = self._owner()
        except sqlite3.OperationalError:
            if not self.read_only:
                raise
            self._conn.close()  # type: ignore[union-attr]
            self._conn = sqlite3.connect(Path(self.path).as_uri() + "?mode=ro&immutable=1",
                                         uri=True, isolation_level=None)
            app, tables = self._owner()
        if app not in (0, APPLICATION_ID) or (tables and "events" not in tables):
            shown = ", ".join(sorted(tables)[:8]) or "none"
            raise UserError(f"{self.path} is an SQLite database of another program "
                            f"(application_id {app:#x}, tables: {shown}), not an ecloud log: "
                            "ecloud will not write to it; give another --db")
        if app == 0 and tables and not self.read_only:
            self._db().execute(f"PRAGMA application_id = {APPLICATION_ID}")  # a log from before

    def _owner(self) -> tuple[int, set[str]]:
        conn = self._db()
        app = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        return app, tables

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
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        if not self.read_only:  # a log from before log ids gets its own
            conn.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('log_id', ?)",
                         (uuid.uuid4().hex,))
        row = conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version != backend.SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: event log schema version {version}, this ecloud reads {backend.SCHEMA_VERSION}"
            )

    def log_id(self) -> str:
        """The log's own random id, made with it: what ties the processes
        of a run (its broker, its workers) to this log, whatever its path."""
        row = self._db().execute("SELECT v FROM meta WHERE k = 'log_id'").fetchone()
        return row[0] if row else ""

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


def _make_private(path: str) -> None:
    """Create the log's file, mode 0600, if it does not exist yet (SQLite
    gives its WAL and shared-memory files the same mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # sqlite3 reports it, with its own words
    os.close(fd)
