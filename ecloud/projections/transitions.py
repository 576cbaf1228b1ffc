"""The task, attempt, worker and VM state machines, as tables: every move a
status may make, and what makes it.

The reducers move a task only through :func:`move_task`, naming the cause;
a move the table does not hold is a bug of the reducer
(:class:`~ecloud.errors.ReducerBug`: the fold records it as refused, and
the property tests fail on any such refusal). The README's "Task states"
section is generated from :data:`TASK_MOVES` (:func:`markdown`), and a
test checks that the two agree, so the prose cannot drift from the code.

A task is born ``waiting``, ``ready`` or ``blocked`` when its batch is
submitted (by its dependencies; a final task waits for the rest of its
workflow), or ``succeeded`` when its task file gives it as ``done``; every
later status comes from a move here.
An attempt is born ``dispatched`` (the row from ``(new)``): a task's
``attempt_status`` tells how its latest attempt stands, and a task that is
dispatched or running has an attempt in that same status.
"""

from __future__ import annotations

from attrs import frozen

from ecloud.errors import ReducerBug
from ecloud.projections.state import (
    ATTEMPT_CANCELLED,
    ATTEMPT_DISPATCHED,
    ATTEMPT_FAILED,
    ATTEMPT_LOST,
    ATTEMPT_NONE,
    ATTEMPT_RETURNED,
    ATTEMPT_RUNNING,
    ATTEMPT_SUCCEEDED,
    BLOCKED,
    BUSY,
    CANCELLED,
    DISPATCHED,
    DRAINING,
    FAILED,
    GONE,
    IDLE,
    LOST,
    READY,
    RUNNING,
    SUCCEEDED,
    VM_ALLOCATED,
    VM_FAILED,
    VM_GONE,
    VM_KILLING,
    VM_OBSERVED,
    VM_REQUESTED,
    WAITING,
    State,
    TaskRecord,
    VMRecord,
    WorkerRecord,
)


@frozen
class Move:
    """One row: from any of ``sources`` to ``target`` when ``cause`` happens."""

    cause: str
    sources: tuple[str, ...]
    target: str
    #: what the move does besides, and why it may happen (for people)
    note: str


#: causes (the reducers name them)
DISPATCHED_TO = "dispatch"
STARTED = "start reported"
TAKEN_BACK = "taken back"
SUCCEEDED_NOW = "attempt succeeded"
PARENTS_DONE = "dependencies met"
RETRY = "failed, retries left"
FAILED_FOR_GOOD = "failed for good"
REQUEUED = "requeued"
ANCESTOR_BLOCKS = "ancestor failed or cancelled"
ANCESTOR_RETRIED = "ancestor retried"
CANCELLED_BY = "operator cancel"
RETRIED = "operator retry"
REPLACED = "spec replaced"
NOTHING_TO_RUN = "noop"
WORKFLOW_ENDED = "rest of its workflow ended"
WORKFLOW_REOPENED = "its workflow runs again"
ABORTED = "workflow aborted"

_ACTIVE = (DISPATCHED, RUNNING)

