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

``ecloud run`` does not wait as a standby: it asks :func:`holder` first
(which takes nothing) and refuses at once, naming the boss that holds the
log; its boss then takes the lease with ``wait=False``, so that a run
started in the same instant is refused rather than queued.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import pymysql

from ecloud.errors import EcloudError, LogHeldError, StoreError  # noqa: F401 - LogHeldError: re-exported
from ecloud.log.mysql_connect import connect, describe_error
from ecloud.log.mysql_store import MySQLStore
from ecloud.log.sqlite_store import SQLiteStore
from ecloud.log.store import LogStore
from ecloud.log.url import open_store

log = logging.getLogger("ecloud.boss.lease")

BEAT_EVERY = 1.0  # seconds between beats of the active boss (at most)

_LEASE_TABLE = """CREATE TABLE IF NOT EXISTS boss_lease (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    boss_id VARCHAR(64) NOT NULL,
    conn_id BIGINT UNSIGNED NOT NULL,
    beat DATETIME(6) NOT NULL
) ENGINE=InnoDB"""


class Lease(Protocol):
    def acquire(self, stopping: threading.Event, wait: bool = True) -> bool:
        """Block (as a standby) until this boss may append; False if
        ``stopping`` was set first. With ``wait=False``, one try: raise
        :class:`LogHeldError` naming the holder if another boss has it."""

    def check(self) -> None:
        """Raise :class:`FencedError` if the right was lost to another boss."""

    def release(self) -> None:
        """Give the right up (on a clean stop, so a standby need not wait)."""


def lease_for(store: LogStore, boss_id: str, takeover_after: float, label: str = "") -> Lease:
    if isinstance(store, MySQLStore):
        return MySQLLease(store, boss_id, takeover_after, label)
    if isinstance(store, SQLiteStore):
        return FileLease(lock_path(store), boss_id, label)
    return NoLease()  # the in-memory store (one process), or a test's wrapper


def lock_path(store: SQLiteStore) -> Path:
    """The lock beside the database file itself: a symbolic link to it, or
    another path to the same file, names the same lock."""
    real = Path(os.path.realpath(store.path))
    return real.with_name(real.name + ".boss-lock")


def take(url: str, boss_id: str, takeover_after: float, label: str) -> tuple[Lease, Any]:
    """Take the right to append to the log at ``url`` now, or raise
    :class:`LogHeldError` naming who has it - before anything else is done
    (``ecloud run`` then touches nothing of a live boss's). Returns the
    lease and what the boss must append with: the store holding the lease
    (MariaDB: the lock belongs to its connection), or the URL (SQLite: the
    boss opens its own, in its own thread; the lock is the lease's file)."""
    store = open_store(url, create=True)
    try:
        lease = lease_for(store, boss_id, takeover_after, label)
        lease.acquire(threading.Event(), wait=False)
    except BaseException:
        store.close()
        raise
    if isinstance(store, MySQLStore):
        return lease, store
    store.close()
    return lease, url


def holder(store: LogStore) -> str | None:
    """Who holds the log's lease right now (a line for a person), or None
    when nobody does. Takes nothing (MariaDB), or takes the file lock for
    an instant and gives it back (SQLite)."""
    if isinstance(store, MySQLStore):
        return _mysql_holder(store)
    if isinstance(store, SQLiteStore):
        return _file_holder(lock_path(store))
    return None


class NoLease:
    def acquire(self, stopping: threading.Event, wait: bool = True) -> bool:
        return not stopping.is_set()

    def check(self) -> None:
        pass

    def release(self) -> None:
        pass


# --------------------------------------------------------------------- SQLite


