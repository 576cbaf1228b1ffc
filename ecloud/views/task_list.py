"""Tasks picked by what an operator asks (``ecloud tasks``, a run's summary):
by state, name pattern, worker and time, sorted, as rows.

Every task keeps its last result in the state (status, attempt, exit code,
reason, what blocks it, when it finished), so this lists every failure of a
run however many there are - not only the recent failed attempts
``ecloud status`` shows."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

from ecloud.projections.state import State, TaskRecord

#: how rows can be sorted, and the key of each (ties: submission order)
SORTS = {
    "submitted": lambda t: (t.batch_seq, t.index),
    "id": lambda t: t.spec.id,
    "state": lambda t: (t.status, t.batch_seq, t.index),
    "finished": lambda t: (t.finished_at is None, t.finished_at or 0.0, t.batch_seq, t.index),
    "attempts": lambda t: (-t.attempt, t.batch_seq, t.index),
    "runtime": lambda t: (-(runtime(t) or -1.0), t.batch_seq, t.index),
}


def runtime(task: TaskRecord) -> float | None:
    """Seconds its last attempt ran: as its worker reported it (a quick
    attempt reports no start), else from its start and finish."""
    if task.ran_for is not None:
        return task.ran_for
    if task.started_at is None or task.finished_at is None:
        return None
    return max(0.0, task.finished_at - task.started_at)


def last_activity(task: TaskRecord) -> float:
    """When anything last happened to it that the state records."""
    return max(t for t in (task.submitted_at, task.dispatched_at, task.started_at,
                           task.finished_at, task.changed_at) if t is not None)


def name_matcher(pattern: str):
    """A glob (``sim-*``, ``sim-00[1-3]``) matched against the whole id."""
    regex = re.compile(fnmatch.translate(pattern))
    return lambda task_id: regex.match(task_id) is not None


def select(state: State, *, states: Iterable[str] = (), name: str | None = None,
           worker: str | None = None, since: float | None = None,
           among: Iterable[str] | None = None) -> list[TaskRecord]:
    """The tasks that pass every filter given, in submission order.
    ``worker``: its last attempt went to that worker; ``since``: something
    happened to it at or after that time; ``among``: only these ids."""
    wanted = frozenset(states)
    matches = name_matcher(name) if name else None
    tasks = state.tasks
    pool = (tasks[i] for i in among if i in tasks) if among is not None else tasks.values()
    picked = []
    for task in pool:
        if wanted and task.status not in wanted:
            continue
        if matches is not None and not matches(task.spec.id):
            continue
        if worker is not None and _last_worker(state, task) != worker:
            continue
        if since is not None and last_activity(task) < since:
            continue
        picked.append(task)
    picked.sort(key=SORTS["submitted"])
    return picked


def _last_worker(state: State, task: TaskRecord) -> str | None:
    return task.ran_on


def row(state: State, task: TaskRecord) -> dict[str, Any]:
    """One task as a program reads it (``ecloud tasks --json``)."""
    return {
        "id": task.spec.id, "state": task.status, "attempt": task.attempt,
        "attempt_status": task.attempt_status or None, "failures": task.failures,
        "worker": _last_worker(state, task), "exit_code": task.exit_code,
        "reason": task.reason or None, "blocked_by": task.blocked_by,
        "submitted_at": task.submitted_at, "dispatched_at": task.dispatched_at,
        "started_at": task.started_at, "finished_at": task.finished_at,
        "runtime": runtime(task), "command": task.spec.command,
    }


__all__ = ["SORTS", "last_activity", "name_matcher", "row", "runtime", "select"]
