"""Why a VM is where it is (``ecloud why VM``): its verdict, and its story
from the log - who asked for it, what the cloud answered, what OpenNebula's
state hook told (``vm.callback``) beside what the boss's polls saw
(``vm.state_observed``), which of the two told first, and who killed it.

Pure over recorded events and a folded state; the CLI reads the log."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.projections.state import State, VMRecord
from ecloud.views.summary import requested_by
from ecloud.views.vms import precise_when, state_with_codes, verdict

#: how far a poll's sight may come after a callback's and still be "the same news"
SAME_NEWS = 3600.0


def find_vm(state: State, ident: str) -> VMRecord | None:
    """The VM named ``ident``, or with the id ``ident`` (ASCII digits)."""
    vm = state.vms.get(ident)
    if vm is None and ident.isascii() and ident.isdigit():
        name = state.vm_ids.get(int(ident))
        vm = state.vms.get(name) if name is not None else None
    return vm


def _about(event: Any, name: str, vm_id: int | None) -> bool:
    if isinstance(event, (ev.VMRequested, ev.VMAllocated, ev.VMFailed)):
        return event.vm_name == name
    if isinstance(event, (ev.VMCallback, ev.VMDiscovered)):
        return event.vm_name == name or (vm_id is not None and event.vm_id == vm_id)
    if isinstance(event, ev.VMStateObserved):
        return event.vm_name == name or (vm_id is not None and event.vm_id == vm_id)
    if isinstance(event, ev.VMKillRequested):
        return vm_id is not None and event.vm_id == vm_id
    if isinstance(event, ev.WorkerAnnounced):
        return event.worker_id == name or (vm_id is not None and event.vm_id == vm_id)
    return False


def story(records: Iterable[Recorded], vm: VMRecord) -> list[dict[str, Any]]:
    """The log's events about ``vm``, oldest first, as rows (seq, ts, who,
    what); a callback and the poll's sight of the same state (the next one
    either way) say which told first and by how much."""
    rows: list[dict[str, Any]] = []
    # (who, state) -> the row of that news not yet matched by the other source
    waiting: dict[tuple[str, tuple[int, int]], dict[str, Any]] = {}
    for rec in records:
        e = rec.event
        if not _about(e, vm.vm_name, vm.vm_id):
            continue
        row: dict[str, Any] = {"seq": rec.seq, "ts": rec.ts}
        if isinstance(e, ev.VMRequested):
            row.update(who=requested_by(e.reason),
                       what=f"requested: {e.reason}" if e.reason else "requested")
        elif isinstance(e, ev.VMAllocated):
            row.update(who="cloud", what=f"allocated as VM {e.vm_id}")
        elif isinstance(e, ev.VMDiscovered):
            row.update(who="poll", what=f"found in the pool, never asked for: "
                                        f"{state_with_codes(e.state, e.lcm_state)}")
        elif isinstance(e, ev.VMFailed):
            row.update(who="cloud", what=f"failed ({e.kind}): {e.reason}")
        elif isinstance(e, ev.VMKillRequested):
            row.update(who=e.source or "boss", what=f"kill: {e.reason}")
        elif isinstance(e, ev.WorkerAnnounced):
            row.update(who="worker", what=f"worker {e.worker_id} announced itself")
        elif isinstance(e, (ev.VMCallback, ev.VMStateObserved)):
            key = (e.state, e.lcm_state)
            me, other = ("hook", "poll") if isinstance(e, ev.VMCallback) else ("poll", "hook")
            row.update(who=me, what=f"{'callback' if me == 'hook' else 'seen'}: {state_with_codes(*key)}",
                       first=None)
            earlier = waiting.pop((other, key), None)
            if earlier is not None and rec.ts - earlier["ts"] <= SAME_NEWS:
                ahead = rec.ts - earlier["ts"]
                earlier["first"] = other
                earlier["what"] += f" - {other} first, {ahead:.3f} s before the {me}"
                row["first"] = other
                row["what"] += f" - {ahead:.3f} s after the {other} (seq {earlier['seq']})"
            else:
                waiting[(me, key)] = row
        else:
            continue
        rows.append(row)
    for (who, _), row in waiting.items():
        row["what"] += (" - the poll has not seen it (yet)" if who == "hook"
                        else " - the hook did not tell")
    return rows


def vm_why(state: State, vm: VMRecord, rows: list[dict[str, Any]]) -> list[str]:
    """Lines for people: the verdict at ``state.seq``, then the story."""
    worker = next((w for w in state.workers.values()
                   if vm.vm_id is not None and w.vm_id == vm.vm_id), None)
    ident = f" (id {vm.vm_id})" if vm.vm_id is not None else ""
    lines = [f"VM {vm.vm_name}{ident} is {vm.status} at seq {state.seq}: {verdict(vm, worker)}"]
    if vm.callback_at is not None:
        lines.append(f"  the hook last told {state_with_codes(vm.callback_state, vm.callback_lcm)} "
                     f"(its clock {precise_when(vm.callback_at)} UTC)")
    for row in rows:
        lines.append(f"  seq {row['seq']:>6}  {precise_when(row['ts'])} UTC  {row['who']:<10}  {row['what']}")
    return lines
