"""How the state and the events look to a person (rich tables) and to a
program (plain JSON-able dicts). Read-only; shared by ``ecloud`` and
``ecloud-replay``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Console
from rich.table import Table

from ecloud.events import types as ev
from ecloud.events.codec import converter
from ecloud.projections import context
from ecloud.projections.state import LIVE, READY, TASK_STATUSES, State

STATUS_STYLE = {
    "waiting": "dim", "ready": "cyan", "dispatched": "blue", "running": "bold blue",
    "succeeded": "green", "failed": "bold red", "blocked": "yellow", "cancelled": "magenta",
    "idle": "green", "busy": "bold blue", "draining": "yellow", "lost": "red", "gone": "dim",
}


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


# ------------------------------------------------------------------ the state


def status_data(state: State) -> dict[str, Any]:
    """``ecloud status --json``: counts, workers, recent failures."""
    backoff = sum(1 for t in state.tasks.values() if t.status == READY and t.not_before is not None)
    workers = []
    for wid in sorted(state.workers):
        w = state.workers[wid]
        workers.append({
            "id": wid, "host": w.host, "status": w.status, "slots": w.slots, "used": w.used,
            "running": [{"task": t, "attempt": a} for (t, a) in sorted(w.running)],
            "last_seen": w.last_seen, "vm_id": w.vm_id, "reason": w.reason,
        })
    return {
        "seq": state.seq,
        "clock": state.clock,
        "tasks": {"total": len(state.tasks), **{s: state.counts[s] for s in TASK_STATUSES},
                  "in_backoff": backoff},
        "workers": workers,
        "recent_failures": [converter.unstructure(f) for f in reversed(state.recent_failures)],
        "rejected_inputs": len(state.rejected),
    }


def render_status(state: State, console: Console, title: str = "", now: float | None = None) -> None:
    """``now``: the time "last seen" is measured from (default: the state's
    own clock, right for a past state; ``ecloud status`` passes the present)."""
    data = status_data(state)
    console.print(f"[bold]{title or 'ecloud'}[/] · seq {state.seq} · {when(state.clock)}")
    counts = Table(title=f"Tasks ({data['tasks']['total']})", title_justify="left")
    counts.add_column("state")
    counts.add_column("count", justify="right")
    for status in TASK_STATUSES:
        n = state.counts[status]
        label = f"[{STATUS_STYLE[status]}]{status}[/]"
        extra = f" ({data['tasks']['in_backoff']} in retry backoff)" if status == READY and data["tasks"]["in_backoff"] else ""
        counts.add_row(label, f"{n}{extra}")
    console.print(counts)
    render_workers(state, console, now)
    if state.recent_failures:
        table = Table(title="Recent failures", title_justify="left")
        for col in ("seq", "task", "attempt", "worker", "reason", "outcome"):
            table.add_column(col)
        for f in reversed(state.recent_failures):
            table.add_row(str(f.seq), f.task_id, str(f.attempt), f.worker or "-", f.reason,
                          "[red]failed for good[/]" if f.final else "will retry")
        console.print(table)
    if state.rejected:
        console.print(f"[yellow]{len(state.rejected)} input(s) rejected[/] "
                      "(see: ecloud log --type input.rejected, ecloud-replay)")


def render_workers(state: State, console: Console, now: float | None = None) -> None:
    live = [w for w in state.workers.values() if w.status in LIVE]
    table = Table(title=f"Workers ({len(live)} live, {len(state.workers)} known)", title_justify="left")
    for col in ("worker", "host", "state", "slots", "running", "last seen"):
        table.add_column(col)
    for wid in sorted(state.workers):
        w = state.workers[wid]
        running = ", ".join(f"{t}#{a}" for t, a in sorted(w.running)) or "-"
        table.add_row(wid, w.host, f"[{STATUS_STYLE[w.status]}]{w.status}[/]",
                      f"{w.used}/{w.slots}", running,
                      ago(w.last_seen, state.clock if now is None else now))
    console.print(table)


def render_context(state: State, console: Console) -> None:
    table = Table(title="Context", title_justify="left")
    for col in ("key", "value", "meaning"):
        table.add_column(col)
    for key in sorted(context.KEYS):
        spec = context.KEYS[key]
        if key in state.context:
            value = state.context[key]
        elif spec.default is not None:
            value = f"[dim]{spec.default} (default)[/]"
        else:
            value = "[dim]unset[/]"
        table.add_row(key, value, spec.description)
    console.print(table)


# ---------------------------------------------------------------- the events


def _short(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit})" if len(items) > limit else "")


def summarise(event: Any) -> str:
    """One line saying what an event means."""
    if isinstance(event, ev.TasksSubmitted):
        src = f" from {event.source}" if event.source else ""
        return f"batch {event.batch_id}: {len(event.tasks)} task(s){src}: {_short([t.id for t in event.tasks])}"
    if isinstance(event, ev.TaskDispatched):
        return f"{event.task_id} attempt {event.attempt} -> {event.worker_id}"
    if isinstance(event, ev.TaskStarted):
        return f"{event.task_id} attempt {event.attempt} started on {event.worker_id}"
    if isinstance(event, ev.TaskFinished):
        if event.exit_code is not None:
            outcome = f"exit {event.exit_code}"
        elif event.signal is not None:
            outcome = f"signal {event.signal}"
        else:
            outcome = "no exit code"
        text = f"{event.task_id} attempt {event.attempt} on {event.worker_id}: {outcome} in {event.duration:.1f}s"
        if event.reason:
            text += f" ({event.reason})"
        if event.exit_code != 0 and event.stderr_tail:
            text += f" stderr: {event.stderr_tail.strip().splitlines()[-1][:120]}"
        return text
    if isinstance(event, ev.WorkerAnnounced):
        return f"{event.worker_id} on {event.host}: {event.slots} slot(s), protocol {event.protocol}"
    if isinstance(event, ev.ContextSet):
        return f"{event.key} = {event.value}"
    fields = converter.unstructure(event)
    return " ".join(f"{k}={v}" for k, v in fields.items() if v not in ("", None, [], {}))
