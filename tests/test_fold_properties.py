"""Hypothesis properties of the fold over generated histories."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecloud.events import types as ev
from ecloud.projections.effects import Dispatch
from ecloud.projections.fold import fold, fold_with_effects, step
from ecloud.projections.scheduler import schedule
from ecloud.projections.snapshot import canonical, clone_state, dump, load
from ecloud.projections.state import (
    BLOCKED,
    BLOCKING,
    CANCELLED,
    FAILED,
    FINAL,
    READY,
    SUCCEEDED,
    State,
)
from tests.support.folding import Driver, check_invariants, driven_logs

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(driven_logs())
def test_determinism_same_events_same_state_and_effects(d: Driver) -> None:
    first, effects1 = fold_with_effects(d.log)
    second, effects2 = fold_with_effects(d.log)
    assert canonical(first) == canonical(second)
    assert effects1 == effects2
    assert effects1 == [e for _, e in d.effects]


@SETTINGS
@given(driven_logs(), st.data())
def test_replay_equals_incremental_fold(d: Driver, data) -> None:
    # The driver folded event by event while deciding; replaying the finished
    # log in one go, or in chunks through copies, must land on the same state.
    replayed = fold(d.log)
    assert canonical(replayed) == canonical(d.state)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(d.log)), max_size=4)))
    state, start = State(), 0
    for cut in [*cuts, len(d.log)]:
        state = clone_state(fold(d.log[start:cut], state))
        start = max(start, cut)
    assert canonical(state) == canonical(d.state)


@SETTINGS
@given(driven_logs(), st.data())
def test_snapshot_plus_suffix_equals_full_replay(d: Driver, data) -> None:
    k = data.draw(st.integers(0, len(d.log)))
    prefix = fold(d.log[:k])
    restored = load(dump(prefix))
    assert canonical(restored) == canonical(prefix)
    state, suffix_effects = fold_with_effects(d.log[k:], restored)
    full, full_effects = fold_with_effects(d.log)
    assert canonical(state) == canonical(full)
    expected = [e for seq, e in d.effects if seq > k]
    assert suffix_effects == expected
    check_invariants(state)


@SETTINGS
@given(driven_logs())
def test_invariants_hold_after_every_event(d: Driver) -> None:
    state = State()
    for rec in d.log:
        step(state, rec)
        check_invariants(state)


@SETTINGS
@given(driven_logs())
def test_no_task_dispatched_before_its_dependencies_succeeded(d: Driver) -> None:
    state = State()
    for rec in d.log:
        _, effects = step(state, rec)
        for effect in effects:
            if isinstance(effect, Dispatch):
                for dep in effect.spec.depends_on:
                    assert state.tasks[dep].status == SUCCEEDED, (effect.task_id, dep)


@SETTINGS
@given(driven_logs())
def test_with_enough_free_slots_every_ready_task_is_dispatched(d: Driver) -> None:
    # Give the cluster a worker big enough for everything, then schedule once.
    ready = [t for t in d.state.tasks.values() if t.status == READY and t.not_before is None]
    need = sum(t.spec.slots for t in ready) + 2
    d.apply(ev.WorkerAnnounced("big", "host", need, 1, "x"))
    check_invariants(d.state)
    decisions = schedule(d.state)
    for decision in decisions:
        d.apply(decision)
        check_invariants(d.state)
    # every ready task was dispatched, but those its workflow's limits hold back
    held = {tid for tid in (t.spec.id for t in ready) if tid not in {x.task_id for x in decisions}}
    for tid in held:
        task = d.state.tasks[tid]
        workflow = d.state.workflow_of(task)
        assert workflow is not None and not workflow.room_for(task.spec), tid
    assert {k[3] for k in d.state.ready} == held


@SETTINGS
@given(driven_logs())
def test_the_scheduler_keeps_every_workflow_within_its_limits(d: Driver) -> None:
    """Whatever it decides on top of what runs: a workflow that was within its
    limits stays within them (a push may lower a limit below what runs)."""
    def over(state):
        out = set()
        for source, w in state.workflows.items():
            if w.limits is None:
                continue
            if w.limits.max_running is not None and w.active > w.limits.max_running:
                out.add(source)
            for category, most in w.limits.categories.items():
                if w.active_in.get(category, 0) > most:
                    out.add(source)
        return out

    before = over(d.state)
    d.apply(ev.WorkerAnnounced("big", "host", 64, 1, "x"))
    for decision in schedule(d.state):
        d.apply(decision)
    assert over(d.state) <= before


@SETTINGS
@given(driven_logs())
def test_scheduler_never_overcommits_a_worker(d: Driver) -> None:
    decisions = schedule(d.state)
    taken: dict[str, int] = {}
    for x in decisions:
        taken[x.worker_id] = taken.get(x.worker_id, 0) + d.state.tasks[x.task_id].spec.slots
    for wid, slots in taken.items():
        assert slots <= d.state.workers[wid].free
    for x in decisions:  # every decision is accepted by the fold as it stands
        before = len(d.state.rejected)
        d.apply(x)
        assert len(d.state.rejected) == before


def _descendants(state: State, root: str) -> set[str]:
    """What ``root`` holds up: its descendants, not through a task that
    succeeded all the same (given as done: it needs nothing)."""
    out, stack = set(), [root]
    while stack:
        for child in state.children.get(stack.pop(), ()):
            if child not in out and state.tasks[child].status != SUCCEEDED:
                out.add(child)
                stack.append(child)
    return out


@SETTINGS
@given(driven_logs())
def test_failed_for_good_blocks_exactly_its_descendants(d: Driver) -> None:
    state = d.state
    roots = [tid for tid, t in state.tasks.items() if t.status in (FAILED, CANCELLED)]
    doomed: set[str] = set()
    for root in roots:
        doomed |= _descendants(state, root)
    blocked = {tid for tid, t in state.tasks.items() if t.status == BLOCKED}
    # Every blocked task descends from a failed or cancelled one, and every
    # unfinished descendant of one is blocked.
    assert blocked <= doomed
    for tid in doomed:
        if state.tasks[tid].status not in FINAL:
            assert tid in blocked, tid
    for tid in blocked:
        assert state.tasks[state.tasks[tid].blocked_by].status in BLOCKING - {BLOCKED}
