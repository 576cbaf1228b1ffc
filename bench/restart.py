"""Boss restart time on a large log, with and without a snapshot.

    python -m bench.restart                          # 1,000,000 events, SQLite and MariaDB
    python -m bench.restart --events 50000 --only sqlite

A restarted boss folds the log (newest snapshot + suffix), appends
``boss.started``, re-issues the outstanding effects and reads the log's tail
for committed reports before it serves anyone (``boss.ready``). Snapshots
exist to keep that pause short; this measures how short, as the ratio of a
restart from an empty state to a restart from a snapshot near the head, on
each backend. Absolute times depend on the machine: compare the ratio.

The log comes from :func:`bench.fold.synthetic_log` (the real reducers and
scheduler: task batches, 100 workers, dispatch/start/finish, heartbeats,
ticks). By default it holds 3 tasks per 10 events, so the run is still in
progress at the head: the restarted boss has tasks in flight to re-dispatch
and a full-sized state to load, as after a crash mid-run.

Also measured, one piece at a time: ``load_state`` with and without the
snapshot, the snapshot's save time and size, the tail read for committed
reports. Prints a table and writes JSON (default
``bench/results/restart.json``). The MariaDB part uses a database of its own,
``ecloud_bench_<pid>``, dropped at the end even on error.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench.fold import synthetic_log
from bench.logs import fresh_log
from ecloud.boss.loop import Boss
from ecloud.boss.recent_reports import committed_reports
from ecloud.effects.messaging.broker import start_broker
from ecloud.events.types import Recorded
from ecloud.log.rebuild import load_state, save_snapshot
from ecloud.log.store import LogStore
from ecloud.log.url import open_store
from ecloud.projections.fold import step
from ecloud.projections.outstanding import outstanding
from ecloud.projections.state import State

APPEND_BATCH = 5000  # at most this many events per append call (one transaction)
CLUSTER = "bench"
console = Console(stderr=True)


# ------------------------------------------------------------- building


def expected_counts(rounds: list[list[Recorded]]) -> dict[str, int]:
    """Task counts of the generated log folded in memory: what every stored
    copy must fold to, or the benchmark measured a broken log."""
    state = State()
    for batch in rounds:
        for rec in batch:
            step(state, rec)
    assert not state.rejected, state.rejected[:3]
    return dict(state.counts)


def append_chunks(rounds: list[list[Recorded]], size: int) -> Iterator[tuple[float, list]]:
    """One append per round (split past ``size`` events), stamped with the
    round's ts. An append has a single ts, and merging rounds would stretch
    the gaps between heartbeats past the 30 s heartbeat timeout: workers the
    generator kept alive would be lost in the stored log."""
    for batch in rounds:
        for k in range(0, len(batch), size):
            yield batch[0].ts, [rec.event for rec in batch[k:k + size]]


def build_log(url: str, rounds: list[list[Recorded]], total: int, label: str) -> dict:
    """Append the generated log to a fresh store at ``url``, with a progress
    bar (a million events take a few minutes on MariaDB)."""
    columns = (TextColumn(f"append to {label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    start = time.perf_counter()
    with open_store(url, create=True) as store, Progress(*columns, console=console) as bar:
        task = bar.add_task("append", total=total)
        for ts, events in append_chunks(rounds, APPEND_BATCH):
            store.append(events, ts=ts)
            bar.advance(task, len(events))
        head = store.head()
    elapsed = time.perf_counter() - start
    return {"events": head, "append_seconds": elapsed, "append_events_per_s": head / elapsed}


# ------------------------------------------------------------ measuring


def timed_load(store: LogStore, use_snapshot: bool) -> tuple[float, State]:
    gc.collect()
    start = time.perf_counter()
    state = load_state(store, use_snapshot=use_snapshot)
    return time.perf_counter() - start, state


def _run_boss(boss: Boss) -> None:
    """The boss thread; an error is kept in ``boss.error`` and raised by the
    measuring thread."""
    try:
        boss.run()
    except BaseException:  # noqa: BLE001, S110 - reported through boss.error
        pass


def time_restart(url: str, broker_url: str) -> float:
    """Seconds from constructing a boss to ``boss.ready``; the boss is then
    stopped and joined, so the next restart starts from the same log plus a
    few events of this one (``boss.started``, perhaps a dispatch)."""
    gc.collect()
    start = time.perf_counter()
    # snapshot_every=0: a snapshot written by this boss would change what the
    # next measurement loads
    boss = Boss(url, broker_url, cluster=CLUSTER, snapshot_every=0)
    thread = threading.Thread(target=_run_boss, args=(boss,), name="boss", daemon=True)
    thread.start()
    while not boss.ready.wait(0.05):
        if boss.finished.is_set():
            raise RuntimeError(f"the boss stopped while starting: {boss.error!r}")
    elapsed = time.perf_counter() - start
    boss.stop()
    thread.join(60)
    if thread.is_alive() or boss.error is not None:
        raise RuntimeError(f"the boss did not stop cleanly: {boss.error!r}")
    return elapsed


def best_restart(url: str, broker_url: str, repeat: int, what: str) -> list[float]:
    times = []
    for _ in range(repeat):
        times.append(time_restart(url, broker_url))
        console.print(f"  boss restart {what}: {times[-1]:.2f}s")
    return times


def check_state(state: State, expected: dict[str, int], what: str) -> None:
    """The stored log folds to what the generator folded (every boss run
    adds events at the head, so only the first load is compared)."""
    assert not state.rejected, (what, state.rejected[:3])
    assert dict(state.counts) == expected, (what, dict(state.counts), expected)


def measure(url: str, broker_url: str, expected: dict[str, int], repeat: int) -> dict:
    """Every figure for one backend, in an order that keeps the log without
    a snapshot until the restarts that must not see one are done."""
    r: dict = {}
    with open_store(url, create=False) as store:
        r["load_state_no_snapshot_s"], state = timed_load(store, use_snapshot=False)
        check_state(state, expected, url)
        r["outstanding_effects"] = len(outstanding(state))
        del state
        start = time.perf_counter()
        r["committed_reports"] = sum(1 for _ in committed_reports(store))
        r["committed_reports_s"] = time.perf_counter() - start
        console.print(f"  load_state without snapshot: {r['load_state_no_snapshot_s']:.2f}s")
        r["restart_no_snapshot_s"] = best_restart(url, broker_url, repeat, "without snapshot")
        state = load_state(store, use_snapshot=False)
        start = time.perf_counter()
        snap = save_snapshot(store, state, time.time())
        r["snapshot_save_s"] = time.perf_counter() - start
        r["snapshot_seq"], r["snapshot_bytes"] = snap.seq, len(snap.data)
        del state, snap
        r["load_state_snapshot_s"], state = timed_load(store, use_snapshot=True)
        del state
        console.print(f"  snapshot at seq {r['snapshot_seq']:,}: {r['snapshot_bytes']:,} bytes, "
                      f"saved in {r['snapshot_save_s']:.2f}s; load_state with it: "
                      f"{r['load_state_snapshot_s']:.2f}s")
        r["restart_snapshot_s"] = best_restart(url, broker_url, repeat, "with snapshot")
    r["ratio"] = min(r["restart_no_snapshot_s"]) / min(r["restart_snapshot_s"])
    return r


# ------------------------------------------------------------- backends


@contextmanager
def sqlite_log() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ecloud-bench-") as tmp:
        yield f"sqlite:///{tmp}/restart.db"


# ----------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="log size (default 1,000,000)")
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks in the log (default 3 per 10 events: still running at the head)")
    parser.add_argument("--only", choices=("sqlite", "mysql"), help="one backend only")
    parser.add_argument("--repeat", type=int, default=1, help="restarts per case; the best counts")
    parser.add_argument("--mysql", default=os.environ.get("ECLOUD_TEST_MYSQL", "mysql://root@127.0.0.1:3306"),
                        help="MariaDB server URL (a database ecloud_bench_<pid> is created and dropped)")
    parser.add_argument("--json-out", default="bench/results/restart.json")
    return parser.parse_args(argv)


def generate(events: int, tasks: int) -> tuple[list[list[Recorded]], dict]:
    with console.status(f"generating {events:,} events over {tasks:,} tasks"):
        start = time.perf_counter()
        rounds = synthetic_log(events, tasks)
        gen_s = time.perf_counter() - start
        expected = expected_counts(rounds)
    mix = Counter(type(rec.event).TYPE for batch in rounds for rec in batch)
    console.print(f"generated {sum(mix.values()):,} events in {gen_s:.1f}s; final task counts "
                  + ", ".join(f"{k} {v:,}" for k, v in expected.items() if v))
    return rounds, {"generate_seconds": gen_s, "mix": dict(mix.most_common()), "expected_counts": expected}


def render(result: dict) -> Table:
    """The restart figures: what the benchmark is for."""
    table = Table(title=f"boss restart, {result['tasks']:,} tasks")
    for name in ("backend", "events", "no snapshot (s)", "with snapshot (s)", "ratio"):
        table.add_column(name, justify="left" if name == "backend" else "right")
    for backend in backends_in(result):
        r = result[backend]
        table.add_row(backend, f"{r['events']:,}", f"{min(r['restart_no_snapshot_s']):.2f}",
                      f"{min(r['restart_snapshot_s']):.2f}", f"{r['ratio']:.1f}x")
    return table


def render_pieces(result: dict) -> Table:
    """Where a restart's time could go, measured one piece at a time."""
    table = Table(title="pieces (s, bytes)")
    for name in ("backend", "load_state no snap", "load_state snap", "snapshot save",
                 "snapshot bytes", "tail reports"):
        table.add_column(name, justify="left" if name == "backend" else "right")
    for backend in backends_in(result):
        r = result[backend]
        table.add_row(backend, f"{r['load_state_no_snapshot_s']:.2f}", f"{r['load_state_snapshot_s']:.2f}",
                      f"{r['snapshot_save_s']:.2f}", f"{r['snapshot_bytes']:,}",
                      f"{r['committed_reports_s']:.2f}")
    return table


def backends_in(result: dict) -> list[str]:
    return [b for b in ("sqlite", "mysql") if b in result]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tasks = args.tasks if args.tasks is not None else max(1, args.events * 3 // 10)
    backends = [args.only] if args.only else ["sqlite", "mysql"]
    rounds, result = generate(args.events, tasks)
    result.update(events=args.events, tasks=tasks, repeat=args.repeat)
    with (
        start_broker() as broker,
        sqlite_log() as sqlite_url,
        fresh_log(args.mysql, f"ecloud_bench_{os.getpid()}") as mysql_url,
    ):
        urls = {"sqlite": sqlite_url, "mysql": mysql_url}
        built = {b: build_log(urls[b], rounds, args.events, b) for b in backends}
        del rounds  # the restarts should not pay for a heap they would not have
        gc.collect()
        for backend in backends:
            console.print(f"[bold]{backend}[/]")
            result[backend] = built[backend] | measure(urls[backend], broker.url,
                                                       result["expected_counts"], args.repeat)
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out_console = Console()
    out_console.print(render(result))
    out_console.print(render_pieces(result))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
