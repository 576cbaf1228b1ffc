"""What every chaos scenario shares: a cluster whose workers keep journals,
bosses that can be started side by side, and the checks each scenario ends
with.

The checks are about the promises of docs/design.md, read from the real log and
the workers' own journals (``worker/journal.py``), never from the boss's
opinion of itself:

- every task succeeded;
- every report a worker made is in the log exactly once (a withdrawn hello
  at most once; a worker killed mid-run may lose what it never sent);
- no (task, attempt) was ever started on two workers;
- ``ecloud-replay --verify`` passes on the log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson

from ecloud.events.types import Recorded
from tests.logs.record import record_run
from tests.support.e2e import ROOT, Cluster


class ChaosCluster(Cluster):
    """A :class:`Cluster` whose workers journal every report, and which can
    run several bosses at once (``spawn_boss``)."""

    def __init__(self, db: str, broker: str, workdir: Path, cluster: str,
                 takeover_after: float = 2.0) -> None:
        super().__init__(db, broker, workdir, cluster)
        self.journals = workdir / "journals"
        self.journals.mkdir(exist_ok=True)
        self.env["ECLOUD_WORKER_JOURNAL"] = str(self.journals)
        self.env["ECLOUD_TAKEOVER_AFTER"] = f"{takeover_after:g}"
        self.spawned: list[subprocess.Popen] = []
        self.record_as = cluster  # the name of its log under $ECLOUD_RECORD_LOGS

    def spawn_boss(self, name: str, workers: int, slots: int = 1) -> subprocess.Popen:
        """One more ``ecloud-boss`` (logging to ``<name>.log``); on MariaDB
        all but one wait as standbys."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "ecloud.cli.boss", "--db", self.db, "--broker", self.broker,
             "--local", str(workers), "--slots", str(slots)],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.spawned.append(proc)
        return proc

    def boss_log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def bosses_started(self) -> int:
        """How many bosses have become active on this log."""
        return sum(1 for r in self.log() if r.event.TYPE == "boss.started")

    def succeeded(self) -> int:
        return self.state().counts["succeeded"]

    def close(self) -> None:
        for proc in self.spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        super().close()

    # ------------------------------------------------------------- checks

    def journal(self) -> list[dict]:
        lines = []
        for path in sorted(self.journals.glob("*.jsonl")):
            lines += [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
        return lines

    def verify(self) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "ecloud.cli.replay", "--verify", "--db", self.db],
            cwd=self.workdir, env={**self.env, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, f"ecloud-replay --verify failed:\n{result.stdout}{result.stderr}"
        return result.stdout


def check_reports_exactly_once(log: list[Recorded], journal: list[dict],
                               killed: Iterable[str] = ()) -> int:
    """Every report in the journals is in the log once (at most once if it was
    withdrawn or its worker was killed); returns how many were checked."""
    in_log = Counter((r.event.worker_id, r.event.msg_id) for r in log
                     if getattr(r.event, "msg_id", "") and hasattr(r.event, "worker_id"))
    withdrawn = {(j["worker_id"], j["msg_id"]) for j in journal if j.get("withdrawn")}
    killed = set(killed)
    made = [j for j in journal if not j.get("withdrawn")]
    problems = []
    for j in made:
        key = (j["worker_id"], j["msg_id"])
        count = in_log[key]
        lenient = key in withdrawn or j["worker_id"] in killed
        if count > 1 or (count == 0 and not lenient):
            problems.append(f"{j['kind']} {key} of task {j.get('task_id')}: {count} times in the log")
    assert not problems, f"{len(problems)} report(s) not logged exactly once: {problems[:10]}"
    assert made, "the workers journaled nothing: the check would prove nothing"
    return len(made)


def check_one_worker_per_attempt(log: list[Recorded], journal: list[dict]) -> int:
    """No (task, attempt) started on two workers, by the log and by the
    workers' own word; returns how many attempts were checked. An attempt
    is given to one worker, so a start or an end of it reported by two is
    the fault (a short attempt reports only its end)."""
    runners: dict[tuple[str, int], set[str]] = {}
    for rec in log:
        if rec.event.TYPE in ("task.started", "task.finished"):
            runners.setdefault((rec.event.task_id, rec.event.attempt), set()).add(rec.event.worker_id)
    for j in journal:
        if j.get("kind") in ("started", "finished"):
            runners.setdefault((j["task_id"], j["attempt"]), set()).add(j["worker_id"])
    twice = {k: v for k, v in runners.items() if len(v) > 1}
    assert not twice, f"attempts run on two workers: {twice}"
    return len(runners)


def check_each_task_ran_once(journal: list[dict]) -> int:
    """Every task's command was started by exactly one attempt, by the
    workers' own word (their journals): no task ran twice, not even one
    after the other. Tasks must run long enough to report their start."""
    attempts: dict[str, set[tuple[str, int]]] = {}
    for j in journal:
        if j.get("kind") == "started":
            attempts.setdefault(j["task_id"], set()).add((j["worker_id"], j["attempt"]))
    twice = {t: sorted(a) for t, a in attempts.items() if len(a) > 1}
    assert not twice, f"{len(twice)} task(s) ran more than once: {dict(list(twice.items())[:10])}"
    return len(attempts)


def final_checks(cluster: ChaosCluster, n_tasks: int, killed: Iterable[str] = ()) -> str:
    """The checks every scenario ends with; a line saying what they covered."""
    state = cluster.state()
    assert state.counts["succeeded"] == n_tasks == len(state.tasks), dict(state.counts)
    log = cluster.log()
    journal = cluster.journal()
    reports = check_reports_exactly_once(log, journal, killed)
    attempts = check_one_worker_per_attempt(log, journal)
    cluster.verify()
    if os.environ.get("ECLOUD_RECORD_LOGS"):
        record_run(Path(os.environ["ECLOUD_RECORD_LOGS"]) / cluster.record_as, log)
    return (f"{n_tasks} tasks succeeded; {reports} journaled reports each logged once; "
            f"{attempts} attempts each on one worker; {len(log)} events pass ecloud-replay --verify")
