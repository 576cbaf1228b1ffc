"""The folded state: tasks, workers, VMs, context, and the indexes that keep
every event O(1) or O(log n).

Ownership: a :class:`State` belongs to the fold that builds it. ``step``
updates it in place and hands it back, which is what lets a 2-core machine fold
hundreds of thousands of events a second; nothing else may mutate it. Records
inside are plain slotted classes; their fields change only in the reducer
modules (:mod:`.tasks`, :mod:`.workers`, :mod:`.vms`, :mod:`.context`,
:mod:`.timers`). Use :func:`.snapshot.clone_state` when a copy is needed.

Indexes (``ready``, ``delayed``, ``free``, ``timers``, ``children``, ``counts``,
``vm_ids``, ``vm_workers``, ``open_vms``) are derived from the records and
rebuilt on snapshot load; :func:`.snapshot.canonical`
leaves out their internal layout so two states that mean the same compare equal.
"""

from __future__ import annotations

import heapq
from typing import Any

from attrs import define, field
from sortedcontainers import SortedList

from ecloud.events.types import TaskSpec, WorkflowLimits

# Task statuses. A task in retry backoff is READY with ``not_before`` set; it
# sits in ``delayed`` until the clock passes it, then moves to ``ready``.
WAITING = "waiting"
READY = "ready"
DISPATCHED = "dispatched"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
BLOCKED = "blocked"
CANCELLED = "cancelled"
TASK_STATUSES = (WAITING, READY, DISPATCHED, RUNNING, SUCCEEDED, FAILED, BLOCKED, CANCELLED)
ACTIVE = frozenset({DISPATCHED, RUNNING})
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: statuses that stop descendants from ever running (until an operator retries)
BLOCKING = frozenset({FAILED, CANCELLED, BLOCKED})

# Attempt statuses (``TaskRecord.attempt_status``: the task's latest
# attempt; "" before its first dispatch). While the task is dispatched or
# running, its attempt is too; the others say how the latest attempt ended.
ATTEMPT_NONE = ""
ATTEMPT_DISPATCHED = DISPATCHED
ATTEMPT_RUNNING = RUNNING
ATTEMPT_SUCCEEDED = SUCCEEDED
ATTEMPT_FAILED = FAILED
ATTEMPT_RETURNED = "given back"
ATTEMPT_LOST = "worker lost"
ATTEMPT_CANCELLED = CANCELLED
ATTEMPT_STATUSES = (ATTEMPT_DISPATCHED, ATTEMPT_RUNNING, ATTEMPT_SUCCEEDED, ATTEMPT_FAILED,
                    ATTEMPT_RETURNED, ATTEMPT_LOST, ATTEMPT_CANCELLED)

# Worker statuses.
IDLE = "idle"
BUSY = "busy"
DRAINING = "draining"
LOST = "lost"
GONE = "gone"
WORKER_STATUSES = (IDLE, BUSY, DRAINING, LOST, GONE)
LIVE = frozenset({IDLE, BUSY, DRAINING})

# VM statuses (``VMRecord.status``). ``killing`` and ``failed`` stick until the
# cloud reports the VM gone; ``gone`` is left only if the VM is seen running again.
VM_REQUESTED = "requested"
VM_ALLOCATED = "allocated"
VM_OBSERVED = "observed"
VM_FAILED = "failed"
VM_KILLING = "killing"
VM_GONE = "gone"

#: The fold's rules a boss of this code follows (``BossStarted.rules``). 1: a
#: worker silent past its deadline is lost by the fold itself, from the
#: clock; a second incarnation announcing under a live worker's id replaces
#: it. 2: a silent worker is only *overdue* (``State.overdue``) until the
#: boss logs its loss as a decision (``worker.lost`` with ``silent_since``),
#: and a second incarnation under a live id is refused. 3: only DONE is a
#: VM gone; one seen HOLD, STOPPED, SUSPENDED, POWEROFF, UNDEPLOYED or
#: CLONING_FAILURE holds quota and runs nothing - it has *failed* (its
#: workers are lost at once, the reconciler terminates it) - and a worker
#: is tied to its VM by the name the boss gave both (its worker id), not
#: only by the VM id it announces. 4: a worker announcing itself takes back
#: only an attempt that went back because its worker was lost - not one
#: that failed (a timeout, an exit) or was given back unstarted. A log keeps the rules it was written
#: under: its events fold as they did when they were appended.
CURRENT_RULES = 4

