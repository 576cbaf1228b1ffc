"""The task state machine, as a table: every move a task's status may make,
and what makes it.

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
    CANCELLED,
    DISPATCHED,
    FAILED,
    READY,
    RUNNING,
    SUCCEEDED,
    WAITING,
    State,
    TaskRecord,
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

_ALLOWED: dict[str, frozenset[tuple[str, str]]] = {}
for _move in TASK_MOVES:
    _ALLOWED[_move.cause] = _ALLOWED.get(_move.cause, frozenset()) | {
        (source, _move.target) for source in _move.sources}


def move_task(state: State, task: TaskRecord, target: str, cause: str) -> None:
    """Move ``task`` to ``target`` because of ``cause``, keeping the state's
    indexes in step; a move the table does not hold raises (before anything
    changes). Moving to the status it has is no move, and always allowed."""
    if task.status == target:
        return
    if (task.status, target) not in _ALLOWED.get(cause, ()):
        raise ReducerBug(state.seq + 1, f"task {task.spec.id!r}: no move from {task.status} to "
                                        f"{target} on {cause!r} in the task table")
    state.reindex_status(task, target)


def markdown() -> str:
    """The table as the README shows it."""
    lines = ["| from | to | when |", "| --- | --- | --- |"]
    for move in TASK_MOVES:
        lines.append(f"| {', '.join(move.sources)} | {move.target} | {move.cause}: {move.note} |")
    return "\n".join(lines) + "\n"


__all__ = ["TASK_MOVES", "Move", "markdown", "move_task"]
