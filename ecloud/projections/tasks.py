"""Task transitions: the DAG's life, one small function per event type.

Every move of a task's status goes through
:func:`ecloud.projections.transitions.move_task`, naming its cause: the
table there (and in the README, generated from it) is the one description of
the task state machine, and a move outside it is refused.

Reports about an attempt that is not the task's current one (a worker that
was declared lost and came back, a resend of an old report) are *stale*: they
are acknowledged and otherwise ignored. Costs: finishing a task touches only
its children; failing or cancelling one touches only its descendants.

Queueing ahead: a worker whose last attempt ended within :data:`QUICK_TASK`
seconds may be given ``queue_ahead`` dispatches per slot beyond its slots
(``WorkerRecord.ahead``), which it queues and starts the moment a slot
frees - for short tasks the round trip to the boss and its commit, not the
tasks, would otherwise set the pace. A worker that ran a long task gets
none, so long tasks are never stuck behind one another; a queued dispatch
that still waits after 2 s is given back by the worker (``returned``) and is
ready again without counting as a failure.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from ecloud.events.types import (
    RetryRequested,
    TaskCancelled,
    TaskDispatched,
    TaskFinished,
    TaskSpec,
    TasksSubmitted,
    TaskStarted,
    default_results_folder,
)
from ecloud.projections import context
from ecloud.projections.blocking import (
    block_descendants,
    blocking_cause,
    recheck_descendants,
    root_cause,
)
from ecloud.projections.context import bounded_time, number_text, storable
from ecloud.projections.effects import Ack, CancelAttempt, Dispatch
from ecloud.projections.liveness import heard_from
from ecloud.projections.state import (
    ACTIVE,
    ATTEMPT_CANCELLED,
    ATTEMPT_FAILED,
    ATTEMPT_LOST,
    ATTEMPT_RETURNED,
    ATTEMPT_SUCCEEDED,
    BLOCKED,
    BLOCKING,
    BUSY,
    CANCELLED,
    DISPATCHED,
    FAILED,
    FINAL,
    IDLE,
    READY,
    RUNNING,
    SUCCEEDED,
    T_TIMEOUT,
    WAITING,
    Failure,
    State,
    TaskRecord,
)
from ecloud.projections.transitions import (
    CANCELLED_BY,
    DISPATCHED_TO,
    ENDED_BADLY,
    FAILED_FOR_GOOD,
    GIVEN_WORK,
    PARENTS_DONE,
    REQUEUED,
    RETRIED,
    RETRY,
    RETURNED,
    SLOTS_FREE,
    STARTED,
    SUCCEEDED_NOW,
    WORKER_WENT,
    begin_attempt,
    move_attempt,
    move_task,
    move_worker,
)
from ecloud.projections.workflow_result import dag_macros

#: seconds: a worker whose last attempt ended within this may queue ahead
QUICK_TASK = 1.0

# ------------------------------------------------------------------- submission


def submission_problem(state: State, event: TasksSubmitted) -> str | None:
    """Why the batch cannot be accepted as a whole, or None. ``ecloud push``
    checks all of this (and more) before appending; this guard is for logs
    written by other tools or by racing writers."""
    tasks = state.tasks
    batch: set[str] = set()
    for spec in event.tasks:
        problem = spec_problem(spec)
        if problem is not None:
            return f"task {spec.id!r}: {problem}"
        if spec.id in tasks:
            return f"task {spec.id!r} already exists"
        if spec.id in batch:
            return f"task {spec.id!r} appears twice in the batch"
        batch.add(spec.id)
    for spec in event.tasks:
        for dep in spec.depends_on:
            if dep not in batch and dep not in tasks:
                return f"task {spec.id!r} depends on unknown task {dep!r}"
    if len(dependency_order(event.tasks)) != len(event.tasks):
        return "the batch's dependencies form a cycle"
    return None


def spec_problem(spec: TaskSpec) -> str | None:
    """Why a task's numbers cannot be folded, or None. ``ecloud push`` never
    writes such a spec (see :mod:`ecloud.taskfiles.taskfile`), and JSON cannot even
    carry most of them; the fold refuses them so that no later event can
    trip over one (a task of no slots would take none of its worker's, a
    non-finite timeout could not be written into a snapshot)."""
    for name in ("retries", "priority", "slots"):
        if not storable(getattr(spec, name)):
            return f"{name} {number_text(getattr(spec, name))} is out of range"
    if spec.slots < 1:
        return f"slots must be at least 1, got {spec.slots}"
    if not math.isfinite(spec.retry_backoff):
        return f"retry_backoff must be a finite number, got {spec.retry_backoff!r}"
    if spec.timeout is not None and not math.isfinite(spec.timeout):
        return f"timeout must be a finite number or null, got {spec.timeout!r}"
    node = spec.node
    if node is not None:
        numbers = {"pre_skip": node.pre_skip, "retry_unless_exit": node.retry_unless_exit}
        if node.abort_on is not None:
            numbers.update({"abort_on.exit": node.abort_on.exit,
                            "abort_on.return": node.abort_on.returns})
        for name, value in numbers.items():
            if value is not None and not storable(value):
                return f"{name} {number_text(value)} is out of range"
        for name in ("pre", "post"):
            script = getattr(node, name)
            if script is not None and not script:
                return f"{name} must not be empty"
    return None


def add_batch(state: State, event: TasksSubmitted, seq: int) -> None:
    """Add a checked batch's tasks (the fold's ``tasks.submitted`` is
    :func:`ecloud.projections.workflows.on_submitted`, which checks it
    first), each in the status its dependencies give it - or its workflow
    role: a ``done`` task is born succeeded, a ``final`` one waiting
    (:mod:`.workflows` readies it)."""
    tasks = state.tasks
    children = state.children
    now = state.clock
    # A batch may list a task before its dependencies; settle tasks in an
    # order where every in-batch dependency comes first.
    for index, spec in dependency_order(event.tasks):
        unmet = 0
        blocked_by = None
        for dep in spec.depends_on:
            children.setdefault(dep, []).append(spec.id)
            parent = tasks[dep]
            if parent.status != SUCCEEDED:
                unmet += 1
                if parent.status in BLOCKING and blocked_by is None:
                    blocked_by = root_cause(parent)
        if blocked_by is not None:
            status = BLOCKED
        else:
            status = READY if unmet == 0 else WAITING
        node = spec.node
        if node is not None and (node.done or node.final):
            status = SUCCEEDED if node.done else WAITING
            blocked_by = None
        state.add_task(
            TaskRecord(
                spec=spec,
                batch_seq=seq,
                index=index,
                status=status,
                unmet=unmet,
                submitted_at=now,
                blocked_by=blocked_by,
            )
        )


def dependency_order(specs: Sequence[TaskSpec]) -> list[tuple[int, TaskSpec]]:
    """(index, spec) pairs with in-batch dependencies first (Kahn's
    algorithm); shorter than the batch when the batch has a cycle. Keeps file
    order when the file already respects it, the common case."""
    position = {spec.id: i for i, spec in enumerate(specs)}
    if all(position.get(d, -1) < i for i, s in enumerate(specs) for d in s.depends_on):
        return list(enumerate(specs))
    indegree = [0] * len(specs)
    out: list[list[int]] = [[] for _ in specs]
    for i, spec in enumerate(specs):
        for dep in spec.depends_on:
            j = position.get(dep)
            if j is not None:
                indegree[i] += 1
                out[j].append(i)
    queue = deque(i for i, d in enumerate(indegree) if d == 0)
    order = []
    while queue:
        i = queue.popleft()
        order.append((i, specs[i]))
        for k in out[i]:
            indegree[k] -= 1
            if indegree[k] == 0:
                queue.append(k)
    return order


# ----------------------------------------------------------------- dispatching


def dispatch_problem(state: State, event: TaskDispatched) -> str | None:
    """Why a scheduling decision no longer fits the state, or None."""
    task = state.tasks.get(event.task_id)
    if task is None:
        return "unknown task"
    if task.status != READY or task.not_before is not None:
        return f"task is {task.status}" + (" (in retry backoff)" if task.not_before else "")
    if event.attempt != task.attempt + 1:
        return f"attempt {number_text(event.attempt)} is not the next one ({task.attempt + 1})"
    if task.spec.node is not None:
        if task.spec.node.noop:
            return "a noop task runs nothing"
        workflow = state.workflow_of(task)
        if workflow is not None and not workflow.room_for(task.spec):
            return "its workflow runs as many tasks as its limits allow"
    worker = state.workers.get(event.worker_id)
    if worker is None:
        return "unknown worker"
    if not state.is_listed_free(worker) or worker.room < task.spec.slots:
        return (f"worker is {worker.status} with room for {number_text(max(0, worker.room))} "
                f"slot(s)")
    return None


def on_dispatched(state: State, event: TaskDispatched, seq: int, out: list) -> None:
    # A decision made on an older state can be overtaken by a cancel or a lost
    # worker appended in between; it is then dropped, never applied.
    problem = dispatch_problem(state, event)
    if problem is not None:
        state.reject(seq, "scheduler", f"dispatch of {event.task_id}: {problem}")
        return
    task = state.tasks[event.task_id]
    worker = state.workers[event.worker_id]
    begin_attempt(state, task, event.attempt)
    move_task(state, task, DISPATCHED, DISPATCHED_TO)
    task.worker = task.ran_on = worker.worker_id
    task.ran_for = None
    task.dispatched_at = state.clock
    task.started_at = None
    task.deadline = None
    worker.running[(task.spec.id, event.attempt)] = task.spec.slots
    worker.used += task.spec.slots
    move_worker(state, worker, BUSY, GIVEN_WORK)
    worker.idle_since = None
    state.refresh_free(worker, was_free=True)
    out.append(dispatch_effect(state, seq, task, worker.worker_id))


def dispatch_effect(state: State, seq: int, task: TaskRecord, worker_id: str) -> Dispatch:
    """The effect that sends the task's current attempt to ``worker_id``, with
    the datastore address and the results folders its inputs are read from."""
    spec = task.spec
    sources = ()
    if spec.inputs:
        upstream = {i.from_task for i in spec.inputs if i.from_task}
        sources = tuple(sorted((u, _results_folder(state, u)) for u in upstream))
    macros: tuple[tuple[str, str], ...] = ()
    if spec.node is not None:
        macros = (("JOB", spec.id), ("RETRY", str(task.failures)),
                  ("MAX_RETRIES", str(spec.retries))) + dag_macros(state, spec.id)
    return Dispatch(seq, spec.id, task.attempt, worker_id, spec,
                    state.context.get("datastore_address", ""), sources,
                    state.context.get("datastore_id", ""), macros)


def _results_folder(state: State, task_id: str) -> str:
    upstream = state.tasks.get(task_id)
    return (upstream.spec.results_folder if upstream is not None
            else default_results_folder(task_id))


# ------------------------------------------------------------------- reports


def _current(state: State, task_id: str, attempt: int, worker_id: str) -> TaskRecord | None:
    return state.current_attempt(task_id, attempt, worker_id)


def on_started(state: State, event: TaskStarted, seq: int, out: list) -> None:
    if event.msg_id:
        out.append(Ack(seq, event.worker_id, event.msg_id))
    heard_from(state, event.worker_id)  # any report is a sign of life
    task = _current(state, event.task_id, event.attempt, event.worker_id)
    if task is None:
        stale = state.tasks.get(event.task_id)
        if stale is not None and event.attempt < stale.attempt:
            # A worker runs an attempt that was given to someone else since:
            # stop it, so the task never runs twice at once for long.
            out.append(
                CancelAttempt(seq, event.task_id, event.attempt, event.worker_id, "superseded")
            )
        return
    if task.status == RUNNING:
        return  # a resend of a start we already have
    move_attempt(state, task, RUNNING, STARTED)
    move_task(state, task, RUNNING, STARTED)
    task.started_at = state.clock
    if task.spec.timeout is not None:
        task.deadline = bounded_time(
            state.clock + task.spec.timeout + float(context.get(state, "timeout_grace")))
        state.arm(task.deadline, T_TIMEOUT, task.spec.id, task.attempt)


def on_finished(state: State, event: TaskFinished, seq: int, out: list) -> None:
    if event.msg_id:
        out.append(Ack(seq, event.worker_id, event.msg_id))
    if not storable(event.exit_code):  # acknowledged all the same: a resend is no better
        state.reject(seq, f"worker {event.worker_id}",
                     f"report of {event.task_id} attempt {number_text(event.attempt)}: "
                     f"exit code {number_text(event.exit_code)} is out of range")
        return
    heard_from(state, event.worker_id)  # any report is a sign of life
    if release_slot(state, event.worker_id, event.task_id, event.attempt):
        set_quick(state, event.worker_id, not event.returned and event.duration < QUICK_TASK)
    task = _current(state, event.task_id, event.attempt, event.worker_id)
    if task is None:
        return  # stale or repeated: the log keeps it, the state ignores it
    if event.returned:
        if task.status == DISPATCHED:  # given back unstarted: ready again
            requeue(state, task, event.reason or "given back unstarted", ATTEMPT_RETURNED)
            return
        # a worker that started the attempt cannot give it back: a failure
    task.exit_code = event.exit_code
    task.finished_at = state.clock
    task.ran_for = event.duration
    task.deadline = None
    if event.exit_code == 0:
        succeed(state, task)
    else:
        reason = event.reason or (
            f"killed by signal {number_text(event.signal)}"
            if event.signal is not None
            else f"exit code {event.exit_code}"
        )
        attempt_failed(state, task, reason, seq, out, returned_value(event))


def returned_value(event: TaskFinished) -> int | None:
    """What an attempt returned, as DAGMan's ``$RETURN`` says it: its exit
    status, or minus the signal that ended it; None if it never ran."""
    if event.exit_code is not None:
        return event.exit_code
    return -event.signal if event.signal else None


def release_slot(state: State, worker_id: str, task_id: str, attempt: int) -> bool:
    """Free the slots a worker held for (task, attempt), if it held them
    (then True)."""
    worker = state.workers.get(worker_id)
    if worker is None:
        return False
    slots = worker.running.pop((task_id, attempt), None)
    if slots is None:
        return False
    state.released(worker, task_id, attempt)
    was_free = state.is_listed_free(worker)
    worker.used -= slots
    if worker.used == 0:
        worker.idle_since = state.clock
        if worker.status == BUSY:
            move_worker(state, worker, IDLE, SLOTS_FREE)
    state.refresh_free(worker, was_free)
    return True


def set_quick(state: State, worker_id: str, quick: bool) -> None:
    """Whether a worker's last attempt was short, and so how many
    dispatches it may hold queued ahead of its slots."""
    worker = state.workers[worker_id]
    listed = state.is_listed_free(worker)
    worker.quick = quick
    worker.ahead = context.ahead_of(context.queue_ahead(state), worker.slots) if quick else 0
    state.refresh_free(worker, listed)


def succeed(state: State, task: TaskRecord) -> None:
    move_attempt(state, task, ATTEMPT_SUCCEEDED, SUCCEEDED_NOW)
    move_task(state, task, SUCCEEDED, SUCCEEDED_NOW)
    task.worker = None
    task.reason = ""
    release_children(state, task)


def release_children(state: State, task: TaskRecord) -> None:
    """``task`` succeeded: each child with no unmet dependency left is ready."""
    tasks = state.tasks
    for child_id in state.children.get(task.spec.id, ()):
        child = tasks[child_id]
        child.unmet -= 1
        if child.unmet == 0 and child.status == WAITING:
            move_task(state, child, READY, PARENTS_DONE)


def attempt_failed(state: State, task: TaskRecord, reason: str, seq: int, out: list,
                   exit_code: int | None = None) -> None:
    """An attempt ended badly: retry after backoff if retries are left, else
    fail for good and block every descendant. An exit status that is the
    task's ``retry_unless_exit`` or ``abort_on`` one leaves no retry."""
    move_attempt(state, task, ATTEMPT_FAILED, ENDED_BADLY)
    task.failures += 1
    task.reason = reason
    final = task.failures > task.spec.retries
    node = task.spec.node
    if node is not None and exit_code is not None and not final:
        if exit_code == node.retry_unless_exit:
            final = True
            task.reason = f"{reason} (retry_unless_exit: no retry)"
        elif node.abort_on is not None and exit_code == node.abort_on.exit:
            final = True
    state.record_failure(Failure(seq, task.spec.id, task.attempt, task.worker, reason, final))
    task.worker = None
    task.deadline = None
    if not final:
        backoff = retry_backoff(state, task)
        if backoff > 0:
            task.not_before = bounded_time(state.clock + backoff)
        move_task(state, task, READY, RETRY)
    else:
        move_task(state, task, FAILED, FAILED_FOR_GOOD)
        block_descendants(state, task.spec.id)


