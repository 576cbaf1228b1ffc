"""Liveness under fold rules 2: a worker's loss is the boss's logged
decision, judged on what the boss could hear; one worker id, one agent.

Each test folds a hand-made history and asserts the whole outcome. The
rules-1 tests pin down how old logs keep folding (and show the defect the
rules fixed: a boss that could not log for longer than the heartbeat timeout
lost every worker before it logged what they had sent it meanwhile)."""

from __future__ import annotations

from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.projections.effects import Ack, CancelAttempt, RefuseWorker
from ecloud.projections.liveness import losses
from ecloud.projections.scheduler import schedule
from ecloud.projections.snapshot import dump, load
from ecloud.projections.state import CURRENT_RULES, DRAINING, IDLE, LOST, READY, SUCCEEDED
from tests.support.folding import Driver, check_invariants


def cluster(rules: int = CURRENT_RULES, timeout: float = 30.0) -> Driver:
    """A boss under ``rules``, one worker w1 (incarnation i1) running task a."""
    d = Driver()
    d.apply(ev.BossStarted("b", rules))
    d.apply(ev.ContextSet("heartbeat_timeout", f"{timeout:g}"))
    d.apply(ev.TasksSubmitted("b1", (TaskSpec("a", "sleep 100"),)))
    d.apply(ev.WorkerAnnounced("w1", "h1", 1, 1, "i1"))
    d.schedule()
    d.apply(ev.TaskStarted("a", 1, "w1"), dt=1)
    return d


def test_a_silent_worker_is_overdue_until_the_boss_decides() -> None:
    d = cluster()
    d.apply(ev.Tick(), dt=31)
    worker = d.state.workers["w1"]
    assert worker.status != LOST and list(d.state.overdue) == ["w1"]
    assert d.state.tasks["a"].status == "running"  # nothing given back yet
    decisions = losses(d.state)
    assert decisions == [ev.WorkerLost("w1", "no heartbeat for 31.0s (heartbeat_timeout 30s)",
                                       "i1", worker.last_seen)]
    d.apply(decisions[0])
    assert worker.status == LOST and worker.reason.startswith("no heartbeat for 31.0s")
    assert d.state.tasks["a"].status == READY and not d.state.overdue
    check_invariants(d.state)


def test_a_loss_decided_before_a_report_that_is_folded_first_changes_nothing() -> None:
    d = cluster()
    d.apply(ev.Tick(), dt=31)
    decision = losses(d.state)[0]
    d.apply(ev.WorkerHeartbeat("w1", incarnation="i1"))  # arrived in the same turn, logged first
    d.apply(decision)
    assert d.state.workers["w1"].status == "busy" and not d.state.overdue
    assert d.state.tasks["a"].status == "running"
    check_invariants(d.state)


def test_after_a_stall_longer_than_the_timeout_the_reports_of_the_stall_count() -> None:
    """The database was down 45 s (heartbeat_timeout 30): the boss kept what
    the worker sent - heartbeats and the task's result - and logs it in one
    batch that starts with boss.resumed. Nobody is lost; the result counts."""
    d = cluster()
    d.apply(ev.BossResumed(45.0, "could not append to the log: connection refused"), dt=45)
    d.apply(ev.WorkerHeartbeat("w1", incarnation="i1"))
    d.apply(ev.TaskFinished("a", 1, "w1", 0, 40.0))
    assert d.state.tasks["a"].status == SUCCEEDED
    assert d.state.workers["w1"].status == IDLE and losses(d.state) == []
    check_invariants(d.state)


def test_rules_1_lost_the_worker_before_the_reports_of_the_stall() -> None:
    """How a log written before rules 2 folds, unchanged: the first event of
    the late batch moves the clock past the deadline and the worker is lost
    before its reports are applied; its result is then stale."""
    d = cluster(rules=1)
    d.apply(ev.WorkerHeartbeat("w1"), dt=45)
    d.apply(ev.TaskFinished("a", 1, "w1", 0, 40.0))
    assert d.state.workers["w1"].status == LOST
    assert d.state.tasks["a"].status == READY  # runs again: the defect rules 2 removes


def test_boss_resumed_restarts_every_deadline() -> None:
    d = cluster()
    d.apply(ev.BossResumed(45.0, "stopped"), dt=45)
    assert not d.state.overdue
    d.apply(ev.Tick(), dt=29)
    assert not d.state.overdue
    d.apply(ev.Tick(), dt=2)
    assert list(d.state.overdue) == ["w1"]
    check_invariants(d.state)


