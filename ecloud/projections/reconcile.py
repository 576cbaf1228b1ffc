"""The reconciler: VMs that exist and should not are terminated, again and
again until the cloud says they are gone.

A pure function of the state, like the scheduler and the autoscaler, and
*level-triggered*: it does not remember what it asked for, it looks at what
is, every turn. Its decisions are ``vm.kill_requested`` events (source
``reconciler``), appended by the boss and folded like any other:

- a *failed* VM that the cloud still holds (it has an id: a boot failure, a
  *_FAILURE state, or - rules 3 - HOLD, STOPPED, SUSPENDED, POWEROFF,
  UNDEPLOYED) is terminated once no worker on it holds an attempt, whether
  autoscaling is on or not: it holds quota and runs nothing;
- a VM found in the cloud with this cluster's prefix that the log never
  asked for (``vm.discovered``) is one of ours: used if its worker comes,
  terminated after ``boot_timeout`` if none does (with autoscaling on, the
  autoscaler's own boot timeout does it);
- a VM whose kill was asked for and that is still not seen gone is asked
  to be killed again, ``kill_retry`` (context key, 30) seconds after the
  last ask, doubling up to ``max_backoff`` - a terminate the cloud refused (locked, wrong
  state) or lost, or one that failed while oned was away, is re-derived from
  the state rather than remembered as a pending effect.

Whether a VM is gone is only ever learnt from the cloud (``vm.state_observed``
DONE, from the provider's poll of the whole pool), never from the answer to
a kill.
"""

from __future__ import annotations

from ecloud.events.types import VMKillRequested
from ecloud.projections import context
from ecloud.projections.state import (
    VM_ALLOCATED,
    VM_FAILED,
    VM_KILLING,
    VM_OBSERVED,
    State,
    VMRecord,
)

#: ``VMKillRequested.source`` of the reconciler's kills
RECONCILER = "reconciler"


def retry_at(state: State, vm: VMRecord) -> float | None:
    """When a VM being killed is asked to be killed again (None: not asked yet)."""
    if vm.kill_asked_at is None:
        return None
    first = float(context.get(state, "kill_retry"))
    cap = float(context.get(state, "max_backoff"))
    return vm.kill_asked_at + min(first * 2.0 ** min(max(vm.kills - 1, 0), 16), max(cap, first))


def stray_deadline(state: State, vm: VMRecord) -> float | None:
    """When a VM found in the cloud, never asked for, is terminated if no
    worker of it has come by then (None: not such a VM, or its worker came;
    with autoscaling on, the autoscaler's boot timeout does the same)."""
    if not vm.discovered or vm.status not in (VM_ALLOCATED, VM_OBSERVED) or vm.vm_id is None:
        return None
    if context.get(state, "max_workers") or state.workers_on(vm.vm_id):
        return None
    started = state.boss_started_at if state.boss_started_at is not None else vm.requested_at
    return max(vm.requested_at, started) + float(context.get(state, "boot_timeout"))


def reconcile(state: State) -> list:
    """The reconciler's decisions for the current state."""
    decisions: list = []
    vms = state.vms
    for name in state.open_vms:
        vm = vms[name]
        if vm.vm_id is None:
            continue  # the cloud never gave it an id: nothing to terminate by
        stray = stray_deadline(state, vm)
        if stray is not None and stray <= state.clock:
            decisions.append(VMKillRequested(vm.vm_id, f"terminate VM {name}: found in the "
                                             "cloud, never asked for, and no worker of it came "
                                             "within boot_timeout", source=RECONCILER))
        elif vm.status == VM_FAILED:
            if not any(w.used for w in state.workers_on(vm.vm_id)):
                decisions.append(VMKillRequested(vm.vm_id, f"terminate failed VM {name} "
                                                 f"({vm.reason})", source=RECONCILER))
        elif vm.status == VM_KILLING:
            due = retry_at(state, vm)
            if due is not None and due <= state.clock:
                decisions.append(VMKillRequested(
                    vm.vm_id, f"still not gone {state.clock - vm.kill_asked_at:.0f}s after "  # type: ignore[operator]
                    f"kill #{vm.kills} was asked for ({vm.reason})", source=RECONCILER))
    return decisions


def next_deadline(state: State) -> float | None:
    """When time alone would make the reconciler act (the boss's tick timer)."""
    due = []
    for name in state.open_vms:
        vm = state.vms[name]
        at = (retry_at(state, vm) if vm.status == VM_KILLING and vm.vm_id is not None
              else stray_deadline(state, vm))
        if at is not None and at > state.clock:
            due.append(at)
    return min(due) if due else None


__all__ = ["RECONCILER", "next_deadline", "reconcile", "retry_at"]
