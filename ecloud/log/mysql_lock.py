"""The right to append to a MariaDB log: a named lock held by the appending
connection (see :mod:`ecloud.boss.lease` for how bosses use it).

``GET_LOCK`` names are server-wide and belong to a connection: the server
frees a lock when its connection ends, whether the client exited, crashed or
was cut off with ``KILL CONNECTION``. So a store that holds the lock and
appends on the same connection can be fenced: :meth:`MySQLStore._begin_append`
checks the lock in the statement that opens every append transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pymysql

from ecloud.errors import FencedError

log = logging.getLogger("ecloud.log.mysql_store")


class WriterLock:
    """Mixed into :class:`~ecloud.log.mysql_store.MySQLStore`; uses its
    ``_idempotent_op`` (one statement group on the store's connection,
    reopened once if it was lost)."""

    url: str
    _writer_lock: str | None = None
    _on_relock: Callable[[], None] | None = None

    def _idempotent_op(self, what: str, fn):  # provided by the store
        raise NotImplementedError

    def hold_writer_lock(self, name: str, wait: float,
                         on_relock: Callable[[], None] | None = None) -> bool:
        """Try for up to ``wait`` seconds to take the named lock that gives
        the right to append; from then on every append checks it still holds
        it. ``on_relock`` runs after the lock was taken again on a reopened
        connection. Returns whether the lock is held."""
        if not self._take_lock(name, wait):
            return False
        self._writer_lock = name
        self._on_relock = on_relock
        return True

    def ensure_writer_lock(self) -> None:
        """Check between appends that the writer lock is still ours (taking
        it again if it is free); :class:`FencedError` if another holds it."""
        lock = self._writer_lock
        if lock is not None and not self._take_lock(lock, None):
            self._retake_writer_lock(lock)

    def _retake_writer_lock(self, lock: str) -> None:
        if not self._take_lock(lock, 0):
            raise FencedError(
                f"{self.url}: this boss lost the right to append (lock {lock!r} is held by"
                " another connection: another boss took over); nothing appended"
            )
        log.warning("writer lock %r taken again on a reopened connection", lock)
        if self._on_relock is not None:
            self._on_relock()

    def _take_lock(self, name: str, wait: float | None) -> bool:
        """Whether this connection holds the lock, after waiting up to
        ``wait`` seconds for it (None: only look)."""
        def run(conn: pymysql.connections.Connection) -> bool:
            with conn.cursor() as cur:
                cur.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (name,))
                if cur.fetchone()[0] == 1:
                    return True
                if wait is None:
                    return False
                cur.execute("SELECT GET_LOCK(%s, %s)", (name, wait))
                return cur.fetchone()[0] == 1

        return self._idempotent_op("cannot take the writer lock", run)

    def connection_id(self) -> int:
        """This store's server connection id (what a lock is held by)."""
        def run(conn: pymysql.connections.Connection) -> int:
            with conn.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID()")
                return int(cur.fetchone()[0])

        return self._idempotent_op("cannot read the connection id", run)
