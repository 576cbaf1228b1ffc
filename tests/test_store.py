"""One suite for every LogStore backend (memory, SQLite, MariaDB) via the ``store`` fixture,
plus URL handling and the things only durable or MariaDB stores have."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest

from ecloud.errors import CodecError, ConcurrencyError, StoreError, UserError
from ecloud.events.types import (
    ContextSet,
    Recorded,
    TaskCancelled,
    TaskDispatched,
    Tick,
    WorkerHeartbeat,
)
from ecloud.log.mysql_connect import MySQLParams, connect
from ecloud.log.store import LogStore, Snapshot
from ecloud.log.url import open_store, open_store_url
from tests.support.storetools import drop_database, mysql_url_for, new_database_name

TS = 1_700_000_000.25


def heartbeats(n: int, worker: str = "w", start: int = 0) -> list[WorkerHeartbeat]:
    return [WorkerHeartbeat(worker_id=worker, msg_id=f"m{start + i}") for i in range(n)]


def mixed(n: int) -> list:
    """Events cycling through three types."""
    out: list = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(WorkerHeartbeat(worker_id=f"w{i}"))
        elif kind == 1:
            out.append(TaskCancelled(task_id=f"t{i}", reason="r"))
        else:
            out.append(Tick())
    return out


# -------------------------------------------------------------------- appending


def test_append_returns_consecutive_seqs_from_1(store: LogStore) -> None:
    assert store.head() == 0
    assert store.append(heartbeats(3)) == [1, 2, 3]
    assert store.append(heartbeats(1)) == [4]
    assert store.append(mixed(5)) == [5, 6, 7, 8, 9]
    assert store.head() == 9
    assert [r.seq for r in store.read()] == list(range(1, 10))


def test_empty_append(store: LogStore) -> None:
    assert store.append([]) == []
    assert store.head() == 0
    store.append(heartbeats(2))
    assert store.append([]) == []
    assert store.append([], expected_head=2) == []
    with pytest.raises(ConcurrencyError):
        store.append([], expected_head=1)
    assert store.head() == 2
    assert len(list(store.read())) == 2


def test_events_round_trip(store: LogStore) -> None:
    events = [
        WorkerHeartbeat(worker_id="wörker-✓", msg_id="😀"),
        TaskDispatched(task_id="t1", attempt=2, worker_id="w9"),
        ContextSet(key="datastore", value="x" * 10_000),
        Tick(),
    ]
    store.append(events, ts=TS)
    assert list(store.read()) == [Recorded(i + 1, TS, e) for i, e in enumerate(events)]


def test_head(store: LogStore) -> None:
    assert store.head() == 0
    for i in range(1, 6):
        store.append(heartbeats(i))
        assert store.head() == i * (i + 1) // 2


def test_ts_is_stamped_on_every_event_of_a_batch(store: LogStore) -> None:
    store.append(heartbeats(3), ts=TS)
    before = time.time()
    store.append(heartbeats(2))
    after = time.time()
    recs = list(store.read())
    assert [r.ts for r in recs[:3]] == [TS] * 3
    assert recs[3].ts == recs[4].ts
    assert before <= recs[3].ts <= after
    with pytest.raises(ValueError):
        store.append(heartbeats(1), ts=float("nan"))
    assert store.head() == 5


def test_index_columns_are_filled(store: LogStore, raw: SimpleNamespace) -> None:
    store.append(
        [
            WorkerHeartbeat(worker_id="w1"),
            TaskCancelled(task_id="t1"),
            TaskDispatched(task_id="t2", attempt=1, worker_id="w2"),
            Tick(),
            TaskCancelled(task_id="x" * 300),  # too long for VARCHAR(255): left NULL
        ]
    )
    if raw.index_columns(store):  # memory keeps them too
        assert raw.index_columns(store) == [
            (1, None, "w1"),
            (2, "t1", None),
            (3, "t2", "w2"),
            (4, None, None),
            (5, None, None),
        ]
    assert list(store.read())[4].event.task_id == "x" * 300


# ---------------------------------------------------------------------- reading


def test_read_ranges_are_inclusive(store: LogStore) -> None:
    events = mixed(12)
    store.append(events, ts=TS)

    def seqs(*args, **kwargs) -> list[int]:
        return [r.seq for r in store.read(*args, **kwargs)]

    assert seqs() == list(range(1, 13))
    assert seqs(5) == list(range(5, 13))
    assert seqs(3, 7) == [3, 4, 5, 6, 7]
    assert seqs(end=4) == [1, 2, 3, 4]
    assert seqs(6, 6) == [6]
    assert seqs(8, 3) == []
    assert seqs(0) == seqs(1)
    assert seqs(13) == []
    assert seqs(10, 100) == [10, 11, 12]
    assert [r.event for r in store.read(2, 4)] == events[1:4]


def test_read_types_filter(store: LogStore) -> None:
    store.append(mixed(12))
    assert [r.seq for r in store.read(types=["worker.heartbeat"])] == [1, 4, 7, 10]
    assert [r.seq for r in store.read(types={"task.cancelled", "tick"})] == [
        2, 3, 5, 6, 8, 9, 11, 12,
    ]
    assert [r.seq for r in store.read(4, 9, types=["tick"])] == [6, 9]
    assert [r.seq for r in store.read(types="tick")] == [3, 6, 9, 12]
    assert list(store.read(types=[])) == []
    assert list(store.read(types=["no.such.type"])) == []


def test_read_raw_gives_undecoded_rows_with_bytes(store: LogStore) -> None:
    store.append([WorkerHeartbeat(worker_id="w", msg_id="m")], ts=TS)
    ((seq, ts, tag, version, body),) = list(store.read_raw())
    assert (seq, ts, tag, version) == (1, TS, "worker.heartbeat", 1)
    assert isinstance(body, bytes)
    assert body == b'{"worker_id":"w","msg_id":"m"}'
    assert list(store.read_raw(2)) == []


def test_reads_page_across_boundaries(store: LogStore) -> None:
    store.page_size = 100  # type: ignore[attr-defined]
    store.append(heartbeats(2500))  # also more rows than one INSERT batch
    assert store.head() == 2500
    assert [r.seq for r in store.read()] == list(range(1, 2501))
    assert [r.seq for r in store.read(95, 305)] == list(range(95, 306))
    assert [r.event.msg_id for r in store.read(99, 102)] == ["m98", "m99", "m100", "m101"]
    assert [row[0] for row in store.read_raw(2399)] == list(range(2399, 2501))
    store.append([Tick()] * 3)
    assert [r.seq for r in store.read(types=["tick"])] == [2501, 2502, 2503]
    # Appending while a read is under way (between pages) is allowed.
    it = store.read(1)
    first = [next(it) for _ in range(150)]
    store.append(heartbeats(1))
    rest = list(it)
    assert [r.seq for r in first + rest] == list(range(1, 2504))


def test_read_of_an_unknown_type_names_the_seq(store: LogStore, raw: SimpleNamespace) -> None:
    store.append(heartbeats(2))
    raw.insert(store, 3, "no.such.type", b"{}")
    store.append(heartbeats(1))
    assert store.head() == 4
    assert [r.seq for r in store.read(1, 2)] == [1, 2]
    with pytest.raises(CodecError, match=r"seq 3: unknown event type 'no.such.type'"):
        list(store.read())
    assert [row[2] for row in store.read_raw()] == ["worker.heartbeat"] * 2 + [
        "no.such.type",
        "worker.heartbeat",
    ]


# ------------------------------------------------------------------- atomicity


def test_unencodable_batch_appends_nothing(store: LogStore) -> None:
    store.append(heartbeats(2))
    with pytest.raises(CodecError, match="event 1 of the batch"):
        store.append([WorkerHeartbeat(worker_id="a"), object(), WorkerHeartbeat(worker_id="b")])
    with pytest.raises(CodecError, match="event 2 of the batch"):
        store.append(heartbeats(2) + [WorkerHeartbeat(worker_id=object())])  # type: ignore[arg-type]
    assert store.head() == 2
    assert [r.seq for r in store.read()] == [1, 2]
    assert store.append(heartbeats(1)) == [3]


def test_failed_transaction_appends_nothing(store: LogStore, raw: SimpleNamespace) -> None:
    store.append(heartbeats(2))
    raw.insert(store, 4, "tick", b"{}", bump_head=False)  # a row in the way of the next batch
    with pytest.raises(StoreError) as info:
        store.append(heartbeats(3))
    assert not isinstance(info.value, ConcurrencyError)
    assert store.head() == 2
    assert [row[0] for row in store.read_raw(1, 10)] == [1, 2, 4]


# ------------------------------------------------------- optimistic concurrency


def test_expected_head(store: LogStore) -> None:
    assert store.append(heartbeats(2), expected_head=0) == [1, 2]
    assert store.append(heartbeats(1), expected_head=2) == [3]
    with pytest.raises(ConcurrencyError) as info:
        store.append(heartbeats(5), expected_head=2)
    assert (info.value.expected, info.value.actual) == (2, 3)
    with pytest.raises(ConcurrencyError):
        store.append(heartbeats(1), expected_head=4)
    assert store.head() == 3
    assert len(list(store.read())) == 3


def test_two_stores_race_with_expected_head(durable_url: str) -> None:
    with open_store_url(durable_url) as a, open_store_url(durable_url) as b:
        head = a.head()
        assert b.head() == head
        a.append(heartbeats(1), expected_head=head)
        with pytest.raises(ConcurrencyError):
            b.append(heartbeats(1), expected_head=head)
        assert a.append(heartbeats(1)) == [head + 2]  # b's failed append released the lock
        assert b.append(heartbeats(1), expected_head=head + 2) == [head + 3]


def test_append_built_appends_what_the_head_decides(store: LogStore) -> None:
    store.append(heartbeats(2))
    seen: list[int] = []

    def build(head: int) -> list:
        seen.append(head)
        assert [r.seq for r in store.read()] == [1, 2]  # the log can be read meanwhile
        return heartbeats(head)  # as many as there were

    assert store.append_built(build, ts=5.0) == [3, 4]
    assert seen == [2]
    assert [r.ts for r in store.read(3)] == [5.0, 5.0]
    assert store.append_built(lambda head: []) == []
    with pytest.raises(ValueError, match="refused"):
        store.append_built(lambda head: (_ for _ in ()).throw(ValueError("refused")))
    assert store.head() == 4
    assert store.append(heartbeats(1), expected_head=4) == [5]  # nothing left locked


def test_append_built_holds_off_other_writers_until_it_commits(durable_url: str) -> None:
    """A writer arriving while ``build`` runs lands after the built batch."""
    with open_store_url(durable_url) as a:
        a.append(heartbeats(1))
        other: list[int] = []
        errors: list[BaseException] = []

        def write() -> None:
            try:
                with open_store_url(durable_url) as b:
                    other.extend(b.append(heartbeats(1, worker="other")))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=write)

        def build(head: int) -> list:
            assert [r.seq for r in a.read()] == [1]  # reading the log keeps the lock ...
            thread.start()
            thread.join(0.5)  # ... so the writer, given every chance to slip in, must not
            assert a.head() == 1 and [r.seq for r in a.read()] == [1]
            return heartbeats(2, worker="built")

        assert a.append_built(build) == [2, 3]
        thread.join(30)
        assert not errors, errors
        assert other == [4]


# ----------------------------------------------------------------------- follow


def test_follow_yields_events_appended_after_it_started(store: LogStore, store_url: str) -> None:
    store.append(heartbeats(5, worker="before"))
    start = store.head()
    batches, per_batch = 30, 4
    total = batches * per_batch
    deadline = time.monotonic() + 20
    writer_done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        # A store belongs to one thread: the writer opens its own (memory:// logs
        # exist only in their store object, so that one is shared).
        try:
            w = store if store_url == "memory://" else open_store_url(store_url, create=False)
            try:
                for b in range(batches):
                    w.append(heartbeats(per_batch, worker="after", start=b * per_batch))
            finally:
                if w is not store:
                    w.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            writer_done.set()

    seen: list[Recorded] = []

    def stop() -> bool:
        return (writer_done.is_set() and len(seen) >= total) or time.monotonic() > deadline

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for rec in store.follow(start, poll=0.005, stop=stop):
            seen.append(rec)
    finally:
        thread.join()
    assert not errors, errors
    assert [r.seq for r in seen] == list(range(start + 1, start + total + 1))
    assert [r.event.msg_id for r in seen] == [f"m{i}" for i in range(total)]
    assert all(r.event.worker_id == "after" for r in seen)


# -------------------------------------------------------------------- snapshots


def test_snapshots_newest_at_most_and_reducer_version(store: LogStore) -> None:
    assert store.load_snapshot("r1") is None
    store.append(heartbeats(10))
    store.save_snapshot(Snapshot(2, "r1", b"two", 100.0))
    store.save_snapshot(Snapshot(5, "r1", b"five", 101.0))
    store.save_snapshot(Snapshot(7, "r2", b"seven-r2", 102.0))
    store.save_snapshot(Snapshot(0, "r1", b"", 99.0))
    assert store.load_snapshot("r1") == Snapshot(5, "r1", b"five", 101.0)
    assert store.load_snapshot("r1", at_most=4) == Snapshot(2, "r1", b"two", 100.0)
    assert store.load_snapshot("r1", at_most=5) == Snapshot(5, "r1", b"five", 101.0)
    assert store.load_snapshot("r1", at_most=1) == Snapshot(0, "r1", b"", 99.0)
    assert store.load_snapshot("r2") == Snapshot(7, "r2", b"seven-r2", 102.0)
    assert store.load_snapshot("r2", at_most=6) is None
    assert store.load_snapshot("r3") is None
    # The same seq saved again: the later one wins.
    store.save_snapshot(Snapshot(5, "r1", b"five again", 103.0))
    assert store.load_snapshot("r1").data == b"five again"  # type: ignore[union-attr]
    # created_ts defaults to now.
    before = time.time()
    store.save_snapshot(Snapshot(6, "r1", b"six"))
    loaded = store.load_snapshot("r1")
    assert loaded is not None and loaded.seq == 6 and before <= loaded.created_ts <= time.time()


def test_snapshot_beyond_head_is_refused(store: LogStore) -> None:
    store.append(heartbeats(3))
    with pytest.raises(StoreError, match="beyond the head"):
        store.save_snapshot(Snapshot(4, "r1", b"x"))
    assert store.load_snapshot("r1") is None


def test_big_snapshot_round_trips_in_chunks(store: LogStore, raw: SimpleNamespace) -> None:
    store.append(heartbeats(1))
    data = os.urandom(10 * 1024 * 1024)  # incompressible: > 2 chunks of 4 MiB
    store.save_snapshot(Snapshot(1, "big", data, 1.0))
    assert store.load_snapshot("big") == Snapshot(1, "big", data, 1.0)
    counts = raw.snapshot_chunk_counts(store)
    assert counts in ([], [3])  # memory keeps no chunks
    compressible = b"0123456789abcdef" * (1024 * 1024)  # 16 MiB, one small chunk
    store.save_snapshot(Snapshot(1, "big", compressible, 2.0))
    assert store.load_snapshot("big").data == compressible  # type: ignore[union-attr]


# -------------------------------------------------------------------- lifecycle


def test_closed_store_refuses_work(store_url: str) -> None:
    s = open_store_url(store_url)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.append(heartbeats(1))
    with pytest.raises(StoreError, match="closed"):
        s.head()


def test_reopening_sees_the_same_log(durable_url: str) -> None:
    with open_store(durable_url) as s:
        s.append(mixed(7), ts=TS)
        s.save_snapshot(Snapshot(7, "r1", b"state", 5.0))
        before = list(s.read())
    with open_store(durable_url, create=False) as s:
        assert s.head() == 7
        assert list(s.read()) == before
        assert s.load_snapshot("r1") == Snapshot(7, "r1", b"state", 5.0)
        assert s.append(heartbeats(1)) == [8]
    with open_store(durable_url) as s:  # create=True on an existing log changes nothing
        assert s.head() == 8
        assert list(s.read(1, 7)) == before


# ------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "events.db",
        "/tmp/events.db",
        "postgres://u:hunter2@h/db",
        "sqlite://events.db",
        "sqlite:///",
        "sqlite:///dir/",
        "sqlite:///x.db?mode=ro",
        "mysql://127.0.0.1/db",
        "mysql://u:hunter2@127.0.0.1:3306",
        "mysql://u:hunter2@127.0.0.1:3306/",
        "mysql://u:hunter2@127.0.0.1:notaport/db",
        "mysql://u:hunter2@127.0.0.1:3306/db?ssl=1",
        "mysql://u:hunter2@127.0.0.1:3306/bad;name",
        "mysql://u:hunter2@:3306/db",
        "memory://x",
        "memory:",
    ],
)
def test_bad_urls_are_user_errors(url: str) -> None:
    with pytest.raises(UserError) as info:
        open_store_url(url)
    message = str(info.value)
    assert "sqlite:///" in message and "mysql://user:password@host:3306/database" in message
    assert "hunter2" not in message


def test_mysql_url_parsing() -> None:
    from ecloud.log.url import parse_mysql_url

    p = parse_mysql_url("mysql://us%40er:p%3Aw%2Fd%40@db.example:3307/logs")
    assert p == MySQLParams("db.example", 3307, "us@er", "p:w/d@", "logs")
    assert "p:w/d@" not in repr(p) and "p:w/d@" not in p.display()
    p = parse_mysql_url("mysql://root@localhost/logs")
    assert (p.port, p.password) == (3306, "")
    assert parse_mysql_url("mariadb://root:@[::1]/x").where == "[::1]:3306"


def test_sqlite_url_forms(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store_url("sqlite:///rel.db") as s:
        s.append(heartbeats(1))
    assert (tmp_path / "rel.db").exists()
    with open_store_url(f"sqlite:///{tmp_path / 'abs.db'}") as s:  # sqlite:////tmp/...
        assert s.url.startswith("sqlite:////")
    assert (tmp_path / "abs.db").exists()


def test_missing_sqlite_file_without_create(tmp_path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(UserError, match="no event log at .*nope.db"):
        open_store_url(f"sqlite:///{path}", create=False)
    assert not path.exists()
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(UserError, match="no event log"):
        open_store_url(f"sqlite:///{tmp_path / 'empty.db'}", create=False)
    (tmp_path / "text.db").write_text("hello, I am not a database" * 100)
    with pytest.raises(UserError, match="not an SQLite database"):
        open_store_url(f"sqlite:///{tmp_path / 'text.db'}")
    with pytest.raises(UserError, match="cannot open"):
        open_store_url(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")


def test_memory_url() -> None:
    with open_store_url("memory://") as a, open_store_url("memory://", create=False) as b:
        a.append(heartbeats(1))
        assert (a.head(), b.head()) == (1, 0)  # each memory:// is a log of its own


# ---------------------------------------------------------------- MariaDB only


@pytest.mark.mysql
def test_mysql_missing_database_without_create(mysql_server: MySQLParams) -> None:
    url = mysql_url_for(mysql_server, new_database_name())
    with pytest.raises(UserError, match="no event log at mysql://"):
        open_store_url(url, create=False)


@pytest.mark.mysql
def test_mysql_empty_database_without_create(mysql_url: str) -> None:
    with pytest.raises(UserError, match="holds no ecloud tables"):
        open_store_url(mysql_url, create=False)


@pytest.mark.mysql
def test_mysql_create_makes_the_database(mysql_server: MySQLParams) -> None:
    name = new_database_name()
    try:
        with open_store_url(mysql_url_for(mysql_server, name)) as s:
            s.append(heartbeats(2))
        conn = connect(mysql_server, name)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA"
                    " WHERE SCHEMA_NAME = %s",
                    (name,),
                )
                assert cur.fetchone() == ("utf8mb4",)
                cur.execute(
                    "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES"
                    " WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
                    (name,),
                )
                assert set(cur.fetchall()) == {
                    ("events", "InnoDB"),
                    ("head", "InnoDB"),
                    ("meta", "InnoDB"),
                    ("snapshot_chunks", "InnoDB"),
                    ("snapshots", "InnoDB"),
                }
        finally:
            conn.close()
    finally:
        drop_database(mysql_server, name)


@pytest.mark.mysql
def test_mysql_connection_refused_is_one_line_store_error() -> None:
    with pytest.raises(StoreError) as info:
        open_store_url("mysql://someone:hunter2@127.0.0.1:1/db")
    message = str(info.value)
    assert "127.0.0.1:1" in message and "hunter2" not in message and "\n" not in message
    assert not isinstance(info.value, UserError)


@pytest.mark.mysql
def test_mysql_access_denied_is_store_error(mysql_server: MySQLParams) -> None:
    params = MySQLParams(mysql_server.host, mysql_server.port, "ecloud_no_such_user", "hunter2", "db")
    with pytest.raises(StoreError, match="refused user 'ecloud_no_such_user'") as info:
        open_store_url(mysql_url_for(params, "db"))
    assert mysql_server.where in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.mysql
def test_mysql_event_over_max_allowed_packet_is_refused_cleanly(mysql_url: str) -> None:
    with open_store_url(mysql_url) as s:
        s.append(heartbeats(1))
        big = ContextSet(key="k", value="x" * (17 * 1024 * 1024))
        with pytest.raises(StoreError, match="max_allowed_packet"):
            s.append([Tick(), big])
        assert s.head() == 1
        assert s.append([Tick()]) == [2]


@pytest.mark.mysql
def test_mysql_reconnects_when_the_connection_died_between_calls(
    mysql_url: str, mysql_server: MySQLParams
) -> None:
    def kill(s: LogStore) -> None:
        admin = connect(mysql_server, None)
        try:
            admin.kill(s._conn.thread_id())  # type: ignore[attr-defined]
        finally:
            admin.close()

    with open_store_url(mysql_url) as s:
        s.append(heartbeats(2))
        kill(s)
        assert s.append(heartbeats(1)) == [3]  # lost before BEGIN: reconnected
        kill(s)
        assert [r.seq for r in s.read()] == [1, 2, 3]  # reads retry once too
        kill(s)
        assert s.head() == 3
