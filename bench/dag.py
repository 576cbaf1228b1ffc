"""Push and first scheduling of big DAGs: time and peak memory by size.

    python -m bench.dag                       # 10,000 / 100,000 / 1,000,000 tasks, SQLite
    python -m bench.dag --sizes 10000,100000 --db mysql://root@127.0.0.1:3306

For each size a layered DAG (layers of 1,000 tasks, each task depending on
two of the layer before) is written as a task file; then, each in a fresh
process so that its peak RSS (VmHWM) is its own:

- ``push``: what ``ecloud push`` does - read and validate the file against
  the log, append it in one transaction;
- ``schedule``: what a boss does on start - fold the log (100 idle workers of
  4 slots announced after the push) and make its first scheduling decisions.

Linear growth shows as a steady time per task across sizes; the schedule
step's peak RSS (about 25 MB of it the interpreter) is the boss's footprint
for that DAG.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.logs import fresh_log

LAYER = 1000
WORKERS, SLOTS = 100, 4


def write_dag(path: Path, n: int, seed: int = 1) -> None:
    """The task file, streamed out (a million tasks as one JSON list)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        f.write('{"tasks": [\n')
        for i in range(n):
            layer_start = (i // LAYER - 1) * LAYER
            deps = ([f"t{layer_start + rng.randrange(LAYER)}" for _ in range(2)]
                    if i >= LAYER else [])
            f.write(json.dumps({"id": f"t{i}", "command": "true",
                                "depends_on": sorted(set(deps))}))
            f.write(",\n" if i < n - 1 else "\n")
        f.write("]}\n")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_push(path: str, url: str) -> dict:
    from ecloud.log.rebuild import load_state
    from ecloud.log.url import open_store
    from ecloud.taskfiles.submit import submit_tasks
    from ecloud.taskfiles.taskfile import parse_task_file

    start = time.perf_counter()
    with open_store(url, create=True) as store:
        state = load_state(store)
        specs = parse_task_file(path, known=state.tasks.__contains__)
        parsed = time.perf_counter()
        submit_tasks(store, specs, path, state=state)
    end = time.perf_counter()
    return {"validate_s": round(parsed - start, 2), "append_s": round(end - parsed, 2),
            "push_s": round(end - start, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}


def child_schedule(url: str) -> dict:
    from ecloud.events import types as ev
    from ecloud.log.rebuild import load_state
    from ecloud.log.url import open_store
    from ecloud.projections.scheduler import schedule

    with open_store(url) as store:
        store.append([ev.WorkerAnnounced(f"w{k}", "host", SLOTS, 1, f"i{k}") for k in range(WORKERS)])
        start = time.perf_counter()
        state = load_state(store, use_snapshot=False)
        loaded = time.perf_counter()
        decisions = schedule(state)
        end = time.perf_counter()
    return {"fold_s": round(loaded - start, 2), "first_schedule_s": round(end - loaded, 4),
            "decisions": len(decisions), "ready": len(state.ready),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def in_child(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench.dag", "--child", *args],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bench.dag {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(sizes: list[int], db: str) -> dict:
    out = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="ecloud-bench-dag-") as tmp, fresh_log(db) as url:
            path = Path(tmp) / "dag.json"
            write_dag(path, n)
            push = in_child("push", str(path), url)
            sched = in_child("schedule", url)
            out[str(n)] = {"tasks": n, "push": push, "schedule": sched,
                           "push_us_per_task": round(push["push_s"] / n * 1e6, 1),
                           "fold_us_per_task": round(sched["fold_s"] / n * 1e6, 1)}
        print(json.dumps(out[str(n)]), file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--db", default="sqlite", help="sqlite, or a MariaDB server URL")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        print(json.dumps(child_push(*rest) if kind == "push" else child_schedule(*rest)))
        return 0
    print(json.dumps(measure([int(s) for s in args.sizes.split(",")], args.db), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
