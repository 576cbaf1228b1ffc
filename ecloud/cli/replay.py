"""``ecloud-replay``: rebuild the state from the log at any point and look
at it - a summary, one task's or one worker's whole history, why a task is
where it is, what changed between two points, or a check that every way of
folding the log agrees. Each view prints lines or tables for a person and,
under ``--json``, exactly one JSON document for a program."""

from __future__ import annotations

import datetime as dt
import sys
import time

import click
import orjson
from rich.markup import escape

from ecloud.cli import render
from ecloud.cli.common import common_options, handle_errors, log_store, out, progress_bar
from ecloud.errors import UserError
from ecloud.events.codec import converter
from ecloud.inspect import explain, history
from ecloud.inspect.lineage import lineage, lineage_lines
from ecloud.inspect.verify import verify
from ecloud.log.rebuild import load_state, save_snapshot

#: the fields of a task's / worker's record each history row carries after its event
TASK_COLUMNS = ("attempt", "attempt_status", "worker")
WORKER_COLUMNS = ("incarnation", "used", "slots", "running")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--until", type=click.IntRange(min=0), metavar="SEQ",
              help="Rebuild the state as it was right after this seq (default: head).")
@click.option("--at", "at_time", metavar="TIME",
              help="Like --until, for the last event at or before TIME (ISO 8601, UTC unless it "
                   "says otherwise, or seconds since the epoch).")
@click.option("--task", "task_id", metavar="ID", help="Print this task's full history.")
@click.option("--worker", "worker_id", metavar="ID",
              help="Print this worker's full history: announcements, heartbeats (as runs), the "
                   "attempts it ran and every status change with its reason.")
@click.option("--why", "why_task", metavar="ID",
              help="Explain why this task is in its state (at --until/--at, default: head).")
@click.option("--diff", "diff_range", nargs=2, type=click.IntRange(min=0), metavar="A B",
              help="What changed between seq A and seq B.")
@click.option("--verify", "do_verify", is_flag=True,
              help="Check full replay, snapshot plus suffix and determinism agree; exit 1 naming "
                   "the first divergent seq if not.")
@click.option("--no-snapshot", is_flag=True, help="Replay from the first event, ignoring snapshots.")
@click.option("--save-snapshot", "save", is_flag=True, help="Store the rebuilt state as a snapshot.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: one JSON document, whatever the view.")
@common_options
@handle_errors
def replay(until: int | None, at_time: str | None, task_id: str | None, worker_id: str | None,
           why_task: str | None, diff_range: tuple[int, int] | None, do_verify: bool,
           no_snapshot: bool, save: bool, as_json: bool, db: str | None,
           config_path: str | None) -> None:
    """Rebuild ecloud's state from the event log and show it."""
    _one_view({"--task": task_id, "--worker": worker_id, "--why": why_task,
               "--diff": diff_range, "--verify": do_verify, "--save-snapshot": save})
    if until is not None and at_time is not None:
        raise UserError("give --until or --at, not both")
    with log_store(db, config_path, create=False, read_only=not save) as store:
        head = store.head()
        if at_time is not None:
            until = seq_at(store, parse_time(at_time))
        if diff_range is not None:
            return _show_diff(store, diff_range, head, as_json)
        if why_task is not None:
            return show_why(store, why_task, until, as_json)
        if until is not None and until > head:
            raise UserError(f"--until {until} is past the end of the log (head is seq {head})")
        if do_verify:
            _show_verify(store, until, as_json)
        elif task_id is not None:
            _show_task(store, task_id, until, as_json)
        elif worker_id is not None:
            _show_worker(store, worker_id, until, as_json)
        else:
            _show_state(store, until, head, no_snapshot=no_snapshot, save=save, as_json=as_json)


def _one_view(views: dict[str, object]) -> None:
    """Each of these options picks what to show; two at once would silently
    show only one of them, so say so instead."""
    given = [name for name, value in views.items() if value not in (None, False)]
    if len(given) > 1:
        raise UserError(f"give one of {', '.join(views)}, not {' and '.join(given)}")


def _emit(data: object) -> None:
    """Write one JSON document: what every view prints under --json."""
    sys.stdout.write(orjson.dumps(data).decode() + "\n")


def _show_diff(store, diff_range: tuple[int, int], head: int, as_json: bool) -> None:
    a, b = diff_range
    if not a <= b <= head:
        raise UserError(f"--diff needs A <= B <= head (seq {head}), got {a} {b}")
    lines = explain.diff(load_state(store, a), load_state(store, b))
    if as_json:
        _emit({"from": a, "to": b, "lines": lines})
    else:
        _print_lines(lines)


