"""The fold, one scenario at a time: every step asserts the whole picture
(task statuses and the exact effects)."""

from __future__ import annotations

import pytest

from ecloud.errors import ReducerBug
from ecloud.events import types as ev
from ecloud.events.types import Recorded, TaskSpec
from ecloud.projections.effects import Ack, CancelAttempt, Dispatch, RefuseWorker
from ecloud.projections.fold import step
from ecloud.projections.snapshot import canonical
from ecloud.projections.state import READY, State
from tests.support.folding import Driver, check_invariants

DIAMOND = (
    TaskSpec("a", "true"),
    TaskSpec("b", "true", depends_on=("a",)),
    TaskSpec("c", "true", depends_on=("a",), retries=2, retry_backoff=10.0),
    TaskSpec("d", "true", depends_on=("b", "c")),
)


def diamond(slots: int = 2) -> Driver:
    d = Driver()
    d.apply(ev.TasksSubmitted("b1", DIAMOND))
    d.apply(ev.WorkerAnnounced("w1", "host1", slots, 1, "i1"))
    return d


def test_submission_sets_ready_and_waiting() -> None:
    d = diamond()
    assert d.statuses() == {"a": "ready", "b": "waiting", "c": "waiting", "d": "waiting"}
    assert d.state.counts["ready"] == 1 and d.state.counts["waiting"] == 3
    assert d.state.tasks["d"].unmet == 2
    check_invariants(d.state)


def test_a_run_of_the_diamond() -> None:
    d = diamond()
    assert d.schedule() == [Dispatch(3, "a", 1, "w1", DIAMOND[0])]
    assert d.statuses()["a"] == "dispatched"
    assert d.apply(ev.TaskStarted("a", 1, "w1", msg_id="m1")) == [Ack(4, "w1", "m1")]
    assert d.statuses()["a"] == "running"
    d.apply(ev.TaskFinished("a", 1, "w1", 0, 1.0))
    assert d.statuses() == {"a": "succeeded", "b": "ready", "c": "ready", "d": "waiting"}
    assert d.schedule() == [Dispatch(6, "b", 1, "w1", DIAMOND[1]), Dispatch(7, "c", 1, "w1", DIAMOND[2])]
    assert d.state.workers["w1"].status == "busy" and not d.state.free
    d.apply(ev.TaskFinished("b", 1, "w1", 0))
    d.apply(ev.TaskFinished("c", 1, "w1", 0))
    assert d.statuses()["d"] == "ready"
    d.schedule()
    d.apply(ev.TaskFinished("d", 1, "w1", 0))
    assert set(d.statuses().values()) == {"succeeded"}
    assert d.state.workers["w1"].status == "idle"
    check_invariants(d.state)


def test_failure_with_retries_backs_off_exponentially_then_fails_and_blocks() -> None:
    d = diamond()
    d.schedule()
    d.apply(ev.TaskFinished("a", 1, "w1", 0))
    d.schedule()
    d.apply(ev.TaskFinished("c", 1, "w1", 1), dt=1)
    c = d.state.tasks["c"]
    assert (c.status, c.failures, c.not_before) == ("ready", 1, d.now + 10.0)
    assert d.schedule() == []  # in backoff: not eligible
    d.apply(ev.WorkerHeartbeat("w1"), dt=10)  # time passes; the worker stays alive
    assert [x.task_id for x in d.schedule()] == ["c"]
    d.apply(ev.TaskFinished("c", 2, "w1", 1))
    assert d.state.tasks["c"].not_before == d.now + 20.0  # doubled
    d.apply(ev.WorkerHeartbeat("w1"), dt=20)
    d.schedule()
    d.apply(ev.TaskFinished("c", 3, "w1", None, signal=9))
    assert d.statuses() == {"a": "succeeded", "b": "dispatched", "c": "failed", "d": "blocked"}
    assert d.state.tasks["c"].reason == "killed by signal 9"
    assert d.state.tasks["d"].blocked_by == "c"
    # the rest of the DAG goes on: b still finishes normally
    d.apply(ev.TaskFinished("b", 1, "w1", 0))
    assert d.statuses()["b"] == "succeeded" and d.statuses()["d"] == "blocked"
    # an operator retry unblocks d
    d.apply(ev.RetryRequested("c"))
    assert d.statuses()["c"] == "ready" and d.statuses()["d"] == "waiting"
    check_invariants(d.state)


