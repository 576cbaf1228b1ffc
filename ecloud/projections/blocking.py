"""Blocking: a failed or cancelled task keeps its descendants from ever
running (they are *blocked*, naming the task at the root of it) until an
operator retries it; then each is judged again. Costs: blocking touches only
the descendants of the task that failed; a retry only its blocked region."""

from __future__ import annotations

from collections import deque

from ecloud.projections.state import (
    BLOCKED,
    BLOCKING,
    CANCELLED,
    SUCCEEDED,
    WAITING,
    State,
    TaskRecord,
)
from ecloud.projections.transitions import ANCESTOR_BLOCKS, ANCESTOR_RETRIED, move_task


def blocking_cause(state: State, task: TaskRecord) -> str | None:
    """The failed or cancelled task that keeps ``task`` from ever running
    (through its first blocking dependency), or None."""
    tasks = state.tasks
    for dep in task.spec.depends_on:
        parent = tasks[dep]
        if parent.status in BLOCKING:
            return root_cause(parent)
    return None


def root_cause(task: TaskRecord) -> str:
    return task.blocked_by if task.status == BLOCKED and task.blocked_by else task.spec.id


def block_descendants(state: State, root: str) -> None:
    """Mark every not-yet-blocked descendant of ``root`` blocked by it. Stops
    at tasks already blocked or cancelled: their descendants already are."""
    tasks = state.tasks
    children = state.children
    queue = deque(children.get(root, ()))
    while queue:
        child = tasks[queue.popleft()]
        if child.status in (BLOCKED, CANCELLED, SUCCEEDED):
            # blocked or cancelled: its descendants already are; succeeded
            # (given as done): it needs nothing, and nothing below it is held
            continue
        # A child of an unfinished task cannot have started: it is waiting.
        move_task(state, child, BLOCKED, ANCESTOR_BLOCKS)
        child.blocked_by = root
        queue.extend(children.get(child.spec.id, ()))


def recheck_descendants(state: State, root: str) -> None:
    """After ``root`` stopped blocking (retried), unblock each blocked
    descendant that no other failed, cancelled or blocked dependency holds,
    in topological order so each is judged after its parents."""
    tasks = state.tasks
    children = state.children
    # The blocked part of root's descendants: blocked tasks are never ready,
    # so everything below root that matters is blocked or final. The walk
    # goes on through failed and cancelled tasks too: a task blocked by root
    # may sit behind one that was cancelled after it was blocked, and must
    # now name that one as its cause.
    region: list[str] = []
    seen = {root}
    queue = deque([root])
    while queue:
        for child_id in children.get(queue.popleft(), ()):
            if child_id in seen:
                continue
            status = tasks[child_id].status
            if status == BLOCKED:
                seen.add(child_id)
                region.append(child_id)
                queue.append(child_id)
            elif status in BLOCKING:
                seen.add(child_id)
                queue.append(child_id)
    inside = set(region)
    pending = {tid: sum(1 for d in tasks[tid].spec.depends_on if d in inside) for tid in region}
    queue = deque(tid for tid in region if pending[tid] == 0)
    while queue:
        tid = queue.popleft()
        task = tasks[tid]
        cause = blocking_cause(state, task)
        if cause is None:
            task.blocked_by = None
            move_task(state, task, WAITING, ANCESTOR_RETRIED)
        else:
            task.blocked_by = cause
        for child_id in children.get(tid, ()):
            if child_id in inside:
                pending[child_id] -= 1
                if pending[child_id] == 0:
                    queue.append(child_id)


__all__ = ["block_descendants", "blocking_cause", "recheck_descendants", "root_cause"]
