"""The private MariaDB really stops, crashes and comes back with its data."""

from __future__ import annotations

from pathlib import Path

import pymysql
import pytest

from ecloud.events.types import TaskCancelled, WorkerHeartbeat
from ecloud.log.url import open_store
from tests.chaos.private_mariadb import PrivateMariaDB

TS = 1_700_000_000.25


def rows(db: PrivateMariaDB) -> list[tuple[int, str]]:
    conn = db.connect("chaos")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, note FROM t ORDER BY id")
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def insert(conn: pymysql.connections.Connection, row_id: int, note: str) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (row_id, note))


def last_run_log(db: PrivateMariaDB) -> str:
    """The server output of the latest start (each start appends a '=====' line)."""
    return db.log_path.read_text().rsplit("\n===== ", 1)[1]


def refuses(db: PrivateMariaDB) -> bool:
    try:
        db.connect(connect_timeout=2).close()
    except pymysql.err.OperationalError as exc:
        assert exc.args[0] == 2003, exc  # CR_CONN_HOST_ERROR: nothing listens
        return True
    return False


def test_rows_survive_stop_and_kill(private_mariadb: PrivateMariaDB) -> None:
    db = private_mariadb
    port, first_pid = db.port, db.pid
    assert port != 3306 and db.url("x") == f"mysql://root@127.0.0.1:{port}/x"

    conn = db.connect(autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT @@datadir, @@port, CURRENT_USER()")
        assert cur.fetchone() == (f"{db.datadir}/", port, "root@127.0.0.1")
        cur.execute("CREATE DATABASE chaos")
        cur.execute("CREATE TABLE chaos.t (id INT PRIMARY KEY, note VARCHAR(50)) ENGINE=InnoDB")
        cur.execute("INSERT INTO chaos.t VALUES (1, 'before stop')")
    conn.close()
    assert rows(db) == [(1, "before stop")]

    db.stop()
    assert not db.running and refuses(db)
    db.start()
    assert db.port == port and db.pid != first_pid
    assert rows(db) == [(1, "before stop")]
    assert "crash recovery" not in last_run_log(db)

    committed = db.connect("chaos")
    insert(committed, 2, "committed before kill")
    committed.commit()
    open_txn = db.connect("chaos")
    insert(open_txn, 3, "never committed")  # InnoDB must roll this back on recovery
    killed_pid = db.pid
    db.kill()
    assert not db.running and refuses(db)
    assert not Path(f"/proc/{killed_pid}").exists()
    for c in (committed, open_txn):
        with pytest.raises(pymysql.err.Error):
            c.ping(reconnect=False)
    db.start()
    assert db.port == port
    assert rows(db) == [(1, "before stop"), (2, "committed before kill")]
    assert "crash recovery" in last_run_log(db)


def test_event_log_survives_restart(private_mariadb: PrivateMariaDB) -> None:
    db = private_mariadb
    events = [WorkerHeartbeat(worker_id="w1", msg_id="m1"), TaskCancelled(task_id="t", reason="r")]
    with open_store(db.url("x")) as store:
        assert store.append(events, ts=TS) == [1, 2]
    db.kill()
    db.start()
    with open_store(db.url("x"), create=False) as store:
        assert [(r.seq, r.ts, r.event) for r in store.read()] == [
            (1, TS, events[0]),
            (2, TS, events[1]),
        ]
        db.stop()
        db.start()
        assert store.append([WorkerHeartbeat(worker_id="w2")], ts=TS) == [3]
        assert store.head() == 3


def test_close_leaves_nothing_running(tmp_path: Path) -> None:
    with PrivateMariaDB(tmp_path / "mariadb") as db:
        pid = db.pid
        assert db.running and db.install_seconds is not None
        assert int(db.pid_path.read_text()) == pid
    assert not db.running and refuses(db)
    assert not Path(f"/proc/{pid}").exists()
    db.close()  # idempotent

    # A server nobody holds (a lost handle, another process) is found by its pid file.
    orphan = PrivateMariaDB(tmp_path / "mariadb")
    orphan.port = db.port
    orphan.start()
    proc, orphan._proc = orphan._proc, None  # forget it, as a crashed test run would
    try:
        PrivateMariaDB(tmp_path / "mariadb").close()
        assert proc.wait(timeout=30) == -9  # SIGKILLed by close(); reaped here, no zombie
    finally:
        if proc.poll() is None:  # close() failed to find it: do not leave it running
            proc.kill()
            proc.wait()
    assert refuses(db)
