"""VM transitions (the cloud side of a worker's life).

::

    requested --allocated--> allocated --state seen--> observed
    any --vm.failed, or a *_FAILURE LCM state--> failed   (its workers drain)
    any --kill requested--> killing                        (its workers drain)
    any --seen DONE/POWEROFF/UNDEPLOYED--> gone            (its workers are lost)

``failed`` and ``killing`` stick until the VM is seen gone. A worker joins its
VM by announcing itself with the VM's id (``worker.announced``), before or
after the allocation reaches the log. The autoscaling policy that decides to
request and kill VMs is :mod:`.autoscale`; its decisions come back here as
``vm.*`` events, and a kill it decided is refused if the VM's worker took
work meanwhile (an operator's kill always goes through).
"""

from __future__ import annotations

from ecloud.events.types import VMAllocated, VMFailed, VMKillRequested, VMRequested, VMStateObserved
from ecloud.projections import context
from ecloud.projections.effects import KillVM, SpawnVM
from ecloud.projections.state import (
    LOST,
    VM_ALLOCATED,
    VM_FAILED,
    VM_GONE,
    VM_KILLING,
    VM_OBSERVED,
    VM_REQUESTED,
    State,
    VMRecord,
)
from ecloud.projections.workers import drain_vm, let_go

#: OpenNebula VM states after which nothing runs on the VM: DONE, POWEROFF,
#: UNDEPLOYED (OPENNEBULA.md); the local provider reports DONE for an exited worker.
DONE = 6
GONE_STATES = frozenset({DONE, 8, 9})
#: LCM states of a failed VM (BOOT_FAILURE, PROLOG_FAILURE, ...: OPENNEBULA.md)
FAILURE_LCM_STATES = frozenset({*range(36, 51), 61})
#: ``vm.failed`` kinds that mean the cloud will not give us a VM now (asking
#: again at once is no use): the next request waits (``spawn_backoff``).
BACKOFF_KINDS = frozenset({"quota", "authorization", "allocation", "authentication", "connection"})
#: ``VMKillRequested.source`` of the autoscaler's kills: the only ones that
#: may be refused
AUTOSCALER = "autoscaler"


def next_vm_names(state: State, prefix: str, count: int) -> list[str]:
    """``count`` fresh VM names ``{prefix}{k}``, k = 1 + the VMs requested in
    the log so far (and on): a name is never reused, so it can stay the
    idempotency key of a spawn. A name another writer took is skipped."""
    names: list[str] = []
    k = len(state.vms)
    while len(names) < count:
        k += 1
        name = f"{prefix}{k}"
        if name not in state.vms:
            names.append(name)
    return names


def on_requested(state: State, event: VMRequested, seq: int, out: list) -> None:
    if event.vm_name in state.vms:
        return  # the name is the idempotency key: a second request is the same VM
    vm = VMRecord(event.vm_name, requested_at=state.clock)
    state.vms[event.vm_name] = vm
    state.track_vm(vm)
    out.append(SpawnVM(seq, event.vm_name, worker_context(state)))


def on_allocated(state: State, event: VMAllocated, seq: int, out: list) -> None:
    vm = state.vms.get(event.vm_name)
    if vm is None:
        state.reject(seq, "cloud", f"allocation of unknown VM {event.vm_name!r}")
        return
    holder = state.vm_with_id(event.vm_id)
    if holder is not None and holder is not vm:
        state.reject(seq, "cloud", f"allocation of {event.vm_name!r} as VM {event.vm_id}, "
                                   f"which is {holder.vm_name!r}")
        return
    if vm.vm_id is not None and vm.vm_id != event.vm_id:
        del state.vm_ids[vm.vm_id]
    vm.vm_id = event.vm_id
    state.vm_ids[event.vm_id] = vm.vm_name
    if vm.status == VM_REQUESTED:
        vm.status = VM_ALLOCATED
    if state.spawn_failed_at is None or vm.requested_at > state.spawn_failed_at:
        # the cloud gives VMs again (an answer to a request made before the
        # last refusal - several run at once - proves nothing)
        state.spawn_failures = 0
    if vm.announced_at is None and state.workers_on(vm.vm_id, live=False):
        vm.announced_at = state.clock  # its worker was quicker than the allocation
    if vm.status in (VM_FAILED, VM_KILLING):
        drain_vm(state, vm.vm_id, f"its VM {vm.vm_name} is {vm.status}")
    state.track_vm(vm)


