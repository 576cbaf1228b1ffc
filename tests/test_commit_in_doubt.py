"""A COMMIT whose connection breaks: the batch may or may not be in the log.

The boss's journal must end with the batch in the log exactly once either
way (the chaos suite once found a worker's report twice after MariaDB was
killed mid-run: the journal had written an in-doubt batch again). The
:class:`~tests.support.cutting_proxy.CuttingProxy` breaks the connection at
COMMIT on a real MariaDB, after or before the server commits."""

from __future__ import annotations

import threading

import attrs
import pytest

from ecloud.boss.journal import Journal
from ecloud.errors import CommitInDoubtError, StoreError
from ecloud.events import types as ev
from ecloud.log.url import open_store_url
from tests.support.cutting_proxy import CuttingProxy
from tests.support.storetools import mysql_url_for

pytestmark = pytest.mark.mysql


@pytest.fixture
def proxied(mysql_server, mysql_db: str):
    """(store through the proxy, store direct, proxy)."""
    direct = open_store_url(mysql_url_for(mysql_server, mysql_db), create=True)
    proxy = CuttingProxy((mysql_server.host, mysql_server.port))
    via = attrs.evolve(mysql_server, host="127.0.0.1", port=proxy.port)
    store = open_store_url(mysql_url_for(via, mysql_db))
    yield store, direct, proxy
    store.close()
    direct.close()
    proxy.close()


def _tick_events(n: int) -> list:
    return [ev.ContextSet("note", f"event {i}") for i in range(n)]


def _bodies(store) -> list:
    return [rec.event for rec in store.read(1)]


@pytest.mark.parametrize("mode, landed", [("after", True), ("before", False)])
def test_store_reports_the_seqs_in_doubt(proxied, mode, landed):
    store, direct, proxy = proxied
    store.append(_tick_events(2))
    proxy.cut_next_commit(mode)
    with pytest.raises(CommitInDoubtError) as info:
        store.append(_tick_events(3))
    assert proxy.cuts == 1
    assert (info.value.first, info.value.count) == (3, 3)
    assert "may or may not" in str(info.value)
    assert direct.head() == (5 if landed else 2)
    # the store goes on: the next append reconnects
    assert store.append(_tick_events(1)) == [direct.head()]


@pytest.mark.parametrize("mode", ["after", "before"])
def test_journal_writes_an_in_doubt_batch_once(proxied, mode):
    store, direct, proxy = proxied
    journal = Journal(store, poll=0.0, snapshot_every=0, snapshot_interval=0.0,
                      stopping=threading.Event())
    journal.stopping.set()  # no pause between tries
    first = _tick_events(3)
    assert journal.commit(first[:1])
    proxy.cut_next_commit(mode)
    assert not journal.commit(first[1:])
    assert proxy.cuts == 1
    later = [ev.ContextSet("note", "later")]
    assert journal.commit(journal.take_pending() + later)
    events = [e for e in _bodies(direct) if not isinstance(e, ev.BossResumed)]
    assert events == first + later
    # the stall is said once, before what came after it
    kinds = [type(e).__name__ for e in _bodies(direct)]
    assert kinds.count("BossResumed") == 1


def test_journal_keeps_the_batch_while_the_log_cannot_be_read(proxied, mysql_server):
    """Settling needs a read; while that fails too, nothing is dropped or
    written, and the batch stays first in line."""
    store, direct, proxy = proxied
    journal = Journal(store, poll=0.0, snapshot_every=0, snapshot_interval=0.0,
                      stopping=threading.Event())
    journal.stopping.set()
    proxy.cut_next_commit("after")
    batch = _tick_events(2)
    assert not journal.commit(batch)
    real_read = store.read

    def broken_read(*args, **kwargs):
        raise StoreError("MariaDB is down")

    store.read = broken_read
    assert not journal.commit(journal.take_pending())
    assert journal.pending == batch
    store.read = real_read
    assert journal.commit(journal.take_pending())
    assert [e for e in _bodies(direct) if not isinstance(e, ev.BossResumed)] == batch
