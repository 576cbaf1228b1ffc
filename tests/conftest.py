"""Fixtures for the event-log store tests.

MariaDB: tests marked ``mysql`` use the server named by ``ECLOUD_TEST_MYSQL``
(default ``mysql://root@127.0.0.1:3306``). Each test gets its own database,
``ecloud_test_<pid>_<random hex>``, created with a plain ``CREATE DATABASE``
(so it fails rather than reuse a database someone else made) and dropped at
teardown; no other database is ever touched. An unreachable server makes
these tests FAIL with a message saying so - they never skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ecloud.errors import StoreError
from ecloud.log.mysql_connect import MySQLParams, connect, quote_ident
from ecloud.log.store import LogStore
from ecloud.log.url import open_store_url, parse_mysql_url, redact
from tests.support.storetools import (
    drop_database,
    index_columns,
    mysql_url_for,
    new_database_name,
    raw_insert,
    snapshot_chunk_counts,
    wipe,
)

MYSQL_SERVER = os.environ.get("ECLOUD_TEST_MYSQL", "mysql://root@127.0.0.1:3306")


# ---------------------------------------------------------------------- MariaDB


@pytest.fixture(scope="session")
def mysql_server() -> MySQLParams:
    """The test server's connection parameters, checked once per session."""
    problem = ""
    try:
        params = parse_mysql_url(MYSQL_SERVER, require_database=False)
        conn = connect(params, None, connect_timeout=5)
    except Exception as exc:
        problem = str(exc)
    if problem:
        pytest.fail(
            f"MariaDB test server from ECLOUD_TEST_MYSQL={redact(MYSQL_SERVER)!r} is not usable:"
            f" {problem}. Start it, or point ECLOUD_TEST_MYSQL at one"
            " (mysql://user:password@host:port); mysql tests fail rather than skip.",
            pytrace=False,
        )
    conn.close()
    return params


@pytest.fixture
def mysql_db(mysql_server: MySQLParams) -> Iterator[str]:
    """A fresh, empty database on the test server (its name); dropped afterwards."""
    name = new_database_name()
    conn = connect(mysql_server, None)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE {quote_ident(name)} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
    finally:
        conn.close()
    try:
        yield name
    finally:
        drop_database(mysql_server, name)


@pytest.fixture
def mysql_url(mysql_server: MySQLParams, mysql_db: str) -> str:
    """URL of a fresh database of our own on the test server."""
    return mysql_url_for(mysql_server, mysql_db)


# ----------------------------------------------------------------------- SQLite


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


# ---------------------------------------------------------------- all backends

BACKENDS = ["memory", "sqlite", pytest.param("mysql", marks=pytest.mark.mysql)]
DURABLE_BACKENDS = ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)]


def _url_for(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("mysql_url")


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    return _url_for(request.param, request)


@pytest.fixture(params=DURABLE_BACKENDS)
def durable_url(request: pytest.FixtureRequest) -> str:
    """A log that outlives its store object (SQLite file, MariaDB database)."""
    return _url_for(request.param, request)


@pytest.fixture
def store(store_url: str) -> Iterator[LogStore]:
    """An open, empty store of each backend; dropped afterwards."""
    s = open_store_url(store_url)
    try:
        yield s
    finally:
        try:
            s.drop()
        except StoreError:  # already closed by the test; the url fixtures clean up
            pass


@pytest.fixture
def raw() -> SimpleNamespace:
    """Backdoor helpers: ``raw.insert``, ``raw.wipe``, ``raw.index_columns``,
    ``raw.snapshot_chunk_counts``."""
    return SimpleNamespace(
        insert=raw_insert,
        wipe=wipe,
        index_columns=index_columns,
        snapshot_chunk_counts=snapshot_chunk_counts,
    )


pytest_plugins = ["tests.support.brokers", "tests.support.sshd", "tests.support.secure_broker"]


#: modules whose tests start processes, brokers, databases or browsers, or run long
#: property searches: `pytest -m "not slow"` leaves them out for everyday work (the
#: rest runs in about a minute and a half here; CI runs everything). Measured with
#: `pytest --durations=0`; a module that takes more than about 5 s in all goes here.
SLOW_MODULES = frozenset({
    "chaos/test_chaos.py", "test_autoscale.py", "test_autoscale_e2e.py", "test_boss.py",
    "test_boss_live_state.py", "test_broker.py", "test_broker_security.py",
    "test_callbacks_e2e.py", "test_duplicate_worker.py", "test_e2e.py", "test_escape.py",
    "test_ingest_fuzz.py", "test_limits_property.py", "test_logs.py", "test_movers.py",
    "test_opennebula.py", "test_pipeline.py", "test_reconciler_e2e.py", "test_run.py",
    "test_run_crash.py", "test_run_edges.py", "test_staging_e2e.py", "test_staging_edges.py",
    "test_standby.py", "test_web.py", "test_web_browser.py", "test_worker.py",
    "test_dagman_run.py", "test_workflows_e2e.py", "test_worker_scripts.py",
})


def pytest_collection_modifyitems(config, items) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        where = Path(str(item.fspath)).resolve()
        if where.is_relative_to(tests_dir) and \
                where.relative_to(tests_dir).as_posix() in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
