"""End to end: a real boss process, real worker processes, a real broker and
a real log - on MariaDB with the machine's Mosquitto, and on the embedded
default (SQLite with a broker of our own, Mosquitto or the pure-Python one)."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from ecloud import wire
from ecloud.effects.messaging.mqtt import Connection
from ecloud.projections.state import SUCCEEDED
from tests.support.brokers import wait_for
from tests.support.e2e import Cluster, finished_events, random_dag
from tests.support.secure_broker import SecureBroker
from tests.support.worker_helpers import wait_dead

BACKENDS = [
    "sqlite+mosquitto",
    pytest.param("mysql+mosquitto", marks=pytest.mark.mysql),
    "sqlite+python-broker",
    "sqlite+secure-mosquitto",
]


@pytest.fixture(params=BACKENDS)
def cluster(request, tmp_path: Path):
    """MariaDB with the machine's Mosquitto (a unique cluster name isolates
    us), SQLite with a broker of our own of either flavour, or SQLite with a
    Mosquitto of our own configured by ``ecloud broker config``: TLS, no
    anonymous access, an account per worker made and removed by the boss,
    the ACL confining each worker to its own topics."""
    db_kind, broker_kind = request.param.split("+")
    db = request.getfixturevalue("mysql_url" if db_kind == "mysql" else "sqlite_url")
    name = f"t{uuid.uuid4().hex[:10]}"
    secure = None
    if broker_kind == "secure-mosquitto":
        secure = SecureBroker(tmp_path / "broker", name).start()
        url = secure.url
    elif broker_kind == "python-broker":
        url = request.getfixturevalue("python_broker").url
    elif db_kind == "sqlite":
        url = request.getfixturevalue("mosquitto_broker").url
    else:
        url = request.getfixturevalue("shared_mqtt_url")
    c = Cluster(db, url, tmp_path, cluster=name)
    if secure is not None:
        c.env.update(secure.settings())
        c.auth = secure.boss_auth
    try:
        yield c
        if secure is not None:
            # every worker connected with its own account, and nobody was refused
            log = secure.log()
            assert "u'local-1'" in log and "not authorised" not in log.lower(), log[-3000:]
    finally:
        c.close()
        if secure is not None:
            secure.stop()


def diamond(extra: dict | None = None) -> list[dict]:
    return [
        {"id": "a", "command": "echo a"},
        {"id": "b", "command": "echo b", "depends_on": ["a"]},
        {"id": "c", "command": ["sh", "-c", "echo c"], "depends_on": ["a"]},
        {"id": "d", "command": "echo d", "depends_on": ["b", "c"], **(extra or {})},
    ]


def test_diamond_runs_to_completion(cluster: Cluster) -> None:
    cluster.push(diamond())
    cluster.start_boss(workers=2)
    state = cluster.wait_all()
    log = cluster.log()
    finished = finished_events(log)
    assert sorted(e.task_id for e in finished) == ["a", "b", "c", "d"]
    assert all(e.exit_code == 0 and e.stdout_tail.strip() == e.task_id for e in finished)
    assert {t.attempt for t in state.tasks.values()} == {1}
    status = cluster.ecloud("status")
    assert "succeeded" in status.stdout
    # the worker serves the attempt's output over this broker (on a secured
    # one, under its own account's ACL): not the local directory, not the log
    output = cluster.ecloud("logs", "d", "--broker", cluster.broker,
                            "--work-dir", str(cluster.workdir / "elsewhere"))
    assert output.stdout == "d\n" and output.stderr == ""


@pytest.mark.parametrize("cluster", ["sqlite+mosquitto",
                                     pytest.param("mysql+mosquitto", marks=pytest.mark.mysql),
                                     "sqlite+secure-mosquitto"], indirect=True)
def test_random_200_task_dag_never_starts_a_task_before_its_dependencies_finished(cluster: Cluster) -> None:
    tasks = random_dag(200, seed=7)
    cluster.push(tasks)
    cluster.start_boss(workers=4, slots=2)
    cluster.wait_all(timeout=180)
    log = cluster.log()
    succeeded_at: dict[str, int] = {}
    deps = {t["id"]: t["depends_on"] for t in tasks}
    for rec in log:
        e = rec.event
        # dispatched is the earliest sign of a task going anywhere (a short
        # attempt reports no start, only its end)
        if e.TYPE in ("task.dispatched", "task.started"):
            for dep in deps[e.task_id]:
                assert dep in succeeded_at and succeeded_at[dep] < rec.seq, (e.task_id, dep)
        if e.TYPE == "task.finished" and e.exit_code == 0:
            assert e.task_id not in succeeded_at, f"{e.task_id} succeeded twice"
            succeeded_at[e.task_id] = rec.seq
    assert len(succeeded_at) == 200


def test_failing_task_is_retried_with_backoff_then_blocks_its_descendants(cluster: Cluster) -> None:
    cluster.push([
        {"id": "flaky", "command": "echo boom >&2; exit 3", "retries": 2, "retry_backoff": 0.5},
        {"id": "after", "command": "true", "depends_on": ["flaky"]},
        {"id": "other", "command": "true"},
    ])
    cluster.start_boss(workers=1)
    state = cluster.wait_tasks(
        lambda s: s.tasks["flaky"].status == "failed" and s.tasks["other"].status == SUCCEEDED,
        60, "flaky failed for good")
    assert state.tasks["after"].status == "blocked" and state.tasks["after"].blocked_by == "flaky"
    log = cluster.log()
    attempts = [(r.ts, r.event) for r in log
                if r.event.TYPE == "task.finished" and r.event.task_id == "flaky"]
    assert [e.attempt for _, e in attempts] == [1, 2, 3]
    assert all(e.exit_code == 3 and "boom" in e.stderr_tail for _, e in attempts)
    dispatched = [r.ts for r in log if r.event.TYPE == "task.dispatched" and r.event.task_id == "flaky"]
    # the backoff doubles: 0.5 s before attempt 2, 1 s before attempt 3
    assert dispatched[1] - attempts[0][0] >= 0.5 and dispatched[2] - attempts[1][0] >= 1.0
    history = cluster.ecloud("log", "--task", "flaky").stdout
    assert history.count("task.finished") == 3


def test_timeout_kills_the_whole_process_tree(cluster: Cluster) -> None:
    pids = cluster.workdir / "pids"
    cluster.push([{"id": "slow", "timeout": 1,
                   "command": f"sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; sleep 1000"}])
    cluster.start_boss(workers=1)
    state = cluster.wait_tasks(lambda s: s.tasks["slow"].status == "failed", 60, "the timeout")
    assert state.tasks["slow"].reason == "timeout after 1s"
    for pid in map(int, pids.read_text().split()):
        wait_dead(pid, 10)


def test_sigkill_of_a_worker_mid_task_redispatches_and_ignores_the_late_result(cluster: Cluster) -> None:
    gate = cluster.workdir / "gate"
    cluster.push([{"id": "long", "command": f"while [ ! -e {gate} ]; do sleep 0.05; done; echo done"}])
    cluster.start_boss(workers=2)
    state = cluster.wait_tasks(lambda s: s.tasks["long"].status == "running", 60, "long to run")
    first = state.tasks["long"].worker
    os.killpg(cluster.worker_pid(first), signal.SIGKILL)
    state = cluster.wait_tasks(
        lambda s: s.tasks["long"].attempt == 2 and s.tasks["long"].status == "running", 60,
        "attempt 2 to run")
    assert state.workers[first].status == "lost"
    assert state.tasks["long"].worker != first
    gate.touch()
    cluster.wait_all()
    # the killed worker's result for attempt 1 turns up late: logged, ignored
    # (over the secured broker, as the boss: the killed worker's account went with it)
    conn = Connection(cluster.broker, f"late-{uuid.uuid4().hex[:6]}", on_message=lambda t, p: None,
                      clean_session=True, auth=cluster.auth).start(wait=10)
    late = wire.WorkerPayload(first, [wire.Finished("late-1", "long", 1, 0, 1.0)])
    conn.publish(wire.from_topic(cluster.cluster, first), wire.dumps(late))
    cluster.wait_tasks(lambda s: any(e.attempt == 1 for e in finished_events(cluster.log(), "long")),
                       30, "the late result in the log")
    conn.stop()
    state = cluster.state()
    assert state.tasks["long"].status == SUCCEEDED and state.tasks["long"].attempt == 2
    successes = [e for e in finished_events(cluster.log(), "long") if e.exit_code == 0]
    assert [e.attempt for e in successes] == [2, 1]  # attempt 1 is there, and changed nothing


def test_cancel_of_a_running_task_kills_it(cluster: Cluster) -> None:
    pidfile = cluster.workdir / "pid"
    cluster.push([{"id": "victim", "command": f"echo $$ > {pidfile}; exec sleep 1000"},
                  {"id": "child", "command": "true", "depends_on": ["victim"]}])
    cluster.start_boss(workers=1)
    cluster.wait_tasks(lambda s: s.tasks["victim"].status == "running" and pidfile.exists(), 60, "victim")
    pid = int(wait_for(lambda: pidfile.read_text().strip(), 10, "the pid"))
    status = json.loads(cluster.ecloud("status", "--json").stdout)
    busy = [w for w in status["workers"] if w["running"]]
    assert [(w["status"], w["running"]) for w in busy] == [("busy", [{"task": "victim", "attempt": 1}])]
    cluster.ecloud("cancel", "victim", "--reason", "test")
    wait_dead(pid, 30)
    state = cluster.wait_tasks(lambda s: not s.workers or all(w.used == 0 for w in s.workers.values()),
                               30, "the slot to be given back")
    assert state.tasks["victim"].status == "cancelled" and state.tasks["child"].status == "blocked"
    reasons = [e.reason for e in finished_events(cluster.log(), "victim")]
    assert reasons == ["cancelled"]


def test_sigterm_of_the_boss_mid_run_and_a_restart_lose_nothing(cluster: Cluster) -> None:
    tasks = [{"id": f"s{i}", "command": "sleep 0.2", "depends_on": [f"s{i - 2}"] if i >= 2 else []}
             for i in range(24)]
    cluster.push(tasks)
    cluster.start_boss(workers=2)
    cluster.wait_tasks(lambda s: s.counts["succeeded"] >= 6, 60, "a quarter done")
    assert cluster.stop_boss(signal.SIGTERM) == 0
    middle = cluster.state()
    assert 6 <= middle.counts["succeeded"] < 24
    cluster.start_boss(workers=2)
    cluster.wait_all(timeout=120)
    succeeded = [e.task_id for e in finished_events(cluster.log()) if e.exit_code == 0]
    assert sorted(succeeded) == sorted(t["id"] for t in tasks)  # each exactly once
