"""Fold and replay throughput on a synthetic log.

    python -m bench.fold                      # 1,000,000 events, 100,000 tasks
    python -m bench.fold --events 200000 --tasks 20000 --no-mysql

Builds a plausible history with the real reducers and scheduler (a layered
random DAG, 100 workers of 4 slots, tasks lasting 1-5 rounds, 5% failing once
and retried, every worker heartbeating every round, a tick per round, padded
with heartbeat rounds to the requested size), then measures:

- fold throughput in memory (events/s), for the whole log and for the task
  events alone (dispatch, start, finish: the expensive ones);
- replay throughput from SQLite and from MariaDB: read + decode + fold,
  from an empty state (events/s), after appending the log in batches.

Prints a table and writes JSON to ``bench/results/fold.json``. The MariaDB
part uses its own database and drops it afterwards.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from ecloud.events import types as ev
from ecloud.events.types import Recorded, TaskSpec
from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store
from ecloud.projections.fold import step
from ecloud.projections.scheduler import schedule
from ecloud.projections.state import State

WORKERS = 100
SLOTS = 4


def synthetic_log(n_events: int, n_tasks: int, seed: int = 1) -> list[list[Recorded]]:
    """Rounds of events (each round shares one ts), folded as they are made."""
    rng = random.Random(seed)
    state = State()
    rounds: list[list[Recorded]] = []
    seq = 0
    now = 1_700_000_000.0

    def emit(events: list) -> None:
        nonlocal seq
        batch = []
        for event in events:
            seq += 1
            rec = Recorded(seq, now, event)
            step(state, rec)
            batch.append(rec)
        rounds.append(batch)

    specs = []
    for i in range(n_tasks):
        window = range(max(0, i - 2000), i)
        deps = sorted({f"t{rng.choice(window)}" for _ in range(rng.randint(0, 3))}) if i else []
        specs.append(TaskSpec(f"t{i}", "true", depends_on=tuple(deps), retries=1,
                              retry_backoff=0.0, priority=rng.randint(0, 3)))
    emit([ev.TasksSubmitted(f"b{k}", tuple(specs[k:k + 5000]), "bench")
          for k in range(0, n_tasks, 5000)])
    emit([ev.WorkerAnnounced(f"w{i:03d}", f"host{i}", SLOTS, 1, "x") for i in range(WORKERS)])
    running: dict[tuple[str, int, str], int] = {}  # (task, attempt, worker) -> rounds left
    fails = {f"t{i}" for i in rng.sample(range(n_tasks), n_tasks // 20)}
    while seq < n_events:
        now += 10.0
        events: list = [ev.Tick()]
        done_all = state.counts["succeeded"] + state.counts["failed"] + state.counts["blocked"] == n_tasks
        for key in sorted(running):
            running[key] -= 1
            if running[key] == 0:
                task, attempt, worker = key
                del running[key]
                code = 1 if (task in fails and attempt == 1) else 0
                events.append(ev.TaskFinished(task, attempt, worker, code, 10.0, msg_id=f"f{seq}"))
        events += [ev.WorkerHeartbeat(f"w{i:03d}") for i in range(WORKERS)]
        emit(events[: max(1, n_events - seq)])
        if done_all or seq >= n_events:
            continue
        decisions = schedule(state)
        if decisions:
            emit(decisions[: n_events - seq])
            starts = []
            for d in decisions:
                running[(d.task_id, d.attempt, d.worker_id)] = rng.randint(1, 5)
                starts.append(ev.TaskStarted(d.task_id, d.attempt, d.worker_id, msg_id="s"))
            if seq < n_events:
                emit(starts[: n_events - seq])
    return rounds


def time_fold(records: list[Recorded]) -> float:
    gc.collect()
    gc.disable()
    try:
        state = State()
        start = time.perf_counter()
        for rec in records:
            step(state, rec)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    # a benchmark of a fold that went wrong measures nothing
    assert not state.rejected, state.rejected[:3]
    assert state.counts["succeeded"] == len(state.tasks), state.counts
    return elapsed


def renumbered(records: list[Recorded]) -> list[Recorded]:
    return [Recorded(i + 1, r.ts, r.event) for i, r in enumerate(records)]


def time_replay(url: str, rounds: list[list[Recorded]]) -> dict:
    store = open_store(url, create=True)
    try:
        start = time.perf_counter()
        for batch in rounds:
            for k in range(0, len(batch), 1000):
                store.append([r.event for r in batch[k:k + 1000]], ts=batch[0].ts)
        append_s = time.perf_counter() - start
        head = store.head()
        gc.collect()
        start = time.perf_counter()
        n = sum(1 for _ in store.read_raw(1, head))
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        state = load_state(store, use_snapshot=False)
        replay_s = time.perf_counter() - start
        assert state.seq == head
        return {"events": head, "append_events_per_s": head / append_s,
                "read_rows_per_s": n / read_s, "replay_events_per_s": head / replay_s,
                "replay_seconds": replay_s}
    finally:
        drop = getattr(store, "drop", None)
        if drop is not None:
            drop()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--no-mysql", action="store_true", help="skip the MariaDB replay")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite replay")
    parser.add_argument("--mysql", default=os.environ.get("ECLOUD_TEST_MYSQL", "mysql://root@127.0.0.1:3306"),
                        help="MariaDB server URL (a fresh database is created and dropped)")
    parser.add_argument("--out", default="bench/results/fold.json")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    rounds = synthetic_log(args.events, args.tasks)
    records = [r for batch in rounds for r in batch]
    gen_s = time.perf_counter() - t0
    mix = Counter(type(r.event).TYPE for r in records)
    # Without heartbeats the workers would be lost: this log sets a deadline
    # long enough instead.
    forever = Recorded(0, records[0].ts, ev.ContextSet("heartbeat_timeout", "1e9"))
    task_only = renumbered([forever] + [r for r in records if isinstance(
        r.event, (ev.TasksSubmitted, ev.WorkerAnnounced, ev.TaskDispatched, ev.TaskStarted,
                  ev.TaskFinished))])
    result: dict = {"events": len(records), "tasks": args.tasks, "mix": dict(mix),
                    "generate_seconds": gen_s}
    best = min(time_fold(records) for _ in range(3))
    result["fold_events_per_s"] = len(records) / best
    best_tasks = min(time_fold(task_only) for _ in range(3))
    result["fold_task_events_per_s"] = len(task_only) / best_tasks
    print(f"synthetic log: {len(records):,} events over {args.tasks:,} tasks "
          f"(generated in {gen_s:.1f}s); mix: "
          + ", ".join(f"{k} {v:,}" for k, v in mix.most_common()))
    rows = [("fold in memory, whole log", result["fold_events_per_s"]),
            (f"fold in memory, task events only ({len(task_only):,})", result["fold_task_events_per_s"])]
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            result["sqlite"] = time_replay(f"sqlite:///{tmp}/bench.db", rounds)
        rows.append(("replay from SQLite (read+decode+fold)", result["sqlite"]["replay_events_per_s"]))
    if not args.no_mysql:
        url = f"{args.mysql.rstrip('/')}/ecloud_bench_{uuid.uuid4().hex[:8]}"
        result["mysql"] = time_replay(url, rounds)
        rows.append(("replay from MariaDB (read+decode+fold)", result["mysql"]["replay_events_per_s"]))
    width = max(len(name) for name, _ in rows)
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>12,.0f} events/s")
    for backend in ("sqlite", "mysql"):
        if backend in result:
            r = result[backend]
            print(f"{backend}: append {r['append_events_per_s']:,.0f} events/s, raw read "
                  f"{r['read_rows_per_s']:,.0f} rows/s, replay of {r['events']:,} events in "
                  f"{r['replay_seconds']:.1f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
