"""The task, worker and VM state machines, as tables: every move a status
may make, and what makes it.

The reducers move a task only through :func:`move_task`, naming the cause;
a move the table does not hold is a bug of the reducer
(:class:`~ecloud.errors.ReducerBug`: the fold records it as refused, and
the property tests fail on any such refusal). The README's "Task states"
section is generated from :data:`TASK_MOVES` (:func:`markdown`), and a
test checks that the two agree, so the prose cannot drift from the code.

A task is born ``waiting``, ``ready`` or ``blocked`` when its batch is
submitted (by its dependencies); every later status comes from a move here.
"""

from __future__ import annotations

from attrs import frozen

from ecloud.errors import ReducerBug
from ecloud.projections.state import (
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
REQUEUED = "given back"
ANCESTOR_BLOCKS = "ancestor failed or cancelled"
ANCESTOR_RETRIED = "ancestor retried"
CANCELLED_BY = "operator cancel"
RETRIED = "operator retry"

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
         "the attempt failed (exit, signal, timeout, lost worker) and retries are left: ready "
         "again after its backoff, with a new attempt"),
    Move(FAILED_FOR_GOOD, _ACTIVE, FAILED,
         "the attempt failed and no retry is left; its descendants are blocked"),
    Move(REQUEUED, _ACTIVE, READY,
         "the attempt ended without running the command (given back unstarted, its worker "
         "lost before it started it): not a failure"),
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
    Move(SEEN_GONE, (VM_ALLOCATED, VM_OBSERVED, VM_FAILED, VM_KILLING), VM_GONE,
         "the pool has it DONE, or no more (vm.state_observed); its workers are lost at once"),
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
        lines.append(f"| {', '.join(move.sources)} | {move.target} | {move.cause}: {move.note} |")
    return "\n".join(lines) + "\n"


__all__ = ["TASK_MOVES", "VM_MOVES", "WORKER_MOVES", "Move", "markdown", "move_task", "move_vm",
           "move_worker"]