def test_lost_worker_requeues_with_a_new_attempt_and_ignores_the_late_result() -> None:
    d = diamond()
    d.schedule()
    d.apply(ev.TaskStarted("a", 1, "w1"))
    d.apply(ev.Tick(), dt=31)  # heartbeat_timeout defaults to 30 s
    assert d.state.workers["w1"].status == "lost"
    assert d.statuses()["a"] == "ready"
    d.apply(ev.WorkerAnnounced("w2", "host2", 1, 1, "j1"))
    assert d.schedule() == [Dispatch(7, "a", 2, "w2", DIAMOND[0])]
    # the lost worker's late result of attempt 1 changes nothing
    d.apply(ev.TaskFinished("a", 1, "w1", 0, msg_id="late"))
    assert d.statuses()["a"] == "dispatched" and d.state.tasks["a"].attempt == 2
    # and if it starts the old attempt again, it is told to stop
    out = d.apply(ev.TaskStarted("a", 1, "w1"))
    assert out == [CancelAttempt(9, "a", 1, "w1", "superseded")]
    check_invariants(d.state)


def test_heartbeats_keep_a_worker_alive_and_boss_restart_extends_deadlines() -> None:
    d = diamond()
    for _ in range(5):
        d.apply(ev.WorkerHeartbeat("w1"), dt=20)
    assert d.state.workers["w1"].status == "idle"
    d.apply(ev.BossStarted("boss-2"), dt=200)  # no boss was listening for 200 s
    assert d.state.workers["w1"].status == "idle"
    d.apply(ev.Tick(), dt=31)
    assert d.state.workers["w1"].status == "lost"


def test_cancel_running_task_kills_it_and_blocks_descendants_slot_held_until_report() -> None:
    d = diamond(slots=1)
    d.schedule()
    out = d.apply(ev.TaskCancelled("a", "not needed"))
    assert out == [CancelAttempt(4, "a", 1, "w1", "cancelled")]
    assert d.statuses() == {"a": "cancelled", "b": "blocked", "c": "blocked", "d": "blocked"}
    assert d.state.workers["w1"].used == 1  # until the worker confirms the kill
    d.apply(ev.TaskFinished("a", 1, "w1", None, signal=15))
    assert d.state.workers["w1"].used == 0 and d.statuses()["a"] == "cancelled"
    d.apply(ev.RetryRequested("a"))
    assert d.statuses() == {"a": "ready", "b": "waiting", "c": "waiting", "d": "waiting"}
    check_invariants(d.state)


def test_timeout_fails_the_attempt_and_tells_the_worker() -> None:
    d = Driver()
    spec = TaskSpec("slow", "sleep 100", timeout=10.0)
    d.apply(ev.TasksSubmitted("b", (spec,)))
    d.apply(ev.WorkerAnnounced("w1", "h", 1, 1, "i"))
    d.schedule()
    d.apply(ev.TaskStarted("slow", 1, "w1"))
    d.apply(ev.WorkerHeartbeat("w1"), dt=20)
    assert d.statuses()["slow"] == "running"  # 10 s timeout + 30 s grace
    out = d.apply(ev.WorkerHeartbeat("w1"), dt=21)
    assert out == [CancelAttempt(6, "slow", 1, "w1", "timeout")]
    assert d.statuses()["slow"] == "failed"
    assert d.state.tasks["slow"].reason == "timeout after 10s"


def test_repeated_reports_are_idempotent() -> None:
    d = diamond()
    d.schedule()
    d.apply(ev.TaskStarted("a", 1, "w1", msg_id="s"))
    before = canonical(d.state)
    assert d.apply(ev.TaskStarted("a", 1, "w1", msg_id="s")) == [Ack(5, "w1", "s")]
    after = canonical(d.state)
    assert {**after, "seq": 0, "clock": 0} == {**before, "seq": 0, "clock": 0}
    d.apply(ev.TaskFinished("a", 1, "w1", 0, msg_id="f"))
    statuses = d.statuses()
    assert d.apply(ev.TaskFinished("a", 1, "w1", 0, msg_id="f")) == [Ack(7, "w1", "f")]
    assert d.statuses() == statuses and d.state.workers["w1"].used == 0


def test_incompatible_worker_is_refused() -> None:
    d = Driver()
    out = d.apply(ev.WorkerAnnounced("old", "h", 4, 99, "i"))
    assert out == [RefuseWorker(1, "old", "protocol 99 not supported (boss speaks 1)", "i")]
    assert "old" not in d.state.workers and d.state.rejected[-1].reason.startswith("protocol 99")


