"""Harness for end-to-end tests: a real boss process (``ecloud-boss``) with
real local worker processes, against a real log and a real broker.

Nothing here sleeps to paper over a race: every wait is a condition polled
against the log, with a deadline (``tests.support.brokers.wait_for``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ecloud.effects.messaging.mqtt import MqttAuth
from ecloud.events.types import Recorded
from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store
from ecloud.projections.state import State
from tests.support.brokers import wait_for
from tests.support.worker_helpers import TAG, reap

ROOT = Path(__file__).resolve().parents[2]


def random_dag(n: int, seed: int, command: Callable[[random.Random], str] = lambda rng: "true",
               ) -> list[dict]:
    """``n`` tasks ``t0..`` each depending on up to three earlier ones."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        deps = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 3))}) if i else []
        tasks.append({"id": f"t{i}", "command": command(rng), "depends_on": deps,
                      "priority": rng.randint(0, 2)})
    return tasks


def write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text(json.dumps({"tasks": tasks}))
    return path


class Cluster:
    """A log, a broker, and a boss process with ``workers`` local workers."""

    def __init__(self, db: str, broker: str, workdir: Path, cluster: str = "e2e") -> None:
        self.db = db
        self.broker = broker
        self.workdir = workdir
        self.cluster = cluster
        self.boss: subprocess.Popen | None = None
        #: credentials for a client of the test's own (a secured broker's boss account)
        self.auth: MqttAuth | None = None
        # the tag follows the boss, its workers and their tasks: close() reaps them all
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CLUSTER": cluster,
                    "ECLOUD_CONFIG": "", "ECLOUD_DB": "", TAG: cluster}

    # -------------------------------------------------------------- commands

    def ecloud(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "ecloud.cli.main", *args, "--db", self.db],
            cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ecloud {' '.join(args)} failed: {result.stderr}")
        return result

    def push(self, tasks: list[dict], name: str = "tasks.json") -> None:
        self.ecloud("push", str(write_tasks(self.workdir / name, tasks)))

    def start_boss(self, workers: int = 2, slots: int = 1) -> subprocess.Popen:
        log = open(self.workdir / "boss.log", "ab")  # noqa: SIM115 - the child owns it
        self.boss = subprocess.Popen(
            [sys.executable, "-m", "ecloud.cli.boss", "--db", self.db, "--broker", self.broker,
             "--local", str(workers), "--slots", str(slots)],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        return self.boss

    def stop_boss(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.boss is not None
        self.boss.send_signal(sig)
        code = self.boss.wait(timeout)
        self.boss = None
        return code

    def close(self) -> None:
        if self.boss is not None and self.boss.poll() is None:
            self.stop_boss()
        reap(self.cluster)

    # -------------------------------------------------------------- looking

    def state(self) -> State:
        with open_store(self.db, create=False) as store:
            return load_state(store, use_snapshot=False)

    def log(self) -> list[Recorded]:
        with open_store(self.db, create=False) as store:
            return list(store.read(1))

    def wait_tasks(self, predicate: Callable[[State], bool], timeout: float, what: str) -> State:
        def check():
            self.assert_boss_alive()
            state = self.state()
            return state if predicate(state) else None

        return wait_for(check, timeout, what, interval=0.2)

    def wait_all(self, status: str = "succeeded", timeout: float = 90) -> State:
        return self.wait_tasks(
            lambda s: s.tasks and all(t.status == status for t in s.tasks.values()),
            timeout, f"every task {status}")

    def assert_boss_alive(self) -> None:
        if self.boss is not None and self.boss.poll() is not None:
            text = (self.workdir / "boss.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the boss exited with {self.boss.returncode}:\n{text}")

    def worker_pid(self, name: str) -> int:
        return int((self.workdir / ".ecloud-workers" / f"{name}.pid").read_text())


def finished_events(log: list[Recorded], task_id: str | None = None) -> list:
    return [r.event for r in log if r.event.TYPE == "task.finished"
            and (task_id is None or r.event.task_id == task_id)]
