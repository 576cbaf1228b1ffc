"""The chaos suite: real processes killed, a real broker and a real MariaDB
restarted mid-run, two bosses on one log - and every run still completes
with nothing lost and nothing run twice at once (see ``harness.py`` for the
checks every scenario ends with).

Faults strike at random moments drawn from a seeded generator (the seed is
in the report, so a failure can be replayed); every wait is a condition on
the log with a deadline.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosCluster, check_each_task_ran_once, final_checks
from tests.support.brokers import wait_for
from tests.support.e2e import random_dag

pytestmark = pytest.mark.mysql

SEED = 20261126


def sleepy(low: float, high: float):
    return lambda rng: f"sleep {rng.uniform(low, high):.2f}"


@pytest.fixture
def chaos(request, tmp_path: Path):
    """A cluster on a MariaDB log (its own database on the shared server) and
    a Mosquitto of the test's own."""
    db = request.getfixturevalue("mysql_url")
    broker = request.getfixturevalue("mosquitto_broker")
    cluster = ChaosCluster(db, broker.url, tmp_path, f"chaos{uuid.uuid4().hex[:6]}")
    cluster.broker_handle = broker
    cluster.record_as = record_name(request)
    try:
        yield cluster
    finally:
        cluster.close()


def record_name(request) -> str:
    return "chaos-" + request.node.name.removeprefix("test_").replace("_", "-")


def wait_started(cluster: ChaosCluster, count: int, timeout: float = 60) -> None:
    wait_for(lambda: cluster.bosses_started() >= count, timeout, f"boss number {count} to start")


def test_sigkill_the_boss_at_20_random_moments(chaos: ChaosCluster, chaos_report) -> None:
    rng = random.Random(SEED)
    tasks = random_dag(300, SEED, sleepy(0.1, 0.5))
    chaos.push(tasks)
    kills = 0
    boss = chaos.spawn_boss("boss", workers=4)
    for kills in range(1, 21):
        wait_started(chaos, kills)
        time.sleep(rng.uniform(0.0, 1.2))  # the random moment of the fault, not a wait for a state
        boss.send_signal(signal.SIGKILL)
        boss.wait(30)
        boss = chaos.spawn_boss("boss", workers=4)
    done_at_last_kill = chaos.succeeded()
    chaos.boss = boss
    chaos.wait_all(timeout=240)
    checked = final_checks(chaos, len(tasks))
    chaos_report(f"{kills} boss SIGKILLs (seed {SEED}; {done_at_last_kill}/300 done at the last); "
                 f"{checked}")


def wait_done(cluster: ChaosCluster, count: float, timeout: float = 120) -> int:
    state = cluster.wait_tasks(lambda s: s.counts["succeeded"] >= count, timeout,
                               f"{count:.0f} tasks to succeed")
    return state.counts["succeeded"]


def test_restart_the_broker_twice_mid_run(chaos: ChaosCluster, chaos_report) -> None:
    """Once cleanly (Mosquitto saves its sessions), once by SIGKILL (what it
    had not saved is lost; the workers' and the boss's resends make up)."""
    tasks = random_dag(120, SEED + 1, sleepy(0.1, 0.3))
    chaos.push(tasks)
    chaos.boss = chaos.spawn_boss("boss", workers=3)
    broker = chaos.broker_handle
    done = [wait_done(chaos, 0.25 * len(tasks))]
    broker.restart()
    done.append(wait_done(chaos, 0.6 * len(tasks)))
    broker.kill()
    broker.restart()
    chaos.wait_all(timeout=180)
    checked = final_checks(chaos, len(tasks))
    chaos_report(f"2 broker restarts (SIGTERM at {done[0]}/120 done, SIGKILL at {done[1]}/120); "
                 f"{checked}")


def test_stop_and_restart_mariadb_mid_run(request, tmp_path: Path, chaos_report) -> None:
    """The log's own MariaDB server goes away: the boss keeps what it cannot
    log, acks nothing, retries, and carries on when the server is back."""
    server = request.getfixturevalue("private_mariadb")
    broker = request.getfixturevalue("mosquitto_broker")
    chaos = ChaosCluster(server.url("chaos"), broker.url, tmp_path, f"chaos{uuid.uuid4().hex[:6]}")
    chaos.record_as = record_name(request)
    try:
        tasks = random_dag(100, SEED + 2, sleepy(0.1, 0.3))
        chaos.push(tasks)
        chaos.boss = chaos.spawn_boss("boss", workers=3)
        done = wait_done(chaos, 0.3 * len(tasks))
        server.stop()
        wait_for(lambda: "will retry" in chaos.boss_log("boss"), 60,
                 "the boss to find the database gone")
        assert chaos.boss.poll() is None, chaos.boss_log("boss")[-2000:]
        server.start()
        chaos.wait_all(timeout=180)
        checked = final_checks(chaos, len(tasks))
    finally:
        chaos.close()
    chaos_report(f"MariaDB stopped at {done}/100 done, the boss retried until it was back; {checked}")