def test_worker_restart_gives_back_what_the_old_incarnation_held() -> None:
    d = diamond()
    d.schedule()
    d.apply(ev.WorkerAnnounced("w1", "host1", 2, 1, "i1"))  # reconnect: same incarnation
    assert d.statuses()["a"] == "dispatched"
    d.apply(ev.WorkerAnnounced("w1", "host1", 2, 1, "i2"))  # restart
    assert d.statuses()["a"] == "ready" and d.state.workers["w1"].used == 0
    check_invariants(d.state)


def test_a_later_batch_may_depend_on_an_earlier_one_and_inherits_its_state() -> None:
    d = diamond()
    d.schedule()
    d.apply(ev.TaskFinished("a", 1, "w1", 0))
    d.apply(ev.TasksSubmitted("b2", (TaskSpec("e", "true", depends_on=("a",)),
                                     TaskSpec("f", "true", depends_on=("e", "b")))))
    assert d.statuses()["e"] == "ready" and d.statuses()["f"] == "waiting"
    d.apply(ev.TaskCancelled("b"))
    assert d.statuses()["f"] == "blocked"
    d.apply(ev.TasksSubmitted("b3", (TaskSpec("g", "true", depends_on=("f",)),)))
    assert d.statuses()["g"] == "blocked" and d.state.tasks["g"].blocked_by == "b"
    check_invariants(d.state)


def test_invalid_batches_are_rejected_whole() -> None:
    d = diamond()
    d.apply(ev.TasksSubmitted("dup", (TaskSpec("x", "true"), TaskSpec("a", "true"))))
    d.apply(ev.TasksSubmitted("dangling", (TaskSpec("y", "true", depends_on=("nope",)),)))
    d.apply(ev.TasksSubmitted("cycle", (TaskSpec("p", "true", depends_on=("q",)),
                                        TaskSpec("q", "true", depends_on=("p",)))))
    assert sorted(d.statuses()) == ["a", "b", "c", "d"]
    assert [r.reason for r in d.state.rejected] == [
        "task 'a' already exists",
        "task 'y' depends on unknown task 'nope'",
        "the batch's dependencies form a cycle",
    ]


def test_priority_then_submission_order_and_packing() -> None:
    d = Driver()
    d.apply(ev.TasksSubmitted("b", (TaskSpec("low", "true"), TaskSpec("high", "true", priority=5),
                                    TaskSpec("big", "true", slots=3), TaskSpec("low2", "true"))))
    d.apply(ev.WorkerAnnounced("w1", "h", 2, 1, "i"))
    d.apply(ev.WorkerAnnounced("w2", "h", 2, 1, "i"))
    decisions = [(e.task_id, e.worker_id) for e in d.schedule()]
    # "big" fits nowhere and waits without holding back smaller tasks
    assert decisions == [("high", "w1"), ("low", "w1"), ("low2", "w2")]


def test_a_gap_in_the_log_is_a_loud_error() -> None:
    state = State()
    step(state, Recorded(1, 1.0, ev.Tick()))
    with pytest.raises(ReducerBug, match="seq 3: expected seq 2"):
        step(state, Recorded(3, 2.0, ev.Tick()))


def test_the_clock_never_goes_back() -> None:
    d = Driver()
    d.apply(ev.Tick(), dt=10)
    d.apply(ev.Tick(), dt=-5)
    assert d.state.clock == 1010.0


def test_context_set_and_dropped() -> None:
    d = Driver()
    d.apply(ev.ContextSet("datastore_address", "10.0.0.5"))
    d.apply(ev.ContextSet("heartbeat_timeout", "soon"))
    d.apply(ev.ContextSet("colour", "blue"))
    assert d.state.context == {"datastore_address": "10.0.0.5"}
    assert len(d.state.rejected) == 2
    d.apply(ev.ContextDropped("datastore_address"))
    assert d.state.context == {}


