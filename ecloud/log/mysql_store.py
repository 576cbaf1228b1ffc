"""The MariaDB/MySQL :class:`~ecloud.log.store.LogStore` (production), via PyMySQL.

Layout: the tables of :mod:`ecloud.log.sqlite_store` in InnoDB, utf8mb4
with a binary collation (ids are case-sensitive), ``seq BIGINT`` primary key
assigned by us, ``body LONGBLOB`` (the codec's UTF-8 JSON, returned as bytes
without a decode step), nullable ``task_id`` / ``worker_id`` VARCHAR(255)
index columns. Snapshots are zlib-compressed and split into chunks of at most
4 MiB (less if the server's ``max_allowed_packet`` is below 16 MiB), written
in one transaction with their header row.

**Ordering** (docs/design.md, "The log"). Every append is one transaction::

    SELECT last_seq FROM head WHERE id = 1 FOR UPDATE   -- opens the transaction
                                                         -- and takes the append lock
    (check expected_head)
    INSERT INTO events ... VALUES (last+1, ...), (last+2, ...), ...
    UPDATE head SET last_seq = last + n WHERE id = 1
    COMMIT                                               -- releases the lock

The row lock on ``head`` is held until COMMIT, so the next appender cannot
even learn its first seq before this batch is committed and visible:
commit order == seq order, and a follower reading ``seq > last`` never
passes over a seq that commits later.

**Reads** use an unbuffered cursor (``SSCursor``) one page of ``page_size``
rows at a time (``WHERE seq >= ? ORDER BY seq LIMIT page_size``) and end
their REPEATABLE READ transaction after each page, so every poll of
:meth:`follow` sees all commits made before it and no read view stays open.
``read(end=None)`` reads up to the head as of the call.

**Connections.** One connection per store, ``autocommit=False``,
``TCP_NODELAY`` (PyMySQL sets it on every TCP socket). A connection found
dead when a read or an append *starts* is reopened once, transparently; a
failure inside an append rolls back and raises :class:`StoreError`; a
failure *during COMMIT* is reported as such (:class:`CommitInDoubtError`,
with the batch's seqs) and never retried here, because the batch may or may
not be in the log: the boss's journal reads those seqs before it writes the
batch again.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pymysql
import pymysql.cursors

from ecloud.errors import (
    CommitInDoubtError,
    ConcurrencyError,
    EcloudError,
    FencedError,
    MissingLogError,
    StoreError,
    UserError,
)
from ecloud.log import backend
from ecloud.log.mysql_connect import (
    CONNECT_TIMEOUT,
    MySQLParams,
    connect,
    connect_error,
    connection_lost,
    describe_error,
    quote_ident,
)
from ecloud.log.mysql_lock import WriterLock
from ecloud.log.store import Snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")

SNAPSHOT_CHUNK = 4 * 1024 * 1024
INSERT_BATCH = 1000
"""Rows per executemany call (PyMySQL further splits statements at ~1 MB)."""


_TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS meta (
        k VARCHAR(64) NOT NULL PRIMARY KEY,
        v VARCHAR(255) NOT NULL
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS events (
        seq BIGINT NOT NULL PRIMARY KEY,
        ts DOUBLE NOT NULL,
        type VARCHAR(64) NOT NULL,
        version INT NOT NULL,
        body LONGBLOB NOT NULL,
        task_id VARCHAR(255) NULL,
        worker_id VARCHAR(255) NULL,
        KEY events_type (type),
        KEY events_task_id (task_id),
        KEY events_worker_id (worker_id)
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS head (
        id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
        last_seq BIGINT NOT NULL
    ) {_TABLE_OPTIONS}""",
    "INSERT IGNORE INTO head (id, last_seq) VALUES (1, 0)",
    f"""CREATE TABLE IF NOT EXISTS snapshots (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        reducer_version VARCHAR(255) NOT NULL,
        seq BIGINT NOT NULL,
        created_ts DOUBLE NOT NULL,
        size BIGINT NOT NULL,
        chunks INT NOT NULL,
        sha256 CHAR(64) NOT NULL,
        KEY snapshots_version_seq (reducer_version, seq)
    ) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS snapshot_chunks (
        snapshot_id BIGINT NOT NULL,
        n INT NOT NULL,
        data LONGBLOB NOT NULL,
        PRIMARY KEY (snapshot_id, n)
    ) {_TABLE_OPTIONS}""",
    f"INSERT IGNORE INTO meta (k, v) VALUES ('schema_version', '{backend.SCHEMA_VERSION}')",
]

