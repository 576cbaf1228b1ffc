"""Who may be the boss: one active boss per log, any number on standby.

On MariaDB the right to append is a named lock (``GET_LOCK``) held by the
connection the boss appends on; every append checks, in its own transaction,
that the connection still holds it (:meth:`MySQLStore.hold_writer_lock`).
A boss that dies loses its connection and so its lock at once, and a standby
polling for the lock takes over within a second. A boss that hangs (SIGSTOP,
a frozen VM) keeps its connection, so the active boss also beats: a thread of
its own updates ``boss_lease.beat`` every second on a second connection. A
standby that sees no beat for ``takeover_after`` seconds kills the silent
boss's lock connection (``KILL CONNECTION``, allowed for one's own user) and
takes the lock. The silent boss, if it ever wakes, finds its connection gone,
cannot take the lock again, and appends nothing: it is fenced.

On SQLite (one machine by design) the right is an exclusive ``flock`` on a
file next to the database; a standby blocks on it and takes over when the
active boss's process ends. A hung boss there is not detected. The in-memory
store has one process by definition and needs no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Protocol

import pymysql

from ecloud.errors import EcloudError, StoreError
from ecloud.events.mysql_connect import connect, describe_error
from ecloud.events.mysql_store import MySQLStore
from ecloud.events.sqlite_store import SQLiteStore
from ecloud.events.store import LogStore

log = logging.getLogger("ecloud.boss.lease")

BEAT_EVERY = 1.0  # seconds between beats of the active boss (at most)

_LEASE_TABLE = """CREATE TABLE IF NOT EXISTS boss_lease (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    boss_id VARCHAR(64) NOT NULL,
    conn_id BIGINT UNSIGNED NOT NULL,
    beat DATETIME(6) NOT NULL
) ENGINE=InnoDB"""


class Lease(Protocol):
    def acquire(self, stopping: threading.Event) -> bool:
        """Block (as a standby) until this boss may append; False if
        ``stopping`` was set first."""

    def check(self) -> None:
        """Raise :class:`FencedError` if the right was lost to another boss."""

    def release(self) -> None:
        """Give the right up (on a clean stop, so a standby need not wait)."""


def lease_for(store: LogStore, boss_id: str, takeover_after: float) -> Lease:
    if isinstance(store, MySQLStore):
        return MySQLLease(store, boss_id, takeover_after)
    if isinstance(store, SQLiteStore):
        return FileLease(Path(store.path).with_name(Path(store.path).name + ".boss-lock"), boss_id)
    return NoLease()  # the in-memory store (one process), or a test's wrapper


class NoLease:
    def acquire(self, stopping: threading.Event) -> bool:
        return not stopping.is_set()

    def check(self) -> None:
        pass

    def release(self) -> None:
        pass


# --------------------------------------------------------------------- SQLite


class FileLease:
    def __init__(self, path: Path, boss_id: str) -> None:
        self.path = path
        self.boss_id = boss_id
        self._fd: int | None = None

    def acquire(self, stopping: threading.Event) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        while not stopping.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    log.info("standby: another boss holds the log (%s); waiting", holder or "?")
                    told = True
                stopping.wait(0.5)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"boss {self.boss_id} pid {os.getpid()}\n".encode(), 0)
            self._fd = fd
            return True
        os.close(fd)
        return False

    def check(self) -> None:
        pass  # an flock is lost only with the process

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock


# -------------------------------------------------------------------- MariaDB


def lock_name(store: MySQLStore) -> str:
    """Named locks are server-wide: one name per log database (at most 64
    characters, MariaDB's limit)."""
    return f"ecloud-boss:{store.params.database}"[:64]


class MySQLLease:
    def __init__(self, store: MySQLStore, boss_id: str, takeover_after: float) -> None:
        self.store = store
        self.boss_id = boss_id[:64]
        self.takeover_after = takeover_after
        self.name = lock_name(store)
        self._beat_every = min(BEAT_EVERY, takeover_after / 4)
        self._beat_stop = threading.Event()
        self._beater: threading.Thread | None = None

    # ------------------------------------------------------------ standby

    def acquire(self, stopping: threading.Event) -> bool:
        self._sql(_LEASE_TABLE)
        told: str | None = None
        while not stopping.is_set():
            try:
                if self.store.hold_writer_lock(self.name, 1.0, on_relock=self._claim):
                    self._claim()
                    self._start_beating()
                    return True
                told = self._watch(told)
            except StoreError as exc:  # the database is away: keep waiting
                log.warning("standby: %s", exc)
                stopping.wait(1.0)
        return False

    def _watch(self, told: str | None) -> str | None:
        """One look at the active boss: take over if it has gone silent."""
        row = self._sql(
            "SELECT l.boss_id, l.conn_id, TIMESTAMPDIFF(MICROSECOND, l.beat, NOW(6)) / 1e6,"
            " IS_USED_LOCK(%s) FROM boss_lease l WHERE l.id = 1", (self.name,), fetch=True)
        if row is None:
            return told
        holder, conn_id, silent, lock_conn = row
        if holder != told:
            log.info("standby: boss %s is active (last beat %.1f s ago); waiting", holder, silent)
        if lock_conn is not None and int(lock_conn) == int(conn_id) and float(silent) > self.takeover_after:
            log.warning("boss %s silent for %.1f s: cutting its connection %s and taking over",
                        holder, silent, conn_id)
            self._sql("KILL CONNECTION %s", (int(conn_id),), ignore_gone=True)
        return holder

    # ------------------------------------------------------------- active

    def _claim(self) -> None:
        """Record who holds the lock, on which connection, beating now."""
        self._sql(
            "REPLACE INTO boss_lease (id, boss_id, conn_id, beat) VALUES (1, %s, %s, NOW(6))",
            (self.boss_id, self.store.connection_id()))

    def _start_beating(self) -> None:
        self._beat_stop.clear()
        self._beater = threading.Thread(target=self._beat, name="lease-beat", daemon=True)
        self._beater.start()

    def _beat(self) -> None:
        conn = None
        while not self._beat_stop.wait(self._beat_every):
            try:
                if conn is None:
                    conn = connect(self.store.params, self.store.params.database, read_timeout=10)
                with conn.cursor() as cur:
                    cur.execute("UPDATE boss_lease SET beat = NOW(6) WHERE id = 1 AND boss_id = %s",
                                (self.boss_id,))
                conn.commit()
            except (pymysql.err.Error, EcloudError) as exc:
                log.warning("lease beat failed: %s", exc)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def check(self) -> None:
        self.store.ensure_writer_lock()

    def release(self) -> None:
        self._beat_stop.set()
        if self._beater is not None:
            self._beater.join(5)
            self._beater = None
        with contextlib.suppress(StoreError):
            self._sql("SELECT RELEASE_LOCK(%s)", (self.name,))

    # ------------------------------------------------------------ plumbing

    def _sql(self, sql: str, args: tuple = (), *, fetch: bool = False, ignore_gone: bool = False):
        """One statement on the store's connection, committed."""
        conn = self.store._db()  # noqa: SLF001 - the lease lives on the store's own connection
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
                row = cur.fetchone() if fetch else None
            conn.commit()
            return row
        except pymysql.err.Error as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            if ignore_gone and exc.args and exc.args[0] == 1094:  # unknown thread id
                return None
            raise StoreError(f"{self.store.url}: boss lease: {describe_error(exc)}") from None
