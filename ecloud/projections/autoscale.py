"""The autoscaler: how many worker VMs the cluster should have.

A pure function of the state, like the scheduler. It changes nothing: it
returns ``vm.requested`` and ``vm.kill_requested`` events, which the boss
appends (with the scheduler's decisions, after them) and the fold applies.
The policy is the context keys ``max_workers`` (0: off, the default),
``min_workers``, ``slots_per_worker``, ``max_booting``, ``idle_timeout``,
``boot_timeout`` and ``spawn_backoff`` (with ``max_backoff``). Time is
``state.clock``; no deadline counts the time before the last boss started.

A VM it considers (:attr:`State.open_vms`) is

- *failed* (``vm.failed``, or a *_FAILURE LCM state, or - rules 3 - a state
  that holds quota and runs nothing): it counts for nothing, so it is
  replaced, and it is the reconciler's to terminate (:mod:`.reconcile`);
- *live*: a live worker announced itself with its id;
- *booting*: no worker yet (or its worker went away: lost, or said goodbye)
  and less than ``boot_timeout`` since the request (since it was last heard
  from); past that it is killed and counts for nothing, so it is replaced (one
  the cloud never gave an id cannot be killed: it is only given up on).

Then:

- scale up: ``demand`` = slots of the ready tasks that fit a new VM, minus
  the free slots of the live workers, minus ``slots_per_worker`` per booting
  VM; request ``ceil(demand / slots_per_worker)`` VMs, and at least enough to
  keep ``min_workers`` live plus booting, but never more than takes live plus
  booting past ``max_workers`` or booting past ``max_booting`` (nor more
  than :data:`MAX_REQUESTS` in one round); no request
  while the cloud's last refusal is younger than ``spawn_backoff * 2^(n-1)``
  (n refusals in a row, at most ``max_backoff``);
- scale down, only while no VM is wanted for demand: kill the VM of a worker
  idle for ``idle_timeout`` while live VMs exceed ``min_workers``, the
  youngest worker first. The scheduler fills the oldest workers first, so
  the youngest are the ones it would use last: killing them keeps the
  workers the next task will go to, and leaves the same workers in service
  from one burst to the next. A worker holding an attempt is never killed
  (and the fold refuses the kill if it took one since).

VM names are ``{prefix}{k}``, k = 1 + the VMs ever requested in the log, so
a name is never reused and a decision replayed on the same state is the same.
"""

from __future__ import annotations

import math

from attrs import frozen

from ecloud.events.types import VMKillRequested, VMRequested
from ecloud.projections import context
from ecloud.projections.state import IDLE, VM_FAILED, VM_KILLING, State, VMRecord, WorkerRecord
from ecloud.projections.vms import AUTOSCALER, next_vm_names

#: most VMs one round asks for: the policy keys take any whole number, and
#: a round must stay a bounded amount of work (the rest follows next round)
MAX_REQUESTS = 1000


@frozen
class Policy:
    max_workers: int
    min_workers: int
    slots_per_worker: int
    max_booting: int
    idle_timeout: float
    boot_timeout: float
    spawn_backoff: float
    max_backoff: float

    @classmethod
    def of(cls, state: State) -> Policy:
        get = context.get
        return cls(*(get(state, key) for key in (  # type: ignore[arg-type]
            "max_workers", "min_workers", "slots_per_worker", "max_booting", "idle_timeout",
            "boot_timeout", "spawn_backoff", "max_backoff")))


@frozen
class Survey:
    """What the autoscaler sees in the VMs, at ``state.clock``."""

    #: VMs to kill now, with why: those that did not boot (failed ones are
    #: the reconciler's)
    kills: list[tuple[VMRecord, str]]
    #: live VMs and their live workers
    live: list[tuple[VMRecord, list[WorkerRecord]]]
    booting: int
    #: VMs that still exist in the cloud but serve nothing (failed, not
    #: booted in time, being killed): they count against ``max_workers``
    held: int
    #: when, with nothing else happening, a booting VM times out (later than now)
    boot_deadlines: list[float]
    #: when an idle live VM will have been idle for ``idle_timeout`` (later than now)
    idle_deadlines: list[float]


def autoscale(state: State, prefix: str) -> list:
    """The autoscaler's decisions for the current state (``[]`` while
    ``max_workers`` is 0)."""
    if not context.get(state, "max_workers"):
        return []
    policy = Policy.of(state)
    survey = _survey(state, policy)
    decisions: list = [VMKillRequested(vm.vm_id, why, source=AUTOSCALER)  # type: ignore[arg-type]
                       for vm, why in survey.kills]
    live, booting = len(survey.live), survey.booting
    wanted = _wanted_for_demand(state, policy, booting)
    room = min(policy.max_workers - live - booting - survey.held, policy.max_booting - booting)
    count = min(room, max(wanted, policy.min_workers - live - booting), MAX_REQUESTS)
    if state.spawn_failures:  # after a refusal, one VM at a time until the cloud gives one
        count = min(count, 1)
    if count > 0 and backoff_until(state, policy) <= state.clock:
        reason = ("scale up: ready tasks want more slots" if wanted
                  else f"keep min_workers {policy.min_workers}")
        decisions.extend(VMRequested(name, reason) for name in next_vm_names(state, prefix, count))
    if wanted == 0:
        decisions.extend(_scale_down(state, policy, survey))
    return decisions


