"""The physical limit: how many ``true`` processes plain Python spawns and reaps
per second on this machine.

    python -m bench.spawn_limit                       # 2 processes, 5 s
    python -m bench.spawn_limit --processes 1 --seconds 3
    python -m bench.spawn_limit --shell               # /bin/sh -c true instead

    from bench import spawn_limit
    spawn_limit.measure(2)  # -> {"processes": 2, "spawns_per_s": ..., ...}

``processes`` Python processes (fresh interpreters, ``python -I -c``: nothing
inherited from the caller, whatever its ``__main__`` or its threads) each
loop ``subprocess.run(["true"])`` - fork/exec, wait, reap: what any task
runner written in Python pays for a task whose command is ``true`` - and
count their completions. Start-up is excluded: once every process has said
it is ready, each is sent the same three moments of the system-wide
monotonic clock - go, window opens (after a warm-up of :data:`WARMUP`
seconds), window closes (``seconds`` later) - and counts the spawns that
complete inside the window; the rate is their sum over the window.

No task system can run ``true`` tasks faster than this on the same number
of processes (each also has queues, messages and bookkeeping to pay for),
so it is the ceiling to set ecloud's and the peers' figures against. Note
that an ecloud task whose command is the *string* ``"true"`` runs as
``/bin/sh -c true`` (``worker/runner.py``), one exec more than the list
``["true"]``: ``argv=SHELL_ARGV`` (``--shell``) measures that instead.

Cleanup: the workers stop by themselves when the window closes, and
whatever is still running :data:`STOP_GRACE` seconds after it - or at an
error or KeyboardInterrupt - is killed. A worker also exits if its parent
dies before sending the moments (its stdin closes), and ignores SIGINT (a
Ctrl-C is for the parent, which stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

WARMUP = 0.5  # seconds of looping before the window opens
START_DEADLINE = 30.0  # seconds for the worker processes to say they are ready
STOP_GRACE = 5.0  # seconds after the window closes before workers are killed
ARGV = ("true",)
SHELL_ARGV = ("/bin/sh", "-c", "true")

_WORKER = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
argv = sys.argv[1:]
print("ready", flush=True)
line = sys.stdin.readline()
if not line:
    sys.exit(0)
go, opens, closes = map(float, line.split())
mono, run = time.monotonic, subprocess.run
while mono() < go:
    time.sleep(0.001)
inside = total = 0
while True:
    run(argv)
    now = mono()
    total += 1
    if now >= closes:
        break
    if now >= opens:
        inside += 1
try:
    print(inside, total, flush=True)
except BrokenPipeError:  # the parent is gone
    pass
"""


def cpu_busy(seconds: float = 0.5) -> float | None:
    """The fraction of all CPUs busy over the next ``seconds`` (``/proc/stat``;
    None where there is none): other work running beside a measurement."""

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total0, idle0 = snap()
        time.sleep(seconds)
        total1, idle1 = snap()
    except (OSError, ValueError, IndexError):
        return None
    return round(1.0 - (idle1 - idle0) / max(1, total1 - total0), 3)


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def measure(processes: int, seconds: float = 5.0, *, argv: Sequence[str] = ARGV,
            warmup: float = WARMUP) -> dict:
    """Spawns (and reaps) per second of ``argv`` by ``processes`` Python
    processes looping ``subprocess.run(argv)``, over a window of ``seconds``."""
    if processes < 1:
        raise ValueError("processes must be at least 1")
    if seconds <= 0 or warmup < 0:
        raise ValueError("seconds must be positive and warmup not negative")
    busy_before = cpu_busy()
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(processes):
            procs.append(subprocess.Popen(
                [sys.executable, "-I", "-c", _WORKER, *argv], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, start_new_session=True))
        for proc in procs:  # start-up excluded: wait until all are up
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a spawn-limit worker failed to start (exit {proc.wait()})")
        go = time.monotonic() + 0.05
        opens, closes = go + warmup, go + warmup + seconds
        for proc in procs:
            proc.stdin.write(f"{go!r} {opens!r} {closes!r}\n")
            proc.stdin.flush()
        counts = []
        for proc in procs:
            proc.wait(timeout=max(0.1, closes + STOP_GRACE - time.monotonic()))
            inside, total = map(int, proc.stdout.read().split())  # two numbers: fit the pipe
            counts.append((inside, total))
    finally:
        _kill(procs)
    spawns = sum(inside for inside, _ in counts)
    return {
        "processes": processes,
        "spawns_per_s": round(spawns / seconds, 1),
        "per_process_per_s": [round(inside / seconds, 1) for inside, _ in counts],
        "spawns": spawns,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "argv": list(argv),
        "method": "subprocess.run",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "cpu_busy_before": busy_before,  # other work on the machine skews the figure
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--shell", action="store_true",
                        help="spawn /bin/sh -c true (as ecloud runs a string command)")
    args = parser.parse_args(argv)
    result = measure(args.processes, args.seconds, argv=SHELL_ARGV if args.shell else ARGV)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