# Timer kinds in ``State.timers``.
T_HEARTBEAT = "heartbeat"
T_TIMEOUT = "timeout"


@define(slots=True)
class TaskRecord:
    spec: TaskSpec
    #: submission order: (seq of the TasksSubmitted event, index in its batch)
    batch_seq: int
    index: int
    status: str
    #: number of dependencies that have not succeeded yet
    unmet: int
    submitted_at: float
    attempt: int = 0
    worker: str | None = None
    failures: int = 0
    not_before: float | None = None
    deadline: float | None = None
    blocked_by: str | None = None
    exit_code: int | None = None
    reason: str = ""
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: how its latest attempt (``attempt``) stands (ATTEMPT_*; the attempt table)
    attempt_status: str = ATTEMPT_NONE
    #: the worker its latest attempt was given to (kept once it ended: ``worker``
    #: is only the one holding it now)
    ran_on: str | None = None
    #: seconds its latest attempt ran, as its worker reported (a quick one
    #: reports no start: its start and finish times do not say it)
    ran_for: float | None = None
    #: when its status last changed (a cancel, a block: no other time says it)
    changed_at: float | None = None

    @property
    def ready_key(self) -> tuple[int, int, int, str]:
        """Scheduling order: priority (high first), then submission order."""
        return (-self.spec.priority, self.batch_seq, self.index, self.spec.id)


@define(slots=True)
class WorkerRecord:
    worker_id: str
    host: str
    slots: int
    protocol: int
    incarnation: str
    #: scheduling order among workers: the seq that announced this incarnation
    rank: int
    status: str
    last_seen: float
    announced_at: float
    vm_id: int | None = None
    used: int = 0
    #: (task id, attempt) -> slots held, for every attempt this worker holds
    running: dict[tuple[str, int], int] = field(factory=dict)
    reason: str = ""
    #: since when the worker holds no attempt (None while it holds one)
    idle_since: float | None = None
    #: its last attempt ended within QUICK_TASK seconds (its report's duration)
    quick: bool = False
    #: (rules 2) when the broker published its will, if it has not been heard
    #: from since: it is lost unless heard from within the will's grace
    will_at: float | None = None
    #: the attempts it held last (ended, or given back when it was let go),
    #: newest last, at most :data:`MAX_RELEASED`: a report about one of them
    #: is an honest late one; about any other attempt, a lie
    released: list[tuple[str, int]] = field(factory=list)
    #: dispatches it may hold queued beyond its slots: ``queue_ahead`` x slots
    #: while it is quick, else 0 (see :func:`ecloud.projections.tasks.set_quick`)
    ahead: int = 0

    @property
    def free(self) -> int:
        """Slots not running anything (negative while dispatches queue ahead)."""
        return self.slots - self.used

    @property
    def room(self) -> int:
        """Dispatches it may still take: free slots plus what may queue ahead."""
        return self.slots + self.ahead - self.used


@define(slots=True)
class VMRecord:
    vm_name: str
    requested_at: float
    status: str = VM_REQUESTED
    vm_id: int | None = None
    state: int | None = None
    lcm_state: int | None = None
    ip: str | None = None
    reason: str = ""
    #: when a worker first announced itself with this VM's id
    announced_at: float | None = None
    #: when the VM was reported failed (``vm.failed`` or a *_FAILURE LCM state)
    failed_at: float | None = None
    #: when its kill was last asked for, and how many times it was
    #: (:mod:`.reconcile` asks again while the cloud still has it)
    kill_asked_at: float | None = None
    kills: int = 0
    #: found in the cloud, never asked for by this log (``vm.discovered``)
    discovered: bool = False
    #: (rules 3) its spawn failed in a way that may have made it all the same
    #: (no answer): it counts as held until the cloud's pool is seen without it
    uncertain: bool = False
    #: when the boss's poll last saw its state change (``vm.state_observed``)
    observed_at: float | None = None
    #: the last callback of OpenNebula's state hook about it (``vm.callback``):
    #: the hook's time, STATE and LCM_STATE - what it said, not what is so
    callback_at: float | None = None
    callback_state: int | None = None
    callback_lcm: int | None = None


