"""``ecloud run`` killed, and run again; ``ecloud run`` twice on one log.

The embedded default as a user runs it: subprocesses in a directory of their
own. Each task writes a marker line when it starts, so "ran once" is read
off the markers - what the commands did - never off the boss's opinion."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ecloud.log.url import open_store
from tests.support.brokers import wait_for
from tests.support.e2e import ROOT, write_tasks
from tests.support.reaper import Reaper
from tests.support.worker_helpers import TAG, reap, tagged


def environment(tag: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CONFIG": "", "ECLOUD_DB": "",
            "ECLOUD_BROKER": "", TAG: tag}


def start_run(cwd: Path, env: dict, *args: str, name: str = "run") -> subprocess.Popen:
    out = open(cwd / f"{name}.out", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", "run", *args], cwd=cwd,
                            env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc


def ecloud(cwd: Path, env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecloud.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def markers(path: Path) -> Counter:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def marker_dag(tmp_path: Path, n: int, seed: int) -> tuple[Path, Path, list[str]]:
    """``n`` tasks, chains and fans, each appending its id to a marker file
    as it starts, then sleeping a little."""
    rng = random.Random(seed)
    marks = tmp_path / "markers"
    tasks = []
    for i in range(n):
        deps = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        tasks.append({"id": f"t{i}", "depends_on": deps,
                      "command": f'echo "$ECLOUD_TASK_ID" >> "{marks}"; sleep 0.{rng.randint(3, 8)}'})
    return write_tasks(tmp_path / "dag.json", tasks), marks, [t["id"] for t in tasks]


def test_sigkill_of_ecloud_run_ten_times_then_again_runs_every_task_exactly_once(
        tmp_path: Path) -> None:
    """Killed with SIGKILL at 10 random moments (startup, push, mid-DAG: by
    time or by progress), then run to the end: every task's command ran
    exactly once, the last run exits 0, and nothing of any run - broker,
    keeper, worker, task - is left, nor the embedded broker's folder."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    dag, marks, ids = marker_dag(tmp_path, 40, seed)
    tag = f"kill-{seed}"
    env = environment(tag)
    kills = []
    try:
        with Reaper() as reaper:
            for k in range(10):
                proc = start_run(tmp_path, env, str(dag), "--local", "4", name=f"run{k}")
                reaper.own(proc.pid)
                if rng.random() < 0.4:  # a moment in time: startup, push, the first dispatches
                    moment = rng.uniform(0.1, 2.5)
                    deadline = time.monotonic() + moment
                    while time.monotonic() < deadline and proc.poll() is None:
                        time.sleep(0.02)
                    kills.append(f"at {moment:.2f}s")
                else:  # a moment in the work: after a number of task starts
                    target = min(len(ids), sum(markers(marks).values()) + rng.randint(1, 6))
                    wait_for(lambda proc=proc, target=target: proc.poll() is not None
                             or sum(markers(marks).values()) >= target, 120,
                             f"{target} task starts (run {k})")
                    kills.append(f"after {target} starts")
                proc.kill()
                proc.wait()
                reaper.reap()
            print("kills:", "; ".join(kills))
            final = ecloud(tmp_path, env, "run", str(dag), "--local", "4")
            assert final.returncode == 0, final.stdout + final.stderr
            counts = markers(marks)
            assert counts == Counter(dict.fromkeys(ids, 1)), (
                {i: n for i, n in counts.items() if n != 1}, sorted(set(ids) - set(counts)))
            status = json.loads(ecloud(tmp_path, env, "status", "--json").stdout)
            assert status["tasks"]["succeeded"] == 40
            verify = subprocess.run([sys.executable, "-m", "ecloud.cli.replay", "--verify"],
                                    cwd=tmp_path, env=env, capture_output=True, text=True)
            assert verify.returncode == 0, verify.stdout + verify.stderr
            # nothing of any run is left: alive, or exited and not yet reaped
            wait_for(lambda: not tagged(tag), 30, "every process of the runs to end")
            wait_for(lambda: (reaper.reap(), not reaper.adopted())[1], 10,
                     "the killed runs' orphans to be gone")
            assert not (tmp_path / ".ecloud-workers" / "embedded-broker").exists()
    finally:
        reap(tag)


def test_a_second_run_on_a_log_a_live_run_holds_is_refused_and_touches_nothing(
        tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    tag = f"second-{os.getpid()}-{random.randrange(10**6)}"
    env = environment(tag)
    first_file = write_tasks(tmp_path / "first.json", [
        {"id": f"f{i}", "command": f'while [ ! -e "{gate}" ]; do sleep 0.05; done'}
        for i in range(3)])
    second_file = write_tasks(tmp_path / "second.json", [{"id": "s", "command": "true"}])
    first = start_run(tmp_path, env, str(first_file), "--local", "2", name="first")
    try:
        db = f"sqlite:///{tmp_path / 'ecloud.db'}"

        def running() -> int:
            try:
                with open_store(db, create=False) as store:
                    return sum(1 for r in store.read(1, types=["task.started"]))
            except Exception:  # noqa: BLE001 - the log is still being made
                return 0

        wait_for(lambda: running() >= 2, 60, "two tasks of the first run running")
        workers = sorted(p for p in tagged(tag)
                         if b"ecloud_worker.agent" in Path(f"/proc/{p}/cmdline").read_bytes())
        with open_store(db, create=False) as store:
            head = store.head()
        started = time.monotonic()
        second = ecloud(tmp_path, env, "run", str(second_file), "--local", "1", timeout=30)
        assert second.returncode == 4, second.stderr
        assert time.monotonic() - started < 10
        message = second.stderr.replace("\n", " ")
        assert "a live boss holds this log (ecloud run, boss" in message
        assert f"pid {first.pid}" in message and "ecloud push" in message
        assert "Traceback" not in second.stderr
        with open_store(db, create=False) as store:
            assert store.head() == head  # nothing pushed, nothing rejected: nothing at all
        assert all(Path(f"/proc/{p}").exists() for p in workers)  # the first's workers live on
        gate.touch()
        assert first.wait(120) == 0, (tmp_path / "first.out").read_text()
        with open_store(db, create=False) as store:
            done = {r.event.task_id for r in store.read(1, types=["task.finished"])
                    if r.event.exit_code == 0}
        assert done == {"f0", "f1", "f2"}
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        reap(tag)