TASK_MOVES: tuple[Move, ...] = (
    Move(DISPATCHED_TO, (READY,), DISPATCHED,
         "the scheduler gave the attempt to a worker with free slots (task.dispatched)"),
    Move(STARTED, (DISPATCHED,), RUNNING, "the worker reported the attempt running (task.started)"),
    Move(TAKEN_BACK, (READY,), RUNNING,
         "a worker the boss had given up on announced itself still running the current "
         "attempt: it keeps it (worker.announced)"),
    Move(SUCCEEDED_NOW, _ACTIVE, SUCCEEDED,
         "the current attempt exited 0; each child with no unmet dependency left becomes ready"),
    Move(PARENTS_DONE, (WAITING,), READY, "the last of its dependencies succeeded"),
    Move(RETRY, _ACTIVE, READY,
         "the attempt failed (an exit status other than 0, a signal, its timeout) and retries "
         "are left: ready again after its backoff, with a new attempt"),
    Move(FAILED_FOR_GOOD, _ACTIVE, FAILED,
         "the attempt failed and no retry is left; its descendants are blocked"),
    Move(REQUEUED, _ACTIVE, READY,
         "the attempt ended without counting as a failure: given back unstarted, or its "
         "worker left, was lost or replaced, or its VM went (it may have run part of the "
         "command: commands must bear running again)"),
    Move(ANCESTOR_BLOCKS, (WAITING,), BLOCKED,
         "a task it depends on, directly or not, failed for good or was cancelled"),
    Move(ANCESTOR_RETRIED, (BLOCKED,), WAITING,
         "the task that blocked it was retried (and nothing else blocks it)"),
    Move(CANCELLED_BY, (WAITING, READY, DISPATCHED, RUNNING, BLOCKED), CANCELLED,
         "`ecloud cancel`: a running attempt is killed; its descendants are blocked"),
    Move(RETRIED, (FAILED, CANCELLED), READY,
         "`ecloud retry`, its dependencies met: a full retry budget again"),
    Move(RETRIED, (FAILED, CANCELLED), WAITING, "`ecloud retry`, a dependency still to succeed"),
    Move(RETRIED, (FAILED, CANCELLED), BLOCKED,
         "`ecloud retry`, but an ancestor has failed or is cancelled: blocked by it"),
    Move(REPLACED, (WAITING, DISPATCHED, RUNNING, SUCCEEDED, FAILED, BLOCKED), READY,
         "`push --replace` changed its spec, or a task upstream's (tasks.replaced): it runs "
         "again, its running attempt cancelled, a full retry budget again; a cancelled task "
         "stays cancelled"),
    Move(REPLACED, (READY, DISPATCHED, RUNNING, SUCCEEDED, FAILED, BLOCKED), WAITING,
         "the same, a dependency still to succeed (or, for a final task, the rest of its "
         "workflow to end)"),
    Move(REPLACED, (WAITING, READY, DISPATCHED, RUNNING, SUCCEEDED, FAILED), BLOCKED,
         "the same, but a new dependency has failed or is cancelled, or is blocked"),
    Move(NOTHING_TO_RUN, (READY,), SUCCEEDED,
         "a `noop` task whose dependencies are met succeeds at once, without running anything"),
    Move(WORKFLOW_ENDED, (WAITING,), READY,
         "a `final` task: every other task of its workflow (task file) has succeeded, failed, "
         "been cancelled or blocked"),
    Move(WORKFLOW_REOPENED, (SUCCEEDED, FAILED), WAITING,
         "a `final` task that ran, when a task of its workflow runs again (`ecloud retry`): it "
         "runs again once the rest has ended, with a full retry budget"),
    Move(ABORTED, (WAITING, READY, DISPATCHED, RUNNING), CANCELLED,
         "a task of its workflow ended with its `abort_on` exit status: every unfinished task "
         "but the final one is cancelled, a running attempt killed"),
)

#: attempt causes (the task's causes where the two move together)
ENDED_BADLY = "ended badly"
RETURNED = "given back unstarted"
WORKER_WENT = "its worker went"
TAKEN_BACK_OLD = "taken back (fold rules 3 and older)"

_ENDED = (ATTEMPT_FAILED, ATTEMPT_RETURNED, ATTEMPT_LOST, ATTEMPT_CANCELLED, ATTEMPT_SUCCEEDED)
_LIVE_ATTEMPT = (ATTEMPT_DISPATCHED, ATTEMPT_RUNNING)

