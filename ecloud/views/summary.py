"""What the status page shows, as plain JSON-able data: progress per task
state with a rate and an ETA, the workers table, the VMs still booting,
failures (final ones with the tasks they block, and attempts that will
retry), throughput over the run, the autoscaler's last decisions, a
filtered page of the task list and one task's page. Built from a folded
state (at the head, or at any past seq: the page's time slider), so the
same function serves the live page and history.

Pure: what needs the log's events (an attempt's output tails, a task's
reports) is handed in by the caller, :mod:`ecloud.views.follower`.

Nothing secret goes in: no environments (a task's page names its
variables, never their values), no context values, no credentials; a log
URL is shown with its password masked. A task's own page shows its command:
the operator wrote it, and the page is only for them (see the README).
"""

from __future__ import annotations

import bisect
import fnmatch
import heapq
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.projections.autoscale import cloud_ceiling
from ecloud.projections.scheduler import unschedulable
from ecloud.projections.state import (
    BLOCKED,
    CANCELLED,
    DISPATCHED,
    FAILED,
    IDLE,
    LIVE,
    READY,
    RUNNING,
    SUCCEEDED,
    TASK_STATUSES,
    VM_ALLOCATED,
    VM_OBSERVED,
    VM_REQUESTED,
    WAITING,
    Failure,
    State,
    TaskRecord,
)
from ecloud.views.vms import vm_rows
from ecloud.views.workflows import workflow_rows

#: states a task stays in (it will not run again unless an operator says so)
DONE = (SUCCEEDED, FAILED, CANCELLED, BLOCKED)
#: states of tasks still to be run
PENDING = (WAITING, READY, DISPATCHED, RUNNING)
#: the completions the rate (and so the ETA) is measured over
RATE_WINDOW = 200
#: the shortest time the rate is measured over (seconds)
RATE_MIN_SPAN = 60.0
#: the decisions kept for the page
MAX_DECISIONS = 12
MAX_UNSCHEDULABLE = 50  # tasks the page names (ecloud status --json has them all)
DECISION_TYPES = (ev.VMRequested.TYPE, ev.VMKillRequested.TYPE, ev.VMFailed.TYPE)
#: final failures the page shows (the task list has them all), and the
#: blocked tasks it names under each (with their count)
MAX_FINAL = 20
MAX_BLOCKED_NAMED = 8
#: bars of the throughput chart at most, and the widths a bar may have (s)
THROUGHPUT_BARS = 60
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400)
#: rows of the task list per request at most, and by default
MAX_LIST = 500
DEFAULT_LIST = 100
#: tasks named per relation (children, blocked) on a task's page
MAX_RELATED = 200

#: ``(seqs) -> {seq: (stdout tail, stderr tail)}`` of the reports at those seqs
Tails = Callable[[Iterable[int]], Mapping[int, tuple[str, str]]]
#: ``(task id, attempt) -> the failure of that attempt`` (None: it did not fail)
FailureOf = Callable[[str, int], Failure | None]


def progress(state: State) -> dict[str, Any]:
    """Counts per state, what is done, and the recent completion rate with
    the ETA it gives (None until two tasks have finished)."""
    counts = {s: state.counts[s] for s in TASK_STATUSES}
    total = len(state.tasks)
    done = sum(counts[s] for s in DONE)
    pending = sum(counts[s] for s in PENDING)
    times = heapq.nlargest(RATE_WINDOW, (t.finished_at for t in state.tasks.values()
                                         if t.finished_at is not None))
    rate = eta = None
    if len(times) >= 2:
        # completions per second from the oldest of the window to now, over a
        # minute at least: a burst of quick tasks before long ones would
        # otherwise promise the end in no time
        rate = (len(times) - 1) / max(state.clock - times[-1], RATE_MIN_SPAN)
        eta = pending / rate if pending else 0.0
    return {"total": total, "counts": counts, "done": done, "pending": pending,
            "percent": round(100.0 * done / total, 1) if total else 0.0,
            "rate": rate, "eta_seconds": eta}


def workers(state: State) -> list[dict[str, Any]]:
    """The workers table: live ones first, then the departed, by id."""
    rows = []
    for wid in sorted(state.workers, key=lambda w: (state.workers[w].status not in LIVE, w)):
        w = state.workers[wid]
        vm = state.vm_with_id(w.vm_id)
        rows.append({
            "id": wid, "host": w.host, "vm": vm.vm_name if vm else None,
            "vm_id": w.vm_id, "ip": vm.ip if vm else None, "status": w.status,
            "slots": w.slots, "used": w.used,
            "running": [f"{t}#{a}" for t, a in sorted(w.running)],
            "idle_seconds": (state.clock - w.idle_since
                             if w.status == IDLE and w.idle_since is not None else None),
            "last_seen_seconds": max(0.0, state.clock - w.last_seen),
            "reason": w.reason if w.status not in LIVE else "",
        })
    return rows


