"""The attempt table (ecloud/projections/transitions.py ATTEMPT_MOVES) on
examples: how each attempt ends, and which attempts a worker that comes
back may take back (fold rules 4: only one its loss sent back)."""

from __future__ import annotations

from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.projections.effects import CancelAttempt
from tests.support.folding import Driver, check_invariants


def one_task(rules: int = 4, **spec) -> Driver:
    d = Driver()
    d.apply(ev.BossStarted("b", rules))
    d.apply(ev.TasksSubmitted("b1", (TaskSpec("t", "true", **spec),)))
    d.apply(ev.WorkerAnnounced("w1", "h1", 1, 1, "i1"))
    d.schedule()
    return d


def attempt(d: Driver) -> tuple[int, str]:
    task = d.state.tasks["t"]
    return task.attempt, task.attempt_status


def lose_w1(d: Driver) -> None:
    """w1 falls silent until the boss logs it lost (rules 2 and later)."""
    d.apply(ev.Tick(), dt=31)
    d.losses()
    assert d.state.workers["w1"].status == "lost"


def comes_back(d: Driver, incarnation: str = "i2") -> list:
    return d.apply(ev.WorkerAnnounced("w1", "h1", 1, 1, incarnation, running=(("t", 1),)))


def test_an_attempt_is_born_dispatched_and_each_ending_is_its_own_status() -> None:
    d = one_task(retries=2, retry_backoff=0.0)
    assert attempt(d) == (1, "dispatched")
    d.apply(ev.TaskStarted("t", 1, "w1"))
    assert attempt(d) == (1, "running")
    d.apply(ev.TaskFinished("t", 1, "w1", 3))
    assert attempt(d) == (1, "failed") and d.statuses()["t"] == "ready"
    d.schedule()
    assert attempt(d) == (2, "dispatched")
    d.apply(ev.TaskFinished("t", 2, "w1", None, returned=True))  # given back unstarted
    assert attempt(d) == (2, "given back") and d.state.tasks["t"].failures == 1
    d.schedule()
    d.apply(ev.TaskFinished("t", 3, "w1", 0))  # no start report: still a success
    assert attempt(d) == (3, "succeeded") and d.statuses()["t"] == "succeeded"
    check_invariants(d.state)


def test_the_attempt_of_a_lost_worker_is_taken_back_when_it_comes_back() -> None:
    d = one_task()
    d.apply(ev.TaskStarted("t", 1, "w1"))
    lose_w1(d)
    assert attempt(d) == (1, "worker lost") and d.statuses()["t"] == "ready"
    assert comes_back(d) == []
    assert attempt(d) == (1, "running") and d.state.tasks["t"].worker == "w1"
    check_invariants(d.state)


def test_a_timed_out_attempt_is_not_taken_back_under_rules_4() -> None:
    """A worker that comes back still holding an attempt that timed out is
    told to stop it: the timeout counted a failure, and the task must not
    run on under that attempt (which would count a second failure when it
    is killed)."""
    d = one_task(retries=1, retry_backoff=0.0, timeout=10.0)
    d.apply(ev.TaskStarted("t", 1, "w1"))
    d.apply(ev.WorkerHeartbeat("w1"), dt=25)
    d.apply(ev.WorkerHeartbeat("w1"), dt=16)  # past 10 s + 30 s grace
    assert attempt(d) == (1, "failed") and d.statuses()["t"] == "ready"
    lose_w1(d)
    out = comes_back(d)
    assert any(isinstance(e, CancelAttempt) and e.reason == "superseded" for e in out)
    assert attempt(d) == (1, "failed") and d.statuses()["t"] == "ready"
    check_invariants(d.state)


def test_a_log_of_rules_3_keeps_taking_back_any_attempt_of_a_ready_task() -> None:
    """What a log written under rules 3 did, its replay does still."""
    d = one_task(rules=3, retries=1, retry_backoff=0.0, timeout=10.0)
    d.apply(ev.TaskStarted("t", 1, "w1"))
    d.apply(ev.WorkerHeartbeat("w1"), dt=25)
    d.apply(ev.WorkerHeartbeat("w1"), dt=16)
    lose_w1(d)
    assert comes_back(d) == []
    assert attempt(d) == (1, "running") and d.statuses()["t"] == "running"
    check_invariants(d.state)


def test_a_cancel_or_a_new_spec_ends_a_lost_attempt_for_good() -> None:
    for end in ("cancel", "replace"):
        d = one_task()
        d.apply(ev.TaskStarted("t", 1, "w1"))
        lose_w1(d)
        if end == "cancel":
            d.apply(ev.TaskCancelled("t", "not needed"))
            d.apply(ev.RetryRequested("t"))
        else:
            d.apply(ev.TasksReplaced("b2", (TaskSpec("t", "echo new"),)))
        assert attempt(d) == (1, "cancelled") and d.statuses()["t"] == "ready", end
        out = comes_back(d)
        assert [e.reason for e in out if isinstance(e, CancelAttempt)] == ["superseded"], end
        assert d.statuses()["t"] == "ready", end
        check_invariants(d.state)