ATTEMPT_MOVES: tuple[Move, ...] = (
    Move(DISPATCHED_TO, (ATTEMPT_NONE,) + _ENDED, ATTEMPT_DISPATCHED,
         "the scheduler gave the task to a worker (task.dispatched): a new attempt, numbered "
         "one past the last, whose own status starts here; the last one had ended"),
    Move(STARTED, (ATTEMPT_DISPATCHED,), ATTEMPT_RUNNING,
         "the worker reported it running (task.started); its timeout starts"),
    Move(SUCCEEDED_NOW, _LIVE_ATTEMPT, ATTEMPT_SUCCEEDED, "it exited 0 (task.finished)"),
    Move(ENDED_BADLY, _LIVE_ATTEMPT, ATTEMPT_FAILED,
         "an exit status other than 0 or a signal (task.finished), a start it gave back, or "
         "its timeout and grace passed (a tick: the worker is told to kill it); it counts "
         "against the task's retries"),
    Move(RETURNED, (ATTEMPT_DISPATCHED,), ATTEMPT_RETURNED,
         "the worker gave it back before starting it (task.finished with returned): not a "
         "failure"),
    Move(WORKER_WENT, _LIVE_ATTEMPT, ATTEMPT_LOST,
         "its worker said goodbye, was taken for lost or replaced, or its VM went: the task "
         "goes back to the queue, no failure counted"),
    Move(TAKEN_BACK, (ATTEMPT_LOST,), ATTEMPT_RUNNING,
         "its worker, taken for lost, announced itself still running it, and the task was "
         "given to nobody since (worker.announced): it runs on, nothing runs twice"),
    Move(TAKEN_BACK_OLD, (ATTEMPT_FAILED, ATTEMPT_RETURNED, ATTEMPT_CANCELLED, ATTEMPT_SUCCEEDED),
         ATTEMPT_RUNNING,
         "only in logs written under fold rules 3 or older: any latest attempt of a ready task "
         "was taken back - one that had failed with retries left, been given back, or whose "
         "task was cancelled and retried or replaced"),
    Move(CANCELLED_BY, _LIVE_ATTEMPT + (ATTEMPT_LOST,), ATTEMPT_CANCELLED,
         "`ecloud cancel`: the worker is told to kill it; one of a lost worker can no longer "
         "be taken back"),
    Move(REPLACED, _LIVE_ATTEMPT + (ATTEMPT_LOST,), ATTEMPT_CANCELLED,
         "its task's spec was replaced (tasks.replaced): the worker is told to kill it; one of "
         "a lost worker can no longer be taken back (it runs the old spec)"),
    Move(ABORTED, _LIVE_ATTEMPT + (ATTEMPT_LOST,), ATTEMPT_CANCELLED,
         "its workflow was aborted (`abort_on`): the worker is told to kill it"),
)

#: VM causes
VM_ALLOCATED_AS = "id given"
SEEN_RUNNING = "seen in service"
SEEN_GONE = "seen DONE"
VM_FAILS = "fails"
KILL_ASKED = "kill asked"

_LIVE_VM = (VM_REQUESTED, VM_ALLOCATED, VM_OBSERVED)

VM_MOVES: tuple[Move, ...] = (
    Move(VM_ALLOCATED_AS, (VM_REQUESTED,), VM_ALLOCATED,
         "the cloud gave the VM an id (vm.allocated: the spawn's answer, or found by its name)"),
    Move(SEEN_RUNNING, (VM_REQUESTED, VM_ALLOCATED, VM_GONE), VM_OBSERVED,
         "a look at the pool saw it in a state that can serve (vm.state_observed); a VM the log "
         "took for gone that the pool still has is back"),
    Move(SEEN_GONE, (VM_REQUESTED, VM_ALLOCATED, VM_OBSERVED, VM_FAILED, VM_KILLING), VM_GONE,
         "the pool has it DONE, or no more (vm.state_observed) - also one whose allocation "
         "was never logged, seen by its name; its workers are lost at once"),
    Move(VM_FAILS, (VM_REQUESTED, VM_ALLOCATED, VM_OBSERVED, VM_GONE), VM_FAILED,
         "its spawn failed (vm.failed), it failed to boot (a *_FAILURE LCM state), or it runs "
         "nothing and holds quota (POWEROFF, SUSPENDED, STOPPED, UNDEPLOYED, HOLD); the "
         "reconciler terminates it once nothing runs there"),
    Move(KILL_ASKED, (VM_REQUESTED, VM_ALLOCATED, VM_OBSERVED, VM_FAILED, VM_GONE), VM_KILLING,
         "the autoscaler, the reconciler or an operator asked for its end (vm.kill_requested): "
         "its workers drain; asked again while the cloud still has it"),
)


def _allowed(moves: tuple[Move, ...]) -> dict[str, frozenset[tuple[str, str]]]:
    allowed: dict[str, frozenset[tuple[str, str]]] = {}
    for move in moves:
        allowed[move.cause] = allowed.get(move.cause, frozenset()) | {
            (source, move.target) for source in move.sources}
    return allowed


#: worker causes
GIVEN_WORK = "given work"
SLOTS_FREE = "slots free"
HOLDS_ATTEMPTS = "announced holding attempts"
DRAINS = "drains"
LEFT = "goodbye"
LOSES = "taken for lost"

_LIVE_WORKER = (IDLE, BUSY, DRAINING)