def booting(state: State) -> list[dict[str, Any]]:
    """VMs asked for that no worker has announced itself from yet."""
    rows = []
    for name in state.open_vms:
        vm = state.vms[name]
        if vm.status in (VM_REQUESTED, VM_ALLOCATED, VM_OBSERVED) and vm.announced_at is None:
            rows.append({"vm": name, "vm_id": vm.vm_id, "status": vm.status, "ip": vm.ip,
                         "seconds": max(0.0, state.clock - vm.requested_at)})
    return rows


# ------------------------------------------------------------------- failures


def retrying(state: State) -> list[dict[str, Any]]:
    """The recent failed attempts that left a retry, newest first, each with
    where its task stands now (a later attempt may have succeeded)."""
    rows = []
    for f in reversed(state.recent_failures):
        if f.final:
            continue
        task = state.tasks.get(f.task_id)
        rows.append({"seq": f.seq, "task": f.task_id, "attempt": f.attempt, "worker": f.worker,
                     "reason": f.reason, "status": task.status if task else None,
                     "stderr_tail": ""})
    return rows


def blocked_under(state: State, roots: Iterable[str]) -> dict[str, tuple[int, list[str]]]:
    """For each of ``roots``: how many tasks it blocks (``blocked_by``, the
    failed or cancelled ancestor at the root of the block) and the first few
    of them, in submission order."""
    found: dict[str, tuple[int, list[str]]] = {root: (0, []) for root in roots}
    if not found or not state.counts[BLOCKED]:
        return found
    for task in state.tasks.values():
        if task.status == BLOCKED and task.blocked_by in found:
            count, named = found[task.blocked_by]
            if len(named) < MAX_BLOCKED_NAMED:
                named.append(task.spec.id)
            found[task.blocked_by] = (count + 1, named)
    return found


def _failure(state: State, task: TaskRecord, failure_of: FailureOf | None) -> Failure | None:
    """The failure that ended the task's latest attempt: from the caller's
    index of every failure, else from the state's recent ones."""
    if failure_of is not None:
        found = failure_of(task.spec.id, task.attempt)
        if found is not None:
            return found
    return next((f for f in reversed(state.recent_failures)
                 if f.task_id == task.spec.id and f.attempt == task.attempt), None)


def final_failures(state: State, failure_of: FailureOf | None = None) -> list[dict[str, Any]]:
    """The tasks failed for good, newest first (at most :data:`MAX_FINAL`),
    each with the tasks it blocks named under it."""
    if not state.counts[FAILED]:
        return []
    failed = (t for t in state.tasks.values() if t.status == FAILED)
    newest = heapq.nlargest(MAX_FINAL, failed,
                            key=lambda t: (t.finished_at or 0.0, t.batch_seq, t.index))
    blocked = blocked_under(state, (t.spec.id for t in newest))
    rows = []
    for task in newest:
        failure = _failure(state, task, failure_of)
        count, named = blocked[task.spec.id]
        rows.append({"task": task.spec.id, "attempt": task.attempt,
                     "worker": failure.worker if failure else None,
                     "seq": failure.seq if failure else None, "reason": task.reason,
                     "ts": task.finished_at, "stderr_tail": "",
                     "blocked_total": count, "blocked": named})
    return rows


def fill_tails(data: dict[str, Any], tails: Tails) -> dict[str, Any]:
    """Put the stderr tail of each failure the page shows into ``data`` (read
    apart from building it: the reports are in the log, not the state)."""
    rows = [*data["final_failures"], *data["retrying"]]
    found = tails({row["seq"] for row in rows if row["seq"] is not None})
    for row in rows:
        if row["seq"] in found:
            row["stderr_tail"] = found[row["seq"]][1]
    return data


# ----------------------------------------------------------------- decisions


def requested_by(reason: str) -> str:
    """Who asked for a VM, from its request's reason: the commands that keep
    local workers name themselves (``ecloud run --local``, ``ecloud-boss
    --local``), any other ecloud command is the operator's (``ecloud workers
    spawn``), and every other reason is the autoscaler's ("scale up: ...")."""
    if reason.startswith("ecloud run"):
        return "ecloud run"
    if reason.startswith("ecloud-boss --local"):
        return "ecloud-boss --local"
    if reason.startswith("ecloud "):
        return "operator"
    return "autoscaler"


