"""Helpers shared by the store tests (imported by conftest.py and the test modules).

The raw_* helpers reach behind a store's back - into its connection or its
dicts - to plant rows or empty it; production code never does this.
"""

from __future__ import annotations

import os
import secrets
from typing import Any
from urllib.parse import quote

from ecloud.log.memory_store import MemoryStore
from ecloud.log.mysql_connect import MySQLParams, connect, quote_ident
from ecloud.log.mysql_store import MySQLStore
from ecloud.log.sqlite_store import SQLiteStore
from ecloud.log.store import LogStore


def mysql_url_for(params: MySQLParams, database: str) -> str:
    cred = quote(params.user, safe="")
    if params.password:
        cred += ":" + quote(params.password, safe="")
    return f"mysql://{cred}@{params.where}/{database}"


def drop_database(server: MySQLParams, name: str) -> None:
    """Drop a test database (ours: the name comes from new_database_name)."""
    conn = connect(server, None)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
    finally:
        conn.close()


def new_database_name() -> str:
    """A database name no one else uses: ecloud_test_<pid>_<random hex>."""
    return f"ecloud_test_{os.getpid()}_{secrets.token_hex(4)}"


def raw_insert(
    store: LogStore,
    seq: int,
    tag: str,
    body: bytes,
    *,
    version: int = 1,
    ts: float = 1.0,
    bump_head: bool = True,
) -> None:
    """Plant a row behind the codec's back (and optionally move the head)."""
    if isinstance(store, MemoryStore):
        store._rows[seq] = (ts, tag, version, body, None, None)
        store._max_seq = max(store._max_seq, seq)
        if bump_head:
            store._head = seq
        return
    sql = "INSERT INTO events (seq, ts, type, version, body) VALUES ({0}, {0}, {0}, {0}, {0})"
    head_sql = "UPDATE head SET last_seq = {0} WHERE id = 1"
    _raw_sql(store, [(sql, (seq, ts, tag, version, body))] + ([(head_sql, (seq,))] if bump_head else []))


def wipe(store: LogStore) -> None:
    """Empty a store in place (faster than dropping and recreating it)."""
    if isinstance(store, MemoryStore):
        store._rows.clear()
        store._snapshots.clear()
        store._head = store._max_seq = 0
        return
    _raw_sql(
        store,
        [
            ("DELETE FROM events", ()),
            ("DELETE FROM snapshot_chunks", ()),
            ("DELETE FROM snapshots", ()),
            ("UPDATE head SET last_seq = 0 WHERE id = 1", ()),
        ],
    )


def index_columns(store: LogStore) -> list[tuple[int, Any, Any]]:
    """(seq, task_id, worker_id) of every stored row."""
    if isinstance(store, MemoryStore):
        return [(seq, row[4], row[5]) for seq, row in sorted(store._rows.items())]
    return [
        (int(s), t, w)
        for s, t, w in _raw_sql(store, [("SELECT seq, task_id, worker_id FROM events ORDER BY seq", ())])
    ]


def snapshot_chunk_counts(store: LogStore) -> list[int]:
    if isinstance(store, MemoryStore):
        return []
    return [
        int(n)
        for (n,) in _raw_sql(
            store, [("SELECT COUNT(*) FROM snapshot_chunks GROUP BY snapshot_id ORDER BY snapshot_id", ())]
        )
    ]


def _raw_sql(store: LogStore, statements: list[tuple[str, tuple]]) -> list[tuple]:
    rows: list[tuple] = []
    if isinstance(store, SQLiteStore):
        conn = store._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                rows = conn.execute(sql.format("?"), params).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return rows
    assert isinstance(store, MySQLStore)
    conn = store._db()
    try:
        with conn.cursor() as cur:
            for sql, params in statements:
                cur.execute(sql.format("%s"), params)
                rows = list(cur.fetchall())
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return rows