def on_state_observed(state: State, event: VMStateObserved, seq: int, out: list) -> None:
    vm = state.vms.get(event.vm_name) if event.vm_name else None
    if vm is None:
        vm = state.vm_with_id(event.vm_id)
    if vm is None:
        state.reject(seq, "cloud", f"state of unknown VM {event.vm_id}")
        return
    vm.state = event.state
    vm.lcm_state = event.lcm_state
    if event.ip:
        vm.ip = event.ip
    if event.state in GONE_STATES:
        vm.status = VM_GONE
        # Its worker cannot be running anything any more: give its work back
        # now rather than after the heartbeat deadline.
        for worker in state.workers_on(vm.vm_id):
            let_go(state, worker, LOST, f"its VM {vm.vm_name} is gone")
    elif vm.status in (VM_FAILED, VM_KILLING):
        pass  # on its way out whatever the cloud says, until it is gone
    elif event.lcm_state in FAILURE_LCM_STATES:
        _fail(state, vm, f"LCM state {event.lcm_state}")
    else:
        vm.status = VM_OBSERVED
    state.track_vm(vm)


def on_failed(state: State, event: VMFailed, seq: int, out: list) -> None:
    vm = state.vms.get(event.vm_name)
    if vm is None:
        state.reject(seq, "cloud", f"failure of unknown VM {event.vm_name!r}")
        return
    if event.kind in BACKOFF_KINDS:
        state.spawn_failures += 1
        state.spawn_failed_at = state.clock
    if vm.status in (VM_GONE, VM_KILLING):
        return  # on its way out already
    _fail(state, vm, f"{event.kind}: {event.reason}")
    state.track_vm(vm)


def _fail(state: State, vm: VMRecord, reason: str) -> None:
    vm.status = VM_FAILED
    vm.reason = reason
    if vm.failed_at is None:
        vm.failed_at = state.clock
    if vm.vm_id is not None:
        drain_vm(state, vm.vm_id, f"its VM {vm.vm_name} failed ({reason})")


def kill_problem(state: State, vm_id: int) -> str | None:
    """Why the autoscaler may not kill VM ``vm_id`` now, or None. It may kill
    only a VM it knows, once, and never one whose worker holds an attempt."""
    vm = state.vm_with_id(vm_id)
    if vm is None:
        return "unknown VM"
    if vm.status in (VM_KILLING, VM_GONE):
        return f"VM {vm.vm_name} is already {vm.status}"
    for worker in state.workers_on(vm_id):
        if worker.used:
            return f"worker {worker.worker_id} is busy"
    return None


def on_kill_requested(state: State, event: VMKillRequested, seq: int, out: list) -> None:
    # The autoscaler decided on a state that may be older than this event (a
    # dispatch to the worker can land first): then its kill is dropped.
    if event.source == AUTOSCALER:
        problem = kill_problem(state, event.vm_id)
        if problem is not None:
            state.reject(seq, AUTOSCALER, f"kill of VM {event.vm_id}: {problem}")
            return
    vm = state.vm_with_id(event.vm_id)
    if vm is not None:
        vm.status = VM_KILLING
        vm.reason = event.reason
        state.track_vm(vm)
    drain_vm(state, event.vm_id, f"its VM {vm.vm_name if vm else event.vm_id} is being killed")
    out.append(KillVM(seq, event.vm_id, event.reason))


def worker_context(state: State) -> tuple[tuple[str, str], ...]:
    """The context variables a new worker VM gets from the cluster context:
    where to connect, how many slots to offer, where the data lives."""
    values = {"ECLOUD_SLOTS": str(context.get(state, "slots_per_worker"))}
    for key, name in (("boss_address", "BOSS_ADDRESS"), ("datastore_address", "ECLOUD_DATASTORE")):
        if key in state.context:
            values[name] = state.context[key]
    return tuple(sorted(values.items()))
