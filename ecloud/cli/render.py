"""How the state and the events look to a person (rich tables) and to a
program (plain JSON-able dicts). Read-only; shared by ``ecloud`` and
``ecloud-replay``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ecloud.events import types as ev
from ecloud.events.codec import converter
from ecloud.inspect.explain import at_text
from ecloud.projections import context
from ecloud.projections.autoscale import cloud_ceiling
from ecloud.projections.scheduler import unschedulable
from ecloud.projections.state import BLOCKED, FAILED, FINAL, LIVE, READY, TASK_STATUSES, State
from ecloud.views import task_list
from ecloud.views.vms import precise_when, state_with_codes
from ecloud.views.workflows import workflow_rows

#: statuses a task stays in until an operator acts
FINISHED_STATES = FINAL | {BLOCKED}

STATUS_STYLE = {
    "waiting": "dim", "ready": "cyan", "dispatched": "blue", "running": "bold blue",
    "succeeded": "green", "failed": "bold red", "blocked": "yellow", "cancelled": "magenta",
    "idle": "green", "busy": "bold blue", "draining": "yellow", "lost": "red", "gone": "dim",
}


def when(ts: float | None) -> str:
    return at_text(ts, "-") if ts else "-"


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
            "queued_ahead": max(0, w.used - w.slots),
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
        # every task failed for good, however many (the recent failures are bounded)
        "failed": [{"task": t.spec.id, "attempt": t.attempt, "reason": t.reason,
                    "exit_code": t.exit_code, "worker": t.ran_on, "finished_at": t.finished_at}
                   for t in task_list.select(state, states=(FAILED,))],
        "rejected_inputs": len(state.rejected),
        "unschedulable": [{"task": t, "reason": why} for t, why in unschedulable(state).items()],
        "unknown_workers": [{"id": w, "last_heard": at} for w, at in state.strangers.items()],
        "cloud_ceiling": cloud_ceiling(state),
        "workflows": workflow_rows(state),  # ecloud.views.workflows
    }


#: failed tasks and retried attempts ``ecloud status`` names (the rest: ecloud tasks)
STATUS_NAMES = 10


def render_failures(state: State, console: Console) -> None:
    """The tasks that failed for good (the latest first; past
    :data:`STATUS_NAMES`, how many more and where to see them), how many are
    blocked behind them, and the recent failed attempts that will retry."""
    failed = task_list.select(state, states=(FAILED,))
    if failed:
        failed.sort(key=lambda t: t.finished_at or 0.0, reverse=True)
        table = Table(title=f"Failed tasks ({len(failed)})", title_justify="left")
        for col in ("task", "attempt", "worker", "finished", "reason", "output"):
            table.add_column(col)
        for t in failed[:STATUS_NAMES]:
            table.add_row(escape(t.spec.id), str(t.attempt), escape(t.ran_on or "-"),
                          when(t.finished_at), escape(t.reason),
                          f"ecloud logs {escape(t.spec.id)}")
        console.print(table)
        if len(failed) > STATUS_NAMES:
            console.print(f"  ... and {len(failed) - STATUS_NAMES} more: "
                          "ecloud tasks --state failed")
    blocked = state.counts[BLOCKED]
    if blocked:
        console.print(f"[yellow]{blocked} task(s) blocked[/] behind failed or cancelled tasks "
                      "(ecloud tasks --state blocked; retrying the failed task runs them again)")
    # only of tasks still under way: a retry that has since succeeded or
    # failed for good is history (ecloud-replay --task tells it)
    retries = [f for f in reversed(state.recent_failures)
               if not f.final and state.tasks[f.task_id].status not in FINISHED_STATES
               ][:STATUS_NAMES]
    if retries:
        table = Table(title="Recent failed attempts that will retry", title_justify="left")
        for col in ("seq", "task", "attempt", "worker", "reason"):
            table.add_column(col)
        for f in retries:
            table.add_row(str(f.seq), escape(f.task_id), str(f.attempt), escape(f.worker or "-"),
                          escape(f.reason))
        console.print(table)


def render_status(state: State, console: Console, title: str = "", now: float | None = None) -> None:
    """``now``: the time "last seen" is measured from (default: the state's
    own clock, right for a past state; ``ecloud status`` passes the present)."""
    data = status_data(state)
    console.print(f"[bold]{escape(title or 'ecloud')}[/] · seq {state.seq} · {when(state.clock)}")
    counts = Table(title=f"Tasks ({data['tasks']['total']})", title_justify="left")
    counts.add_column("state")
    counts.add_column("count", justify="right")
    for status in TASK_STATUSES:
        n = state.counts[status]
        label = f"[{STATUS_STYLE[status]}]{status}[/]"
        extra = (
            f" ({data['tasks']['in_backoff']} in retry backoff)"
            if status == READY and data["tasks"]["in_backoff"]
            else ""
        )
        counts.add_row(label, f"{n}{extra}")
    console.print(counts)
    for row in data["workflows"]:
        line = f"workflow {escape(row['source'] or '(no file)')}: [bold]{row['status']}[/]"
        if row["aborted_by"]:
            line += f", aborted by {escape(row['aborted_by'])} (exit status {row['exit']})"
        if row["final"]:
            line += f", final task {escape(row['final'])}"
        if row["max_running"] is not None or row["categories"]:
            caps = ([f"{row['max_running']} in all"] if row["max_running"] is not None else [])
            caps += [f"{n} {escape(c)}" for c, n in sorted(row["categories"].items())]
            line += f", {row['running']} running (at most {', '.join(caps)})"
        console.print(line)
    render_workers(state, console, now)
    render_failures(state, console)
    never = data["unschedulable"]
    if never:
        console.print(f"[red]{len(never)} task(s) unschedulable[/] (no present or possible "
                      "worker can run them; see: ecloud why TASK)")
        for item in never[:10]:
            console.print(f"  {escape(item['task'])}: {escape(item['reason'])}")
        if len(never) > 10:
            console.print(f"  ... and {len(never) - 10} more")
    ceiling = cloud_ceiling(state)
    if ceiling is not None:
        console.print(f"[yellow]cloud ceiling:[/] at {ceiling['at_vms']} VMs: "
                      f"{escape(ceiling['reason'])}; asking again in "
                      f"{max(0.0, ceiling['next_try'] - state.clock):.0f}s, one VM at a time")
    if state.strangers:
        names = ", ".join(escape(w) for w in list(state.strangers)[-10:])
        console.print(f"[yellow]{len(state.strangers)} unknown worker(s)[/] heard from without "
                      f"announcing themselves: {names} (see: ecloud log --type input.rejected)")
    if state.rejected:
        console.print(f"[yellow]{len(state.rejected)} input(s) rejected[/] "
                      "(see: ecloud log --type input.rejected, ecloud-replay)")


def _slots_text(used: int, slots: int) -> str:
    """``3/4``, or ``4/4 +8 queued`` for a worker holding dispatches queued ahead."""
    if used <= slots:
        return f"{used}/{slots}"
    return f"{slots}/{slots} +{used - slots} queued"


#: workers no longer live that ``ecloud status`` still shows: the latest few
#: to go, within RECENT_GONE seconds; the rest are counted (``--json`` lists all)
SHOWN_GONE = 5
RECENT_GONE = 600.0


def render_workers(state: State, console: Console, now: float | None = None) -> None:
    """Every live worker, and the latest few that left or were lost (a
    long-lived log knows thousands of workers that are gone)."""
    now = state.clock if now is None else now
    live = [w for w in state.workers.values() if w.status in LIVE]
    ended = sorted((w for w in state.workers.values() if w.status not in LIVE),
                   key=lambda w: w.last_seen, reverse=True)
    recent = [w for w in ended if now - w.last_seen <= RECENT_GONE][:SHOWN_GONE]
    table = Table(title=f"Workers ({len(live)} live, {len(state.workers)} known)", title_justify="left")
    for col in ("worker", "host", "state", "slots", "running", "last seen"):
        table.add_column(col)
    for w in sorted(live, key=lambda w: w.worker_id) + recent:
        running = ", ".join(f"{t}#{a}" for t, a in sorted(w.running)) or "-"
        table.add_row(escape(w.worker_id), escape(w.host),
                      f"[{STATUS_STYLE[w.status]}]{w.status}[/]",
                      _slots_text(w.used, w.slots), escape(running), ago(w.last_seen, now))
    console.print(table)
    hidden = len(ended) - len(recent)
    if hidden:
        console.print(f"  ... and {hidden} more gone or lost earlier (ecloud status --json "
                      "lists every worker)")


def render_context(state: State, console: Console) -> None:
    table = Table(title="Context", title_justify="left")
    for col in ("key", "value", "meaning"):
        table.add_column(col)
    for key in sorted(context.KEYS):
        spec = context.KEYS[key]
        if key in state.context:
            value = escape(state.context[key])
        elif spec.default is not None:
            value = f"[dim]{escape(spec.default)} (default)[/]"
        else:
            value = "[dim]unset[/]"
        table.add_row(key, value, spec.description)
    console.print(table)


# ------------------------------------------------------------------- the cost


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:,.1f} s"
    if s < 7200:
        return f"{s:,.0f} s ({s / 60:,.1f} min)"
    return f"{s:,.0f} s ({s / 3600:,.1f} h)"


def render_cost(data: dict[str, Any], console: Console, top: int) -> None:
    """``ecloud status --cost``: totals, VM time, the costliest tasks."""
    total, vms = data["total"], data["vm_seconds"]
    console.print(f"[bold]Cost ledger[/] · seq {data['seq']} · {when(data['clock'])}")
    table = Table(title="Totals", title_justify="left", show_header=False)
    table.add_column()
    table.add_column(justify="right")
    table.add_row("tasks / attempts", f"{total['tasks']:,} / {total['attempts']:,}")
    table.add_row("worker-seconds (slots x run time of the attempts)", _seconds(total["worker_seconds"]))
    table.add_row(f"VM-seconds ({vms['vms']} VMs, request to gone)", _seconds(vms["vm_seconds"]))
    table.add_row("  booting (until a worker announced itself)", _seconds(vms["booting"]))
    table.add_row("  busy (running at least one attempt)", _seconds(vms["busy"]))
    table.add_row("  idle", _seconds(vms["idle"]))
    table.add_row("bytes staged in / out", f"{_bytes(total['bytes_in'])} / {_bytes(total['bytes_out'])}")
    console.print(table)
    rows = sorted(data["tasks"], key=lambda r: (-r["worker_seconds"], r["task"]))[:top]
    if rows:
        costly = Table(title=f"Costliest tasks ({len(rows)} of {total['tasks']:,})",
                       title_justify="left")
        for col, justify in (("task", "left"), ("attempts", "right"), ("worker-seconds", "right"),
                             ("staged in", "right"), ("staged out", "right")):
            costly.add_column(col, justify=justify)  # type: ignore[arg-type]
        for r in rows:
            costly.add_row(escape(r["task"]), str(r["attempts"]), f"{r['worker_seconds']:,.1f}",
                           _bytes(r["bytes_in"]), _bytes(r["bytes_out"]))
        console.print(costly)


# ---------------------------------------------------------------- the events


def _short(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit})" if len(items) > limit else "")


def summarise(event: Any) -> str:
    """One line saying what an event means."""
    if isinstance(event, ev.TasksSubmitted):
        src = f" from {event.source}" if event.source else ""
        return (f"batch {event.batch_id}: {len(event.tasks)} task(s){src}: "
                f"{_short([t.id for t in event.tasks])}")
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
        text = (f"{event.task_id} attempt {event.attempt} on {event.worker_id}: "
                f"{outcome} in {event.duration:.1f}s")
        if event.reason:
            text += f" ({event.reason})"
        if event.exit_code != 0 and event.stderr_tail:
            text += f" stderr: {event.stderr_tail.strip().splitlines()[-1][:120]}"
        for f in event.staged:  # provenance: what this attempt read and produced
            arrow = f"{f.path} -> {f.name}" if f.direction == "in" else f"{f.name} -> {f.path}"
            text += f"; {f.direction} {arrow} sha256:{f.sha256[:12]} {f.bytes} B"
        return text
    if isinstance(event, ev.WorkerAnnounced):
        return f"{event.worker_id} on {event.host}: {event.slots} slot(s), protocol {event.protocol}"
    if isinstance(event, ev.ContextSet):
        return f"{event.key} = {event.value}"
    if isinstance(event, ev.VMCallback):
        return (f"the hook: VM {event.vm_id} {event.vm_name} is "
                f"{state_with_codes(event.state, event.lcm_state)}"
                f" (its clock: {precise_when(event.at)} UTC; a hint, the next look at the pool decides)")
    if isinstance(event, ev.VMStateObserved):
        ip = f", ip {event.ip}" if event.ip else ""
        return (f"the poll: VM {event.vm_id} {event.vm_name or ''} is "
                f"{state_with_codes(event.state, event.lcm_state)}{ip}").replace("  ", " ")
    fields = converter.unstructure(event)
    return " ".join(f"{k}={v}" for k, v in fields.items() if v not in ("", None, [], {}))


# ------------------------------------------------------------- one subject's life


def event_body(event: Any) -> dict[str, Any]:
    """An event's fields for a program. A submitted batch is cut to its size:
    it may hold thousands of task specs, and a history names its task anyway."""
    if isinstance(event, ev.TasksSubmitted):
        return {"batch_id": event.batch_id, "source": event.source, "tasks": len(event.tasks)}
    return converter.unstructure(event)


def _is_heartbeat(entry: Any) -> bool:
    return isinstance(entry.event, ev.WorkerHeartbeat)


def entry_text(entry: Any) -> str:
    """What a history entry's event means; a run of heartbeats is one line."""
    event = entry.event
    if _is_heartbeat(entry):
        if entry.count == 1:
            return f"1 heartbeat at seq {entry.seq}"
        return f"{entry.count} heartbeats between seq {entry.seq} and {entry.last_seq}"
    if isinstance(event, ev.WorkerAnnounced):  # a worker's history wants who it was, too
        vm = f", VM {event.vm_id}" if event.vm_id is not None else ""
        return f"{summarise(event)}, incarnation {event.incarnation or '-'}{vm}"
    if isinstance(event, ev.Tick):  # its only news is its time; deadlines fell due
        return "time passed"
    return summarise(event)


