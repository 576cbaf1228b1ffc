"""What the status page shows, as plain JSON-able data: progress per task
state with a rate and an ETA, the workers table, the VMs still booting,
recent failures with their stderr tails, and the autoscaler's last
decisions. Built from a folded state (at the head, or at any past seq: the
page's time slider), so the same function serves the live page and history.

Nothing secret goes in: no commands, no environments, no context values, no
credentials; a log URL is shown with its password masked.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
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
    State,
)
from ecloud.views.vms import vm_rows

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

#: ``(seq) -> (stdout tail, stderr tail)`` of the report at that seq
Tails = Callable[[int], tuple[str, str]]


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


def failures(state: State, tails: Tails | None = None) -> list[dict[str, Any]]:
    """Recent failed attempts, newest first, with the stderr tail of each."""
    rows = []
    for f in reversed(state.recent_failures):
        row = {"seq": f.seq, "task": f.task_id, "attempt": f.attempt, "worker": f.worker,
               "reason": f.reason, "final": f.final, "stderr_tail": ""}
        if tails is not None:
            row["stderr_tail"] = tails(f.seq)[1]
        rows.append(row)
    return rows


def decision_row(rec: Recorded, state: State) -> dict[str, Any] | None:
    """A VM request, kill or failure as a line of the decisions table
    (``state``: any state that knows the VM, to name a kill's VM)."""
    e = rec.event
    if isinstance(e, ev.VMRequested):
        # the autoscaler's requests say why; an operator's name the command
        by = "operator" if e.reason.startswith("ecloud") else "autoscaler"
        return {"seq": rec.seq, "ts": rec.ts, "action": "spawn", "vm": e.vm_name,
                "reason": e.reason, "by": by}
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


def page(state: State, *, head: int, source: str, decisions: list[dict[str, Any]],
         tails: Tails | None = None) -> dict[str, Any]:
    """Everything the page shows at ``state.seq``."""
    return {
        "seq": state.seq, "head": head, "clock": state.clock, "source": source,
        "progress": progress(state),
        "workers": workers(state),
        "booting": booting(state),
        "vms": [row for row in vm_rows(state, state.clock) if row["status"] != "gone"],
        "failures": failures(state, tails),
        "unschedulable": [{"task": task_id, "reason": why}
                          for task_id, why in list(unschedulable(state).items())[:MAX_UNSCHEDULABLE]],
        "decisions": decisions,
        "rejected_inputs": len(state.rejected),
        "ready_in_backoff": sum(1 for t in state.tasks.values()
                                if t.status == READY and t.not_before is not None),
        "cloud_ceiling": cloud_ceiling(state),
    }
