"""How fast the operator's commands start: ``ecloud --help`` and ``ecloud
status`` on a small log, against the interpreter's own start and a bare
``import click`` (the floor any click command pays), measured alternately in
one run so that the machine's drift hits all alike.

    python -m bench.cli_start                  # 15 rounds
    python -m bench.cli_start --rounds 30

Prints the median wall time of each (milliseconds) and its ratio to the
interpreter's start, and writes ``bench/results/cli_start.json``. The target
(issue 20) is under 200 ms for ``--help`` and ``status`` on a small log.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "cli_start.json"
ROOT = Path(__file__).resolve().parents[1]


def small_log(folder: Path) -> str:
    """A 20-task log after a real run, as an operator's would be."""
    tasks = folder / "t.json"
    tasks.write_text(json.dumps({"tasks": [{"id": f"t{i}", "command": "true"}
                                           for i in range(20)]}))
    subprocess.run([sys.executable, "-m", "ecloud.cli.main", "run", str(tasks), "--local", "2"],
                   cwd=folder, check=True, capture_output=True, timeout=300)
    return f"sqlite:///{folder}/ecloud.db"


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "100"})
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = small_log(folder)
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "import click": [py, "-c", "import click"],
            "ecloud --help": [py, "-m", "ecloud.cli.main", "--help"],
            "ecloud status": [py, "-m", "ecloud.cli.main", "status", "--db", db],
            "ecloud status --json": [py, "-m", "ecloud.cli.main", "status", "--json",
                                     "--db", db],
            "ecloud tasks": [py, "-m", "ecloud.cli.main", "tasks", "--db", db],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(timed(command, folder))
    base = statistics.median(times["python -c pass"])
    results = {name: {"median_ms": round(1000 * statistics.median(t), 1),
                      "vs_python_start": round(statistics.median(t) / base, 2)}
               for name, t in times.items()}
    print(f"{'command':<24} {'median ms':>10} {'x python start':>15}")
    for name, r in results.items():
        print(f"{name:<24} {r['median_ms']:>10.1f} {r['vs_python_start']:>15.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rounds": args.rounds, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
