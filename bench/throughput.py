"""ecloud end to end: no-op task throughput and dispatch latency.

    python -m bench.throughput --db mysql://root@127.0.0.1:3306 --tasks 5000

A real boss (``ecloud-boss --local N``) with N local worker processes, a
real broker (the harness's tuned Mosquitto unless ``--broker`` is given) and
a real log - a MariaDB database of its own (dropped afterwards) or a fresh
SQLite file. Every event is committed before it is acted on, as always.

- **Throughput**: ``tasks`` independent tasks whose command is ``true`` are
  pushed in one submission once every worker has announced itself; the
  figure is tasks / (ts of the last ``task.finished`` - ts of the push), both
  from the log.
- **Dispatch latency**, ready -> started on the worker: ``chains`` chains of
  ``chain_length`` tasks each (so about ``chains`` tasks are in flight: a
  moderate load), the workers keeping a journal (``--journal``). A task is
  ready when its predecessor's ``task.finished`` is committed; it has
  started when the worker began the attempt: the moment its ``finished``
  report was made (the worker's journal) less the attempt's duration, which
  the worker counts from when it took the dispatch up - directory, files
  and spawn included. (Until 2026-11-27 this was the journal's ``started``
  report, made right after the spawn, about 1 ms later; a task as short
  as ``true`` no longer reports its start.) Boss and workers share this
  machine's clock. The chains' first tasks measure something else - how
  soon the boss notices a push made by another process, which it polls the
  log for - and are reported apart (``push_to_start_ms``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import orjson

from bench.logs import fresh_log
from bench.workdir import work_dir
from ecloud.events.types import TaskSpec
from ecloud.log.rebuild import load_state
from ecloud.log.store import LogStore
from ecloud.log.url import open_store
from ecloud.taskfiles.submit import submit_tasks

ROOT = Path(__file__).resolve().parent.parent


class BossRun:
    """An ``ecloud-boss --local N`` subprocess on a log and a broker."""

    def __init__(self, db: str, broker: str, workers: int, slots: int, workdir: Path,
                 journal: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        self.db, self.workers, self.workdir = db, workers, workdir
        self.cluster = f"bench{uuid.uuid4().hex[:6]}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CONFIG": "", "ECLOUD_DB": "",
               "ECLOUD_CLUSTER": self.cluster}
        if journal is not None:
            journal.mkdir(parents=True, exist_ok=True)
            env["ECLOUD_WORKER_JOURNAL"] = str(journal)
        self.log = open(workdir / "boss.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecloud.cli.boss", "--db", db, "--broker", broker,
             "--local", str(workers), "--slots", str(slots), *extra],
            cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_workers(self, store: LogStore, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            state = load_state(store, use_snapshot=False)
            if sum(w.status == "idle" for w in state.workers.values()) >= self.workers:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.workers} workers did not announce within {timeout:g}s")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = (self.workdir / "boss.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the boss exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """Stop the boss, then every worker it started (they outlive a boss
        by design: ``ecloud workers kill`` is not what a benchmark wants)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pidfile in (self.workdir / ".ecloud-workers").glob("*.pid"):
            try:
                os.killpg(int(pidfile.read_text()), 9)
            except (ProcessLookupError, ValueError, PermissionError):
                pass
        self.log.close()


def follow_finished(store: LogStore, want: int, timeout: float, boss: BossRun) -> dict[str, float]:
    """Wait until ``want`` tasks finished successfully; task id -> the ts of
    its successful ``task.finished``. Reads raw rows and parses only those
    (the harness shares the machine with what it measures: decoding every
    event took half a core here)."""
    done: dict[str, float] = {}
    after = 0
    deadline = time.monotonic() + timeout
    while len(done) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(done)} of {want} tasks finished within {timeout:g}s")
        boss.check_alive()
        head = store.head()
        if head > after:
            for _seq, ts, tag, _version, body in store.read_raw(after + 1, head):
                if tag == "task.finished":
                    e = orjson.loads(body)
                    if e.get("exit_code") == 0:
                        done[e["task_id"]] = ts
            after = head
        else:
            time.sleep(0.05)  # polling period of the follower, not a wait for a condition
    return done


