"""Worker transitions.

::

    (announce) --> idle <--> busy --goodbye--> gone
    idle/busy --silence past heartbeat deadline, or last will--> lost
    idle/busy --its VM is being killed or failed--> draining (no new work)

A worker that is lost or gone gives back every attempt it held: those tasks
return to ready and their next dispatch is a new attempt, so a late report
from the old attempt is recognised as stale. An announcement with a new
``incarnation`` means the agent restarted: the same happens to what the old
incarnation held, then the worker starts afresh.
"""

from __future__ import annotations

from ecloud.events.types import (
    BossStarted,
    WorkerAnnounced,
    WorkerHeartbeat,
    WorkerLeft,
    WorkerLost,
)
from ecloud.projections import context
from ecloud.projections.effects import Ack, RefuseWorker
from ecloud.projections.state import (
    ACTIVE,
    BUSY,
    DRAINING,
    GONE,
    IDLE,
    LIVE,
    LOST,
    T_HEARTBEAT,
    VM_FAILED,
    VM_KILLING,
    State,
    WorkerRecord,
)
from ecloud.projections.tasks import release_slot, requeue

#: The worker protocol this boss speaks; an agent announcing another is refused.
PROTOCOL_VERSION = 1


def on_announced(state: State, event: WorkerAnnounced, seq: int, out: list) -> None:
    if event.msg_id:
        out.append(Ack(seq, event.worker_id, event.msg_id))
    if event.protocol != PROTOCOL_VERSION:
        reason = f"protocol {event.protocol} not supported (boss speaks {PROTOCOL_VERSION})"
        state.reject(seq, f"worker {event.worker_id}", reason)
        out.append(RefuseWorker(seq, event.worker_id, reason))
        return
    if event.slots < 1:
        reason = f"slots must be at least 1, got {event.slots}"
        state.reject(seq, f"worker {event.worker_id}", reason)
        out.append(RefuseWorker(seq, event.worker_id, reason))
        return
    old = state.workers.get(event.worker_id)
    if old is not None and old.status in LIVE:
        if old.incarnation == event.incarnation:
            old.last_seen = state.clock  # a reconnect: nothing was lost
            return
        let_go(state, old, LOST, "restarted (new incarnation)")
    worker = WorkerRecord(
        worker_id=event.worker_id,
        host=event.host,
        slots=event.slots,
        protocol=event.protocol,
        incarnation=event.incarnation,
        rank=seq,
        status=IDLE,
        last_seen=state.clock,
        announced_at=state.clock,
        vm_id=event.vm_id,
        idle_since=state.clock,
    )
    state.workers[event.worker_id] = worker
    if event.vm_id is not None:
        _link_vm(state, worker, event.vm_id)
    state.refresh_free(worker, was_free=False)
    state.arm(state.clock + context.heartbeat_timeout(state), T_HEARTBEAT, worker.worker_id,
              worker.incarnation)


def _link_vm(state: State, worker: WorkerRecord, vm_id: int) -> None:
    """Note that ``worker`` runs on VM ``vm_id``; a worker on a VM that is
    being killed or has failed takes no work."""
    on_vm = state.vm_workers.setdefault(vm_id, [])
    if worker.worker_id not in on_vm:
        on_vm.append(worker.worker_id)
    vm = state.vm_with_id(vm_id)
    if vm is None:
        return
    if vm.announced_at is None:
        vm.announced_at = state.clock
    if vm.status in (VM_KILLING, VM_FAILED):
        worker.status = DRAINING
        worker.reason = f"its VM {vm.vm_name} is {vm.status}"


def drain_vm(state: State, vm_id: int, reason: str) -> None:
    """Give no more work to the live workers on VM ``vm_id`` (it is being
    killed or has failed); what they hold runs on."""
    for worker in state.workers_on(vm_id):
        if worker.status in (IDLE, BUSY):
            listed = state.is_listed_free(worker)
            worker.status = DRAINING
            worker.reason = reason
            state.refresh_free(worker, listed)


def on_boss_started(state: State, event: BossStarted, seq: int, out: list) -> None:
    state.boss_started_at = state.clock


def on_heartbeat(state: State, event: WorkerHeartbeat, seq: int, out: list) -> None:
    worker = state.workers.get(event.worker_id)
    if worker is not None and worker.status in LIVE:
        worker.last_seen = state.clock


def on_left(state: State, event: WorkerLeft, seq: int, out: list) -> None:
    if event.msg_id:
        out.append(Ack(seq, event.worker_id, event.msg_id))
    worker = state.workers.get(event.worker_id)
    if worker is not None and worker.status in LIVE:
        let_go(state, worker, GONE, event.reason or "said goodbye")


def on_lost(state: State, event: WorkerLost, seq: int, out: list) -> None:
    worker = state.workers.get(event.worker_id)
    if worker is not None and worker.status in LIVE:
        let_go(state, worker, LOST, event.reason or "connection lost")


def extend_deadlines(state: State, event: BossStarted, now: float) -> None:
    """No boss heard heartbeats while none was running: restart every live
    worker's deadline from ``now`` rather than declare them all lost. Runs
    *before* the clock moves to ``now`` (see :func:`ecloud.projections.fold.step`)."""
    for worker in state.workers.values():
        if worker.status in LIVE and worker.last_seen < now:
            worker.last_seen = now


def on_heartbeat_deadline(state: State, worker_id: str, incarnation: str) -> None:
    """The heartbeat timer of a worker fired: lose it, or re-arm the timer at
    its real deadline if it was heard from since the timer was set."""
    worker = state.workers.get(worker_id)
    if worker is None or worker.status not in LIVE or worker.incarnation != incarnation:
        return
    timeout = context.heartbeat_timeout(state)
    deadline = worker.last_seen + timeout
    if deadline <= state.clock:
        let_go(state, worker, LOST, f"no heartbeat for {timeout:g}s")
    else:
        state.arm(deadline, T_HEARTBEAT, worker_id, incarnation)


def let_go(state: State, worker: WorkerRecord, status: str, reason: str) -> None:
    """Take a worker out of service and put every attempt it held back."""
    tasks = state.tasks
    for task_id, attempt in sorted(worker.running):
        release_slot(state, worker.worker_id, task_id, attempt)
        task = tasks.get(task_id)
        if (
            task is not None
            and task.status in ACTIVE
            and task.attempt == attempt
            and task.worker == worker.worker_id
        ):
            requeue(state, task, f"worker {worker.worker_id} {status}: {reason}")
    listed = state.is_listed_free(worker)
    worker.status = status
    worker.reason = reason
    state.refresh_free(worker, listed)
