"""Edited task files: ``tasks.replaced`` gives tasks already in the log new
specs, and runs them again.

An operator edits a task file and pushes it again (``ecloud push --replace``,
``ecloud run --replace``). Tasks whose spec changed get the new one and run
again as new attempts of the same tasks - with a fresh retry budget - and
so does every task downstream of them, whose inputs may change with them.
An attempt of any of these that runs is cancelled. Tasks upstream, or
beside, keep their results. Nothing is forgotten: the log holds both specs,
and ``ecloud-replay --until`` before the replacement shows the old one.

A cancelled descendant stays cancelled (an operator's decision; ``ecloud
retry`` brings it back), and what it blocks stays blocked.
"""

from __future__ import annotations

from collections import deque

from ecloud.events.types import TaskSpec, TasksReplaced
from ecloud.projections.effects import CancelAttempt
from ecloud.projections.state import (
    ACTIVE,
    ATTEMPT_CANCELLED,
    ATTEMPT_LOST,
    BLOCKED,
    BLOCKING,
    CANCELLED,
    READY,
    SUCCEEDED,
    WAITING,
    State,
    TaskRecord,
)
from ecloud.projections.tasks import spec_problem
from ecloud.projections.transitions import REPLACED, may_move_task, move_attempt
from ecloud.projections.workflows import recount


def replace_problem(state: State, specs: tuple[TaskSpec, ...],
                    also: dict[str, TaskSpec] | None = None) -> str | None:
    """Why these new specs cannot replace their tasks, or None: every task
    must exist, once; every dependency too; and no cycle may form. ``also``:
    tasks about to be added with them (``ecloud push`` checks a file's new
    tasks and its changed ones together)."""
    tasks = state.tasks
    also = also or {}
    new = {}
    for spec in specs:
        problem = spec_problem(spec)
        if problem is not None:
            return f"task {spec.id!r}: {problem}"
        if spec.id not in tasks:
            return f"task {spec.id!r} is not in the log: push it, do not replace it"
        if spec.id in new:
            return f"task {spec.id!r} appears twice in the batch"
        new[spec.id] = spec
        for dep in spec.depends_on:
            if dep not in tasks and dep not in also:
                return f"task {spec.id!r} depends on unknown task {dep!r}"
        if _final(tasks[spec.id].spec) != _final(spec):
            return f"task {spec.id!r}: a replaced spec cannot make a task final, or not final"
    for spec in specs:  # a final task runs after the rest of its workflow: no edge to or from it
        for dep in spec.depends_on:
            if _final(spec) or _final(new.get(dep) or also.get(dep) or tasks[dep].spec):
                return f"task {spec.id!r}: a final task neither has nor is a dependency"
    for spec in specs:
        path = _path_back(state, {**also, **new}, spec.id)
        if path is not None:
            return f"the new dependencies form a cycle: {' -> '.join(path)}"
    return None


def _final(spec: TaskSpec) -> bool:
    return spec.node is not None and spec.node.final


def _path_back(state: State, new: dict[str, TaskSpec], start: str) -> list[str] | None:
    """A dependency path from ``start`` back to itself under the new specs
    (each task depends on what its new spec, else its old one, says), as
    ``[start, ..., start]``; None when there is none."""
    dependant: dict[str, str | None] = {start: None}  # task -> who reached it
    queue = deque([start])
    while queue:
        tid = queue.popleft()
        spec = new.get(tid) or state.tasks[tid].spec
        for dep in spec.depends_on:
            if dep == start:
                chain = [tid]
                while chain[-1] != start:
                    chain.append(dependant[chain[-1]])  # type: ignore[arg-type]
                return chain[::-1] + [start]
            if dep not in dependant:
                dependant[dep] = tid
                queue.append(dep)
    return None