def test_a_shorter_heartbeat_timeout_makes_a_silent_worker_overdue_at_once() -> None:
    d = cluster()
    d.apply(ev.Tick(), dt=20)
    d.apply(ev.ContextSet("heartbeat_timeout", "10"))
    assert list(d.state.overdue) == ["w1"]
    d.apply(ev.ContextSet("heartbeat_timeout", "60"))
    assert not d.state.overdue
    check_invariants(d.state)


def test_the_scheduler_gives_an_overdue_worker_nothing() -> None:
    d = Driver()
    d.apply(ev.BossStarted("b", CURRENT_RULES))
    d.apply(ev.WorkerAnnounced("w1", "h1", 2, 1, "i1"))
    d.apply(ev.WorkerAnnounced("w2", "h2", 2, 1, "i2"), dt=20)
    d.apply(ev.Tick(), dt=15)  # w1 silent 35 s, w2 15 s
    d.apply(ev.TasksSubmitted("b1", (TaskSpec("x", "true"),)))
    assert [(e.task_id, e.worker_id) for e in schedule(d.state)] == [("x", "w2")]


def test_overdue_workers_survive_a_snapshot() -> None:
    d = cluster()
    d.apply(ev.WorkerAnnounced("w2", "h2", 1, 1, "i2"), dt=10)
    d.apply(ev.Tick(), dt=25)  # w1 silent 35 s: overdue; w2 25 s: not yet
    again = load(dump(d.state))
    assert list(again.overdue) == ["w1"] and again.rules == CURRENT_RULES
    assert losses(again) == losses(d.state)
    check_invariants(again)


# ------------------------------------------------------------ one id, one agent


def test_a_second_agent_under_a_live_worker_id_is_refused() -> None:
    d = cluster()
    out = d.apply(ev.WorkerAnnounced("w1", "h2", 4, 1, "i2", msg_id="m1"), dt=1)
    reason = d.state.rejected[-1].reason
    assert reason.startswith("duplicate worker id: 'w1' is held by a live agent (incarnation i1 on "
                             "h1, last heard 1.0s ago); incarnation i2 on h2 is refused")
    assert out == [Ack(d.log[-1].seq, "w1", "m1"),
                   RefuseWorker(d.log[-1].seq, "w1", reason, "i2", 30.0)]
    worker = d.state.workers["w1"]
    assert (worker.incarnation, worker.host, worker.slots) == ("i1", "h1", 1)
    assert d.state.tasks["a"].worker == "w1" and d.state.tasks["a"].status == "running"
    check_invariants(d.state)


def test_the_refused_agent_can_neither_keep_the_worker_alive_nor_take_it_down() -> None:
    d = cluster()
    d.apply(ev.WorkerAnnounced("w1", "h2", 4, 1, "i2"), dt=1)
    d.apply(ev.WorkerHeartbeat("w1", incarnation="i2"), dt=29)
    d.apply(ev.Tick(), dt=1)
    assert list(d.state.overdue) == ["w1"]  # only i1's own word counts
    d.apply(ev.WorkerLost("w1", "connection lost (last will)", "i2"))
    d.apply(ev.WorkerLeft("w1", "bye", incarnation="i2"))
    assert d.state.workers["w1"].status == "busy"
    d.apply(ev.WorkerHeartbeat("w1", incarnation="i1"))
    assert not d.state.overdue
    check_invariants(d.state)


def test_once_the_first_agent_is_lost_the_second_is_welcome() -> None:
    d = cluster()
    d.apply(ev.WorkerLost("w1", "connection lost (last will)", "i1"), dt=1)
    assert d.state.tasks["a"].status == READY
    out = d.apply(ev.WorkerAnnounced("w1", "h2", 4, 1, "i2"), dt=1)
    assert out == [] and d.state.workers["w1"].incarnation == "i2"
    check_invariants(d.state)


def test_under_rules_1_a_new_incarnation_replaced_the_old() -> None:
    d = cluster(rules=1)
    d.apply(ev.WorkerAnnounced("w1", "h2", 4, 1, "i2"), dt=1)
    assert d.state.workers["w1"].incarnation == "i2"
    assert d.state.tasks["a"].status == READY


