"""Time: the only clock is the ``ts`` of events.

Before each event is applied the fold moves ``state.clock`` forward to the
event's ts (never backward: appenders' clocks may disagree a little) and fires
everything that fell due: retry backoffs end, workers silent past their
heartbeat deadline are lost, attempts past their timeout fail. The boss
appends a ``tick`` event while anything waits on time, so deadlines fire even
when nothing else happens - the autoscaler's and the reconciler's too
(:mod:`.autoscale`, :mod:`.reconcile`).
"""

from __future__ import annotations

from heapq import heappop

from ecloud.projections import autoscale, reconcile
from ecloud.projections.state import READY, T_HEARTBEAT, T_TIMEOUT, State
from ecloud.projections.tasks import on_timeout
from ecloud.projections.workers import on_heartbeat_deadline


def advance(state: State, now: float, seq: int, out: list) -> None:
    """Move the clock to ``now`` and fire what fell due, oldest first."""
    if now <= state.clock:
        return
    state.clock = now
    delayed = state.delayed
    if delayed and delayed[0][0] <= now:
        tasks = state.tasks
        while delayed and delayed[0][0] <= now:
            not_before, _, _, task_id = heappop(delayed)
            task = tasks.get(task_id)
            if task is not None and task.status == READY and task.not_before == not_before:
                task.not_before = None
                state.ready.add(task.ready_key)
    timers = state.timers
    while timers and timers[0][0] <= now:
        _, kind, key, token = heappop(timers)
        if kind == T_HEARTBEAT:
            on_heartbeat_deadline(state, key, token)
        elif kind == T_TIMEOUT:
            on_timeout(state, key, token, seq, out)


def next_deadline(state: State) -> float | None:
    """When the next timer or backoff falls due (for the boss's tick timer);
    may be early (a stale timer), never late."""
    candidates = []
    if state.delayed:
        candidates.append(state.delayed[0][0])
    if state.timers:
        candidates.append(state.timers[0][0])
    for decider in (autoscale.next_deadline, reconcile.next_deadline):
        due = decider(state)
        if due is not None:
            candidates.append(due)
    return min(candidates) if candidates else None
