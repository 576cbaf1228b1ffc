"""Worker transitions.

::

    (announce) --> idle <--> busy --goodbye--> gone
    idle/busy --it says it is shutting down--> draining (no new work)
    idle/busy --its VM is being killed or failed--> draining (no new work)
    idle/busy/draining --last will, operator, or (rules 2) the boss's
                        decision on its silence--> lost

A worker that is lost or gone gives back every attempt it held: those tasks
return to ready and their next dispatch is a new attempt, so a late report
from the old attempt is recognised as stale. Liveness (deadlines, overdue
workers, the boss's loss decisions) is :mod:`.liveness`.

Incarnations: every agent process announces a fresh random ``incarnation``.
Under rules 2 an announcement of a second incarnation while the worker's
current one is live is refused (two agents with one id - a copied VM, two
hosts with one name - never both take work); the refused agent is told to
try again after ``heartbeat_timeout``, by when a current incarnation that
died without a word has been lost. Under rules 1 (old logs) the newcomer
replaced the old incarnation, as it always did.
"""

from __future__ import annotations

from ecloud.events.types import (
    BossResumed,
    BossStarted,
    WorkerAnnounced,
    WorkerDraining,
    WorkerHeartbeat,
    WorkerLeft,
    WorkerLost,
)
from ecloud.projections import context, liveness
from ecloud.projections.context import bounded_time
from ecloud.projections.effects import Ack, CancelAttempt, RefuseWorker
from ecloud.projections.state import (
    ATTEMPT_LOST,
    BUSY,
    CURRENT_RULES,
    DRAINING,
    GONE,
    IDLE,
    LIVE,
    LOST,
    READY,
    RUNNING,
    T_HEARTBEAT,
    T_TIMEOUT,
    VM_FAILED,
    VM_KILLING,
    State,
    WorkerRecord,
)
from ecloud.projections.tasks import release_slot, requeue
from ecloud.projections.transitions import (
    DRAINS,
    HOLDS_ATTEMPTS,
    LEFT,
    LOSES,
    TAKEN_BACK,
    TAKEN_BACK_OLD,
    move_attempt,
    move_task,
    move_worker,
)

#: The worker protocol this boss speaks; an agent announcing another is refused.
PROTOCOL_VERSION = 1


def _refuse(state: State, event: WorkerAnnounced, seq: int, out: list, reason: str,
            retry_after: float | None = None) -> None:
    state.reject(seq, f"worker {event.worker_id}", reason)
    out.append(RefuseWorker(seq, event.worker_id, reason, event.incarnation, retry_after))


def on_announced(state: State, event: WorkerAnnounced, seq: int, out: list) -> None:
    if event.msg_id:
        out.append(Ack(seq, event.worker_id, event.msg_id))
    if event.protocol != PROTOCOL_VERSION:
        _refuse(state, event, seq, out, f"protocol {context.number_text(event.protocol)} "
                                        f"not supported (boss speaks {PROTOCOL_VERSION})")
        return
    if event.slots < 1:
        _refuse(state, event, seq, out,
                f"slots must be at least 1, got {context.number_text(event.slots)}")
        return
    if not (context.storable(event.slots) and context.storable(event.vm_id)):
        _refuse(state, event, seq, out, f"slots {context.number_text(event.slots)} or VM id "
                                        f"{context.number_text(event.vm_id)} is out of range")
        return
    vm_id = event.vm_id
    if state.rules >= 3:  # tied by the name the boss gave VM and worker alike
        named = state.vms.get(event.worker_id)
        if named is not None and named.vm_id is not None:
            vm_id = named.vm_id
    old = state.workers.get(event.worker_id)
    if old is not None and old.status in LIVE:
        if old.incarnation == event.incarnation:
            liveness.heard(state, old)  # a reconnect: nothing was lost
            return
        if state.rules >= 2:
            timeout = context.heartbeat_timeout(state)
            _refuse(state, event, seq, out,
                    f"duplicate worker id: {event.worker_id!r} is held by a live agent "
                    f"(incarnation {old.incarnation[:8]} on {old.host}, last heard "
                    f"{max(0.0, state.clock - old.last_seen):.1f}s ago); incarnation "
                    f"{event.incarnation[:8]} on {event.host} is refused (try again in "
                    f"{timeout:g}s)", retry_after=timeout)
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
        vm_id=vm_id,
        idle_since=state.clock,
        # what the id held before stays known: its late reports are honest
        released=old.released if old is not None else [],
    )
    state.workers[event.worker_id] = worker
    if vm_id is not None:
        link_vm(state, worker, vm_id)
    _take_back(state, worker, event.running, seq, out)
    state.refresh_free(worker, was_free=False)
    state.arm(state.clock + context.heartbeat_timeout(state), T_HEARTBEAT, worker.worker_id,
              worker.incarnation)