def test_a_vm_seen_gone_loses_its_worker_at_once() -> None:
    d = Driver()
    d.apply(ev.TasksSubmitted("b", (TaskSpec("a", "true"),)))
    assert [type(e).__name__ for e in d.apply(ev.VMRequested("local-1"))] == ["SpawnVM"]
    assert d.apply(ev.VMRequested("local-1")) == []  # the name is the key: no second VM
    d.apply(ev.VMAllocated("local-1", 1))
    d.apply(ev.WorkerAnnounced("local-1", "h", 1, 1, "i", vm_id=1))
    d.schedule()
    d.apply(ev.VMStateObserved(1, 3, 3, "10.0.0.7"))  # ACTIVE/RUNNING: nothing changes
    assert d.statuses() == {"a": "dispatched"} and d.state.vms["local-1"].ip == "10.0.0.7"
    d.apply(ev.VMStateObserved(1, 6, 0))  # DONE
    assert d.state.workers["local-1"].status == "lost"
    assert d.state.workers["local-1"].reason == "its VM local-1 is gone"
    assert d.statuses() == {"a": "ready"}
    check_invariants(d.state)


def test_outstanding_effects_after_a_restart() -> None:
    from ecloud.projections.effects import KillVM, SpawnVM
    from ecloud.projections.outstanding import outstanding

    d = diamond(slots=2)
    d.schedule()  # a dispatched, never started
    d.apply(ev.VMRequested("vm-a"))
    d.apply(ev.VMRequested("vm-b"))
    d.apply(ev.VMAllocated("vm-b", 7))
    d.apply(ev.VMKillRequested(7, "idle"))
    d.apply(ev.TaskCancelled("a"))  # w1 still holds attempt 1 until it reports
    effects = outstanding(d.state)
    assert effects == [
        CancelAttempt(d.state.seq, "a", 1, "w1", "no longer wanted"),
        SpawnVM(d.state.seq, "vm-a", (("ECLOUD_SLOTS", "1"),)),
        KillVM(d.state.seq, 7, "idle"),
    ]


# ------------------------------------------------------------ queueing ahead


def many(n: int) -> tuple[TaskSpec, ...]:
    return tuple(TaskSpec(f"t{i}", "true") for i in range(n))


def test_a_quick_worker_queues_ahead_only_after_free_slots_everywhere_are_taken() -> None:
    d = Driver()
    d.apply(ev.TasksSubmitted("b1", many(12)))
    d.apply(ev.WorkerAnnounced("w1", "h1", 2, 1, "i1"))
    d.schedule()
    assert d.state.workers["w1"].running.keys() == {("t0", 1), ("t1", 1)}  # not quick yet
    d.apply(ev.TaskFinished("t0", 1, "w1", 0, 0.02), dt=1)  # quick: 2 per slot may queue
    assert (d.state.workers["w1"].quick, d.state.workers["w1"].ahead) == (True, 4)
    d.apply(ev.WorkerAnnounced("w2", "h2", 2, 1, "i2"))  # younger, both slots free
    decisions = [e.worker_id for e in _scheduled(d)]
    # w1 (oldest) fills its free slot, w2 its two, then w1 queues 4 ahead
    assert decisions == ["w1", "w2", "w2", "w1", "w1", "w1", "w1"]
    w1 = d.state.workers["w1"]
    assert (w1.used, w1.free, w1.room) == (6, -4, 0)
    assert d.state.counts["ready"] == 12 - 2 - 7  # t0 done, t1 running, 7 just dispatched
    check_invariants(d.state)


def _scheduled(d: Driver) -> list:
    before = len(d.log)
    d.schedule()
    return [r.event for r in d.log[before:]]


def after_a_quick_task(n: int) -> Driver:
    """``n`` tasks and one 1-slot worker w1 that has just run t0 in 0.5 s."""
    d = Driver()
    d.apply(ev.TasksSubmitted("b1", many(n)))
    d.apply(ev.WorkerAnnounced("w1", "h1", 1, 1, "i1"))
    d.schedule()
    d.apply(ev.TaskFinished("t0", 1, "w1", 0, 0.5), dt=1)
    return d


def test_a_long_task_ends_queueing_ahead_and_a_returned_dispatch_is_no_failure() -> None:
    d = after_a_quick_task(6)
    assert [e.task_id for e in _scheduled(d)] == ["t1", "t2", "t3"]  # 1 slot + 2 ahead
    d.apply(ev.TaskStarted("t1", 1, "w1"))
    # t1 runs long: the worker gives back t2 and t3, which waited too long
    out = d.apply(ev.TaskFinished("t2", 1, "w1", None, 0.0, reason="waited 2 s",
                                  returned=True, msg_id="m2"), dt=2)
    assert out == [Ack(len(d.log), "w1", "m2")]
    t2 = d.state.tasks["t2"]
    assert (t2.status, t2.failures, t2.attempt, t2.reason) == ("ready", 0, 1, "waited 2 s")
    assert not d.state.workers["w1"].quick and not d.state.recent_failures
    assert _scheduled(d) == []  # w1's slot is taken and it may no longer queue ahead
    d.apply(ev.TaskFinished("t3", 1, "w1", None, 0.0, returned=True), dt=0)
    d.apply(ev.TaskFinished("t1", 1, "w1", 0, 120.0), dt=1)  # ran 120 s by its own clock
    assert d.state.workers["w1"].ahead == 0
    assert [(e.task_id, e.attempt) for e in _scheduled(d)] == [("t2", 2)]  # one, no queue
    check_invariants(d.state)


