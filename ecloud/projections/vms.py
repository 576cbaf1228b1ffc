"""VM transitions (the cloud side of a worker's life).

Only bookkeeping for now: what was requested, which id it got, what the
cloud last reported. The autoscaling policy that decides to request and kill
VMs lives beside this and turns its decisions into ``vm.*`` events.
"""

from __future__ import annotations

from ecloud.events.types import VMAllocated, VMFailed, VMKillRequested, VMRequested, VMStateObserved
from ecloud.projections.effects import KillVM, SpawnVM
from ecloud.projections.state import LIVE, LOST, State, VMRecord
from ecloud.projections.workers import let_go

#: OpenNebula VM states after which nothing runs on the VM: DONE, POWEROFF,
#: UNDEPLOYED (OPENNEBULA.md); the local provider reports DONE for an exited worker.
DONE = 6
GONE_STATES = frozenset({DONE, 8, 9})


def on_requested(state: State, event: VMRequested, seq: int, out: list) -> None:
    if event.vm_name in state.vms:
        return  # the name is the idempotency key: a second request is the same VM
    state.vms[event.vm_name] = VMRecord(event.vm_name, requested_at=state.clock)
    out.append(SpawnVM(seq, event.vm_name))


def on_allocated(state: State, event: VMAllocated, seq: int, out: list) -> None:
    vm = state.vms.get(event.vm_name)
    if vm is None:
        state.reject(seq, "cloud", f"allocation of unknown VM {event.vm_name!r}")
        return
    vm.vm_id = event.vm_id
    vm.status = "allocated"


def _by_id(state: State, vm_id: int) -> VMRecord | None:
    for vm in state.vms.values():
        if vm.vm_id == vm_id:
            return vm
    return None


def on_state_observed(state: State, event: VMStateObserved, seq: int, out: list) -> None:
    vm = state.vms.get(event.vm_name) if event.vm_name else None
    if vm is None:
        vm = _by_id(state, event.vm_id)
    if vm is None:
        state.reject(seq, "cloud", f"state of unknown VM {event.vm_id}")
        return
    vm.state = event.state
    vm.lcm_state = event.lcm_state
    if event.ip:
        vm.ip = event.ip
    if event.state in GONE_STATES:
        vm.status = "gone"
        # Its worker cannot be running anything any more: give its work back
        # now rather than after the heartbeat deadline.
        for worker in list(state.workers.values()):
            if worker.vm_id == vm.vm_id and worker.status in LIVE:
                let_go(state, worker, LOST, f"its VM {vm.vm_name} is gone")
    else:
        vm.status = "observed"


def on_failed(state: State, event: VMFailed, seq: int, out: list) -> None:
    vm = state.vms.get(event.vm_name)
    if vm is None:
        state.reject(seq, "cloud", f"failure of unknown VM {event.vm_name!r}")
        return
    vm.status = "failed"
    vm.reason = f"{event.kind}: {event.reason}"


def on_kill_requested(state: State, event: VMKillRequested, seq: int, out: list) -> None:
    vm = _by_id(state, event.vm_id)
    if vm is not None:
        vm.status = "killing"
        vm.reason = event.reason
    out.append(KillVM(seq, event.vm_id, event.reason))