def retry_backoff(state: State, task: TaskRecord) -> float:
    """Seconds before the next attempt after ``task.failures`` failures:
    ``retry_backoff * 2**(failures - 1)``, at most ``max_backoff``; 0 (no
    wait) for a backoff of 0 or less.

    Computed on the float's exponent, so it never overflows: the plain
    product turned ``2**(failures - 1)`` into a float and raised
    OverflowError from the 1,025th failure on. Scaling a float by a power
    of two is exact, so this is the exact product, capped: the same value
    wherever the plain product did not raise."""
    base = task.spec.retry_backoff
    if not base > 0:
        return 0.0
    cap = float(context.get(state, "max_backoff"))  # type: ignore[arg-type]
    if base == math.inf:
        return cap
    mantissa, exponent = math.frexp(base)  # base = mantissa * 2**exponent, 0.5 <= mantissa < 1
    exponent += min(task.failures - 1, 4096)
    if exponent > 1024:  # at least 2**1024: more than the largest float
        return cap
    return min(math.ldexp(mantissa, exponent), cap)


def requeue(state: State, task: TaskRecord, reason: str, outcome: str) -> None:
    """Put an attempt back without counting it as a failure - given back
    unstarted (``outcome`` ATTEMPT_RETURNED), or its worker went
    (ATTEMPT_LOST): the next dispatch is a new attempt."""
    move_attempt(state, task, outcome, RETURNED if outcome == ATTEMPT_RETURNED else WORKER_WENT)
    task.worker = None
    task.deadline = None
    task.reason = reason
    move_task(state, task, READY, REQUEUED)


