"""Reading a state for a person: why a task is where it is, and what changed
between two points of the log. Pure functions of folded states, used by
``ecloud-replay --why`` and ``--diff``."""

from __future__ import annotations

import datetime as dt

from ecloud.projections.scheduler import unschedulable
from ecloud.projections.state import (
    BLOCKED,
    CANCELLED,
    DISPATCHED,
    FAILED,
    LIVE,
    READY,
    RUNNING,
    SUCCEEDED,
    WAITING,
    State,
)


def at_text(ts: float | None, none: str = "?") -> str:
    """A moment as ``YYYY-MM-DD HH:MM:SS`` (UTC). A moment no calendar
    holds (a backoff of 1e300 seconds ends there) is said in epoch seconds."""
    if ts is None:
        return none
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return f"{ts:.6g} s after 1970 (beyond any calendar)"


_at = at_text


def why(state: State, task_id: str) -> list[str]:
    """Lines explaining the task's status at ``state.seq``: which dependency
    holds it, which worker has it, which timeout or backoff applies."""
    task = state.tasks[task_id]
    spec = task.spec
    lines = [f"{task_id} is {task.status} at seq {state.seq} (attempt {task.attempt}, "
             f"{task.failures} failed of {spec.retries} retries allowed)"]
    if task.status == WAITING:
        never = unschedulable(state)
        for dep in spec.depends_on:
            parent = state.tasks[dep]
            if parent.status != SUCCEEDED:
                lines.append(f"  waits for {dep}, which is {parent.status}"
                             + (f" and unschedulable: {never[dep]}" if dep in never else ""))
    elif task.status == READY:
        if task.not_before is not None and task.not_before > state.clock:
            lines.append(f"  in retry backoff until {_at(task.not_before)} after: {task.reason}")
        else:
            fits = [w for w in state.workers.values()
                    if w.status in ("idle", "busy") and w.slots - w.used >= spec.slots]
            if fits:
                lines.append(f"  eligible; {len(fits)} worker(s) have {spec.slots} free slot(s): "
                             "the next scheduling round dispatches it")
            else:
                live = sum(1 for w in state.workers.values() if w.status in LIVE)
                lines.append(f"  needs {spec.slots} free slot(s); no live worker has them "
                             f"({live} live worker(s))")
                never = unschedulable(state).get(task_id)
                if never is not None:
                    lines.append(f"  unschedulable: {never}")
            if task.reason:
                lines.append(f"  back in the queue because: {task.reason}")
    elif task.status in (DISPATCHED, RUNNING):
        worker = state.workers.get(task.worker or "")
        since = task.started_at if task.status == RUNNING else task.dispatched_at
        lines.append(f"  on worker {task.worker} since {_at(since)}"
                     + (f" (worker {worker.status}, last heard {_at(worker.last_seen)})" if worker else ""))
        if task.status == DISPATCHED:
            lines.append("  the worker has not reported it started yet; the boss resends the dispatch")
        if task.deadline is not None:
            lines.append(f"  the boss fails the attempt if no result by {_at(task.deadline)} "
                         f"(timeout {spec.timeout:g}s + grace)")
    elif task.status == BLOCKED:
        root = task.blocked_by or "?"
        via = [d for d in spec.depends_on if state.tasks[d].status in (FAILED, CANCELLED, BLOCKED)]
        root_task = state.tasks.get(root)
        lines.append(f"  blocked by {root}"
                     + (f" ({root_task.status}: {root_task.reason})" if root_task else "")
                     + (f" through {', '.join(via)}" if via and via != [root] else ""))
        lines.append(f"  `ecloud retry {root}` would unblock it")
    elif task.status == FAILED:
        lines.append(f"  failed for good: {task.reason} (exit code {task.exit_code})")
    elif task.status == CANCELLED:
        lines.append(f"  cancelled: {task.reason}")
    elif task.status == SUCCEEDED:
        lines.append(f"  succeeded at {_at(task.finished_at)} on attempt {task.attempt}")
    return lines


def diff(a: State, b: State) -> list[str]:
    """What changed from state ``a`` to state ``b`` (a later point of the same log)."""
    lines = [f"from seq {a.seq} ({_at(a.clock)}) to seq {b.seq} ({_at(b.clock)}): "
             f"{b.seq - a.seq} event(s)"]
    for status in b.counts:
        delta = b.counts[status] - a.counts.get(status, 0)
        if delta:
            lines.append(f"  {status}: {a.counts.get(status, 0)} -> {b.counts[status]} ({delta:+d})")
    for task_id, after in b.tasks.items():
        before = a.tasks.get(task_id)
        if before is None:
            lines.append(f"  task {task_id}: new ({after.status})")
        elif before.status != after.status or before.attempt != after.attempt:
            lines.append(f"  task {task_id}: {before.status} -> {after.status}"
                         + (f" (attempt {before.attempt} -> {after.attempt})"
                            if before.attempt != after.attempt else ""))
    for worker_id in sorted(b.workers):
        after = b.workers[worker_id]
        before = a.workers.get(worker_id)
        if before is None:
            lines.append(f"  worker {worker_id}: new ({after.status})")
        elif before.status != after.status:
            lines.append(f"  worker {worker_id}: {before.status} -> {after.status}"
                         + (f" ({after.reason})" if after.reason else ""))
    for key in sorted(set(a.context) | set(b.context)):
        if a.context.get(key) != b.context.get(key):
            lines.append(f"  context {key}: {a.context.get(key)} -> {b.context.get(key)}")
    return lines
