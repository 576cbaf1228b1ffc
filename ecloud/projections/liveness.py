"""Liveness: when the boss has last heard from each worker, and when that
is too long ago.

Every report from a worker (heartbeat, start, result, announcement) is a
sign of life: :func:`heard` moves its ``last_seen`` to the clock. A
heartbeat timer per live worker fires at ``last_seen + heartbeat_timeout``;
what happens then depends on the log's rules (:data:`.state.CURRENT_RULES`):

- rules 1 (logs written before rules existed): the fold loses the worker
  itself, from the clock (:func:`ecloud.projections.workers.on_heartbeat_deadline`);
- rules 2: the worker only becomes *overdue* (``State.overdue``), and the
  boss logs its loss as a decision (:func:`losses`: ``worker.lost`` with
  ``silent_since``), after the reports that reached it in the same turn.
  A worker heard from before that decision is folded is not lost: the
  decision says which silence it judged.

So a loss is a logged fact with its reason (``ecloud-replay --worker``
and ``--why`` show it), and a boss that could not listen - its database
down, its process stopped - first logs everything that arrived meanwhile
and restarts every deadline from the moment it can listen again
(``boss.started`` / ``boss.resumed``: :func:`extend_deadlines`), so the
boss's own silence is never taken for its workers'.
"""

from __future__ import annotations

from ecloud.events.types import WorkerLost
from ecloud.projections import context
from ecloud.projections.state import LIVE, T_HEARTBEAT, State, WorkerRecord


def will_grace(state: State) -> float:
    """Seconds a worker whose will came has to be heard from again: a third
    of ``heartbeat_timeout`` - enough for a worker whose broker restarted to
    reconnect and say so, short enough to take a dead one's work back soon."""
    return context.heartbeat_timeout(state) / 3


def deadline(state: State, worker: WorkerRecord, timeout: float | None = None) -> float:
    """When ``worker`` is overdue: ``heartbeat_timeout`` after it was last
    heard from, or sooner - the will's grace after its will came."""
    timeout = context.heartbeat_timeout(state) if timeout is None else timeout
    due = worker.last_seen + timeout
    if worker.will_at is not None:
        due = min(due, worker.will_at + timeout / 3)
    return due


def suspect(state: State, worker: WorkerRecord) -> None:
    """The broker published the worker's will (rules 2): it must be heard
    from within the will's grace, or be lost."""
    worker.will_at = state.clock
    if worker.worker_id not in state.overdue:
        state.arm(deadline(state, worker), T_HEARTBEAT, worker.worker_id, worker.incarnation)


def heard(state: State, worker: WorkerRecord) -> None:
    """The worker said something now: it is alive until a new deadline."""
    worker.last_seen = state.clock
    worker.will_at = None
    if worker.worker_id in state.overdue:
        del state.overdue[worker.worker_id]
        state.arm(state.clock + context.heartbeat_timeout(state), T_HEARTBEAT,
                  worker.worker_id, worker.incarnation)


def heard_from(state: State, worker_id: str, incarnation: str = "") -> None:
    """:func:`heard` for a live worker by id, if ``incarnation`` is its
    current one ("" from an agent older than incarnations: any)."""
    worker = state.workers.get(worker_id)
    if worker is not None and worker.status in LIVE and (
            not incarnation or incarnation == worker.incarnation):
        heard(state, worker)


def forget(state: State, worker_id: str) -> None:
    """The worker left service (lost, gone): nothing is awaited of it."""
    state.overdue.pop(worker_id, None)


def extend_deadlines(state: State, now: float) -> None:
    """No boss heard anything between its last moment of listening and
    ``now``: restart every live worker's deadline from ``now`` rather than
    declare them lost. Runs *before* the clock moves to ``now`` (see
    :func:`ecloud.projections.fold.step`); the timers already armed fire
    early and re-arm themselves at the new deadline."""
    timeout = context.heartbeat_timeout(state)
    for worker in state.workers.values():
        if worker.status in LIVE and worker.last_seen < now:
            worker.last_seen = now
            worker.will_at = None
            if worker.worker_id in state.overdue:  # its timer fired: arm a new one
                del state.overdue[worker.worker_id]
                state.arm(now + timeout, T_HEARTBEAT, worker.worker_id, worker.incarnation)


def mark_overdue(state: State, worker: WorkerRecord) -> None:
    state.overdue[worker.worker_id] = None


def losses(state: State) -> list[WorkerLost]:
    """The boss's decisions: every overdue worker is lost, with the silence
    that was judged (a pure function of the state, like the scheduler)."""
    if not state.overdue:
        return []
    timeout = context.heartbeat_timeout(state)
    decisions = []
    for wid in sorted(state.overdue):
        worker = state.workers[wid]
        if worker.will_at is not None:
            why = (f"its connection died (last will) and it was not heard from within "
                   f"{timeout / 3:g}s")
        else:
            why = (f"no heartbeat for {state.clock - worker.last_seen:.1f}s "
                   f"(heartbeat_timeout {timeout:g}s)")
        decisions.append(WorkerLost(wid, why, incarnation=worker.incarnation,
                                    silent_since=worker.last_seen))
    return decisions


__all__ = ["extend_deadlines", "forget", "heard", "heard_from", "losses", "mark_overdue"]