# ---------------------------------------------------------- operator commands


def cancel_problem(state: State, task_id: str) -> str | None:
    task = state.tasks.get(task_id)
    if task is None:
        return f"unknown task {task_id!r}"
    if task.status in FINAL:
        return f"task {task_id!r} is already {task.status}"
    return None


def on_cancelled(state: State, event: TaskCancelled, seq: int, out: list) -> None:
    problem = cancel_problem(state, event.task_id)
    if problem is not None:
        state.reject(seq, "operator", f"cancel: {problem}")
        return
    task = state.tasks[event.task_id]
    if task.status in ACTIVE or task.attempt_status == ATTEMPT_LOST:
        move_attempt(state, task, ATTEMPT_CANCELLED, CANCELLED_BY)
    if task.status in ACTIVE:
        # The worker keeps its slot until it reports the attempt ended.
        out.append(
            CancelAttempt(seq, task.spec.id, task.attempt, task.worker or "", "cancelled")
        )
    task.worker = None
    task.deadline = None
    task.reason = event.reason or "cancelled by operator"
    task.blocked_by = None
    move_task(state, task, CANCELLED, CANCELLED_BY)  # before clearing not_before: it says which index held it
    task.not_before = None
    block_descendants(state, task.spec.id)


def retry_problem(state: State, task_id: str) -> str | None:
    task = state.tasks.get(task_id)
    if task is None:
        return f"unknown task {task_id!r}"
    if task.status not in (FAILED, CANCELLED):
        hint = f" (blocked by {task.blocked_by}: retry that)" if task.status == BLOCKED else ""
        return f"task {task_id!r} is {task.status}, not failed or cancelled{hint}"
    return None