def _take_back(state: State, worker: WorkerRecord, held: tuple[tuple[str, int], ...], seq: int,
               out: list) -> None:
    """A worker announcing itself (after it was lost, or restarted on a boss
    that never heard) holds these attempts. One that is still its task's
    current attempt and was not given to another worker meanwhile - the task
    went back to ready when the worker was lost - is its again: it runs on,
    nothing runs twice. Any other is superseded: the worker is told to stop
    it, and its slots count as busy until it says the attempt ended."""
    tasks = state.tasks
    wellformed = {item for item in held if isinstance(item, tuple) and len(item) == 2
                  and isinstance(item[0], str) and type(item[1]) is int}
    for task_id, attempt in sorted(wellformed):
        task = tasks.get(task_id)
        if task is None or attempt < 1 or attempt > task.attempt:
            continue  # nothing the log gave anyone
        slots = task.spec.slots
        worker.running[(task_id, attempt)] = slots
        worker.used += slots
        worker.idle_since = None
        if worker.status == IDLE:
            move_worker(state, worker, BUSY, HOLDS_ATTEMPTS)
        if (task.attempt == attempt and task.status == READY and task.worker is None
                and task.not_before is None
                and (task.attempt_status == ATTEMPT_LOST or state.rules < 4)):
            move_attempt(state, task, RUNNING,
                         TAKEN_BACK if task.attempt_status == ATTEMPT_LOST else TAKEN_BACK_OLD)
            move_task(state, task, RUNNING, TAKEN_BACK)
            task.worker = task.ran_on = worker.worker_id
            task.reason = f"taken back from {worker.worker_id}, which still ran it"
            if task.started_at is None:
                task.started_at = state.clock
            if task.spec.timeout is not None:
                task.deadline = bounded_time(state.clock + task.spec.timeout
                                             + float(context.get(state, "timeout_grace")))
                state.arm(task.deadline, T_TIMEOUT, task_id, attempt)
        else:
            out.append(CancelAttempt(seq, task_id, attempt, worker.worker_id, "superseded"))


def link_vm(state: State, worker: WorkerRecord, vm_id: int) -> None:
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
        move_worker(state, worker, DRAINING, DRAINS)
        worker.reason = f"its VM {vm.vm_name} is {vm.status}"


def drain_vm(state: State, vm_id: int, reason: str) -> None:
    """Give no more work to the live workers on VM ``vm_id`` (it is being
    killed or has failed); what they hold runs on."""
    for worker in state.workers_on(vm_id):
        if worker.status in (IDLE, BUSY):
            listed = state.is_listed_free(worker)
            move_worker(state, worker, DRAINING, DRAINS)
            worker.reason = reason
            state.refresh_free(worker, listed)


def on_boss_started(state: State, event: BossStarted, seq: int, out: list) -> None:
    # deadlines were restarted before the clock moved (see fold.step)
    state.boss_started_at = state.clock
    if event.rules > state.rules:
        state.rules = min(event.rules, CURRENT_RULES)  # a later boss may not lower them


def on_boss_resumed(state: State, event: BossResumed, seq: int, out: list) -> None:
    state.boss_started_at = state.clock


def _current(worker: WorkerRecord | None, incarnation: str) -> bool:
    """A live worker, and the incarnation (if the report names one) is its own."""
    return (worker is not None and worker.status in LIVE
            and (not incarnation or incarnation == worker.incarnation))


def on_heartbeat(state: State, event: WorkerHeartbeat, seq: int, out: list) -> None:
    worker = state.workers.get(event.worker_id)
    if _current(worker, event.incarnation):
        liveness.heard(state, worker)  # type: ignore[arg-type]


def on_left(state: State, event: WorkerLeft, seq: int, out: list) -> None:
    if event.msg_id:
        out.append(Ack(seq, event.worker_id, event.msg_id))
    worker = state.workers.get(event.worker_id)
    if _current(worker, event.incarnation):
        let_go(state, worker, GONE, event.reason or "said goodbye")  # type: ignore[arg-type]


def on_draining(state: State, event: WorkerDraining, seq: int, out: list) -> None:
    if event.msg_id:
        out.append(Ack(seq, event.worker_id, event.msg_id))
    worker = state.workers.get(event.worker_id)
    if not _current(worker, event.incarnation):
        return
    assert worker is not None
    liveness.heard(state, worker)
    if worker.status in (IDLE, BUSY):
        listed = state.is_listed_free(worker)
        move_worker(state, worker, DRAINING, DRAINS)
        worker.reason = event.reason or "shutting down"
        state.refresh_free(worker, listed)


def on_lost(state: State, event: WorkerLost, seq: int, out: list) -> None:
    worker = state.workers.get(event.worker_id)
    if not _current(worker, event.incarnation):
        return  # the will of an agent that was replaced, or refused: not this worker's
    assert worker is not None
    if event.silent_since is not None and worker.last_seen > event.silent_since:
        return  # a decision on a silence that has ended since: the worker spoke
    if event.will and state.rules >= 2:
        liveness.suspect(state, worker)  # lost only if it stays silent (see WorkerLost.will)
        return
    let_go(state, worker, LOST, event.reason or "connection lost")


def on_heartbeat_deadline(state: State, worker_id: str, incarnation: str) -> None:
    """The heartbeat timer of a worker fired: under rules 2 mark it overdue
    (the boss decides), under rules 1 lose it; or re-arm the timer at its
    real deadline if it was heard from since the timer was set."""
    worker = state.workers.get(worker_id)
    if worker is None or worker.status not in LIVE or worker.incarnation != incarnation:
        return
    timeout = context.heartbeat_timeout(state)
    deadline = liveness.deadline(state, worker, timeout)
    if deadline > state.clock:
        state.arm(deadline, T_HEARTBEAT, worker_id, incarnation)
    elif state.rules >= 2:
        liveness.mark_overdue(state, worker)
    else:
        let_go(state, worker, LOST, f"no heartbeat for {timeout:g}s")


def let_go(state: State, worker: WorkerRecord, status: str, reason: str) -> None:
    """Take a worker out of service and put every attempt it held back."""
    for task_id, attempt in sorted(worker.running):
        release_slot(state, worker.worker_id, task_id, attempt)
        task = state.current_attempt(task_id, attempt, worker.worker_id)
        if task is not None:
            requeue(state, task, f"worker {worker.worker_id} {status}: {reason}", ATTEMPT_LOST)
    listed = state.is_listed_free(worker)
    move_worker(state, worker, status, LEFT if status == GONE else LOSES)
    worker.reason = reason
    state.refresh_free(worker, listed)
    liveness.forget(state, worker.worker_id)