def on_replaced(state: State, event: TasksReplaced, seq: int, out: list) -> None:
    problem = replace_problem(state, event.tasks)
    if problem is not None:
        state.reject(seq, f"batch {event.batch_id}", problem)
        return
    replaced = _ids(event)
    # out of the ready queue before the spec (and with it the key) changes
    unqueued = set()
    for tid in replaced:
        task = state.tasks[tid]
        if task.status == READY and task.not_before is None:
            state.ready.remove(task.ready_key)
            unqueued.add(tid)
    for spec in event.tasks:
        _rewire(state, state.tasks[spec.id], spec)
    why = f"replaced: its spec changed ({event.source or 'a pushed file'})"
    for task in _downstream(state, [spec.id for spec in event.tasks]):
        if task.status == CANCELLED:
            task.unmet = _unmet(state, task)
            continue
        tid = task.spec.id
        _rerun(state, task, why if tid in replaced else "replaced: a task upstream changed",
               seq, out, queued=tid not in unqueued)
    if state.workflows:  # statuses moved here without the indexes' hook, roles may have changed
        for source in sorted(state.workflows):
            recount(state, source)


def _ids(event: TasksReplaced) -> set[str]:
    return {spec.id for spec in event.tasks}


def _rewire(state: State, task: TaskRecord, spec: TaskSpec) -> None:
    """Give ``task`` its new spec, and move it in the children lists of its
    old and new dependencies."""
    children = state.children
    for dep in task.spec.depends_on:
        kids = children.get(dep)
        if kids is not None and task.spec.id in kids:
            kids.remove(task.spec.id)
    for dep in spec.depends_on:
        children.setdefault(dep, []).append(spec.id)
    task.spec = spec


def _downstream(state: State, roots: list[str]) -> list[TaskRecord]:
    """``roots`` and every task downstream of them, each after all of its
    dependencies among them (the order to settle them in)."""
    tasks, children = state.tasks, state.children
    region: dict[str, None] = {}
    queue = deque(roots)
    while queue:
        tid = queue.popleft()
        if tid in region:
            continue
        region[tid] = None
        queue.extend(children.get(tid, ()))
    pending = {tid: sum(1 for d in tasks[tid].spec.depends_on if d in region) for tid in region}
    ready = deque(tid for tid in region if pending[tid] == 0)
    order = []
    while ready:
        tid = ready.popleft()
        order.append(tasks[tid])
        for child in children.get(tid, ()):
            if child in pending:
                pending[child] -= 1
                if pending[child] == 0:
                    ready.append(child)
    return order


def _unmet(state: State, task: TaskRecord) -> int:
    return sum(1 for dep in task.spec.depends_on if state.tasks[dep].status != SUCCEEDED)


def _rerun(state: State, task: TaskRecord, reason: str, seq: int, out: list,
           queued: bool = True) -> None:
    """Run ``task`` again from the start: its running attempt (if any) is
    cancelled, its retry budget renewed; it waits for, or is blocked by, its
    (new) dependencies as they now are. ``queued``: a READY task is in the
    ready queue (not taken out already)."""
    if task.status in ACTIVE or task.attempt_status == ATTEMPT_LOST:
        move_attempt(state, task, ATTEMPT_CANCELLED, REPLACED)
    if task.status in ACTIVE:
        out.append(CancelAttempt(seq, task.spec.id, task.attempt, task.worker or "", "replaced"))
    in_queue = queued and task.status == READY and task.not_before is None
    task.worker = None
    task.deadline = None
    task.failures = 0
    task.exit_code = None
    task.finished_at = None
    task.not_before = None  # an entry in the backoff heap is stale now: skipped
    task.reason = reason
    task.unmet = _unmet(state, task)
    cause = None
    for dep in task.spec.depends_on:
        parent = state.tasks[dep]
        if parent.status in BLOCKING:
            cause = parent.blocked_by if parent.status == BLOCKED and parent.blocked_by else dep
            break
    task.blocked_by = cause
    status = BLOCKED if cause else READY if task.unmet == 0 else WAITING
    if status == READY and task.spec.node is not None and task.spec.node.final:
        status = WAITING  # it waits for the rest of its workflow (workflows.settle)
    may_move_task(state, task, status, REPLACED)  # the table's check; the indexes are kept here
    if in_queue:
        state.ready.remove(task.ready_key)
    state.counts[task.status] -= 1
    state.counts[status] += 1
    if task.status != status:
        task.changed_at = state.clock
    task.status = status
    if status == READY:
        state.ready.add(task.ready_key)