def on_retry_requested(state: State, event: RetryRequested, seq: int, out: list) -> None:
    problem = retry_problem(state, event.task_id)
    if problem is not None:
        state.reject(seq, "operator", f"retry: {problem}")
        return
    task = state.tasks[event.task_id]
    task.failures = 0
    task.not_before = None
    task.reason = ""
    cause = blocking_cause(state, task)
    if cause is not None:
        task.blocked_by = cause
        move_task(state, task, BLOCKED, RETRIED)
    else:
        ready = task.unmet == 0
        if ready and task.spec.node is not None and task.spec.node.final:
            workflow = state.workflow_of(task)  # it waits for the rest of its workflow
            ready = workflow is None or workflow.open == 0
        move_task(state, task, READY if ready else WAITING, RETRIED)
    recheck_descendants(state, task.spec.id)


# ------------------------------------------------------------------- timeouts


def on_timeout(state: State, task_id: str, attempt: int, seq: int, out: list) -> None:
    """A running attempt passed its timeout plus grace without a report."""
    task = state.current_attempt(task_id, attempt)
    if task is None:
        return
    if task.deadline is None or task.deadline > state.clock:
        return
    out.append(CancelAttempt(seq, task_id, attempt, task.worker or "", "timeout"))
    attempt_failed(state, task, f"timeout after {task.spec.timeout:g}s", seq, out)


__all__ = [
    "add_batch",
    "attempt_failed",
    "cancel_problem",
    "dispatch_problem",
    "on_cancelled",
    "on_dispatched",
    "on_finished",
    "on_retry_requested",
    "on_started",
    "on_timeout",
    "release_children",
    "release_slot",
    "requeue",
    "retry_problem",
    "returned_value",
    "submission_problem",
]