WORKER_MOVES: tuple[Move, ...] = (
    Move(GIVEN_WORK, (IDLE,), BUSY, "an attempt was dispatched to it (task.dispatched)"),
    Move(SLOTS_FREE, (BUSY,), IDLE, "its last attempt ended: every slot is free"),
    Move(HOLDS_ATTEMPTS, (IDLE,), BUSY,
         "it announced itself (again) running attempts the log gave it (worker.announced)"),
    Move(DRAINS, (IDLE, BUSY), DRAINING,
         "it is shutting down (worker.draining), or its VM is being killed or has failed: no "
         "new work, what it holds runs on"),
    Move(LEFT, _LIVE_WORKER, GONE,
         "it said goodbye (worker.left): its attempts go back to the queue"),
    Move(LOSES, _LIVE_WORKER, LOST,
         "silent past heartbeat_timeout (the boss's worker.lost), its connection died, its VM is "
         "gone or out of service, or a new incarnation replaced it: its attempts go back"),
)

_ALLOWED = _allowed(TASK_MOVES)
_ATTEMPT_ALLOWED = _allowed(ATTEMPT_MOVES)
_VM_ALLOWED = _allowed(VM_MOVES)
_WORKER_ALLOWED = _allowed(WORKER_MOVES)


def _check(state: State, allowed: dict[str, frozenset[tuple[str, str]]], what: str,
           current: str, target: str, cause: str) -> bool:
    """Whether ``current`` -> ``target`` is a move (False: the status stays);
    ReducerBug, before anything changes, when the table lacks it."""
    if current == target:
        return False
    if (current, target) not in allowed.get(cause, ()):
        raise ReducerBug(state.seq + 1, f"{what}: no move from {current} to {target} on "
                                        f"{cause!r} in its table")
    return True


def move_task(state: State, task: TaskRecord, target: str, cause: str) -> None:
    """Move ``task`` to ``target`` because of ``cause``, keeping the state's
    indexes in step; a move the table does not hold raises (before anything
    changes). Moving to the status it has is no move, and always allowed."""
    if _check(state, _ALLOWED, f"task {task.spec.id!r}", task.status, target, cause):
        state.reindex_status(task, target)


def may_move_task(state: State, task: TaskRecord, target: str, cause: str) -> bool:
    """The table's check alone, for the one reducer that keeps the indexes
    itself (a replaced spec changes the task's place in the ready queue):
    whether it is a move at all; raises when the table lacks it."""
    return _check(state, _ALLOWED, f"task {task.spec.id!r}", task.status, target, cause)


def move_attempt(state: State, task: TaskRecord, target: str, cause: str) -> None:
    """Move the task's latest attempt (the attempt table)."""
    if _check(state, _ATTEMPT_ALLOWED, f"attempt {task.attempt} of {task.spec.id!r}",
              task.attempt_status, target, cause):
        task.attempt_status = target


def begin_attempt(state: State, task: TaskRecord, number: int) -> None:
    """A new attempt of ``task``, numbered ``number``, given to a worker: its
    row in the attempt table is the one from ``(new)``, and the last one must
    have ended."""
    move_attempt(state, task, ATTEMPT_DISPATCHED, DISPATCHED_TO)
    task.attempt = number


def move_vm(state: State, vm: VMRecord, target: str, cause: str) -> None:
    """The same for a VM (the VM table). The caller keeps ``open_vms`` in step."""
    if _check(state, _VM_ALLOWED, f"VM {vm.vm_name!r}", vm.status, target, cause):
        vm.status = target


def move_worker(state: State, worker: WorkerRecord, target: str, cause: str) -> None:
    """The same for a worker (the worker table). The caller keeps ``free`` in step."""
    if _check(state, _WORKER_ALLOWED, f"worker {worker.worker_id!r}", worker.status, target,
              cause):
        worker.status = target


def markdown(moves: tuple[Move, ...] = TASK_MOVES) -> str:
    """A table as the README shows it."""
    lines = ["| from | to | when |", "| --- | --- | --- |"]
    for move in moves:
        sources = ", ".join(source or "(new)" for source in move.sources)
        lines.append(f"| {sources} | {move.target} | {move.cause}: {move.note} |")
    return "\n".join(lines) + "\n"


__all__ = ["ATTEMPT_MOVES", "TASK_MOVES", "VM_MOVES", "WORKER_MOVES", "Move", "begin_attempt",
           "markdown", "may_move_task", "move_attempt", "move_task", "move_vm", "move_worker"]