@define(slots=True)
class Rejection:
    """Outside input the fold refused (kept for the operator, bounded)."""

    seq: int
    source: str
    reason: str


@define(slots=True)
class AbortRecord:
    """Why a workflow was aborted: ``task_id``'s attempt ended with ``exit``,
    its ``abort_on`` status; the workflow's result is ``returns``."""

    task_id: str
    exit: int
    returns: int
    at: float


#: statuses a task of a workflow ends in (a final task waits for all of them)
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED, BLOCKED})


@define(slots=True)
class WorkflowRecord:
    """A task file (workflow) that asks for more than plain tasks: limits on
    what runs at once, a final task, an abort rule. Keyed by the file's
    ``source`` in ``State.workflows``; a workflow of plain tasks has none.

    ``limits``, ``final`` and ``aborted`` are records; the counters below them
    are indexes, kept by :meth:`State.reindex_status` and rebuilt on load."""

    source: str
    limits: WorkflowLimits | None = None
    #: the id of its final task, if any
    final: str | None = None
    aborted: AbortRecord | None = None
    # ---- indexes
    #: its tasks but the final one that have not ended (see ENDED)
    open: int = 0
    #: its tasks dispatched or running, in all and per category
    active: int = 0
    active_in: dict[str, int] = field(factory=dict)
    #: its tasks failed for good (DAGMan's ``$FAILED_COUNT``)
    failed: int = 0

    def room_for(self, spec: TaskSpec, more: dict[str | None, int] | None = None) -> bool:
        """Whether one more of its tasks like ``spec`` may run now; ``more``:
        dispatches decided but not folded yet (the scheduler's round), in all
        (key None) and per category."""
        limits = self.limits
        if limits is None:
            return True
        more = more or {}
        most = limits.max_running
        if most is not None and self.active + more.get(None, 0) >= most:
            return False
        category = spec.node.category if spec.node is not None else None
        if category is not None and category in limits.categories:
            running = self.active_in.get(category, 0) + more.get(category, 0)
            return running < limits.categories[category]
        return True

    def count(self, task: TaskRecord, old: str | None, new: str) -> None:
        """Keep the counters in step with ``task`` moving from ``old`` (None:
        it is new) to ``new``."""
        spec = task.spec
        if spec.id != self.final:
            self.open += (new not in ENDED) - (old is not None and old not in ENDED)
        self.failed += (new == FAILED) - (old == FAILED)
        change = (new in ACTIVE) - (old in ACTIVE)
        if change:
            self.active += change
            category = spec.node.category if spec.node is not None else None
            if category is not None:
                self.active_in[category] = self.active_in.get(category, 0) + change


MAX_REJECTIONS = 100
#: attempts remembered per worker after they left it (WorkerRecord.released)
MAX_RELEASED = 1024
#: workers heard from without an announcement, remembered (State.strangers)
MAX_STRANGERS = 100


@define(slots=True)
class Failure:
    """A failed attempt, kept for ``ecloud status`` (bounded); the full
    report, stderr included, is the event at ``seq``."""

    seq: int
    task_id: str
    attempt: int
    worker: str | None
    reason: str
    final: bool


MAX_FAILURES = 20