def decision_row(rec: Recorded, state: State) -> dict[str, Any] | None:
    """A VM request, kill or failure as a line of the decisions table
    (``state``: any state that knows the VM, to name a kill's VM)."""
    e = rec.event
    if isinstance(e, ev.VMRequested):
        return {"seq": rec.seq, "ts": rec.ts, "action": "spawn", "vm": e.vm_name,
                "reason": e.reason, "by": requested_by(e.reason)}
    if isinstance(e, ev.VMKillRequested):
        return {"seq": rec.seq, "ts": rec.ts, "action": "kill",
                "vm": state.vm_ids.get(e.vm_id, f"id {e.vm_id}"), "reason": e.reason,
                "by": e.source}
    if isinstance(e, ev.VMFailed):
        return {"seq": rec.seq, "ts": rec.ts, "action": "failed", "vm": e.vm_name,
                "reason": f"{e.kind}: {e.reason}", "by": "cloud"}
    return None


def recent_decisions(records: Iterable[Recorded], state: State,
                     keep: int = MAX_DECISIONS) -> list[dict[str, Any]]:
    """The last ``keep`` decisions among ``records``, newest first."""
    rows = [row for rec in records if (row := decision_row(rec, state)) is not None]
    return rows[::-1][:keep]


# ---------------------------------------------------------------- throughput


def bar_width(span: float, bars: int = THROUGHPUT_BARS) -> int:
    """The shortest round interval (1 s, 2 s, 5 s, ... a day, then whole
    days) that covers ``span`` seconds in at most ``bars`` bars: round, so
    people can read the chart's bars as "per minute", "per 5 minutes"."""
    wanted = max(span, 1.0) / bars
    for step in NICE_STEPS:
        if step >= wanted:
            return step
    return 86400 * math.ceil(wanted / 86400)


def throughput(state: State) -> dict[str, Any]:
    """Tasks finished (succeeded or failed for good, by when their last
    attempt ended) per interval, from the first submission to the state's
    clock: ``start`` (a multiple of ``interval``), ``interval`` (seconds),
    and one count per bar in ``succeeded`` and ``failed``. (Tasks are kept
    in submission order, so the first is the earliest; the rest is two
    comprehensions and a sort of times mostly in order already: 100,000
    tasks in a few ms.)"""
    tasks = state.tasks.values()
    first = next(iter(tasks)).submitted_at if tasks else state.clock
    end = max(state.clock, first)
    interval = bar_width(end - first)
    start = math.floor(first / interval) * interval
    bars = max(1, math.floor((end - start) / interval) + 1)

    def per_bar(times: list[float]) -> list[int]:
        times.sort()  # about in order already: tasks finish roughly as they were submitted
        edges = [bisect.bisect_left(times, start + i * interval) for i in range(1, bars)]
        edges = [0, *edges, len(times)]
        return [edges[i + 1] - edges[i] for i in range(bars)]

    return {"start": start, "interval": interval, "end": end,
            "succeeded": per_bar([t.finished_at for t in tasks if t.status == SUCCEEDED]),
            "failed": per_bar([t.finished_at for t in tasks if t.status == FAILED])}


# ---------------------------------------------------------------------- page


def page(state: State, *, head: int, source: str, decisions: list[dict[str, Any]],
         failure_of: FailureOf | None = None) -> dict[str, Any]:
    """Everything the page shows at ``state.seq`` (the failures' stderr tails
    empty: :func:`fill_tails` puts them in)."""
    return {
        "seq": state.seq, "head": head, "clock": state.clock, "source": source,
        "progress": progress(state),
        "throughput": throughput(state),
        "workers": workers(state),
        "booting": booting(state),
        "vms": [row for row in vm_rows(state, state.clock) if row["status"] != "gone"],
        "final_failures": final_failures(state, failure_of),
        "retrying": retrying(state),
        "unschedulable": [{"task": task_id, "reason": why}
                          for task_id, why in list(unschedulable(state).items())[:MAX_UNSCHEDULABLE]],
        "decisions": decisions,
        "rejected_inputs": len(state.rejected),
        "ready_in_backoff": sum(1 for t in state.tasks.values()
                                if t.status == READY and t.not_before is not None),
        "cloud_ceiling": cloud_ceiling(state),
        "workflows": workflow_rows(state),
    }