def test_queue_ahead_zero_turns_it_off_and_a_change_applies_at_once() -> None:
    d = after_a_quick_task(8)
    d.apply(ev.ContextSet("queue_ahead", "0"))
    assert len(_scheduled(d)) == 1
    d.apply(ev.ContextSet("queue_ahead", "3"))
    assert d.state.workers["w1"].ahead == 3 and len(_scheduled(d)) == 3
    d.apply(ev.ContextDropped("queue_ahead"))  # back to the default, 2: one too many queued
    assert d.state.workers["w1"].room == -1 and _scheduled(d) == []
    check_invariants(d.state)


def test_a_retry_re_judges_tasks_blocked_behind_a_task_cancelled_since() -> None:
    """t2 was blocked by t0's cancel; t1 (between them) was cancelled after.
    Retrying t0 must leave t2 blocked - by t1 now, not by the ready t0."""
    d = Driver()
    d.apply(ev.TasksSubmitted("b1", (TaskSpec("t0", "true"), TaskSpec("t1", "true", ("t0",)),
                                     TaskSpec("t2", "true", ("t1",)))))
    d.apply(ev.TaskCancelled("t0"))
    d.apply(ev.TaskCancelled("t1"))
    d.apply(ev.RetryRequested("t0"))
    assert d.statuses() == {"t0": "ready", "t1": "cancelled", "t2": "blocked"}
    assert d.state.tasks["t2"].blocked_by == "t1"
    check_invariants(d.state)


def test_a_reducer_that_raises_records_a_rejection_and_the_fold_goes_on(monkeypatch) -> None:
    """The fold's last line of defence: were a reducer to raise on an event
    (a bug), the event is recorded as refused and every later event still
    folds - status, replay, cancel and the next boss keep working."""
    from ecloud.projections import fold as fold_module

    def broken(state, event, seq, out):
        out.append("half an effect")
        raise ZeroDivisionError("a reducer bug")

    monkeypatch.setitem(fold_module.HANDLERS, ev.ContextDropped, broken)
    state = State()
    _, out = step(state, Recorded(1, 10.0, ev.ContextDropped("x")))
    assert out == [] and state.seq == 1
    rejection = state.rejected[-1]
    assert (rejection.seq, rejection.source) == (1, fold_module.FOLD_SOURCE)
    assert rejection.reason == "could not apply context.dropped: ZeroDivisionError: a reducer bug"
    step(state, Recorded(2, 11.0, ev.TasksSubmitted("b", (TaskSpec("a", "true"),))))
    assert state.tasks["a"].status == READY


def test_a_late_absence_of_a_vm_already_allocated_changes_nothing() -> None:
    """A poll that read the pool before an instantiate acted can answer
    after the spawn did: its "absent" is about a name without an id, and a
    VM with one is no absence (CI saw the new VM failed and terminated)."""
    d = Driver()
    d.apply(ev.BossStarted("b", 3))
    d.apply(ev.VMRequested("vm-1"))
    d.apply(ev.VMAllocated("vm-1", 101))
    effects = d.apply(ev.VMFailed("vm-1", "not in the cloud's pool", "absent"))
    vm = d.state.vms["vm-1"]
    assert (vm.status, vm.vm_id, effects) == ("allocated", 101, [])
    assert "absent" in d.state.rejected[-1].reason
    check_invariants(d.state)


def test_a_requested_vm_seen_done_by_its_name_is_gone() -> None:
    """(the total-fold test) A VM whose allocation was never logged, seen
    DONE in the pool by its name, made the fold raise: requested -> gone
    was not in the VM table."""
    from ecloud.projections.state import VM_GONE
    from tests.support.folding import Driver

    d = Driver()
    d.apply(ev.VMRequested("v1"))
    d.apply(ev.VMStateObserved(0, 6, 0, None, "v1"))
    assert d.state.vms["v1"].status == VM_GONE
