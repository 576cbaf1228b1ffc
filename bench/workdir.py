"""Where the benchmark's workers make their attempt directories.

Every ecloud attempt gets a directory and two output files, so the cost of
``mkdir`` + two ``open`` on the work directory's filesystem is part of every
task. On these machines that cost differs between places on the *same*
ext4 filesystem by a factor of 20 or more, and which place is slow changes
between boots (measured: 1.6-2.4 ms against 80-130 us per attempt, once in
``/tmp``, another day in ``~/.cache``; cause unknown). A benchmark that
happened to land on the slow place would measure the disk, not ecloud, so
the harness measures the candidates and takes the fastest, and reports
which one and what it cost. A user's workers run in the work directory
they are given (``--work-dir``).

``$ECLOUD_BENCH_WORKDIR`` names the only candidate, for a machine whose
fast place the harness does not know about.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

PROBE_ATTEMPTS = 100  # attempt directories made per candidate


def candidates() -> list[Path]:
    chosen = os.environ.get("ECLOUD_BENCH_WORKDIR")
    if chosen:
        return [Path(chosen).expanduser()]
    places = [Path(tempfile.gettempdir()), Path("/var/tmp"), Path.home() / ".cache" / "ecloud-bench"]
    return list(dict.fromkeys(p for p in places if _usable(p)))


def _usable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def attempt_cost_us(base: Path, attempts: int = PROBE_ATTEMPTS) -> float:
    """Microseconds per attempt directory (two levels, two empty files) under ``base``."""
    probe = Path(tempfile.mkdtemp(prefix="probe-", dir=base))
    try:
        began = time.perf_counter()
        for i in range(attempts):
            folder = probe / f"t{i}" / "1"
            folder.mkdir(parents=True)
            (folder / "stdout").open("wb").close()
            (folder / "stderr").open("wb").close()
        return (time.perf_counter() - began) / attempts * 1e6
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def fastest() -> tuple[Path, float]:
    """The candidate with the cheapest attempt directories, and that cost (us)."""
    costs = {base: attempt_cost_us(base) for base in candidates()}
    if not costs:
        raise RuntimeError("no writable place for the workers' attempt directories "
                           "(set ECLOUD_BENCH_WORKDIR)")
    best = min(costs, key=costs.__getitem__)
    return best, costs[best]


def work_dir() -> tuple[tempfile.TemporaryDirectory, dict]:
    """A fresh directory in the fastest place, and what was measured to pick it."""
    base, cost = fastest()
    return (tempfile.TemporaryDirectory(prefix="ecloud-bench-work-", dir=base),
            {"work_dir": str(base), "attempt_dir_us": round(cost, 1)})
