"""The fold: ``step(state, recorded) -> (state, effects)`` and friends.

``step`` first lets time pass (:mod:`.timers`), then applies the event with the
one function registered for its type. Every event type has an entry in
:data:`HANDLERS`; a type without one stops the fold loudly (a log this code
cannot understand must not be half-applied). See :mod:`.state` for why the
state is updated in place.

:data:`REDUCER_VERSION` names the fold's semantics. Change it whenever a change
to any reducer would fold the same log into a different state: snapshots of
another version are then ignored and rebuilt, never trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ecloud.errors import ReducerBug
from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.projections import context, tasks, timers, vms, workers
from ecloud.projections.state import State

#: 2: autoscaling - idle workers' ``idle_since``, VMs that know their worker
#: and their failure, workers draining on a VM being killed or failed, refused
#: kills, the spawn backoff; and a changed ``heartbeat_timeout`` re-arms every
#: live worker's deadline (a snapshot taken before the change disagreed).
#: 3: a task's ``results`` folder in its spec, and a dispatch carries the
#: results folders of the upstream tasks its inputs come from.
#: 4: quick workers queue ahead (``queue_ahead``), and a dispatch given back
#: unstarted (``task.finished`` with ``returned``) makes the task ready again;
#: a retry re-judges blocked tasks behind a cancelled or failed descendant
#: too (they named the retried task as their cause).
REDUCER_VERSION = "4"

Handler = Callable[[State, Any, int, list], None]


def _nothing(state: State, event: Any, seq: int, out: list) -> None:
    """Events that only move the clock (which ``step`` already did)."""


def _input_rejected(state: State, event: ev.InputRejected, seq: int, out: list) -> None:
    state.reject(seq, event.source, event.reason)


HANDLERS: dict[type, Handler] = {
    ev.TasksSubmitted: tasks.on_submitted,
    ev.TaskCancelled: tasks.on_cancelled,
    ev.RetryRequested: tasks.on_retry_requested,
    ev.TaskDispatched: tasks.on_dispatched,
    ev.TaskStarted: tasks.on_started,
    ev.TaskFinished: tasks.on_finished,
    ev.WorkerAnnounced: workers.on_announced,
    ev.WorkerHeartbeat: workers.on_heartbeat,
    ev.WorkerLeft: workers.on_left,
    ev.WorkerLost: workers.on_lost,
    ev.BossStarted: workers.on_boss_started,  # deadlines were extended first: see step
    ev.VMRequested: vms.on_requested,
    ev.VMAllocated: vms.on_allocated,
    ev.VMStateObserved: vms.on_state_observed,
    ev.VMFailed: vms.on_failed,
    ev.VMKillRequested: vms.on_kill_requested,
    ev.ContextSet: context.on_context_set,
    ev.ContextDropped: context.on_context_dropped,
    ev.Tick: _nothing,
    ev.InputRejected: _input_rejected,
}


_BOSS_STARTED = ev.BossStarted


def step(state: State, rec: Recorded) -> tuple[State, list]:
    """Fold one recorded event. Returns the (same, updated) state and the
    effects the event calls for, in a deterministic order."""
    seq = rec.seq
    if seq != state.seq + 1:
        raise ReducerBug(seq, f"expected seq {state.seq + 1}: the log has a gap or repeat")
    handler = HANDLERS.get(type(rec.event))
    if handler is None:
        raise ReducerBug(seq, f"no reducer for event type {type(rec.event).__name__}")
    out: list = []
    if type(rec.event) is _BOSS_STARTED:
        workers.extend_deadlines(state, rec.event, rec.ts)
    if rec.ts > state.clock:
        timers.advance(state, rec.ts, seq, out)
    handler(state, rec.event, seq, out)
    state.seq = seq
    return state, out


def fold(records: Iterable[Recorded], state: State | None = None) -> State:
    """Fold many events, discarding effects (replay)."""
    if state is None:
        state = State()
    for rec in records:
        step(state, rec)
    return state


def fold_with_effects(records: Iterable[Recorded], state: State | None = None) -> tuple[State, list]:
    """Fold many events and collect every effect, in order."""
    if state is None:
        state = State()
    effects: list = []
    for rec in records:
        _, out = step(state, rec)
        effects.extend(out)
    return state, effects