def show_why(store, task_id: str, until: int | None, as_json: bool) -> None:
    """Why the task ``task_id`` - or, when no task has that id, the VM of that
    name or id - is where it is at ``until``."""
    state = load_state(store, until)
    task = state.tasks.get(task_id)
    if task is None:
        from ecloud.views.vm_story import find_vm

        vm = find_vm(state, task_id)
        if vm is None:
            raise history.not_in_log("task or VM", task_id, until)
        return _show_vm_why(store, state, vm, as_json)
    lines = explain.why(state, task_id)
    if as_json:
        _emit({"task": task_id, "seq": state.seq, "status": task.status, "attempt": task.attempt,
               "worker": task.worker, "reason": task.reason, "lines": lines})
    else:
        _print_lines(lines)


def _show_vm_why(store, state, vm, as_json: bool) -> None:
    from ecloud.views.vm_story import story, vm_why

    rows = story(store.read(1, state.seq), vm)
    if as_json:
        _emit({"vm": vm.vm_name, "vm_id": vm.vm_id, "seq": state.seq, "status": vm.status,
               "lines": vm_why(state, vm, rows), "story": rows})
    else:
        _print_lines(vm_why(state, vm, rows))


def _show_verify(store, until: int | None, as_json: bool) -> None:
    """Print the checks and exit 1 if any failed (a script tests the status)."""
    with progress_bar("verifying", enabled=not as_json) as progress:
        report = verify(store, until, progress)
    if as_json:
        _emit({"ok": report.ok, "until": report.until, "divergent_seq": report.divergent_seq,
               "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in report.checks]})
    else:
        for name, ok, detail in report.checks:
            mark = "[green]ok[/]  " if ok else "[bold red]FAIL[/]"
            out.print(f"{mark} {name}: {escape(detail)}")
        if not report.ok:
            out.print(f"[bold red]first divergent seq: {report.divergent_seq}[/]")
    sys.exit(0 if report.ok else 1)


def _show_task(store, task_id: str, until: int | None, as_json: bool) -> None:
    with progress_bar("replaying", enabled=not as_json) as progress:
        entries, state = history.task_history(store, task_id, until, progress)
    results = lineage(store, task_id, until)
    if as_json:
        task = state.tasks[task_id]
        _emit({"task": task_id, "seq": state.seq, "status": task.status, "attempt": task.attempt,
               "history": [render.history_row(e, TASK_COLUMNS) for e in entries],
               "lineage": results})
    else:
        render.render_history(entries, out)
        if results:
            out.print(f"Results of {escape(task_id)} and where they came from:")
            for line in lineage_lines(results):
                out.print(line, markup=False, highlight=False)


def _show_worker(store, worker_id: str, until: int | None, as_json: bool) -> None:
    with progress_bar("replaying", enabled=not as_json) as progress:
        entries, state = history.worker_history(store, worker_id, until, progress)
    ran = history.attempts(entries)
    if as_json:
        _emit({"worker": worker_id, "seq": state.seq, "record": render.worker_data(state, worker_id),
               "history": [render.history_row(e, WORKER_COLUMNS) for e in entries],
               "attempts": ran})
        return
    out.print(render.worker_line(state, worker_id), markup=False)
    render.render_history(entries, out)
    if ran:
        render.render_attempts(ran, out, title=f"Attempts given to {worker_id} ({len(ran)})")


def _show_state(store, until: int | None, head: int, *, no_snapshot: bool, save: bool,
                as_json: bool) -> None:
    with progress_bar("replaying", enabled=not as_json) as progress:
        state = load_state(store, until, use_snapshot=not no_snapshot, progress=progress)
    snap = save_snapshot(store, state, time.time()) if save else None
    if as_json:
        data = render.status_data(state)
        data["context"] = dict(state.context)
        data["vms"] = [converter.unstructure(v) for v in state.vms.values()]
        data["rejected"] = [converter.unstructure(r) for r in state.rejected]
        if snap is not None:
            data["snapshot"] = {"seq": snap.seq, "bytes": len(snap.data)}
        _emit(data)
        return
    if snap is not None:
        out.print(f"saved a snapshot at seq {snap.seq} ({len(snap.data):,} bytes)")
    render.render_status(state, out, title=f"state at seq {state.seq} of {head}")
    render.render_context(state, out)
    for r in state.rejected[-10:]:
        out.print(f"  rejected at seq {r.seq} ({r.source}): {r.reason}", markup=False)


def parse_time(text: str, option: str = "--at") -> float:
    """Seconds since the epoch for ISO 8601 (UTC unless it says) or a number."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{option} {text!r}: not a time (try 2026-11-26T14:05:00 or epoch "
                        "seconds)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def seq_at(store, when: float) -> int:
    """The last seq whose event happened at or before ``when`` (0: none)."""
    last = 0
    for seq, ts, *_ in store.read_raw(1):
        if ts > when:
            break
        last = seq
    return last


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        out.print(line, markup=False)


def main() -> None:
    replay(prog_name="ecloud-replay")


if __name__ == "__main__":  # pragma: no cover
    main()