def push(store: LogStore, specs: list[TaskSpec]) -> float:
    """Submit ``specs``; the ts of the submission in the log."""
    _, seqs = submit_tasks(store, specs, "bench")
    return next(iter(store.read(seqs[-1], seqs[-1]))).ts


def measure_throughput(db: str, broker: str, tasks: int = 5000, workers: int = 2,
                       slots: int = 1, boss_args: tuple[str, ...] = ()) -> dict:
    workdir, place = work_dir()
    with fresh_log(db) as url, workdir as tmp, ExitStack() as stack:
        store = stack.enter_context(open_store(url))
        boss = BossRun(url, broker, workers, slots, Path(tmp), extra=boss_args)
        stack.callback(boss.stop)
        boss.wait_workers(store)
        pushed = push(store, [TaskSpec(f"t{i}", "true") for i in range(tasks)])
        done = follow_finished(store, tasks, 60 + tasks / 50, boss)
        seconds = max(done.values()) - pushed
        events = store.head()
        return {"system": "ecloud", "log": url.split(":", 1)[0], "work": "subprocess",
                "processes": workers, "slots": slots, "tasks": tasks,
                "seconds": round(seconds, 3), "tasks_per_s": round(tasks / seconds, 1),
                "events": events, **place}


def measure_latency(db: str, broker: str, chains: int = 2, chain_length: int = 250,
                    workers: int = 2) -> dict:
    workdir, _ = work_dir()
    with fresh_log(db) as url, workdir as tmp, ExitStack() as stack:
        store = stack.enter_context(open_store(url))
        journal = Path(tmp) / "journal"
        boss = BossRun(url, broker, workers, 1, Path(tmp), journal=journal)
        stack.callback(boss.stop)
        boss.wait_workers(store)
        specs = [TaskSpec(f"c{c}-{k}", "true", depends_on=(f"c{c}-{k - 1}",) if k else ())
                 for c in range(chains) for k in range(chain_length)]
        pushed = push(store, specs)
        done = follow_finished(store, len(specs), 60 + len(specs) / 10, boss)
        started: dict[str, float] = {}
        for path in journal.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row.get("kind") == "finished" and row.get("attempt") == 1:
                    started[row["task_id"]] = row["t"] - row["duration"]
        # the head of a chain waits for the boss to notice a push by another
        # process (it polls the log): that is push latency, reported apart
        push_ms = [(started[f"c{c}-0"] - pushed) * 1000 for c in range(chains)]
        ms = sorted((started[f"c{c}-{k}"] - done[f"c{c}-{k - 1}"]) * 1000
                    for c in range(chains) for k in range(1, chain_length))
        return {"system": "ecloud", "log": url.split(":", 1)[0], "chains": chains,
                "tasks": len(specs), "push_to_start_ms": round(max(push_ms), 2),
                "p50_ms": round(statistics.median(ms), 2),
                "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
                "max_ms": round(ms[-1], 2), "mean_ms": round(statistics.fmean(ms), 2)}


def main(argv: list[str] | None = None) -> int:
    from bench.tuned_broker import tuned_mosquitto

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="mysql://root@127.0.0.1:3306",
                        help="sqlite, or a MariaDB server URL (a database of its own is made)")
    parser.add_argument("--broker", help="an MQTT broker URL (default: a tuned Mosquitto of its own)")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--chain-length", type=int, default=250)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        broker = args.broker or stack.enter_context(tuned_mosquitto())
        result = {"throughput": measure_throughput(args.db, broker, args.tasks, args.workers,
                                                   args.slots),
                  "latency": measure_latency(args.db, broker, args.chains, args.chain_length,
                                             args.workers)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
