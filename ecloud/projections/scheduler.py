"""The scheduler: which ready task goes to which free worker slot.

A pure function of the state. It does not change the state: it returns
``task.dispatched`` events, which the boss appends and the fold then applies.
Logging decisions (rather than recomputing them on replay) means a later
change to this policy can never rewrite what happened.

Policy: tasks in order of priority (high first), then submission order;
workers in the order they joined (oldest first), each filled before the next
(packing, so younger workers fall idle and can be scaled down). Free slots
come first, on every worker; only then do quick workers get dispatches to
queue ahead (``WorkerRecord.ahead``, see :mod:`.tasks`), so queueing never
leaves a slot idle elsewhere. A task that
needs more slots than any worker has free waits; smaller tasks behind it may
go first (no head-of-line blocking). Cost: O(d log n) for d decisions, plus
the large tasks skipped (a ready queue of only tasks too large for
any free worker is walked once per call).
"""

from __future__ import annotations

from ecloud.events.types import TaskDispatched
from ecloud.projections.state import State


def schedule(state: State, limit: int | None = None) -> list[TaskDispatched]:
    """Decisions for the current state, at most ``limit`` of them."""
    if not state.ready or not state.free:
        return []
    tasks = state.tasks
    workers = state.workers
    # Free capacity of the candidate workers, in scheduling order - free
    # slots first, then room to queue ahead; this round's own decisions are
    # subtracted locally.
    capacity: list[list] = []
    ahead: list[list] = []
    for _, worker_id in state.free:
        worker = workers[worker_id]
        free = worker.slots - worker.used
        if free > 0:
            capacity.append([worker_id, free])
        if worker.ahead:
            ahead.append([worker_id, worker.room - max(0, free)])
    capacity += ahead
    total = sum(c[1] for c in capacity)
    largest = max(c[1] for c in capacity)
    first = 0  # capacity[:first] is exhausted
    decisions: list[TaskDispatched] = []
    for key in state.ready:
        task = tasks[key[3]]
        need = task.spec.slots
        if need > largest:
            continue
        for i in range(first, len(capacity)):
            slot = capacity[i]
            if slot[1] >= need:
                slot[1] -= need
                total -= need
                decisions.append(TaskDispatched(task.spec.id, task.attempt + 1, slot[0]))
                break
        else:
            # ``largest`` is only an upper bound; make it exact so the next
            # tasks this large are skipped without a scan.
            largest = max(c[1] for c in capacity[first:])
            continue
        while first < len(capacity) and capacity[first][1] == 0:
            first += 1
        if total == 0 or (limit is not None and len(decisions) >= limit):
            break
    return decisions
