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
any free worker is walked once per call). A worker that is overdue (silent
past its heartbeat deadline, see :mod:`.liveness`) gets nothing. A task whose
workflow runs as many tasks as its limits allow (:mod:`.workflows`) waits;
the ready tasks of a full workflow are walked once per call.
"""

from __future__ import annotations

from ecloud.events.types import TaskDispatched
from ecloud.projections.state import (
    BUSY,
    DISPATCHED,
    IDLE,
    READY,
    RUNNING,
    VM_FAILED,
    VM_KILLING,
    State,
)


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
    overdue = state.overdue  # silent past its deadline: its loss is being decided
    for _, worker_id in state.free:
        if worker_id in overdue:
            continue
        worker = workers[worker_id]
        free = worker.slots - worker.used
        if free > 0:
            capacity.append([worker_id, free])
        if worker.ahead:
            ahead.append([worker_id, worker.room - max(0, free)])
    capacity += ahead
    if not capacity:
        return []
    total = sum(c[1] for c in capacity)
    largest = max(c[1] for c in capacity)
    first = 0  # capacity[:first] is exhausted
    decisions: list[TaskDispatched] = []
    limited = any(w.limits is not None for w in state.workflows.values())
    round_counts: dict = {}  # this round's dispatches per workflow: in all (None), per category
    for key in state.ready:
        task = tasks[key[3]]
        need = task.spec.slots
        if need > largest:
            continue
        workflow = state.workflow_of(task) if limited else None
        if workflow is not None and not workflow.room_for(task.spec,
                                                          round_counts.get(workflow.source)):
            continue
        for i in range(first, len(capacity)):
            slot = capacity[i]
            if slot[1] >= need:
                slot[1] -= need
                total -= need
                decisions.append(TaskDispatched(task.spec.id, task.attempt + 1, slot[0]))
                if workflow is not None:
                    _count(workflow, task.spec, round_counts)
                break
        else:
            # ``largest`` is only an upper bound; make it exact so the next
            # tasks this large are skipped without a scan.
            largest = max((c[1] for c in capacity[first:]), default=0)
            continue
        while first < len(capacity) and capacity[first][1] == 0:
            first += 1
        if total == 0 or (limit is not None and len(decisions) >= limit):
            break
    return decisions


def _count(workflow, spec, round_counts: dict) -> None:
    """One more dispatch of ``workflow`` decided this round (see WorkflowRecord.room_for)."""
    more = round_counts.setdefault(workflow.source, {})
    more[None] = more.get(None, 0) + 1
    category = spec.node.category if spec.node is not None else None
    if category is not None:
        more[category] = more.get(category, 0) + 1


# ------------------------------------------------------------- unschedulable


def unschedulable(state: State) -> dict[str, str]:
    """Ready tasks (retry backoff included) that no present or possible
    worker can run, each with why: it needs more slots than any live worker
    has, no VM is booting (one might bring bigger workers), and the
    autoscaler either is off or starts VMs too small for it. Not a task
    status - a worker announcing itself with enough slots, or a policy
    change, makes the task schedulable again - but a reason ``ecloud
    status``, ``ecloud why`` and the page show, and on which ``ecloud run``
    gives up once nothing else can move (:func:`stuck`)."""
    from ecloud.projections import context

    ready = [key[3] for key in state.ready]
    ready += [entry[3] for entry in state.delayed]
    if not ready:
        return {}
    if _booting(state):
        return {}
    largest = 0
    serving = 0
    for worker in state.workers.values():
        if worker.status in (IDLE, BUSY):
            serving += 1
            largest = max(largest, worker.slots)
    max_workers = int(context.get(state, "max_workers"))  # type: ignore[arg-type]
    per_vm = int(context.get(state, "slots_per_worker"))  # type: ignore[arg-type]
    possible = per_vm if max_workers > 0 else 0
    found: dict[str, str] = {}
    for task_id in ready:
        task = state.tasks[task_id]
        need = task.spec.slots
        if task.status != READY or task_id in found or need <= largest or need <= possible:
            continue
        have = (f"the largest of the {serving} live worker(s) has {largest}" if serving
                else "no worker is live")
        scale = ("autoscaling is off" if max_workers == 0 else
                 f"the autoscaler starts workers of {per_vm} slot(s) (slots_per_worker)")
        found[task_id] = f"needs {need} slot(s); {have}; no VM is booting; {scale}"
    return found


def _booting(state: State) -> bool:
    """Whether a worker may still come: a VM on its way (requested,
    allocated or running, no worker announced yet) may bring bigger
    workers, and a VM that still exists while its worker is lost (paused,
    cut off from the broker) may see it come back."""
    vms = state.vms
    for name in state.open_vms:
        vm = vms[name]
        if vm.status in (VM_FAILED, VM_KILLING):
            continue
        if vm.announced_at is None or not state.workers_on(vm.vm_id):
            return True
    return False


def stuck(state: State) -> dict[str, str]:
    """The unschedulable tasks when nothing else can move (nothing runs or
    is dispatched, every ready task is unschedulable), else ``{}``."""
    counts = state.counts
    if counts[DISPATCHED] or counts[RUNNING] or not counts[READY]:
        return {}
    found = unschedulable(state)
    return found if len(found) == counts[READY] else {}
