"""The right to append on MariaDB: a named lock held by the appending
connection, checked inside every append (fencing)."""

from __future__ import annotations

import threading

import pytest

from ecloud.boss.lease import FileLease, MySQLLease, lock_name
from ecloud.errors import FencedError
from ecloud.events import types as ev
from ecloud.log.url import open_store
from tests.support.brokers import wait_for


def kill_connection(url: str, conn_id: int) -> None:
    with open_store(url) as other:
        other._db().cursor().execute("KILL CONNECTION %s", (conn_id,))  # noqa: SLF001


def test_a_writer_whose_lock_was_taken_over_cannot_append(mysql_url: str) -> None:
    with open_store(mysql_url) as first, open_store(mysql_url) as second:
        name = lock_name(first)
        assert first.hold_writer_lock(name, 1)
        assert first.append([ev.ContextSet("k", "1")]) == [1]
        assert not second.hold_writer_lock(name, 0.1)  # taken
        kill_connection(mysql_url, first.connection_id())  # what a standby does to a silent boss
        assert second.hold_writer_lock(name, 5)
        with pytest.raises(FencedError, match="lost the right to append"):
            first.append([ev.ContextSet("k", "stale")])
        with pytest.raises(FencedError):
            first.ensure_writer_lock()
        assert second.append([ev.ContextSet("k", "2")]) == [2]
        assert [r.event.value for r in second.read(1)] == ["1", "2"]


def test_a_writer_that_lost_its_connection_takes_the_free_lock_again(mysql_url: str) -> None:
    """After the database restarted, nobody else holds the lock: carry on."""
    relocked = []
    with open_store(mysql_url) as store:
        assert store.hold_writer_lock(lock_name(store), 1, on_relock=lambda: relocked.append(1))
        kill_connection(mysql_url, store.connection_id())
        assert store.append([ev.ContextSet("k", "1")]) == [1]
        assert relocked == [1]


def test_a_standby_cuts_off_a_silent_boss_and_takes_over(mysql_url: str) -> None:
    with open_store(mysql_url) as active_store, open_store(mysql_url) as standby_store:
        active = MySQLLease(active_store, "active", takeover_after=1.0)
        stopping = threading.Event()
        assert active.acquire(stopping)
        standby = MySQLLease(standby_store, "standby", takeover_after=1.0)
        took = threading.Event()
        thread = threading.Thread(target=lambda: standby.acquire(stopping) and took.set())
        thread.start()
        assert not took.wait(3.0)  # a boss that beats keeps the log
        active._beat_stop.set()  # noqa: SLF001 - the active boss freezes: no more beats
        try:
            wait_for(took.is_set, 20, "the standby to take over")
        finally:
            stopping.set()
            thread.join(10)
        with pytest.raises(FencedError):
            active_store.append([ev.ContextSet("k", "from the frozen boss")])
        assert standby_store.append([ev.ContextSet("k", "from the new boss")]) == [1]
        standby.release()


def test_on_sqlite_a_second_boss_waits_until_the_first_lets_go(tmp_path) -> None:
    first = FileLease(tmp_path / "log.db.boss-lock", "first")
    second = FileLease(tmp_path / "log.db.boss-lock", "second")
    stopping = threading.Event()
    assert first.acquire(stopping)
    took = threading.Event()
    thread = threading.Thread(target=lambda: second.acquire(stopping) and took.set())
    thread.start()
    try:
        assert not took.wait(1.5)
        assert "boss first, pid" in (tmp_path / "log.db.boss-lock").read_text()
        first.release()
        wait_for(took.is_set, 10, "the second boss to take over")
        assert "boss second, pid" in (tmp_path / "log.db.boss-lock").read_text()
    finally:
        stopping.set()
        thread.join(10)
        second.release()


def test_on_sqlite_a_boss_is_not_refused_by_a_look_at_who_holds_the_log(tmp_path) -> None:
    """``ecloud status`` asks who holds the log by taking its lock for an
    instant; a run starting in that instant must not take it for a boss -
    not even when the lock file still names a boss killed outright."""
    import subprocess
    import sys

    from ecloud.boss.lease import LogHeldError, _file_holder

    path = tmp_path / "log.db.boss-lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stop = threading.Event()
    looks: list[str | None] = []

    def look() -> None:
        while not stop.is_set():
            looks.append(_file_holder(path))

    # the line of a boss killed outright: its pid is dead (pid 1 was written here
    # before, which is alive - so a look that held the lock that instant made the
    # run refuse, naming it: seen once in CI)
    path.write_text(f"ecloud run, boss gone, pid {dead.pid}, since then\n")
    assert _file_holder(path) is None  # a line without a lock names nobody
    looker = threading.Thread(target=look)
    looker.start()
    try:
        for i in range(200):
            lease = FileLease(path, f"b{i}", "ecloud run")
            try:
                assert lease.acquire(threading.Event(), wait=False)
            except LogHeldError as exc:
                pytest.fail(f"try {i}: refused while only a look held the lock: {exc}")
            lease.release()
            path.write_text(f"ecloud run, boss b{i}, pid {dead.pid}, since then\n")  # killed
    finally:
        stop.set()
        looker.join(10)
    assert None in looks  # the look did run between the boss's turns


def test_on_sqlite_a_run_refused_names_the_boss_that_holds_the_log(tmp_path) -> None:
    from ecloud.boss.lease import LogHeldError

    path = tmp_path / "log.db.boss-lock"
    first = FileLease(path, "first", "ecloud run")
    assert first.acquire(threading.Event(), wait=False)
    try:
        with pytest.raises(LogHeldError, match=r"a live boss holds this log \(ecloud run, boss first"):
            FileLease(path, "second", "ecloud run").acquire(threading.Event(), wait=False)
    finally:
        first.release()
    assert path.read_text() == ""  # a clean stop names nobody
