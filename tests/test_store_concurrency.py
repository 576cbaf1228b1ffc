"""The ordering hazard (docs/design.md, "The log"), tested with real processes.

Four appender processes (tests/support/appender.py) hammer one log with batches of
1-20 heartbeats while this process follows it with ``store.follow()`` from
seq 0. If two appends could commit out of seq order, the follower - which
asks for ``seq > last`` - would step over the seq committed late and never see
it. The test asserts that the follower saw every event exactly once, seqs
strictly consecutive from 1, and each appender's events in the order it
appended them.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecloud.events.types import WorkerHeartbeat
from ecloud.log.url import open_store_url

APPENDER = Path(__file__).resolve().parent / "support" / "appender.py"
APPENDERS = 4
BATCHES = 500
DEADLINE = 60.0  # seconds for the whole run; normally a few


def _readline(proc: subprocess.Popen, deadline: float) -> str:
    """One line of ``proc``'s stdout, or fail at the deadline."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(max(0.0, deadline - time.monotonic())):
            pytest.fail(f"appender {proc.args[3]} said nothing before the deadline")
    return proc.stdout.readline()


def run_appenders_and_follow(url: str) -> None:
    with open_store_url(url) as follower:  # creates the log before the appenders open it
        assert follower.head() == 0
        deadline = time.monotonic() + DEADLINE
        procs = [
            subprocess.Popen(
                [sys.executable, str(APPENDER), url, str(i), str(BATCHES), str(1000 + i)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(APPENDERS)
        ]
        try:
            for p in procs:
                line = _readline(p, deadline)
                assert line == "ready\n", f"appender {p.args[3]} failed to start: {line!r}"
            for p in procs:  # start signal: all begin together
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.close()

            seen: list = []
            progress_while_running: set[int] = set()
            final_head: list[int] = []

            def stop() -> bool:
                if time.monotonic() > deadline:
                    return True
                if any(p.poll() is None for p in procs):
                    progress_while_running.add(len(seen))
                    return False
                # Every appender has exited: nothing more will come after head.
                if not final_head:
                    final_head.append(follower.head())
                return (seen[-1].seq if seen else 0) >= final_head[0]

            for rec in follower.follow(0, poll=0.002, stop=stop):
                seen.append(rec)

            outputs = []
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
                assert p.stdout is not None
                outputs.append(p.stdout.read())
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert time.monotonic() <= deadline, "deadline passed before the follower caught up"
        for p, out in zip(procs, outputs, strict=True):
            assert p.returncode == 0, f"appender {p.args[3]} exited {p.returncode}: {out!r}"
        counts = [int(out.split()[-1]) for out in outputs]
        total = sum(counts)

        # Every event exactly once, seqs 1..N with no gap.
        assert [r.seq for r in seen] == list(range(1, total + 1))
        assert final_head == [total]
        # Each appender's events in the order it appended them, none missing.
        by_appender: dict[int, list[int]] = {i: [] for i in range(APPENDERS)}
        for r in seen:
            assert isinstance(r.event, WorkerHeartbeat)
            ident, counter = r.event.msg_id.split(":")
            assert r.event.worker_id == f"appender-{ident}"
            by_appender[int(ident)].append(int(counter))
        for i, count in enumerate(counts):
            assert by_appender[i] == list(range(count)), f"appender {i} out of order or incomplete"
        # The follower really raced the appenders: it caught up with them many
        # times while they were still appending, not just once at the end.
        assert len(progress_while_running - {0, total}) >= 10, sorted(progress_while_running)
        # A fresh read agrees with what the follower saw.
        assert list(follower.read()) == seen


@pytest.mark.mysql
def test_concurrent_appenders_never_make_a_follower_miss_mysql(mysql_url: str) -> None:
    run_appenders_and_follow(mysql_url)


def test_concurrent_appenders_never_make_a_follower_miss_sqlite(sqlite_url: str) -> None:
    run_appenders_and_follow(sqlite_url)


def _open_at_the_signal(path: str, go, results) -> None:
    from ecloud.log.sqlite_store import SQLiteStore

    go.wait()
    try:
        with SQLiteStore(path) as store:
            results.put(store.log_id())
    except Exception as exc:  # noqa: BLE001 - the test reports it
        results.put(f"error: {exc}")


def test_processes_opening_one_new_sqlite_log_at_once_all_get_it(tmp_path: Path) -> None:
    """Two ``ecloud run`` started in one instant open the same new file;
    seen: "database is locked" from the switch to WAL, which SQLite answers
    at once rather than waiting. Every opener gets the one log."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(25):
        path = str(tmp_path / f"log-{round_}.db")
        go, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_at_the_signal, args=(path, go, results)) for _ in range(4)]
        for p in procs:
            p.start()
        go.set()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        assert not [g for g in got if g.startswith("error")], (round_, got)
        assert len(set(got)) == 1, got