class FileLease:
    def __init__(self, path: Path, boss_id: str, label: str = "") -> None:
        self.path = path
        self.boss_id = boss_id
        self.label = label
        self._fd: int | None = None

    def acquire(self, stopping: threading.Event, wait: bool = True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        told = False
        while not stopping.is_set():
            text = _try_flock(fd)
            if text is not None:
                if not wait:
                    os.close(fd)
                    raise LogHeldError(held_message(text))
                if not told:
                    log.info("standby: another boss holds the log (%s); waiting", text)
                    told = True
                stopping.wait(0.5)
                continue
            os.ftruncate(fd, 0)
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            what = f"{self.label}, " if self.label else ""
            os.pwrite(fd, f"{what}boss {self.boss_id}, pid {os.getpid()}, since {since}, "
                          f"in {os.getcwd()}\n".encode(), 0)
            self._fd = fd
            return True
        os.close(fd)
        return False

    def check(self) -> None:
        pass  # an flock is lost only with the process

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # nobody holds it now
            os.close(fd)  # closing drops the flock


# -------------------------------------------------------------------- MariaDB


def lock_name(store: MySQLStore) -> str:
    """Named locks are server-wide: one name per log database (at most 64
    characters, MariaDB's limit)."""
    return f"ecloud-boss:{store.params.database}"[:64]


class MySQLLease:
    def __init__(self, store: MySQLStore, boss_id: str, takeover_after: float,
                 label: str = "") -> None:
        self.store = store
        # who it is, for whoever finds the log held (the lease table keeps 64 characters)
        who = f"{label}, " if label else ""
        self.boss_id = f"{who}boss {boss_id}, pid {os.getpid()} on {socket.gethostname()}"[:64]
        self.takeover_after = takeover_after
        self.name = lock_name(store)
        self._beat_every = min(BEAT_EVERY, takeover_after / 4)
        self._beat_stop = threading.Event()
        self._beater: threading.Thread | None = None

    # ------------------------------------------------------------ standby

    def acquire(self, stopping: threading.Event, wait: bool = True) -> bool:
        self._sql(_LEASE_TABLE)
        told: str | None = None
        while not stopping.is_set():
            try:
                if self.store.hold_writer_lock(self.name, 1.0 if wait else 0,
                                               on_relock=self._claim):
                    self._claim()
                    self._start_beating()
                    return True
                if not wait:
                    raise LogHeldError(held_message(_mysql_holder(self.store) or "another boss"))
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


# ------------------------------------------------------------ who holds it


def _holder_text(fd: int) -> str:
    """The line the holder wrote - unless the process it names is gone (a
    boss killed outright leaves its line; a clean stop clears it), which
    means the lock is held this instant by a probe or a boss yet to write."""
    text = os.pread(fd, 400, 0).decode(errors="replace").strip()
    pid = re.search(r"\bpid (\d+)", text)
    if pid is not None:
        try:
            os.kill(int(pid.group(1)), 0)
        except ProcessLookupError:
            return ""
        except OSError:
            pass  # alive, another user's
    return text


def _try_flock(fd: int, within: float = 1.0) -> str | None:
    """Take the flock on ``fd`` (None), or say who holds it, as the holder
    wrote it. Within ``within`` seconds, a lock held with nothing written
    is tried again: a boss that took it this instant writes its line just
    after, and a probe (:func:`holder`) lets go at once - a run started
    while ``ecloud status`` looks is not refused."""
    deadline = time.monotonic() + within
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            text = _holder_text(fd)
            if text:
                return text
            if time.monotonic() >= deadline:
                return "a boss that is starting"
            time.sleep(0.02)


def held_message(holder: str) -> str:
    return (f"a live boss holds this log ({holder}): only one boss may run on a log. "
            "Add tasks to its run with `ecloud push FILE`, watch it with `ecloud status`, "
            "or stop it first")


def _file_holder(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the boss lock: {exc.strerror or exc}") from None
    try:
        text = _try_flock(fd)
        if text is None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return text
    finally:
        os.close(fd)


def _mysql_holder(store: MySQLStore) -> str | None:
    name = lock_name(store)

    def run(conn) -> str | None:
        with conn.cursor() as cur:
            cur.execute("SELECT IS_USED_LOCK(%s)", (name,))
            (conn_id,) = cur.fetchone()
            if conn_id is None:
                return None
            try:
                cur.execute("SELECT boss_id, TIMESTAMPDIFF(MICROSECOND, beat, NOW(6)) / 1e6 "
                            "FROM boss_lease WHERE id = 1")
                row = cur.fetchone()
            except pymysql.err.ProgrammingError:  # no lease table yet
                row = None
        if row is None:
            return f"connection {conn_id}"
        return f"{row[0]}, last beat {float(row[1]):.1f}s ago"

    return store._idempotent_op("cannot read the boss lease", run)  # noqa: SLF001