@define(slots=True, eq=False)
class State:
    """Everything the log says, folded. See the module docstring on ownership."""

    seq: int = 0
    clock: float = 0.0
    tasks: dict[str, TaskRecord] = field(factory=dict)
    workers: dict[str, WorkerRecord] = field(factory=dict)
    vms: dict[str, VMRecord] = field(factory=dict)
    context: dict[str, str] = field(factory=dict)
    rejected: list[Rejection] = field(factory=list)
    #: the seq of each ``tasks.submitted`` -> the file it came from (its
    #: ``source``): which tasks of the log a file pushed again no longer has
    batch_sources: dict[int, str] = field(factory=dict)
    #: workers heard from that never announced themselves -> the clock of
    #: the last rejection naming them (oldest first, at most MAX_STRANGERS)
    strangers: dict[str, float] = field(factory=dict)
    recent_failures: list[Failure] = field(factory=list)
    #: VM requests the cloud refused in a row (kinds that call for a backoff),
    #: and when the last one was refused; an allocation resets the count
    spawn_failures: int = 0
    spawn_failed_at: float | None = None
    #: (rules 3) the cloud's last refusal of a VM (quota, no lease, no host...)
    #: and how many VMs of ours it held then: the ceiling it showed
    spawn_refusal: str = ""
    ceiling: int | None = None
    #: the clock at the last ``boss.started`` or ``boss.resumed``: no
    #: deadline of the autoscaler counts the time no boss was listening
    boss_started_at: float | None = None
    #: the fold's rules in force (see :data:`CURRENT_RULES`)
    rules: int = 1
    #: workflows with limits, a final task or an abort rule, by source
    workflows: dict[str, WorkflowRecord] = field(factory=dict)
    # ---- indexes, derived from the records above
    children: dict[str, list[str]] = field(factory=dict)
    counts: dict[str, int] = field(factory=lambda: dict.fromkeys(TASK_STATUSES, 0))
    ready: SortedList = field(factory=SortedList)
    delayed: list[tuple[float, int, int, str]] = field(factory=list)
    free: SortedList = field(factory=SortedList)
    timers: list[tuple[float, str, str, Any]] = field(factory=list)
    #: VM id -> VM name (ids are unique: an allocation of a taken id is refused)
    vm_ids: dict[int, str] = field(factory=dict)
    #: VM id -> ids of the workers that announced with it (filter on
    #: ``worker.vm_id``: a worker that re-announced elsewhere may linger)
    vm_workers: dict[int, list[str]] = field(factory=dict)
    #: names of the VMs the autoscaler must still consider: not gone, not
    #: being killed, and not a failed request that never got an id
    open_vms: dict[str, None] = field(factory=dict)
    #: (rules 2) live workers silent past their heartbeat deadline, waiting
    #: for the boss's decision: exactly the live workers whose ``last_seen +
    #: heartbeat_timeout`` is not after the clock
    overdue: dict[str, None] = field(factory=dict)
    #: tasks whose move calls for more once the event is applied (a noop
    #: become ready succeeds, a final task whose workflow ended is ready):
    #: :func:`ecloud.projections.workflows.settle` empties it
    due: list[str] = field(factory=list)

    # ------------------------------------------------------------ index upkeep

    def reindex_status(self, task: TaskRecord, status: str) -> None:
        """Change a task's status, keeping ``counts`` and ``ready`` in step.
        Only :func:`ecloud.projections.transitions.move_task` calls it: every
        move is checked against the task table there."""
        old = task.status
        if old == status:
            return
        counts = self.counts
        counts[old] -= 1
        counts[status] += 1
        if old == READY and task.not_before is None:
            self.ready.remove(task.ready_key)
        task.status = status
        task.changed_at = self.clock
        if self.workflows:
            self._count_in_workflow(task, old, status)
        if status == READY:
            if task.not_before is None:
                self.ready.add(task.ready_key)
            else:
                heapq.heappush(
                    self.delayed, (task.not_before, task.batch_seq, task.index, task.spec.id)
                )

    def add_task(self, task: TaskRecord) -> None:
        self.tasks[task.spec.id] = task
        self.counts[task.status] += 1
        if task.status == READY and task.not_before is None:
            self.ready.add(task.ready_key)
        if self.workflows:
            self._count_in_workflow(task, None, task.status)

    def workflow_of(self, task: TaskRecord) -> WorkflowRecord | None:
        """The workflow record of ``task``'s task file, if it has one."""
        return self.workflows.get(self.batch_sources.get(task.batch_seq, ""))

    def _count_in_workflow(self, task: TaskRecord, old: str | None, new: str) -> None:
        workflow = self.workflow_of(task)
        if workflow is None:
            return
        workflow.count(task, old, new)
        node = task.spec.node
        if node is not None and node.noop and new == READY:
            self.due.append(task.spec.id)
        if workflow.final is not None:
            final = self.tasks.get(workflow.final)
            if final is not None and (
                    (workflow.open == 0 and final.status == WAITING)
                    or (workflow.open > 0 and final.status in (SUCCEEDED, FAILED))):
                self.due.append(workflow.final)  # ready now; or to run again, later

    def refresh_free(self, worker: WorkerRecord, was_free: bool) -> None:
        """Keep ``free`` listing exactly the live, non-draining workers with
        room for a dispatch (a free slot, or a place in the queue ahead).
        ``was_free`` is whether the worker was listed before."""
        now_free = worker.status in (IDLE, BUSY) and worker.used < worker.slots + worker.ahead
        if now_free != was_free:
            if now_free:
                self.free.add((worker.rank, worker.worker_id))
            else:
                self.free.remove((worker.rank, worker.worker_id))

    def is_listed_free(self, worker: WorkerRecord) -> bool:
        return worker.status in (IDLE, BUSY) and worker.used < worker.slots + worker.ahead

    def track_vm(self, vm: VMRecord) -> None:
        """Keep ``open_vms`` in step with a VM's status, in the order of
        ``vms`` (the order they were first asked for or found): a snapshot
        rebuilds the index in that order, and the autoscaler and the
        reconciler decide in index order, so a VM opened again must not go to
        the end (hypothesis found a restored boss deciding in another order)."""
        # a VM being killed still exists in the cloud: it counts against max_workers
        name = vm.vm_name
        if vm.status == VM_GONE or (vm.status == VM_FAILED and vm.vm_id is None
                                    and not vm.uncertain):
            self.open_vms.pop(name, None)
        elif name not in self.open_vms:
            self.open_vms[name] = None
            if next(reversed(self.vms)) != name:  # not the newest VM: opened again (rare)
                self.open_vms = {n: None for n in self.vms if n in self.open_vms}

    def current_attempt(self, task_id: str, attempt: int,
                        worker_id: str | None = None) -> TaskRecord | None:
        """The task if ``attempt`` (on ``worker_id``, when given) is its live
        attempt - dispatched or running, the latest - else None: a report or
        a timer about any other attempt is stale. The one place this is said."""
        task = self.tasks.get(task_id)
        if (task is None or task.status not in ACTIVE or task.attempt != attempt
                or (worker_id is not None and task.worker != worker_id)):
            return None
        return task

    def vm_with_id(self, vm_id: int | None) -> VMRecord | None:
        name = self.vm_ids.get(vm_id) if vm_id is not None else None  # type: ignore[arg-type]
        return self.vms[name] if name is not None else None

    def workers_on(self, vm_id: int | None, live: bool = True) -> list[WorkerRecord]:
        """The (live) workers that announced with ``vm_id``, by worker id."""
        if vm_id is None:
            return []
        workers = self.workers
        found = []
        for wid in sorted(set(self.vm_workers.get(vm_id, ()))):
            worker = workers[wid]
            if worker.vm_id == vm_id and (not live or worker.status in LIVE):
                found.append(worker)
        return found

    def arm(self, when: float, kind: str, key: str, token: Any) -> None:
        """Schedule a deadline. Timers are checked lazily: when one fires, its
        token is compared with the record and a stale timer does nothing."""
        heapq.heappush(self.timers, (when, kind, key, token))

    def reject(self, seq: int, source: str, reason: str) -> None:
        self.rejected.append(Rejection(seq, source, reason))
        if len(self.rejected) > MAX_REJECTIONS:
            del self.rejected[0]

    def heard_stranger(self, worker_id: str) -> None:
        """A worker that never announced itself spoke (and was refused)."""
        self.strangers.pop(worker_id, None)
        self.strangers[worker_id] = self.clock
        if len(self.strangers) > MAX_STRANGERS:
            del self.strangers[next(iter(self.strangers))]

    def released(self, worker: WorkerRecord, task_id: str, attempt: int) -> None:
        """Remember that ``worker`` held (task, attempt), which it no longer does."""
        worker.released.append((task_id, attempt))
        if len(worker.released) > MAX_RELEASED:
            del worker.released[: len(worker.released) - MAX_RELEASED]

    def record_failure(self, failure: Failure) -> None:
        self.recent_failures.append(failure)
        if len(self.recent_failures) > MAX_FAILURES:
            del self.recent_failures[0]

    # ----------------------------------------------------------------- queries

    def task_order(self) -> list[TaskRecord]:
        """All tasks in submission order."""
        return sorted(self.tasks.values(), key=lambda t: (t.batch_seq, t.index))