def test_mariadb_down_longer_than_the_heartbeat_timeout_runs_no_task_twice(
        request, tmp_path: Path, chaos_report) -> None:
    """The log's MariaDB is SIGKILLed for 1.5 x heartbeat_timeout mid-run.
    The boss keeps the reports that reach it meanwhile, logs them first when
    the server is back (after a boss.resumed), and only then judges
    deadlines: no worker is lost for the boss's own silence, and no task
    whose result came in during the outage runs again."""
    server = request.getfixturevalue("private_mariadb")
    broker = request.getfixturevalue("mosquitto_broker")
    chaos = ChaosCluster(server.url("chaos"), broker.url, tmp_path, f"chaos{uuid.uuid4().hex[:6]}")
    chaos.record_as = record_name(request)
    timeout = 6.0
    try:
        tasks = random_dag(120, SEED + 5, sleepy(0.2, 0.6))
        chaos.push(tasks)
        chaos.ecloud("context", "set", "heartbeat_timeout", f"{timeout:g}")
        chaos.boss = chaos.spawn_boss("boss", workers=3)
        done = wait_done(chaos, 0.3 * len(tasks))
        server.kill()
        down = time.monotonic()
        wait_for(lambda: "will retry" in chaos.boss_log("boss"), 60,
                 "the boss to find the database gone")
        while time.monotonic() - down < 1.5 * timeout:  # the fault's length, not a wait for a state
            time.sleep(0.1)
        server.start()
        outage = time.monotonic() - down
        state = chaos.wait_all(timeout=180)
        assert chaos.boss.poll() is None, chaos.boss_log("boss")[-2000:]
        lost = [w.worker_id for w in state.workers.values() if w.status == "lost"]
        assert not lost, f"workers lost for the boss's silence: {lost}"
        resumed = [r.event for r in chaos.log() if r.event.TYPE == "boss.resumed"]
        assert resumed and resumed[0].paused >= timeout, resumed
        ran = check_each_task_ran_once(chaos.journal())
        checked = final_checks(chaos, len(tasks))
    finally:
        chaos.close()
    chaos_report(f"MariaDB SIGKILLed at {done}/120 done for {outage:.1f}s (heartbeat_timeout "
                 f"{timeout:g}s); the boss logged {resumed[0].paused:.1f}s of its silence, no "
                 f"worker lost, each of {ran} tasks ran once; {checked}")


def test_sigkill_30_percent_of_the_workers(chaos: ChaosCluster, chaos_report) -> None:
    tasks = random_dag(120, SEED + 3, sleepy(0.3, 0.8))
    chaos.push(tasks)
    chaos.boss = chaos.spawn_boss("boss", workers=10)
    done = wait_done(chaos, 0.2 * len(tasks))
    busy = sorted(w for w, rec in chaos.state().workers.items() if rec.running)
    idle = sorted(w for w in chaos.state().workers if w not in busy)
    victims = (busy + idle)[:3]  # busy ones first: their tasks must move
    held = {t: attempt for w in victims for t, attempt in chaos.state().workers[w].running}
    for name in victims:
        chaos_kill_worker(chaos, name)
    state = chaos.wait_all(timeout=180)
    moved = {t for t in held if state.tasks[t].attempt > held[t]}
    # A victim may finish a task between the look at the state and its
    # SIGKILL; its report, sent before it died, then lands late. Such a
    # task is not lost: its success must be the victim's own report of the
    # very attempt it was given.
    reported = set(held) - moved
    victims_successes = {(e.event.task_id, e.event.attempt) for e in chaos.log()
                         if type(e.event).__name__ == "TaskFinished"
                         and e.event.worker_id in victims and e.event.exit_code == 0}
    assert {(t, held[t]) for t in reported} <= victims_successes, (
        f"tasks of killed workers neither re-dispatched nor reported by them: "
        f"{sorted((t, held[t]) for t in reported if (t, held[t]) not in victims_successes)}")
    assert moved, "no running task was moved: the kill came too late to test anything"
    checked = final_checks(chaos, len(tasks), killed=victims)
    chaos_report(f"SIGKILL of 3/10 workers at {done}/120 done ({len(moved)} of their {len(held)} running "
                 f"tasks re-dispatched, {len(reported)} reported by them before they died); {checked}")


def chaos_kill_worker(chaos: ChaosCluster, name: str) -> None:
    import os

    from tests.support.worker_helpers import wait_dead

    pid = chaos.worker_pid(name)
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid, 30)


def test_two_bosses_a_standby_takes_over_and_a_paused_boss_is_fenced(
        chaos: ChaosCluster, chaos_report) -> None:
    tasks = random_dag(150, SEED + 4, sleepy(0.1, 0.4))
    chaos.push(tasks)
    first = chaos.spawn_boss("first", workers=3)
    wait_started(chaos, 1)
    second = chaos.spawn_boss("second", workers=3)
    wait_for(lambda: "standby" in chaos.boss_log("second"), 60, "the second boss to stand by")
    done = [wait_done(chaos, 0.2 * len(tasks))]
    assert chaos.bosses_started() == 1  # one active boss, whatever the standby does
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    wait_started(chaos, 2)  # the standby took over by replay
    third = chaos.spawn_boss("third", workers=3)
    wait_for(lambda: "standby" in chaos.boss_log("third"), 60, "the third boss to stand by")
    done.append(wait_done(chaos, 0.5 * len(tasks)))
    second.send_signal(signal.SIGSTOP)  # hung, holding its connection and its lock
    try:
        wait_started(chaos, 3)  # the third cut it off after its silence
        head_at_takeover = len(chaos.log())
    finally:
        second.send_signal(signal.SIGCONT)
    assert second.wait(60) == 3, chaos.boss_log("second")[-2000:]
    assert "lost the right to append" in chaos.boss_log("second")
    chaos.boss = third
    chaos.wait_all(timeout=180)
    log = chaos.log()
    started = [r.seq for r in log if r.event.TYPE == "boss.started"]
    assert len(started) == 3 and started[-1] <= head_at_takeover
    checked = final_checks(chaos, len(tasks))
    chaos_report(f"active boss SIGKILLed at {done[0]}/150 done (standby took over), the next one "
                 f"SIGSTOPped at {done[1]}/150 (a third took over; resumed, it was fenced with exit "
                 f"3 and appended nothing); {checked}")
