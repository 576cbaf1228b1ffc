"""``ecloud workers``: the seed's worker VM commands - spawn, list, kill.

Like every operator command these only append events (``vm.requested``,
``vm.kill_requested``); the boss performs them through its provider, so a
command given while the boss is down takes effect when it is back, and each
request is in the log with the operator as its source.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import orjson
from rich.table import Table

from ecloud.cli.common import (
    common_options,
    config_for,
    handle_errors,
    log_store,
    operator_log,
    out,
)
from ecloud.cli.render import ago
from ecloud.errors import UserError
from ecloud.events import types as ev
from ecloud.projections.state import LIVE, State
from ecloud.projections.vms import next_vm_names
from ecloud.rebuild import load_state
from ecloud.submit import append_checked

#: OpenNebula's STATE and (when ACTIVE) LCM_STATE codes, for people (OPENNEBULA.md)
STATES = {0: "INIT", 1: "PENDING", 2: "HOLD", 3: "ACTIVE", 4: "STOPPED", 5: "SUSPENDED",
          6: "DONE", 8: "POWEROFF", 9: "UNDEPLOYED", 10: "CLONING", 11: "CLONING_FAILURE"}
LCM_STATES = {0: "LCM_INIT", 1: "PROLOG", 2: "BOOT", 3: "RUNNING", 11: "EPILOG", 12: "SHUTDOWN",
              16: "UNKNOWN", 23: "CLEANUP_DELETE", 36: "BOOT_FAILURE", 39: "PROLOG_FAILURE",
              40: "EPILOG_FAILURE"}


def cloud_state(state: int | None, lcm: int | None) -> str:
    if state is None:
        return "-"
    name = STATES.get(state, str(state))
    if state == 3 and lcm is not None:
        return LCM_STATES.get(lcm, f"LCM {lcm}")
    return name


def vm_rows(state: State, now: float) -> list[dict[str, Any]]:
    """One row per VM of the log (newest last), with its worker if one
    announced from it: what `workers list` shows."""
    by_vm = {w.vm_id: w for w in state.workers.values() if w.vm_id is not None}
    rows = []
    for vm in state.vms.values():
        worker = by_vm.get(vm.vm_id) if vm.vm_id is not None else None
        idle_since = worker.idle_since if worker is not None else None
        rows.append({
            "vm_id": vm.vm_id, "name": vm.vm_name, "ip": vm.ip, "status": vm.status,
            "cloud_state": cloud_state(vm.state, vm.lcm_state),
            "worker": worker.worker_id if worker else None,
            "worker_status": worker.status if worker else None,
            "tasks": [f"{t}#{a}" for t, a in sorted(worker.running)] if worker else [],
            "idle_for": (now - idle_since) if (worker and worker.status == "idle"
                                                and idle_since is not None) else None,
            "reason": vm.reason,
        })
    return rows


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
    out.print(f"requested {count} VM(s): {', '.join(names)}")


@workers_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@common_options
@handle_errors
def list_vms(as_json: bool, db: str | None, config_path: str | None) -> None:
    """Every worker VM: id, name, IP, state, its worker's current tasks and idle time."""
    with log_store(db, config_path, create=False) as store:
        state = load_state(store)
    now = time.time()
    rows = vm_rows(state, now)
    if as_json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    live = sum(1 for w in state.workers.values() if w.status in LIVE)
    table = Table(title=f"Worker VMs ({len(rows)}; {live} live workers)", title_justify="left")
    for col in ("vm id", "name", "ip", "state", "worker", "tasks", "idle for"):
        table.add_column(col)
    for r in rows:
        state_text = r["status"] if r["cloud_state"] == "-" else f"{r['status']} ({r['cloud_state']})"
        table.add_row(
            "-" if r["vm_id"] is None else str(r["vm_id"]), r["name"], r["ip"] or "-", state_text,
            f"{r['worker']} {r['worker_status']}" if r["worker"] else "-",
            ", ".join(r["tasks"]) or "-",
            ago(now - r["idle_for"], now) if r["idle_for"] is not None else "-",
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
    out.print(f"kill requested for VM(s) {', '.join(map(str, vm_ids))}")
