"""VM transitions (the cloud side of a worker's life).

::

    requested --allocated--> allocated --state seen--> observed
    any --vm.failed, or a *_FAILURE LCM state--> failed   (its workers drain)
    any --seen HOLD/STOPPED/SUSPENDED/POWEROFF/
          UNDEPLOYED/CLONING_FAILURE (rules 3)--> failed  (its workers are lost)
    any --kill requested--> killing                        (its workers drain)
    any --seen DONE--> gone                                (its workers are lost)
        (rules 1 and 2: DONE, POWEROFF or UNDEPLOYED)

``failed`` and ``killing`` stick until the VM is seen gone; the reconciler
(:mod:`.reconcile`) terminates failed VMs and asks again for kills the cloud
has not carried out. A worker joins its VM by announcing itself with the
VM's id (``worker.announced``), or - rules 3 - by having the VM's name as
its worker id, before or after the allocation reaches the log. The autoscaling policy that decides to
request and kill VMs is :mod:`.autoscale`; its decisions come back here as
``vm.*`` events, and a kill it decided is refused if the VM's worker took
work meanwhile (an operator's kill always goes through).
"""

from __future__ import annotations

import math

from ecloud.events.types import (
    VMAllocated,
    VMCallback,
    VMDiscovered,
    VMFailed,
    VMKillRequested,
    VMRequested,
    VMStateObserved,
)
from ecloud.projections import context
from ecloud.projections.context import number_text, storable
from ecloud.projections.effects import KillVM, ObserveCloud, SpawnVM
from ecloud.projections.state import (
    LIVE,
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
from ecloud.projections.transitions import (
    KILL_ASKED,
    SEEN_GONE,
    SEEN_RUNNING,
    VM_ALLOCATED_AS,
    VM_FAILS,
    move_vm,
)
from ecloud.projections.workers import drain_vm, let_go, link_vm

#: OpenNebula VM states after which nothing runs on the VM: DONE, POWEROFF,
#: UNDEPLOYED (docs/opennebula.md) - under rules 1 and 2 all three were "gone";
#: the local provider reports DONE for an exited worker.
DONE = 6
GONE_STATES = frozenset({DONE, 8, 9})
#: (rules 3) STATE codes of a VM that holds quota and runs nothing: it has
#: failed, and is terminated (docs/opennebula.md, "States")
UNUSABLE_STATES = {2: "HOLD", 4: "STOPPED", 5: "SUSPENDED", 8: "POWEROFF", 9: "UNDEPLOYED",
                   11: "CLONING_FAILURE"}
#: LCM states of a failed VM (BOOT_FAILURE, PROLOG_FAILURE, ...: docs/opennebula.md)
FAILURE_LCM_STATES = frozenset({*range(36, 51), 61})
#: ``vm.failed`` kinds that mean the cloud will not give us a VM now (asking
#: again at once is no use): the next request waits (``spawn_backoff``).
BACKOFF_KINDS = frozenset({"quota", "authorization", "allocation", "authentication", "connection"})
#: refusals for want of resources (VMS/CPU/memory quota, no free IP lease, no
#: host that fits): a ceiling the cloud shows, not a passing error
CEILING_KINDS = frozenset({"quota", "allocation"})
#: ``vm.failed`` kind of a VM whose spawn failed without an answer and that
#: the cloud's pool was then seen without (rules 3): it was never made
ABSENT = "absent"
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
    if not storable(event.vm_id):
        state.reject(seq, "cloud", f"allocation of {event.vm_name!r} as VM "
                                   f"{number_text(event.vm_id)}: the id is out of range")
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
        move_vm(state, vm, VM_ALLOCATED, VM_ALLOCATED_AS)
    if state.spawn_failed_at is None or vm.requested_at > state.spawn_failed_at:
        # the cloud gives VMs again (an answer to a request made before the
        # last refusal - several run at once - proves nothing)
        state.spawn_failures = 0
        if state.rules >= 3:
            state.spawn_refusal, state.ceiling = "", None
    named = state.workers.get(vm.vm_name) if state.rules >= 3 else None
    if named is not None and named.status in LIVE and named.vm_id != vm.vm_id:
        _tie(state, named, vm)  # it announced before the allocation reached the log
    if vm.announced_at is None and state.workers_on(vm.vm_id, live=False):
        vm.announced_at = state.clock  # its worker was quicker than the allocation
    if vm.status in (VM_FAILED, VM_KILLING):
        drain_vm(state, vm.vm_id, f"its VM {vm.vm_name} is {vm.status}")
    state.track_vm(vm)


def on_discovered(state: State, event: VMDiscovered, seq: int, out: list) -> None:
    """A VM with our prefix the log never asked for: taken in as one of ours
    (it holds quota like ours), with what the cloud says of it. Its worker,
    if one comes under its name, is used; else the reconciler terminates it
    after ``boot_timeout``."""
    if not (storable(event.vm_id) and storable(event.state) and storable(event.lcm_state)):
        state.reject(seq, "cloud", f"discovery of VM {event.vm_name!r}: a number is out of range")
        return
    known = state.vms.get(event.vm_name)
    if known is not None:
        if known.vm_id == event.vm_id:  # one the log took for gone: the cloud still has it
            on_state_observed(state, VMStateObserved(event.vm_id, event.state, event.lcm_state,
                                                     event.ip, event.vm_name), seq, out)
        else:
            state.reject(seq, "cloud", f"discovery of VM {event.vm_id} named {event.vm_name!r}: "
                                       f"the log's VM of that name is {number_text(known.vm_id)}")
        return
    holder = state.vm_with_id(event.vm_id)
    if holder is not None:
        state.reject(seq, "cloud", f"discovery of {event.vm_name!r} as VM {event.vm_id}, "
                                   f"which is {holder.vm_name!r}")
        return
    vm = VMRecord(event.vm_name, requested_at=state.clock, status=VM_ALLOCATED,
                  reason="found in the cloud: never asked for by this log", discovered=True)
    state.vms[event.vm_name] = vm
    vm.vm_id = event.vm_id
    state.vm_ids[event.vm_id] = vm.vm_name
    named = state.workers.get(vm.vm_name)
    if named is not None and named.status in LIVE:
        _tie(state, named, vm)
    state.track_vm(vm)
    on_state_observed(state, VMStateObserved(event.vm_id, event.state, event.lcm_state, event.ip,
                                             event.vm_name), seq, out)


def _tie(state: State, worker, vm: VMRecord) -> None:
    """Tie a live worker to the VM of its name (rules 3), keeping the free
    list in step: on a failed or dying VM it takes no more work."""
    listed = state.is_listed_free(worker)
    worker.vm_id = vm.vm_id
    link_vm(state, worker, vm.vm_id)  # type: ignore[arg-type]
    state.refresh_free(worker, listed)


def on_state_observed(state: State, event: VMStateObserved, seq: int, out: list) -> None:
    vm = state.vms.get(event.vm_name) if event.vm_name else None
    if vm is None:
        vm = state.vm_with_id(event.vm_id)
    if vm is None:
        state.reject(seq, "cloud", f"state of unknown VM {number_text(event.vm_id)}")
        return
    if not (storable(event.state) and storable(event.lcm_state)):
        state.reject(seq, "cloud", f"state of VM {vm.vm_name!r}: state "
                                   f"{number_text(event.state)}/{number_text(event.lcm_state)} "
                                   f"is out of range")
        return
    vm.state = event.state
    vm.lcm_state = event.lcm_state
    vm.observed_at = state.clock
    if event.ip:
        vm.ip = event.ip
    # rules 3: only DONE is gone, and a VM that holds quota and runs nothing
    # has failed (whatever ran on it is lost now); before: DONE, POWEROFF, UNDEPLOYED
    gone = event.state == DONE if state.rules >= 3 else event.state in GONE_STATES
    unusable = UNUSABLE_STATES.get(event.state) if state.rules >= 3 else None
    if gone:
        move_vm(state, vm, VM_GONE, SEEN_GONE)
        # Its worker cannot be running anything any more: give its work back
        # now rather than after the heartbeat deadline.
        for worker in state.workers_on(vm.vm_id):
            let_go(state, worker, LOST, f"its VM {vm.vm_name} is gone")
    elif unusable is not None:
        for worker in state.workers_on(vm.vm_id):
            let_go(state, worker, LOST, f"its VM {vm.vm_name} is {unusable}")
        if vm.status not in (VM_FAILED, VM_KILLING):
            _fail(state, vm, f"STATE {unusable}: it holds quota and runs nothing")
    elif vm.status in (VM_FAILED, VM_KILLING):
        pass  # on its way out whatever the cloud says, until it is gone
    elif event.lcm_state in FAILURE_LCM_STATES:
        _fail(state, vm, f"LCM state {event.lcm_state}")
    else:
        move_vm(state, vm, VM_OBSERVED, SEEN_RUNNING)
    state.track_vm(vm)


def on_callback(state: State, event: VMCallback, seq: int, out: list) -> None:
    """A hint from OpenNebula's state hook: the VM keeps its status (only the
    pool's sight, ``vm.state_observed``, changes that); the boss looks at the
    pool now instead of at the next poll. Checked at the edge
    (:mod:`ecloud.boss.callbacks`); a stale one is refused here too, so that
    a log folds alike whoever appended it."""
    if not (storable(event.state) and storable(event.lcm_state)
            and isinstance(event.at, (int, float)) and math.isfinite(event.at)):
        state.reject(seq, "hook", f"callback about VM {number_text(event.vm_id)}: state "
                                  f"{number_text(event.state)}/{number_text(event.lcm_state)} "
                                  f"at {event.at!r} is out of range")
        return
    vm = state.vms.get(event.vm_name)
    if vm is not None:
        if vm.callback_at is not None and not event.at > vm.callback_at:
            state.reject(seq, "hook", f"callback about {vm.vm_name} not after the last one "
                                      f"(the hook's time {event.at!r})")
            return
        vm.callback_at = event.at
        vm.callback_state = event.state
        vm.callback_lcm = event.lcm_state
    out.append(ObserveCloud(seq, event.vm_id))


def on_failed(state: State, event: VMFailed, seq: int, out: list) -> None:
    vm = state.vms.get(event.vm_name)
    if vm is None:
        state.reject(seq, "cloud", f"failure of unknown VM {event.vm_name!r}")
        return
    if state.rules >= 3 and event.kind == ABSENT and vm.vm_id is not None:
        # a poll that read the pool before the instantiate acted, answering
        # after the spawn did: an absence is about a name without an id
        state.reject(seq, "cloud", f"VM {vm.vm_name!r} said absent from the pool, but it is "
                                   f"VM {vm.vm_id}: a poll older than its allocation")
        return
    if state.rules >= 3 and vm.vm_id is None:
        if event.kind == ABSENT:  # the pool is seen without it: it was never made
            vm.uncertain = False
            state.track_vm(vm)
            return
        if event.kind == "connection":  # no answer: the call may have acted
            vm.uncertain = True
    if event.kind in BACKOFF_KINDS:
        state.spawn_failures += 1
        state.spawn_failed_at = state.clock
        if state.rules >= 3 and event.kind in CEILING_KINDS:
            state.spawn_refusal = f"{event.kind}: {event.reason}"[:300]
            state.ceiling = sum(1 for n in state.open_vms
                                if n != vm.vm_name and state.vms[n].vm_id is not None)
    if vm.status in (VM_GONE, VM_KILLING):
        return  # on its way out already
    _fail(state, vm, f"{event.kind}: {event.reason}")
    state.track_vm(vm)


def _fail(state: State, vm: VMRecord, reason: str) -> None:
    move_vm(state, vm, VM_FAILED, VM_FAILS)
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
            state.reject(seq, AUTOSCALER, f"kill of VM {number_text(event.vm_id)}: {problem}")
            return
    vm = state.vm_with_id(event.vm_id)
    if vm is not None:
        if vm.status == VM_GONE and state.rules >= 3:
            return  # gone already: nothing to kill
        move_vm(state, vm, VM_KILLING, KILL_ASKED)
        vm.reason = event.reason
        vm.kill_asked_at = state.clock
        vm.kills += 1
        state.track_vm(vm)
    drain_vm(state, event.vm_id,
             f"its VM {vm.vm_name if vm else number_text(event.vm_id)} is being killed")
    out.append(KillVM(seq, event.vm_id, event.reason))


def worker_context(state: State) -> tuple[tuple[str, str], ...]:
    """The context variables a new worker VM gets from the cluster context:
    where to connect, how many slots to offer, where the data lives."""
    values = {"ECLOUD_SLOTS": str(context.get(state, "slots_per_worker"))}
    for key, name in (("boss_address", "BOSS_ADDRESS"), ("datastore_address", "ECLOUD_DATASTORE")):
        if key in state.context:
            values[name] = state.context[key]
    return tuple(sorted(values.items()))