# ----------------------------------------------------------------- task list


def id_matcher(query: str) -> Callable[[str], bool]:
    """What the task list's search box means: a glob (``sim-01*``,
    ``post-0[1-3]``) against the whole id when it has a wildcard, else a
    substring of the id, in any case."""
    if any(c in query for c in "*?["):
        return re.compile(fnmatch.translate(query)).match  # type: ignore[return-value]
    folded = query.casefold()
    return lambda task_id: folded in task_id.casefold()


def task_row(task: TaskRecord) -> dict[str, Any]:
    """One task as a line of a list. ``worker``: the one holding it, else the
    one its last attempt ran on, where the state keeps that (``ran_on``)."""
    return {"id": task.spec.id, "status": task.status, "attempt": task.attempt,
            "attempt_status": task.attempt_status,
            "worker": task.worker or getattr(task, "ran_on", None),
            "reason": task.reason, "blocked_by": task.blocked_by,
            "finished_at": task.finished_at}


def task_list(state: State, *, query: str = "", states: Sequence[str] = (),
              blocked_by: str | None = None, group: str | None = None,
              key_of: Mapping[str, str] | None = None, offset: int = 0,
              limit: int = DEFAULT_LIST) -> dict[str, Any]:
    """A page of the tasks that match, in submission order: ``query`` (see
    :func:`id_matcher`), ``blocked_by`` (the root of their block), ``group``
    (a DAG node's key under ``key_of``), then ``states``. ``counts`` are per
    state of the tasks that pass every filter but the states (what each
    state filter would show); ``matched`` counts those that pass them all.
    One pass, however many tasks: the browser gets ``limit`` rows at most."""
    matches = id_matcher(query) if query else None
    wanted = frozenset(states)
    counts = dict.fromkeys(TASK_STATUSES, 0)
    rows: list[dict[str, Any]] = []
    matched = 0
    for tid, task in state.tasks.items():
        if (matches is not None and not matches(tid)) \
                or (blocked_by is not None and task.blocked_by != blocked_by) \
                or (group is not None and (key_of is None or key_of.get(tid) != group)):
            continue
        counts[task.status] += 1
        if wanted and task.status not in wanted:
            continue
        if offset <= matched < offset + limit:
            rows.append(task_row(task))
        matched += 1
    return {"seq": state.seq, "total": len(state.tasks), "matched": matched, "counts": counts,
            "offset": offset, "limit": limit, "rows": rows}


# ----------------------------------------------------------------- task page


def _related(state: State, ids: Iterable[str], keep: int = MAX_RELATED) -> dict[str, Any]:
    """Tasks as (id, status) rows, the first ``keep`` of them, and how many."""
    rows, total = [], 0
    for tid in ids:
        total += 1
        if total <= keep:
            task = state.tasks.get(tid)
            rows.append({"id": tid, "status": task.status if task else None})
    return {"total": total, "rows": rows}


def spec_of(task: TaskRecord) -> dict[str, Any]:
    """The task's spec as its page shows it: the environment's names only
    (values may be secrets)."""
    spec = task.spec
    command = spec.command if isinstance(spec.command, str) else list(spec.command)
    return {"command": command, "depends_on": list(spec.depends_on),
            "inputs": [{"path": i.path, "name": i.name, "sha256": i.sha256,
                        "from_task": i.from_task} for i in spec.inputs],
            "outputs": list(spec.outputs), "results": spec.results_folder,
            "retries": spec.retries, "retry_backoff": spec.retry_backoff,
            "timeout": spec.timeout, "priority": spec.priority, "slots": spec.slots,
            "env": sorted(spec.env)}


def _attempt(number: int) -> dict[str, Any]:
    return {"attempt": number, "worker": None, "dispatched_at": None, "dispatched_seq": None,
            "started_at": None, "finished_at": None, "finished_seq": None, "duration": None,
            "exit_code": None, "signal": None, "outcome": "", "reason": "", "final": None,
            "stdout_tail": "", "stderr_tail": "", "staged": []}


def _outcome(e: ev.TaskFinished) -> str:
    if e.returned:
        return "given back"
    return SUCCEEDED if e.exit_code == 0 and not e.reason else FAILED


