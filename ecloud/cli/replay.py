"""``ecloud-replay``: rebuild the state from the log at any point and look
at it - a summary, one task's whole history, or a check that every way of
folding the log agrees."""

from __future__ import annotations

import datetime as dt
import sys
import time

import click
import orjson

from ecloud import explain
from ecloud.cli import render
from ecloud.cli.common import common_options, handle_errors, log_store, out, progress_bar
from ecloud.errors import UserError
from ecloud.events import types as ev
from ecloud.events.codec import converter
from ecloud.projections.state import State
from ecloud.rebuild import fold_range, load_state, save_snapshot
from ecloud.verify import verify


def _concerns(event, task_id: str) -> bool:
    if isinstance(event, ev.TasksSubmitted):
        return any(t.id == task_id for t in event.tasks)
    return getattr(event, "task_id", None) == task_id


def task_history(store, task_id: str, until: int | None, progress) -> list[dict]:
    """Every event about the task, and every status change of it, with the
    reason, folded from the start of the log."""
    rows: list[dict] = []
    state = State()
    before: tuple | None = None

    def look(rec, effects) -> None:
        nonlocal before
        task = state.tasks.get(task_id)
        now = None if task is None else (task.status, task.attempt, task.worker, task.reason,
                                         task.blocked_by)
        mentioned = _concerns(rec.event, task_id)
        if now != before or mentioned:
            row = {"seq": rec.seq, "ts": rec.ts, "type": rec.event.TYPE,
                   "event": render.summarise(rec.event),
                   "from": before[0] if before else None, "to": now[0] if now else None,
                   "attempt": now[1] if now else None, "worker": now[2] if now else None}
            if now is not None and now != before:
                why = now[3] or (f"blocked by {now[4]}" if now[4] else "")
                row["why"] = why
            rows.append(row)
        before = now

    fold_range(store, state, until, progress, on_step=look)
    if task_id not in state.tasks:
        raise UserError(f"no task {task_id!r} in the log" + (f" up to seq {until}" if until else ""))
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--until", type=click.IntRange(min=0), metavar="SEQ",
              help="Rebuild the state as it was right after this seq (default: head).")
@click.option("--at", "at_time", metavar="TIME",
              help="Like --until, for the last event at or before TIME (ISO 8601, UTC unless it "
                   "says otherwise, or seconds since the epoch).")
@click.option("--task", "task_id", metavar="ID", help="Print this task's full history.")
@click.option("--why", "why_task", metavar="ID",
              help="Explain why this task is in its state (at --until/--at, default: head).")
@click.option("--diff", "diff_range", nargs=2, type=click.IntRange(min=0), metavar="A B",
              help="What changed between seq A and seq B.")
@click.option("--verify", "do_verify", is_flag=True,
              help="Check full replay, snapshot plus suffix and determinism agree; exit 1 naming "
                   "the first divergent seq if not.")
@click.option("--no-snapshot", is_flag=True, help="Replay from the first event, ignoring snapshots.")
@click.option("--save-snapshot", "save", is_flag=True, help="Store the rebuilt state as a snapshot.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@common_options
@handle_errors
def replay(until: int | None, at_time: str | None, task_id: str | None, why_task: str | None,
           diff_range: tuple[int, int] | None, do_verify: bool, no_snapshot: bool,
           save: bool, as_json: bool, db: str | None, config_path: str | None) -> None:
    """Rebuild ecloud's state from the event log and show it."""
    if until is not None and at_time is not None:
        raise UserError("give --until or --at, not both")
    with log_store(db, config_path, create=False) as store:
        head = store.head()
        if at_time is not None:
            until = seq_at(store, parse_time(at_time))
        if diff_range is not None:
            a, b = diff_range
            if not a <= b <= head:
                raise UserError(f"--diff needs A <= B <= head (seq {head}), got {a} {b}")
            lines = explain.diff(load_state(store, a), load_state(store, b))
            _print_lines(lines, as_json)
            return
        if why_task is not None:
            state = load_state(store, until)
            if why_task not in state.tasks:
                raise UserError(f"no task {why_task!r} in the log"
                                + (f" up to seq {until}" if until is not None else ""))
            _print_lines(explain.why(state, why_task), as_json)
            return
        if until is not None and until > head:
            raise UserError(f"--until {until} is past the end of the log (head is seq {head})")
        if do_verify:
            with progress_bar("verifying", enabled=not as_json) as progress:
                report = verify(store, until, progress)
            if as_json:
                sys.stdout.write(orjson.dumps({
                    "ok": report.ok, "until": report.until, "divergent_seq": report.divergent_seq,
                    "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in report.checks],
                }).decode() + "\n")
            else:
                for name, ok, detail in report.checks:
                    mark = "[green]ok[/]  " if ok else "[bold red]FAIL[/]"
                    out.print(f"{mark} {name}: {detail}")
                if not report.ok:
                    out.print(f"[bold red]first divergent seq: {report.divergent_seq}[/]")
            sys.exit(0 if report.ok else 1)
        if task_id is not None:
            with progress_bar("replaying", enabled=not as_json) as progress:
                rows = task_history(store, task_id, until, progress)
            if as_json:
                for row in rows:
                    sys.stdout.write(orjson.dumps(row).decode() + "\n")
            else:
                for row in rows:
                    change = f" [bold]{row['from'] or '-'} -> {row['to']}[/]" if row["from"] != row["to"] else ""
                    why = f"  ({row['why']})" if row.get("why") else ""
                    out.print(f"{row['seq']:>8}  {render.when(row['ts'])}  {row['type']:<18} "
                              f"{row['event']}{change}{why}")
            return
        with progress_bar("replaying", enabled=not as_json) as progress:
            state = load_state(store, until, use_snapshot=not no_snapshot, progress=progress)
        if save:
            snap = save_snapshot(store, state, time.time())
            if not as_json:
                out.print(f"saved a snapshot at seq {snap.seq} ({len(snap.data):,} bytes)")
    if as_json:
        data = render.status_data(state)
        data["context"] = dict(state.context)
        data["vms"] = [converter.unstructure(v) for v in state.vms.values()]
        data["rejected"] = [converter.unstructure(r) for r in state.rejected]
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        render.render_status(state, out, title=f"state at seq {state.seq} of {head}")
        render.render_context(state, out)
        if state.rejected:
            for r in state.rejected[-10:]:
                out.print(f"  rejected at seq {r.seq} ({r.source}): {r.reason}", markup=False)


def parse_time(text: str) -> float:
    """Seconds since the epoch for ISO 8601 (UTC unless it says) or a number."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--at {text!r}: not a time (try 2026-11-26T14:05:00 or epoch seconds)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def seq_at(store, when: float) -> int:
    """The last seq whose event happened at or before ``when`` (0: none)."""
    last = 0
    for seq, ts, *_ in store.read_raw(1):
        if ts > when:
            break
        last = seq
    return last


def _print_lines(lines: list[str], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps({"lines": lines}).decode() + "\n")
    else:
        for line in lines:
            out.print(line, markup=False)


def main() -> None:
    replay(prog_name="ecloud-replay")


if __name__ == "__main__":  # pragma: no cover
    main()
