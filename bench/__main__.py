"""The benchmark harness: every figure of issue 7, side by side, in one run.

    python -m bench                      # everything (MariaDB, Mosquitto, Redis, RabbitMQ)
    python -m bench --only throughput,peers,spawn --tasks 5000

Peers are measured in the same run on the same machine, so ratios hold even
when the machine's absolute speed does not:

- ``spawn``: how many ``true`` processes plain Python spawns and reaps per
  second with as many processes as ecloud has workers - the physical limit;
- ``throughput``: ecloud end to end through MariaDB and the harness's tuned
  Mosquitto with local worker processes, every task the command ``true``;
- ``peers``: Celery 5.7 with the same number of worker processes doing the
  same work (``subprocess.run(["true"])``) over Redis and over RabbitMQ, and
  with pure-Python no-op tasks as a reference (installed into a venv of its
  own on first use, see ``bench/peers``);
- ``latency``: ready -> started on the worker at moderate load;
- ``replay``: decoding and folding a log from MariaDB and from SQLite;
- ``restart``: a boss restarting on a 1,000,000-event log, with and without
  a snapshot, on MariaDB and SQLite (``bench/restart.py``, in a process of
  its own so that the generated log's heap does not weigh on the restarts);
- ``dag``: push and first scheduling of 10,000 to 1,000,000-task DAGs, time
  and peak memory (``bench/dag.py``);
- ``swarm``: a boss holding thousands of simulated MQTT workers.

Writes ``bench/results/harness.json`` and prints a table. A section that
fails is reported as failed with its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
SECTIONS = ("spawn", "throughput", "peers", "latency", "replay", "restart", "dag", "swarm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {', '.join(SECTIONS)})")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306",
                        help="MariaDB server; each section makes a database of its own and drops it")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (ecloud and Celery)")
    parser.add_argument("--slots", type=int, default=4, help="task slots per ecloud worker")
    parser.add_argument("--tasks", type=int, default=10_000, help="no-op tasks per throughput run")
    parser.add_argument("--replay-events", type=int, default=300_000)
    parser.add_argument("--restart-events", type=int, default=1_000_000)
    parser.add_argument("--dag-sizes", default="10000,100000,1000000")
    parser.add_argument("--swarm-workers", type=int, default=10_000)
    parser.add_argument("--swarm-tasks", type=int, default=20_000)
    parser.add_argument("--json-out", default="bench/results/harness.json")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    return args


def run_section(name: str, results: dict, fn: Callable[[], dict]) -> None:
    console.print(f"[bold]{name}[/] ...")
    started = time.monotonic()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
        results[name] = {"error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()[-3000:]}
        console.print(f"  [red]failed[/]: {exc}")
    results[name]["wall_seconds"] = round(time.monotonic() - started, 1)


def spawn(args) -> dict:
    from bench import spawn_limit
    return spawn_limit.measure(args.workers, 5.0, argv=("/bin/sh", "-c", "true"))


def throughput(args, broker: str) -> dict:
    from bench.throughput import measure_throughput
    return measure_throughput(args.mysql, broker, args.tasks, args.workers, args.slots)


def peers(args) -> dict:
    from bench.peers import celery_peer
    out = {}
    for broker in ("rabbitmq", "redis"):
        for work in ("subprocess", "noop"):
            out[f"celery+{broker}/{work}"] = celery_peer.measure(broker, args.tasks, args.workers, work)
    return out


def latency(args, broker: str) -> dict:
    from bench.throughput import measure_latency
    return measure_latency(args.mysql, broker, chains=args.workers, chain_length=250,
                           workers=args.workers)


def replay(args) -> dict:
    from bench.fold import synthetic_log, time_replay
    from bench.throughput import fresh_log
    rounds = synthetic_log(args.replay_events, max(1, args.replay_events // 10))
    out = {}
    for name, db in (("mysql", args.mysql), ("sqlite", "sqlite")):
        with fresh_log(db) as url:
            out[name] = {k: round(v, 2) for k, v in time_replay(url, rounds).items()}
    return out


def restart(args) -> dict:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ecloud-bench-restart-") as tmp:
        out = Path(tmp) / "restart.json"
        subprocess.run([sys.executable, "-m", "bench.restart", "--events", str(args.restart_events),
                        "--mysql", args.mysql, "--json-out", str(out)], check=True)
        return json.loads(out.read_text())


def dag(args) -> dict:
    from bench.dag import measure
    return measure([int(n) for n in args.dag_sizes.split(",")], args.mysql)


def swarm(args) -> dict:
    from bench.logs import fresh_log
    from bench.swarm import measure_boss_with_swarm
    with fresh_log(args.mysql, "ecloud_bench_swarm") as url:
        return measure_boss_with_swarm(url, args.swarm_workers, args.swarm_tasks, duration=300,
                                       idle_seconds=20)


def table(results: dict) -> Table:
    t = Table(title="ecloud against its peers (same machine, same run)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("peer / target", justify="right")
    t.add_column("ratio", justify="right")
    spawn_rate = results.get("spawn", {}).get("spawns_per_s")
    ours = results.get("throughput", {}).get("tasks_per_s")
    if ours:
        t.add_row("ecloud no-op tasks/s (MariaDB, every event committed)", f"{ours:,.0f}", "", "")
        if spawn_rate:
            t.add_row("  vs raw spawn rate (/bin/sh -c true)", "", f"{spawn_rate:,.0f}",
                      f"{ours / spawn_rate:.0%} (target >= 60%)")
        for key, peer in sorted(results.get("peers", {}).items()):
            if isinstance(peer, dict) and peer.get("tasks_per_s"):
                target = {"celery+rabbitmq/subprocess": " (target >= 1.5x)",
                          "celery+redis/subprocess": " (target >= 2.5x)"}.get(key, "")
                t.add_row(f"  vs {key}", "", f"{peer['tasks_per_s']:,.0f}",
                          f"{ours / peer['tasks_per_s']:.2f}x{target}")
    lat = results.get("latency", {})
    if "p50_ms" in lat:
        t.add_row("dispatch latency p50 / p99 (ms)", f"{lat['p50_ms']} / {lat['p99_ms']}",
                  "<= 5 / <= 50", "")
    for name, r in results.get("replay", {}).items():
        if isinstance(r, dict) and "replay_events_per_s" in r:
            t.add_row(f"replay from {name} (events/s)", f"{r['replay_events_per_s']:,.0f}",
                      ">= 100,000" if name == "mysql" else "", "")
    rs = results.get("restart", {})
    for name in ("mysql", "sqlite"):
        r = rs.get(name)
        if isinstance(r, dict) and "restart_snapshot_s" in r:
            t.add_row(f"restart, {r['events']:,}-event log on {name}: without / with snapshot (s)",
                      f"{min(r['restart_no_snapshot_s']):.2f} / {min(r['restart_snapshot_s']):.2f}",
                      "<= 2 with snapshot", f"{r['ratio']:.1f}x")
    for n, r in results.get("dag", {}).items():
        if isinstance(r, dict) and "push" in r:
            t.add_row(f"DAG of {int(n):,} tasks: push s / fold s / boss peak RSS MB",
                      f"{r['push']['push_s']} / {r['schedule']['fold_s']} / "
                      f"{r['schedule']['peak_rss_mb']:,.0f}", "linear; RSS < 2,048 MB", "")
    sw = results.get("swarm", {})
    if "tasks_per_s" in sw:
        t.add_row(f"boss under {sw.get('workers_connected', '?')} workers: CPU share (heartbeats"
                  " only; tasks) / peak RSS MB / tasks/s",
                  f"{sw.get('idle_boss_cpu_share', '?')}; {sw.get('boss_cpu_share', '?')} / "
                  f"{sw.get('boss_peak_rss_mb', '?')} / {sw['tasks_per_s']}", "< 1 core", "")
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r:
            t.add_row(f"[red]{name} failed[/]", r["error"][:60], "", "")
    return t


def main(argv: list[str] | None = None) -> int:
    from bench.tuned_broker import tuned_mosquitto

    args = parse_args(argv)
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workers": args.workers,
                     "slots": args.slots, "tasks": args.tasks}
    with ExitStack() as stack:
        broker = stack.enter_context(tuned_mosquitto())
        steps = {"spawn": lambda: spawn(args), "throughput": lambda: throughput(args, broker),
                 "peers": lambda: peers(args), "latency": lambda: latency(args, broker),
                 "replay": lambda: replay(args), "restart": lambda: restart(args),
                 "dag": lambda: dag(args),
                 "swarm": lambda: swarm(args)}
        for name in SECTIONS:
            if name in args.only:
                run_section(name, results, steps[name])
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    Console().print(table(results))
    console.print(f"wrote {out}")
    return 1 if any(isinstance(r, dict) and "error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
