"""``ecloud tasks``: every task that matches, as ``condor_q -constraint``
lists jobs - by state, name pattern, worker and time, sorted, as a table or
JSON. Where ``ecloud status`` counts, this names."""

from __future__ import annotations

import re
import sys
import time

import click
import orjson
from rich.markup import escape
from rich.table import Table

from ecloud.cli import render
from ecloud.cli.common import common_options, handle_errors, log_store, out, progress_bar
from ecloud.cli.replay import parse_time
from ecloud.errors import UserError
from ecloud.log.rebuild import load_state
from ecloud.projections.state import TASK_STATUSES
from ecloud.views import task_list

#: past this many rows a table is printed as plain lines (a rich table of
#: 100,000 rows takes longer to lay out than to read the log)
TABLE_ROWS = 2000
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


#: epoch seconds before this (2000-01-01) are taken for a mistake (``--since
#: 2026`` meant a year, not 33 minutes into 1970)
EARLIEST = 946_684_800.0


def parse_since(text: str, now: float) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` ago, or a time as ``--at`` takes it
    (ISO 8601, or epoch seconds since 2000)."""
    problem = (f"--since {text!r}: not a time: give how long ago (30s, 10m, 2h, 1d), or ISO "
               "8601 (2026-11-26T14:05:00), or epoch seconds")
    match = _AGO.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        when = parse_time(text, "--since")
    except UserError:
        raise UserError(problem) from None
    if not (EARLIEST <= when < float("inf")):
        raise UserError(problem + " since 2000")
    return when


@click.command("tasks")
@click.option("--state", "states", multiple=True, type=click.Choice(TASK_STATUSES),
              help="Only tasks in this state (repeat for several).")
@click.option("--name", metavar="GLOB", help="Only tasks whose id matches (sim-*, sim-00[1-3]).")
@click.option("--worker", metavar="ID", help="Only tasks whose latest attempt went to this worker.")
@click.option("--since", metavar="TIME",
              help="Only tasks something happened to at or after TIME: 30s, 10m, 2h, 1d ago, "
                   "or ISO 8601 (UTC unless it says), or epoch seconds.")
@click.option("--sort", "sort_by", type=click.Choice(sorted(task_list.SORTS)), default="submitted",
              show_default=True, help="Order of the rows (attempts and runtime: most first).")
@click.option("--reverse", is_flag=True, help="Reverse the order.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N rows.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: the count and every row (command, times, exit code...).")
@common_options
@handle_errors
def tasks(states: tuple[str, ...], name: str | None, worker: str | None, since: str | None,
          sort_by: str, reverse: bool, limit: int | None, as_json: bool, db: str | None,
          config_path: str | None) -> None:
    """List the tasks that match every filter given (all tasks without one).

    Failed tasks show their reason and the attempt it ended; blocked ones the
    failed task they wait behind. See a task's output with ecloud logs ID and
    its history with ecloud why ID.
    """
    since_ts = parse_since(since, time.time()) if since else None
    with (
        log_store(db, config_path, create=False) as store,
        progress_bar("reading the log", enabled=not as_json) as progress,
    ):
        state = load_state(store, progress=progress)
    picked = task_list.select(state, states=states, name=name, worker=worker, since=since_ts)
    picked.sort(key=task_list.SORTS[sort_by], reverse=reverse)
    matched = len(picked)
    if limit is not None:
        picked = picked[:limit]
    if as_json:
        body = {"seq": state.seq, "count": matched,
                "tasks": [task_list.row(state, t) for t in picked]}
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
        return
    if not matched:
        out.print("no task matches" if state.tasks else
                  "no task matches: the log has no task yet (ecloud push FILE)")
        return
    rows = [_cells(task_list.row(state, t)) for t in picked]
    if len(rows) > TABLE_ROWS:
        out.print(f"{matched} task(s); task, state, attempt, worker, exit, finished, ran, why "
                  "(tab-separated)", markup=False)
        for cells in rows:
            out.print("\t".join(cells), markup=False)
    else:
        table = Table(title=f"{matched} task(s)", title_justify="left")
        for col in ("task", "state", "attempt", "worker", "exit", "finished", "ran", "why"):
            table.add_column(col, justify="right" if col in ("attempt", "exit", "ran") else "left",
                             no_wrap=col != "why")
        for cells, task in zip(rows, picked, strict=True):
            style = render.STATUS_STYLE.get(task.status, "")
            table.add_row(escape(cells[0]), f"[{style}]{cells[1]}[/]",
                          *(escape(c) for c in cells[2:]))
        out.print(table)
    if matched > len(picked):
        out.print(f"... and {matched - len(picked)} more (--limit)")


def _cells(row: dict) -> list[str]:
    why = row["reason"] or ""
    if row["blocked_by"]:
        why = f"behind {row['blocked_by']}"
    ran = row["runtime"]
    return [row["id"], row["state"], str(row["attempt"] or "-"), row["worker"] or "-",
            "-" if row["exit_code"] is None else str(row["exit_code"]),
            render.when(row["finished_at"]), "-" if ran is None else f"{ran:.1f}s", why]