def next_deadline(state: State) -> float | None:
    """When time alone would change the autoscaler's mind (for the boss's
    tick timer; see :func:`ecloud.projections.timers.next_deadline`)."""
    if not context.get(state, "max_workers"):
        return None
    policy = Policy.of(state)
    survey = _survey(state, policy)
    deadlines = survey.boot_deadlines
    if len(survey.live) > policy.min_workers:
        deadlines += survey.idle_deadlines
    until = backoff_until(state, policy)
    if until > state.clock:
        deadlines.append(until)
    return min(deadlines) if deadlines else None


def backoff_until(state: State, policy: Policy) -> float:
    """No VM request before this moment (the cloud refused the last ones)."""
    n = state.spawn_failures
    if not n or state.spawn_failed_at is None:
        return -math.inf
    delay = min(policy.spawn_backoff * 2.0 ** min(n - 1, 64), policy.max_backoff)
    return state.spawn_failed_at + delay


def pool(state: State) -> tuple[int, int]:
    """(live, booting) worker VMs, as the autoscaler counts them now."""
    survey = _survey(state, Policy.of(state))
    return len(survey.live), survey.booting


# ---------------------------------------------------------------- the parts


def _survey(state: State, policy: Policy) -> Survey:
    now = state.clock
    started = state.boss_started_at if state.boss_started_at is not None else -math.inf
    vms = state.vms
    dead: list[tuple[VMRecord, str]] = []
    live: list[tuple[VMRecord, list[WorkerRecord]]] = []
    booting = held = 0
    boot_deadlines: list[float] = []
    idle_deadlines: list[float] = []
    for name in state.open_vms:
        vm = vms[name]
        if vm.status == VM_KILLING:
            held += 1
            continue
        workers = state.workers_on(vm.vm_id)
        if vm.status == VM_FAILED:
            held += 1  # open only while the cloud has it; the reconciler terminates it
            continue
        if workers:
            live.append((vm, workers))
            idle_at = _idle_since(workers, started)
            if idle_at is not None and idle_at + policy.idle_timeout > now:
                idle_deadlines.append(idle_at + policy.idle_timeout)
            continue
        if vm.announced_at is None:
            since = vm.requested_at
            why = f"replace VM {name}: no worker announced within {policy.boot_timeout:g}s"
        else:  # its worker went away: it may come back (a broker restart)
            since = max([vm.announced_at] + [w.last_seen for w in state.workers_on(vm.vm_id, False)])
            why = (f"replace VM {name}: its worker went away and did not come back within "
                   f"{policy.boot_timeout:g}s")
        deadline = max(since, started) + policy.boot_timeout
        if deadline > now:
            booting += 1
            boot_deadlines.append(deadline)
        elif vm.vm_id is not None:
            held += 1
            dead.append((vm, why))
        # else: the cloud never gave it an id; nothing to kill, it is given up on
    dead.sort(key=lambda item: item[0].vm_name)
    return Survey(dead, live, booting, held, boot_deadlines, idle_deadlines)


def _idle_since(workers: list[WorkerRecord], started: float) -> float | None:
    """Since when every one of a VM's live workers is idle (not counting
    the time before the last boss started), or None if one is not."""
    since = started
    for worker in workers:
        if worker.status != IDLE or worker.idle_since is None:
            return None
        since = max(since, worker.idle_since)
    return since


def _wanted_for_demand(state: State, policy: Policy, booting: int) -> int:
    """New VMs the ready tasks call for, before any cap."""
    if not state.ready:
        return 0
    per_vm = policy.slots_per_worker
    workers = state.workers
    # free slots only: room to queue ahead is not a slot (and a worker queueing
    # ahead has none free)
    supply = booting * per_vm + sum(max(0, workers[wid].free) for _, wid in state.free)
    # Slots beyond what max_workers allows change nothing: stop counting there.
    enough = supply + max(policy.max_workers, 1) * per_vm
    need = 0
    tasks = state.tasks
    for key in state.ready:
        slots = tasks[key[3]].spec.slots
        if slots <= per_vm:  # a bigger task cannot run on a new VM: no reason to ask for one
            need += slots
            if need >= enough:
                break
    demand = need - supply
    return -(-demand // per_vm) if demand > 0 else 0


def _scale_down(state: State, policy: Policy, survey: Survey) -> list:
    excess = len(survey.live) - policy.min_workers
    if excess <= 0:
        return []
    now = state.clock
    started = state.boss_started_at if state.boss_started_at is not None else -math.inf
    candidates = []
    for vm, workers in survey.live:
        idle_at = _idle_since(workers, started)
        if idle_at is not None and idle_at + policy.idle_timeout <= now:
            youngest = max(w.rank for w in workers)
            candidates.append((-youngest, vm.vm_name, vm, now - idle_at))
    candidates.sort(key=lambda c: (c[0], c[1]))
    return [VMKillRequested(vm.vm_id, f"idle for {idle:.0f}s", source=AUTOSCALER)  # type: ignore[arg-type]
            for _, _, vm, idle in candidates[:excess]]


def cloud_ceiling(state: State) -> dict | None:
    """The cloud's last refusal of a VM for want of resources, while it
    stands: at how many VMs of ours, why, and when the autoscaler asks again
    (one VM at a time until one is given) - for ``ecloud status`` and the page."""
    if not state.spawn_failures or not state.spawn_refusal:
        return None
    return {"at_vms": state.ceiling, "reason": state.spawn_refusal,
            "next_try": backoff_until(state, Policy.of(state))}


__all__ = ["Policy", "autoscale", "backoff_until", "cloud_ceiling", "next_deadline", "pool"]
