"""What the status page costs, against the replay it is built on.

One synthetic log (:func:`bench.fold.synthetic_log`) in SQLite, then:

* **catch-up**: ``ecloud web``'s follower folding the whole log (the fold
  plus its meters, decisions and failure tails), against the peer
  ``load_state(store, use_snapshot=False)`` - the boss's own replay - on
  the same file in the same run: the ratio is what the page's extras cost;
* **a past seq** (the time slider, ``/api/page?seq=N`` at mid-log), against
  replaying to that seq (no snapshot stored: the worst case);
* **the live page's data, the DAG's layout and a re-count, a metrics
  scrape**, each in ms and as a fraction of the full replay;
* **the boss serving the page** (``ecloud-boss --web``): no-op tasks per
  second through MariaDB and a tuned Mosquitto (``bench.throughput``) with
  and without it, alternated, best of each, in the same run.

    .venv/bin/python -m bench.web [--events 300000] [--tasks 100000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from rich.console import Console
from rich.table import Table

from bench.fold import synthetic_log
from bench.logs import fresh_log
from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store
from ecloud.views import dag
from ecloud.views.follower import Follower
from ecloud.views.metrics import LogCollector

RESULTS = Path(__file__).parent / "results"


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(url: str, repeat: int) -> dict:
    with open_store(url, create=False) as store:
        head = store.head()
        replay = best(lambda: load_state(store, use_snapshot=False), repeat)
        mid = head // 2
        replay_mid = best(lambda: load_state(store, mid, use_snapshot=False), repeat)

    def catch_up() -> Follower:
        follower = Follower(url, poll=0.01).start()
        while follower.state.seq < head:
            time.sleep(0.005)
        return follower

    catch = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        follower = catch_up()
        catch.append(time.perf_counter() - start)
        if _ < repeat - 1:
            follower.stop()
    try:
        page = best(lambda: (setattr(follower, "_page", None), follower.page()), repeat)
        history = best(lambda: (follower._history_cache.clear(), follower.page_at(mid)), repeat)
        layout = best(lambda: dag.layout(follower.state), repeat)
        recount = best(lambda: follower.graph(), repeat)
        registry = CollectorRegistry()
        registry.register(LogCollector(follower))
        scrape = best(lambda: generate_latest(registry), repeat)
        tasks = len(follower.state.tasks)
    finally:
        follower.stop()
    return {
        "events": head, "tasks": tasks,
        "replay_s": replay, "follower_catch_up_s": min(catch),
        "catch_up_over_replay": min(catch) / replay,
        "replay_to_mid_s": replay_mid, "history_page_at_mid_s": history,
        "history_over_replay": history / replay_mid,
        "page_ms": page * 1000, "layout_ms": layout * 1000, "graph_recount_ms": recount * 1000,
        "scrape_ms": scrape * 1000,
    }


def served_page_cost(db: str, rounds: int, tasks: int = 5000) -> dict:
    """Throughput of ``ecloud-boss`` with and without ``--web``, alternated."""
    from bench.throughput import measure_throughput
    from bench.tuned_broker import tuned_mosquitto

    runs: dict[str, list[float]] = {"without": [], "with_page": []}
    with tuned_mosquitto() as broker:
        for _ in range(rounds):
            for label, extra in (("without", ()), ("with_page", ("--web", "127.0.0.1:0"))):
                done = measure_throughput(db, broker, tasks, 2, 4, boss_args=extra)
                runs[label].append(done["tasks_per_s"])
    best_of = {label: max(values) for label, values in runs.items()}
    return {**best_of, "ratio": best_of["with_page"] / best_of["without"], "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2,
                        help="throughput runs with and without the page, alternated (0: none)")
    parser.add_argument("--db", default="mysql://root@127.0.0.1:3306",
                        help="the log of the throughput runs: sqlite or a MariaDB server URL")
    args = parser.parse_args(argv)
    console = Console()
    rounds = synthetic_log(args.events, args.tasks)
    with fresh_log("sqlite") as url:
        with open_store(url, create=True) as store:
            for batch in rounds:
                for k in range(0, len(batch), 1000):
                    store.append([r.event for r in batch[k:k + 1000]], ts=batch[0].ts)
        result = measure(url, args.repeat)
    table = Table(title=f"Status page vs replay, SQLite, {result['events']:,} events, "
                        f"{result['tasks']:,} tasks (best of {args.repeat})", title_justify="left")
    for col in ("measure", "time", "peer (same run)", "ratio"):
        table.add_column(col)
    table.add_row("follower catch-up (fold + meters)", f"{result['follower_catch_up_s']:.2f} s",
                  f"replay {result['replay_s']:.2f} s", f"{result['catch_up_over_replay']:.2f}x")
    table.add_row("past seq (mid-log) page, no snapshot", f"{result['history_page_at_mid_s']:.2f} s",
                  f"replay to it {result['replay_to_mid_s']:.2f} s",
                  f"{result['history_over_replay']:.2f}x")
    for key, label in (("page_ms", "live page data"), ("layout_ms", "DAG layout (new tasks)"),
                       ("graph_recount_ms", "DAG re-count (states only)"),
                       ("scrape_ms", "metrics scrape")):
        table.add_row(label, f"{result[key]:.1f} ms", f"replay {result['replay_s']:.2f} s",
                      f"{result[key] / 1000 / result['replay_s']:.3f}x")
    console.print(table)
    if args.rounds:
        result["boss_with_page"] = served_page_cost(args.db, args.rounds)
        served = result["boss_with_page"]
        console.print(f"boss serving the page: {served['with_page']:,.0f} no-op tasks/s, without: "
                      f"{served['without']:,.0f}/s in the same run ({served['ratio']:.2f}x; "
                      f"runs {served['runs']})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "web.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