_INSERT = (
    "INSERT INTO events (seq, ts, type, version, body, task_id, worker_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)

class MySQLStore(WriterLock, backend.RowStore):
    """The log in one MariaDB database; see the module docstring."""

    def __init__(
        self,
        params: MySQLParams,
        *,
        create: bool = True,
        page_size: int = backend.DEFAULT_PAGE_SIZE,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float | None = 120.0,
    ) -> None:
        if not params.database:
            raise UserError(f"{params.display()}: the URL names no database")
        quote_ident(params.database)
        self.params = params
        self.url = params.display()
        self.page_size = page_size
        self._timeouts = {"connect_timeout": connect_timeout, "read_timeout": read_timeout}
        self._conn: pymysql.connections.Connection | None = None
        self._writer_lock: str | None = None
        self._on_relock: Callable[[], None] | None = None
        self._max_packet = 16 * 1024 * 1024
        self._building = False  # inside append_built: reads keep the transaction open
        try:
            conn = connect(params, params.database, **self._timeouts)
        except UserError:
            if not create:
                raise
            conn = connect(params, None, **self._timeouts)
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        f"CREATE DATABASE IF NOT EXISTS {quote_ident(params.database)}"
                        " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                    )
                conn.select_db(params.database)
            except pymysql.err.Error as exc:
                conn.close()
                raise StoreError(
                    f"cannot create database {params.database!r} on MariaDB at {params.where}:"
                    f" {describe_error(exc)}"
                ) from None
        self._conn = conn
        try:
            self._init_schema(create)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"MySQLStore({self.url!r})"

    # ------------------------------------------------------------------ plumbing

    def _db(self) -> pymysql.connections.Connection:
        if self._conn is None:
            raise StoreError(f"{self.url}: the store is closed")
        return self._conn

    def _init_schema(self, create: bool) -> None:
        conn = self._db()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@max_allowed_packet")
                self._max_packet = int(cur.fetchone()[0])
                if create:
                    # Idempotent, so concurrent creators cannot trip over each other.
                    for statement in _SCHEMA:
                        cur.execute(statement)
                    conn.commit()
                else:
                    cur.execute("SHOW TABLES LIKE 'events'")
                    if cur.fetchone() is None:
                        raise MissingLogError(
                            f"no event log at {self.url} (the database holds no ecloud tables)"
                        )
                if create:  # a log from before log ids gets its own
                    cur.execute("INSERT IGNORE INTO meta (k, v) VALUES ('log_id', %s)",
                                (uuid.uuid4().hex,))
                    conn.commit()
                cur.execute("SELECT v FROM meta WHERE k = 'schema_version'")
                row = cur.fetchone()
            conn.rollback()
        except pymysql.err.Error as exc:
            raise StoreError(f"{self.url}: cannot set up the event log: {describe_error(exc)}") from None
        version = int(row[0]) if row else 0
        if version != backend.SCHEMA_VERSION:
            raise StoreError(
                f"{self.url}: event log schema version {version}, this ecloud reads {backend.SCHEMA_VERSION}"
            )

    def log_id(self) -> str:
        """The log's own random id (see :meth:`SQLiteStore.log_id`)."""
        def run(conn: pymysql.connections.Connection) -> str:
            with conn.cursor() as cur:
                cur.execute("SELECT v FROM meta WHERE k = 'log_id'")
                row = cur.fetchone()
            conn.rollback()
            return row[0] if row else ""

        return self._idempotent_op("cannot read the log id", run)

    def _reconnect(self) -> None:
        conn = self._db()
        with contextlib.suppress(Exception):
            conn.close()
        try:
            conn.connect()
        except pymysql.err.Error as exc:
            raise connect_error(self.params, exc) from None
        log.info("reconnected to MariaDB at %s", self.params.where)

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is not None and conn.open:
            with contextlib.suppress(Exception):
                conn.rollback()

    def _recover(self, exc: BaseException) -> None:
        """Put the connection back in a known state after ``exc`` interrupted
        a transaction. A database error or one of ours leaves the protocol
        intact: ROLLBACK. Anything else (KeyboardInterrupt in the middle of a
        packet...) may not: drop the connection - the server rolls back - and
        let the next call reconnect."""
        if isinstance(exc, (pymysql.err.Error, EcloudError)):
            self._rollback_quietly()
        elif self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()

    def _begin(self, what: str, sql: str, args: tuple = ()) -> pymysql.cursors.Cursor:
        """Start a write transaction by running its first statement ``sql``
        (with autocommit off, that statement opens the transaction: no extra
        BEGIN round trip). A connection found dead here is reopened once and
        the statement run again - nothing of this transaction has happened
        yet, so that is always safe."""
        conn = self._db()
        for attempt in (1, 2):
            cur = conn.cursor()
            try:
                cur.execute(sql, args or None)
                return cur
            except pymysql.err.Error as exc:
                self._rollback_quietly()
                if attempt == 1 and connection_lost(exc):
                    self._reconnect()
                    continue
                raise StoreError(f"{self.url}: {what} could not start: {describe_error(exc)}") from None
            except BaseException as exc:
                self._recover(exc)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _commit(self, what: str, seqs: tuple[int, int] | None = None) -> None:
        """COMMIT; a failure here leaves the outcome unknown. For an append
        (``seqs``: its first seq and count) that is a
        :class:`CommitInDoubtError`, so that a writer can look before it
        writes the batch again."""
        try:
            self._db().commit()
        except BaseException as exc:
            self._recover(exc)
            if isinstance(exc, pymysql.err.Error):
                message = (f"{self.url}: COMMIT of {what} failed ({describe_error(exc)}); it may"
                           " or may not have been stored - check before writing it again")
                if seqs is not None:
                    raise CommitInDoubtError(message, *seqs) from None
                raise StoreError(message) from None
            raise

    def _idempotent_op(self, what: str, fn: Callable[[pymysql.connections.Connection], T]) -> T:
        """Run a read-only (or otherwise idempotent) ``fn`` in its own
        transaction, ended afterwards so the next read sees newer commits;
        retried once on a lost connection."""
        if self._building:
            # inside append_built's transaction: ending it would let go of
            # the head row's lock (and a reconnect would lose it)
            try:
                return fn(self._db())
            except pymysql.err.Error as exc:
                raise StoreError(f"{self.url}: {what}: {describe_error(exc)}") from None
        conn = self._db()
        for attempt in (1, 2):
            try:
                result = fn(conn)
                conn.rollback()
                return result
            except pymysql.err.Error as exc:
                self._rollback_quietly()
                if attempt == 1 and connection_lost(exc):
                    self._reconnect()
                    continue
                raise StoreError(f"{self.url}: {what}: {describe_error(exc)}") from None
            except BaseException as exc:
                self._recover(exc)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ----------------------------------------------------------------- appending

    def _check_packets(self, rows: Sequence[backend.Row]) -> None:
        limit = self._max_packet - 4096
        for i, row in enumerate(rows):
            body = row[3]
            if 2 * len(body) + 2048 > limit and len(self._db().escape(body)) + 2048 > limit:
                raise StoreError(
                    f"{self.url}: event {i} of the batch ({row[1]}) has a {len(body)}-byte body,"
                    f" too big for the server's max_allowed_packet ({self._max_packet});"
                    " nothing appended"
                )

    def _append_rows(self, rows, expected_head: int | None) -> list[int]:
        if not callable(rows):
            if not rows:
                if expected_head is not None and (last := self.head()) != expected_head:
                    raise ConcurrencyError(expected_head, last)
                return []
            self._check_packets(rows)
        cur, last = self._begin_append()
        try:
            with cur:
                if expected_head is not None and last != expected_head:
                    raise ConcurrencyError(expected_head, last)
                if callable(rows):
                    # the head row stays locked while the rows are built
                    # (reads in this transaction see every commit up to it,
                    # and do not end it: see _idempotent_op)
                    self._building = True
                    try:
                        rows = rows(last)
                    finally:
                        self._building = False
                    if not rows:
                        self._rollback_quietly()
                        return []
                    self._check_packets(rows)
                first = last + 1
                for i in range(0, len(rows), INSERT_BATCH):
                    cur.executemany(
                        _INSERT,
                        [(first + j, *rows[j]) for j in range(i, min(i + INSERT_BATCH, len(rows)))],
                    )
                cur.execute("UPDATE head SET last_seq = %s WHERE id = 1", (last + len(rows),))
        except BaseException as exc:
            self._recover(exc)
            if isinstance(exc, pymysql.err.Error):
                raise StoreError(
                    f"{self.url}: append failed, nothing appended: {describe_error(exc)}"
                ) from None
            raise
        self._commit(f"seqs {first}..{last + len(rows)}", (first, len(rows)))
        return list(range(first, first + len(rows)))

    def _begin_append(self) -> tuple[pymysql.cursors.Cursor, int]:
        """Open an append transaction holding the head row. With a writer
        lock (:meth:`hold_writer_lock`) the same statement checks that this
        connection still holds it; a connection that lost it (reopened after
        the server restarted, or killed by a standby taking over) takes it
        again if it is free, else raises :class:`FencedError`: it must not
        append another event. The check and the INSERTs run in one
        transaction on one connection, and the lock can only be lost with
        the connection, which rolls the transaction back: a fenced writer
        can never slip an event in."""
        lock = self._writer_lock
        if lock is None:
            cur = self._begin("append", "SELECT last_seq FROM head WHERE id = 1 FOR UPDATE")
            return cur, cur.fetchone()[0]
        sql = "SELECT last_seq, IS_USED_LOCK(%s) = CONNECTION_ID() FROM head WHERE id = 1 FOR UPDATE"
        for _ in (1, 2):
            cur = self._begin("append", sql, (lock,))
            last, held = cur.fetchone()
            if held == 1:
                return cur, last
            cur.close()
            self._rollback_quietly()
            self._retake_writer_lock(lock)  # or FencedError
        raise FencedError(f"{self.url}: the writer lock {lock!r} keeps slipping away")

    # ------------------------------------------------------------------- reading

    def head(self) -> int:
        def run(conn: pymysql.connections.Connection) -> int:
            with conn.cursor() as cur:
                cur.execute("SELECT last_seq FROM head WHERE id = 1")
                return int(cur.fetchone()[0])

        return self._idempotent_op("cannot read the head", run)

    def _ready(self) -> None:
        self._db()

    def _pages(
        self, start: int, end: int | None, types: tuple[str, ...] | None
    ) -> Iterator[tuple[int, float, str, int, bytes]]:
        """Rows in pages of ``page_size``, each fetched whole through an
        unbuffered cursor; between pages the connection is idle (the caller
        may append to this store while iterating)."""
        if types is not None and not types:
            return
        self._db()
        start = max(start, 1)
        if end is None:
            end = self.head()
        where = ""
        if types is not None:
            where = f" AND type IN ({', '.join(['%s'] * len(types))})"
        sql = (
            "SELECT seq, ts, type, version, body FROM events"
            f" WHERE seq >= %s AND seq <= %s{where} ORDER BY seq LIMIT %s"
        )
        page = max(1, int(self.page_size))

        def fetch(conn: pymysql.connections.Connection) -> list[tuple]:
            cur = conn.cursor(pymysql.cursors.SSCursor)
            try:
                cur.execute(sql, (start, end, *(types or ()), page))
                return cur.fetchall()
            finally:
                with contextlib.suppress(Exception):
                    cur.close()

        while start <= end:
            rows = self._idempotent_op(f"cannot read events from seq {start}", fetch)
            yield from rows
            if len(rows) < page:
                return
            start = rows[-1][0] + 1

    # ----------------------------------------------------------------- snapshots

    def save_snapshot(self, snapshot: Snapshot) -> None:
        data = backend.check_snapshot(snapshot)
        chunk = max(64 * 1024, min(SNAPSHOT_CHUNK, (self._max_packet - 4096) // 2))
        sha, chunks = backend.pack_snapshot(data, chunk)
        cur = self._begin("saving a snapshot", "SELECT last_seq FROM head WHERE id = 1")
        try:
            with cur:
                backend.check_snapshot_seq(self.url, snapshot.seq, int(cur.fetchone()[0]))
                cur.execute(
                    "INSERT INTO snapshots (reducer_version, seq, created_ts, size, chunks, sha256)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
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
                for n, piece in enumerate(chunks):  # one statement per chunk: packets stay small
                    cur.execute(
                        "INSERT INTO snapshot_chunks (snapshot_id, n, data) VALUES (%s, %s, %s)",
                        (sid, n, piece),
                    )
        except BaseException as exc:
            self._recover(exc)
            if isinstance(exc, pymysql.err.Error):
                raise StoreError(
                    f"{self.url}: saving the snapshot failed, nothing saved: {describe_error(exc)}"
                ) from None
            raise
        self._commit(f"the snapshot at seq {snapshot.seq}")

    def load_snapshot(self, reducer_version: str, at_most: int | None = None) -> Snapshot | None:
        sql = "SELECT id, seq, created_ts, size, chunks, sha256 FROM snapshots WHERE reducer_version = %s"
        params: list[Any] = [reducer_version]
        if at_most is not None:
            sql += " AND seq <= %s"
            params.append(at_most)
        sql += " ORDER BY seq DESC, id DESC"

        def run(conn: pymysql.connections.Connection) -> Snapshot | None:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                candidates = cur.fetchall()
                for sid, seq, created_ts, size, n_chunks, sha in candidates:
                    cur.execute(
                        "SELECT data FROM snapshot_chunks WHERE snapshot_id = %s ORDER BY n", (sid,)
                    )
                    chunks = [row[0] for row in cur.fetchall()]
                    data = backend.unpack_snapshot(chunks, size, sha) if len(chunks) == n_chunks else None
                    if data is not None:
                        return Snapshot(int(seq), reducer_version, data, float(created_ts))
                    log.warning("%s: snapshot %s (seq %s) is damaged; skipped", self.url, sid, seq)
            return None

        return self._idempotent_op("cannot load a snapshot", run)

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def drop(self) -> None:
        """DESTRUCTIVE: ``DROP DATABASE`` - every event and snapshot of this
        log is gone - and close the store."""
        name = quote_ident(self.params.database or "")

        def run(conn: pymysql.connections.Connection) -> None:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name}")

        try:
            self._rollback_quietly()
            self._idempotent_op("DROP DATABASE failed", run)  # idempotent: retried once if the link died
        finally:
            self.close()
