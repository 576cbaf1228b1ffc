"""``ecloud workers``: the seed's worker VM commands - spawn, list, kill.

Like every operator command these only append events (``vm.requested``,
``vm.kill_requested``); the boss performs them through its provider, so a
command given while the boss is down takes effect when it is back, and each
request is in the log with the operator as its source.
"""

from __future__ import annotations

import sys
import time

import click
import orjson
from rich.markup import escape
from rich.table import Table

from ecloud.cli.common import (
    common_options,
    config_for,
    err,
    handle_errors,
    log_store,
    operator_log,
    out,
)
from ecloud.cli.render import ago
from ecloud.errors import UserError
from ecloud.events import types as ev
from ecloud.log.rebuild import load_state
from ecloud.projections.state import LIVE, State
from ecloud.projections.vms import next_vm_names
from ecloud.taskfiles.submit import append_checked
from ecloud.views.vms import vm_rows


@click.group("workers")
def workers_group() -> None:
    """Worker VMs: spawn, list, kill (the seed's admin commands)."""


@workers_group.command("spawn")
@click.argument("count", type=click.IntRange(min=1, max=1000), default=1, metavar="[N]")
@common_options
@handle_errors
def spawn(count: int, db: str | None, config_path: str | None) -> None:
    """Ask the boss for N more worker VMs (default 1)."""
    prefix = f"ecloud-{config_for(db, config_path).cluster}-"
    names: list[str] = []
    with operator_log(db, config_path, create=True) as store:
        def build(state: State) -> list:
            names[:] = next_vm_names(state, prefix, count)
            return [ev.VMRequested(name, "ecloud workers spawn") for name in names]

        append_checked(store, build)
        idle = _no_boss(store)
    out.print(f"requested {count} VM(s): {', '.join(names)}", markup=False)
    if idle:
        err.print(idle, markup=False)


def _no_boss(store) -> str | None:
    """What to tell an operator whose request no boss is there to perform:
    it waits in the log until one starts (None when a boss holds the log)."""
    from ecloud.boss.lease import holder

    if holder(store) is not None:
        return None
    return ("note: no boss is running on this log: nothing happens until one starts "
            "(ecloud-boss --provider opennebula); the request waits in the log")


@workers_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@common_options
@handle_errors
def list_vms(as_json: bool, db: str | None, config_path: str | None) -> None:
    """Every worker VM: id, name, IP, state, its worker's current tasks and idle time, and
    why the boss keeps it or terminates it."""
    with log_store(db, config_path, create=False) as store:
        state = load_state(store)
    now = time.time()
    rows = vm_rows(state, now)
    if as_json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    live = sum(1 for w in state.workers.values() if w.status in LIVE)
    table = Table(title=f"Worker VMs ({len(rows)}; {live} live workers)", title_justify="left")
    for col in ("vm id", "name", "ip", "state", "worker", "tasks", "idle for", "why"):
        table.add_column(col)
    for r in rows:
        state_text = r["status"] if r["cloud_state"] == "-" else f"{r['status']} ({r['cloud_state']})"
        table.add_row(
            "-" if r["vm_id"] is None else str(r["vm_id"]), r["name"], r["ip"] or "-", state_text,
            f"{r['worker']} {r['worker_status']}" if r["worker"] else "-",
            ", ".join(r["tasks"]) or "-",
            ago(now - r["idle_for"], now) if r["idle_for"] is not None else "-",
            escape(r["why"]),
        )
    out.print(table)


@workers_group.command("kill")
@click.argument("vm_ids", type=int, nargs=-1, required=True, metavar="VM_ID...")
@click.option("--reason", default="killed by the operator", show_default=True,
              help="Why (kept in the log).")
@common_options
@handle_errors
def kill(vm_ids: tuple[int, ...], reason: str, db: str | None, config_path: str | None) -> None:
    """Kill worker VMs by id (see `ecloud workers list`); tasks running there
    go back to the queue."""
    with operator_log(db, config_path, create=False) as store:
        def build(state: State) -> list:
            known = {vm.vm_id: vm for vm in state.vms.values() if vm.vm_id is not None}
            problems = [f"no VM {i} in the log" if i not in known
                        else f"VM {i} is already {known[i].status}"
                        for i in vm_ids if i not in known or known[i].status in ("gone", "killing")]
            if problems:
                raise UserError("; ".join(problems))
            return [ev.VMKillRequested(i, reason, source="operator") for i in vm_ids]

        append_checked(store, build)
        idle = _no_boss(store)
    out.print(f"kill requested for VM(s) {', '.join(map(str, vm_ids))}")
    if idle:
        err.print(idle, markup=False)