def _report(row: dict[str, Any], rec: Recorded) -> None:
    """Fill an attempt's row from one of its task's events."""
    e = rec.event
    if isinstance(e, ev.TaskDispatched):
        row.update(worker=e.worker_id, dispatched_at=rec.ts, dispatched_seq=rec.seq)
    elif isinstance(e, ev.TaskStarted):
        row.update(worker=row["worker"] or e.worker_id, started_at=rec.ts)
    elif isinstance(e, ev.TaskFinished):
        row.update(worker=row["worker"] or e.worker_id, finished_at=rec.ts, finished_seq=rec.seq,
                   duration=e.duration, exit_code=e.exit_code, signal=e.signal,
                   outcome=_outcome(e), reason=e.reason, stdout_tail=e.stdout_tail,
                   stderr_tail=e.stderr_tail,
                   staged=[{"direction": f.direction, "name": f.name, "path": f.path,
                            "sha256": f.sha256, "bytes": f.bytes} for f in e.staged])


def attempts(task: TaskRecord, records: Iterable[Recorded], failure_of: FailureOf | None,
             ends: Mapping[int, tuple[str, str]]) -> list[dict[str, Any]]:
    """Every attempt of the task, oldest first: who ran it and when, from its
    task's events (``records``); how it ended from its report, else from its
    failure (a timeout has no report), else from ``ends`` (attempt ->
    (status, reason) for one whose worker went or that was cancelled), and
    for the latest from the task's record."""
    rows = {n: _attempt(n) for n in range(1, task.attempt + 1)}
    notes = []
    for rec in records:
        e = rec.event
        number = getattr(e, "attempt", None)
        if number in rows:
            _report(rows[number], rec)
        elif isinstance(e, (ev.TaskCancelled, ev.RetryRequested, ev.TasksReplaced)):
            notes.append(rec)
    for number, row in rows.items():
        failure = failure_of(task.spec.id, number) if failure_of is not None else None
        if failure is not None:
            row.update(final=failure.final, reason=row["reason"] or failure.reason,
                       worker=row["worker"] or failure.worker)
            row["outcome"] = row["outcome"] or FAILED
        if not row["outcome"]:
            status, reason = ends.get(number, ("", ""))
            if number == task.attempt:
                status, reason = task.attempt_status, task.reason
            row.update(outcome=status or "ended without a report", reason=row["reason"] or reason)
    return list(rows.values())


def _notes(records: Iterable[Recorded], task_id: str) -> list[dict[str, Any]]:
    """What the operator did to the task: cancels, retries, replaced specs."""
    out = []
    for rec in records:
        e = rec.event
        if isinstance(e, ev.TaskCancelled):
            out.append({"seq": rec.seq, "ts": rec.ts, "what": f"cancelled: {e.reason}".rstrip(": ")})
        elif isinstance(e, ev.RetryRequested):
            out.append({"seq": rec.seq, "ts": rec.ts, "what": f"retried: {e.reason}".rstrip(": ")})
        elif isinstance(e, ev.TasksReplaced) and any(t.id == task_id for t in e.tasks):
            out.append({"seq": rec.seq, "ts": rec.ts, "what": "spec replaced (push --replace)"})
    return out


def task_page(state: State, task_id: str, records: Sequence[Recorded],
              failure_of: FailureOf | None = None,
              ends: Mapping[int, tuple[str, str]] | None = None) -> dict[str, Any] | None:
    """One task's page at ``state.seq``: its record, its spec, every attempt
    with its output tails, and its lineage (parents, children, and the tasks
    it blocks, with their states); None if the state has no such task.
    ``records``: the events that name it (dispatches, starts, reports,
    cancels, retries, replacements), oldest first."""
    task = state.tasks.get(task_id)
    if task is None:
        return None
    blocker = state.tasks.get(task.blocked_by) if task.blocked_by else None
    blocks = (t for t, r in state.tasks.items() if r.status == BLOCKED and r.blocked_by == task_id)
    return {
        "seq": state.seq, "clock": state.clock, **task_row(task),
        "failures": task.failures, "exit_code": task.exit_code,
        "blocked_by": ({"id": task.blocked_by, "status": blocker.status if blocker else None}
                       if task.blocked_by else None),
        "submitted_at": task.submitted_at, "dispatched_at": task.dispatched_at,
        "started_at": task.started_at, "not_before": task.not_before,
        "spec": spec_of(task),
        "attempts": attempts(task, records, failure_of, ends or {}),
        "notes": _notes(records, task_id),
        "parents": _related(state, task.spec.depends_on),
        "children": _related(state, state.children.get(task_id, ())),
        "blocks": _related(state, blocks if state.counts[BLOCKED] else ()),
    }