def _column(name: str, value: Any) -> Any:
    if name == "running":  # (task, attempt) pairs, shaped as in `ecloud status --json`
        return [{"task": t, "attempt": a} for t, a in value]
    return value


def history_row(entry: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    """One history entry for a program: the event, the status before and
    after it, the subject's ``columns`` after it, and - only where they
    apply - why it changed, why the event was refused, the heartbeat run."""
    before, after = entry.before, entry.after
    row: dict[str, Any] = {
        "seq": entry.seq, "ts": entry.ts, "type": entry.event.TYPE, "event": entry_text(entry),
        "from": before["status"] if before else None, "to": after["status"] if after else None,
    }
    row.update({c: _column(c, after[c]) if after else None for c in columns})
    if entry.why is not None:
        row["why"] = entry.why
    if entry.rejected:
        row["rejected"] = entry.rejected
    if _is_heartbeat(entry):
        row.update(count=entry.count, first_seq=entry.seq, last_seq=entry.last_seq)
    else:
        row["body"] = event_body(entry.event)
    return row


def _attempt_change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """A task's latest attempt, where it changed and the task's status does
    not say it (an attempt that failed with retries left leaves the task
    ready; one of a lost worker, too)."""
    if not after or not after.get("attempt_status"):
        return ""
    now = (after["attempt"], after["attempt_status"])
    if before and (before.get("attempt"), before.get("attempt_status")) == now:
        return ""
    if now[1] == after["status"]:
        return ""  # dispatched, running, succeeded...: the status says it
    return " " + escape(f"[attempt {now[0]} {now[1]}]")


def render_history(entries: list[Any], console: Console) -> None:
    """A history as lines: seq, time, type, what happened, the status change
    in bold and its reason in brackets; refused events in red."""
    for entry in entries:
        before, after = entry.before, entry.after
        old = before["status"] if before else None
        new = after["status"] if after else None
        change = f" [bold]{old or '-'} -> {new}[/]" if old != new else ""
        change += _attempt_change(before, after)
        why = f"  ({escape(entry.why)})" if entry.why else ""
        refused = f"  [red]refused: {escape(entry.rejected)}[/]" if entry.rejected else ""
        console.print(f"{entry.seq:>8}  {when(entry.ts)}  {entry.event.TYPE:<18} "
                      f"{escape(entry_text(entry))}{change}{why}{refused}")


def attempt_outcome(row: dict[str, Any]) -> str:
    """What became of an attempt on a worker, in words (``history.attempts``)."""
    if row["given_back"] is not None:
        text = f"given back at seq {row['given_back']}: {row['given_back_why']}"
        if row["finished"] is not None:
            text += f"; its late result (seq {row['finished']}) was ignored"
        return text
    if row["finished"] is None:
        return "running" if row["started"] is not None else "dispatched, not started"
    if row["exit_code"] is not None:
        text = f"exit {row['exit_code']}"
    elif row["signal"] is not None:
        text = f"signal {row['signal']}"
    else:
        text = "no exit code"
    return text + (f" ({row['reason']})" if row["reason"] else "")


def render_attempts(rows: list[dict[str, Any]], console: Console, title: str) -> None:
    """The attempts a worker was given, one row each, with their outcome."""
    table = Table(title=title, title_justify="left")
    for col in ("task", "attempt", "dispatched", "started", "finished", "outcome"):
        table.add_column(col)
    for row in rows:
        table.add_row(escape(row["task"]), str(row["attempt"]),
                      *(str(row[k]) if row[k] is not None else "-"
                        for k in ("dispatched", "started", "finished")),
                      escape(attempt_outcome(row)))
    console.print(table)


def worker_data(state: State, worker_id: str) -> dict[str, Any] | None:
    """One worker as ``ecloud status --json`` shows it, plus its incarnation;
    None if the fold never accepted it (every announcement refused)."""
    record = state.workers.get(worker_id)
    if record is None:
        return None
    data = next(w for w in status_data(state)["workers"] if w["id"] == worker_id)
    return {**data, "incarnation": record.incarnation, "announced_at": record.announced_at}


def worker_line(state: State, worker_id: str) -> str:
    """A worker's standing at ``state.seq`` in one line (the head of its history)."""
    data = worker_data(state, worker_id)
    if data is None:
        return f"worker {worker_id} at seq {state.seq}: never joined (every announcement refused)"
    text = (f"worker {worker_id} at seq {state.seq}: {data['status']} on {data['host']}, "
            f"{data['used']}/{data['slots']} slot(s) in use, incarnation {data['incarnation'] or '-'}")
    return text + (f" ({data['reason']})" if data["reason"] and data["status"] not in LIVE else "")
