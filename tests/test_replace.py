"""``tasks.replaced``: an edited task runs again with its new spec, with
everything downstream of it; what is upstream or beside keeps its results.
Each example asserts the outcome and the state's invariants."""

from __future__ import annotations

import attrs

from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.projections.effects import CancelAttempt
from ecloud.projections.snapshot import canonical
from tests.support.folding import Driver, check_invariants


def chain(done: bool = True) -> Driver:
    """a -> b -> c, and x beside them; every task succeeded (``done``) on w1."""
    d = Driver()
    d.apply(ev.TasksSubmitted("b1", (TaskSpec("a", "echo a"), TaskSpec("b", "echo b", ("a",)),
                                     TaskSpec("c", "echo c", ("b",)), TaskSpec("x", "echo x")),
                              "/f.json"))
    d.apply(ev.WorkerAnnounced("w1", "h", 4, 1, "i1"))
    if done:
        for _ in range(3):
            for _decision in d.schedule():
                pass
            for tid in sorted(t for t, r in d.state.tasks.items() if r.status == "dispatched"):
                d.apply(ev.TaskFinished(tid, d.state.tasks[tid].attempt, "w1", 0, 0.1), dt=1)
    return d


def spec(d: Driver, tid: str, **changes) -> TaskSpec:
    return attrs.evolve(d.state.tasks[tid].spec, **changes)


def test_the_changed_task_and_its_descendants_run_again_and_nothing_else() -> None:
    d = chain()
    assert {t: r.status for t, r in d.state.tasks.items()} == dict.fromkeys("abcx", "succeeded")
    d.apply(ev.TasksReplaced("r1", (spec(d, "b", command="echo B"),), "/f.json"))
    tasks = d.state.tasks
    assert {t: r.status for t, r in tasks.items()} == {
        "a": "succeeded", "b": "ready", "c": "waiting", "x": "succeeded"}
    assert tasks["b"].spec.command == "echo B" and tasks["b"].attempt == 1
    assert tasks["b"].reason == "replaced: its spec changed (/f.json)"
    assert tasks["c"].reason == "replaced: a task upstream changed" and tasks["c"].unmet == 1
    assert [(e.task_id, e.attempt) for e in d.schedule()] == [("b", 2)]
    check_invariants(d.state)


def test_a_running_descendant_is_cancelled_and_waits_again() -> None:
    d = chain(done=False)
    d.schedule()
    d.apply(ev.TaskFinished("a", 1, "w1", 0, 0.1), dt=1)
    d.schedule()
    d.apply(ev.TaskFinished("b", 1, "w1", 0, 0.1), dt=1)
    d.schedule()
    d.apply(ev.TaskStarted("c", 1, "w1"), dt=1)
    out = d.apply(ev.TasksReplaced("r1", (spec(d, "b", command="echo B"),)))
    assert CancelAttempt(d.log[-1].seq, "c", 1, "w1", "replaced") in out
    assert d.state.tasks["c"].status == "waiting" and d.state.tasks["c"].worker is None
    assert ("c", 1) in d.state.workers["w1"].running  # until the worker says it ended
    check_invariants(d.state)


def test_new_dependencies_and_a_new_priority_take_effect() -> None:
    d = chain(done=False)
    d.apply(ev.TasksReplaced("r1", (spec(d, "x", depends_on=("c",), priority=5),)))
    x = d.state.tasks["x"]
    assert x.status == "waiting" and x.unmet == 1 and "x" in d.state.children["c"]
    d.apply(ev.TasksReplaced("r2", (spec(d, "x", depends_on=(), priority=7),)))
    assert d.state.tasks["x"].status == "ready" and "x" not in d.state.children["c"]
    assert [e.task_id for e in d.schedule()][:1] == ["x"]  # priority 7 first
    check_invariants(d.state)


def test_a_replacement_that_makes_a_cycle_or_names_an_unknown_task_changes_nothing() -> None:
    d = chain()
    before = canonical(d.state)
    d.apply(ev.TasksReplaced("r1", (spec(d, "a", depends_on=("c",)),)))
    assert d.state.rejected[-1].reason == "the new dependencies form a cycle: a -> c -> b -> a"
    d.apply(ev.TasksReplaced("r2", (TaskSpec("nope", "true"),)))
    assert "is not in the log" in d.state.rejected[-1].reason
    after = canonical(d.state)
    for key in ("seq", "rejected"):
        before.pop(key), after.pop(key)
    assert after == before


def test_a_cancelled_descendant_stays_cancelled() -> None:
    d = chain(done=False)
    d.apply(ev.TaskCancelled("c", "not wanted"))
    d.apply(ev.TasksReplaced("r1", (spec(d, "b", command="echo B"),)))
    assert d.state.tasks["c"].status == "cancelled"
    check_invariants(d.state)