def test_a_draining_worker_gets_no_more_work() -> None:
    d = Driver()
    d.apply(ev.BossStarted("b", CURRENT_RULES))
    d.apply(ev.WorkerAnnounced("w1", "h1", 2, 1, "i1"))
    out = d.apply(ev.WorkerDraining("w1", "stopped by SIGTERM", "m1", "i1"))
    assert out == [Ack(3, "w1", "m1")]
    assert d.state.workers["w1"].status == DRAINING
    d.apply(ev.TasksSubmitted("b1", (TaskSpec("x", "true"),)))
    assert schedule(d.state) == []
    check_invariants(d.state)


# ------------------------------------------------- a lost worker comes back


def test_a_worker_back_from_the_dead_keeps_the_attempt_nobody_else_got() -> None:
    """Lost (paused past its deadline) while running ``a``; ``a`` went back
    to ready but nobody took it: when the worker announces itself again
    with ``a`` still running, ``a`` is its again - it does not run twice."""
    d = cluster()
    d.apply(ev.Tick(), dt=31)
    d.losses()
    assert d.state.tasks["a"].status == READY
    out = d.apply(ev.WorkerAnnounced("w1", "h1", 1, 1, "i1", running=(("a", 1),)), dt=1)
    task, worker = d.state.tasks["a"], d.state.workers["w1"]
    assert (task.status, task.worker, task.attempt) == ("running", "w1", 1)
    assert worker.running == {("a", 1): 1} and worker.status == "busy" and out == []
    assert schedule(d.state) == []  # no second attempt anywhere
    d.apply(ev.TaskFinished("a", 1, "w1", 0, 60.0), dt=1)
    assert d.state.tasks["a"].status == SUCCEEDED
    check_invariants(d.state)


def test_a_worker_back_with_an_attempt_given_to_another_is_told_to_stop_it() -> None:
    d = cluster()
    d.apply(ev.WorkerAnnounced("w2", "h2", 1, 1, "i2"), dt=30)
    d.apply(ev.Tick(), dt=1)
    d.losses()
    assert [(e.task_id, e.attempt, e.worker_id) for e in schedule(d.state)] == [("a", 2, "w2")]
    d.schedule()
    out = d.apply(ev.WorkerAnnounced("w1", "h1", 1, 1, "i1", running=(("a", 1),)), dt=1)
    assert out == [CancelAttempt(d.log[-1].seq, "a", 1, "w1", "superseded")]
    w1 = d.state.workers["w1"]
    assert w1.running == {("a", 1): 1} and w1.status == "busy"  # busy until it says it ended
    assert d.state.tasks["a"].worker == "w2"
    d.apply(ev.TaskFinished("a", 1, "w1", None, 1.0, 15, "cancelled"), dt=1)
    assert d.state.workers["w1"].running == {} and d.state.tasks["a"].worker == "w2"
    check_invariants(d.state)


# ------------------------------------------------------------------- wills


def test_a_will_makes_a_worker_a_suspect_that_its_next_word_clears() -> None:
    """A broker that goes away publishes the wills of workers that are alive
    and reconnect a second later: their work must not go elsewhere."""
    d = cluster()
    d.apply(ev.WorkerLost("w1", "connection lost (last will)", "i1", will=True), dt=1)
    worker = d.state.workers["w1"]
    assert worker.status == "busy" and worker.will_at == d.state.clock
    d.apply(ev.WorkerHeartbeat("w1", incarnation="i1"), dt=2)
    assert worker.will_at is None
    d.apply(ev.Tick(), dt=20)
    assert not d.state.overdue and d.state.tasks["a"].status == "running"
    check_invariants(d.state)


def test_a_will_followed_by_silence_loses_the_worker_after_the_grace() -> None:
    d = cluster()  # heartbeat_timeout 30: the will's grace is 10 s
    d.apply(ev.WorkerLost("w1", "connection lost (last will)", "i1", will=True), dt=1)
    d.apply(ev.Tick(), dt=9)
    assert not d.state.overdue
    d.apply(ev.Tick(), dt=2)
    decision = losses(d.state)
    assert [(e.worker_id, e.reason) for e in decision] == [
        ("w1", "its connection died (last will) and it was not heard from within 10s")]
    d.apply(decision[0])
    assert d.state.workers["w1"].status == LOST and d.state.tasks["a"].status == READY
    check_invariants(d.state)


def test_under_rules_1_a_will_lost_the_worker_at_once() -> None:
    d = cluster(rules=1)
    d.apply(ev.WorkerLost("w1", "connection lost (last will)", "i1", will=True), dt=1)
    assert d.state.workers["w1"].status == LOST
