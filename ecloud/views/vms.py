"""The VMs as people see them: every VM of the log with its state in the
cloud, the worker tied to it, and why the boss keeps it or terminates it -
for ``ecloud workers list`` and the live page alike."""

from __future__ import annotations

import math
from typing import Any

from ecloud.projections.state import LIVE, State

#: OpenNebula's STATE and (when ACTIVE) LCM_STATE codes, for people (docs/opennebula.md)
STATES = {0: "INIT", 1: "PENDING", 2: "HOLD", 3: "ACTIVE", 4: "STOPPED", 5: "SUSPENDED",
          6: "DONE", 8: "POWEROFF", 9: "UNDEPLOYED", 10: "CLONING", 11: "CLONING_FAILURE"}
LCM_STATES = {0: "LCM_INIT", 1: "PROLOG", 2: "BOOT", 3: "RUNNING", 11: "EPILOG", 12: "SHUTDOWN",
              16: "UNKNOWN", 23: "CLEANUP_DELETE", 36: "BOOT_FAILURE", 39: "PROLOG_FAILURE",
              40: "EPILOG_FAILURE"}


def state_with_codes(state: int | None, lcm: int | None) -> str:
    """OpenNebula's state for people, with its codes: ``POWEROFF (8/0)``."""
    return f"{cloud_state(state, lcm)} ({state}/{lcm})"


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
            "told": told(vm),
            "why": verdict(vm, worker),
        })
    return rows


def precise_when(ts: float) -> str:
    """A moment's time of day to the millisecond, UTC (``17:30:41.518``):
    enough to tell which of two sources told first. Arithmetic only (Unix
    time has 86,400 s a day), so the views stay free of clock modules."""
    if not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return repr(ts)
    ms = round(ts * 1000) % 86_400_000
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}"


def told(vm) -> str:
    """What the boss last heard of the VM's state from each source: a
    callback of OpenNebula's state hook (the hook's clock) and its own look
    at the pool - so an operator sees which told first ("" if neither)."""
    parts = []
    if vm.callback_at is not None:
        parts.append(f"hook: {cloud_state(vm.callback_state, vm.callback_lcm)} "
                     f"at {precise_when(vm.callback_at)}")
    if vm.observed_at is not None:
        parts.append(f"poll: {cloud_state(vm.state, vm.lcm_state)} at {precise_when(vm.observed_at)}")
    return " · ".join(parts)


def verdict(vm, worker) -> str:
    """Why the boss keeps this VM, or why it kills it (for people)."""
    if vm.status == "gone":
        return "gone" + (f" ({vm.reason})" if vm.reason else "")
    if vm.status == "killing":
        again = f"; asked {vm.kills} times, asked again until the cloud has it DONE" \
            if vm.kills > 1 else ""
        return f"being terminated: {vm.reason}{again}"
    if vm.status == "failed":
        if vm.vm_id is None:
            return f"given up: {vm.reason}"
        return f"failed ({vm.reason}): terminated once nothing runs on it"
    if worker is not None and worker.status in LIVE:
        return "in service" if worker.status != "draining" else f"draining: {worker.reason}"
    if vm.announced_at is not None:
        return "kept: its worker went away, it may come back (boot_timeout)"
    return "booting: waiting for its worker to announce itself (boot_timeout)"
