"""The fold: ``step(state, recorded) -> (state, effects)`` and friends.

``step`` first lets time pass (:mod:`.timers`), then applies the event with the
one function registered for its type. Every event type has an entry in
:data:`HANDLERS`; a type without one stops the fold loudly (a log this code
cannot understand must not be half-applied). See :mod:`.state` for why the
state is updated in place.

The fold is total: no event the log can hold makes it raise. Reducers check
an event against the state before they change anything and record what they
cannot apply as a rejection (``State.rejected``); arithmetic is bounded
(:mod:`.context`); a timestamp that is no moment applies at the current clock.
``step`` turns anything a reducer still raises into a rejection too
(:data:`FOLD_SOURCE`), so that one bad event never stops every later fold.

:data:`REDUCER_VERSION` names the fold's semantics. Change it whenever a change
to any reducer would fold the same log into a different state: snapshots of
another version are then ignored and rebuilt, never trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ecloud.errors import ReducerBug
from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.projections import context, liveness, replace, tasks, timers, vms, workers, workflows
from ecloud.projections.effects import Ack
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
#: 5: fold rules (``boss.started`` ``rules``): under rules 2 a silent worker
#: is overdue until the boss logs its loss, and a second incarnation under a
#: live worker's id is refused; ``worker.draining``, ``boss.resumed``, and
#: incarnations on heartbeats, goodbyes and losses.
#: 6: workers remember the attempts they held (``released``: a report about
#: any other is a lie), the state remembers workers heard from that never
#: announced themselves (``strangers``), and a rejected report is acked.
#: ``tasks.replaced`` (edited task files), and the source of every batch.
#: 7: fold rules 3 (only DONE is a VM gone; HOLD, STOPPED, SUSPENDED, POWEROFF,
#: UNDEPLOYED, CLONING_FAILURE make it failed and lose its workers; a worker is
#: tied to the VM of its name), and VMs remember their kills (the reconciler).
#: 8: VMs remember when the poll last saw them change (``observed_at``) and
#: the last callback of OpenNebula's state hook (``vm.callback``), which asks
#: for a look at the pool (``ObserveCloud``) and changes no status.
#: 9: every task records how its latest attempt stands (``attempt_status``,
#: the attempt table), the worker it went to (``ran_on``), how long it ran
#: (``ran_for``) and when its status last changed (``changed_at``); fold rules 4
#: (only an attempt of a lost worker is taken back).
#: 10: workflows (``TaskSpec.node``, ``tasks.submitted`` ``limits``): noop,
#: done and final tasks, limits on running tasks per workflow and category,
#: ``retry_unless_exit`` and ``abort_on``; a dispatch carries script macros.
REDUCER_VERSION = "10"

Handler = Callable[[State, Any, int, list], None]

#: the source of the rejection ``step`` records for an event a reducer failed on
FOLD_SOURCE = "fold"


def _nothing(state: State, event: Any, seq: int, out: list) -> None:
    """Events that only move the clock (which ``step`` already did)."""


def _input_rejected(state: State, event: ev.InputRejected, seq: int, out: list) -> None:
    state.reject(seq, event.source, event.reason)
    if event.sender:
        if event.sender not in state.workers:
            state.heard_stranger(event.sender)
        if event.msg_id:  # logged: its agent may stop sending it (nothing else happens)
            out.append(Ack(seq, event.sender, event.msg_id))


HANDLERS: dict[type, Handler] = {
    ev.TasksSubmitted: workflows.on_submitted,
    ev.TasksReplaced: replace.on_replaced,
    ev.TaskCancelled: tasks.on_cancelled,
    ev.RetryRequested: tasks.on_retry_requested,
    ev.TaskDispatched: tasks.on_dispatched,
    ev.TaskStarted: tasks.on_started,
    ev.TaskFinished: workflows.on_finished,
    ev.WorkerAnnounced: workers.on_announced,
    ev.WorkerHeartbeat: workers.on_heartbeat,
    ev.WorkerLeft: workers.on_left,
    ev.WorkerDraining: workers.on_draining,
    ev.WorkerLost: workers.on_lost,
    ev.BossStarted: workers.on_boss_started,  # deadlines were extended first: see step
    ev.BossResumed: workers.on_boss_resumed,  # likewise
    ev.VMRequested: vms.on_requested,
    ev.VMAllocated: vms.on_allocated,
    ev.VMDiscovered: vms.on_discovered,
    ev.VMStateObserved: vms.on_state_observed,
    ev.VMFailed: vms.on_failed,
    ev.VMCallback: vms.on_callback,
    ev.VMKillRequested: vms.on_kill_requested,
    ev.ContextSet: context.on_context_set,
    ev.ContextDropped: context.on_context_dropped,
    ev.Tick: _nothing,
    ev.InputRejected: _input_rejected,
}


#: events that restart every live worker's deadline before the clock moves
#: to them: no boss was listening (or able to log) before them
_BOSS_LISTENS_AGAIN = (ev.BossStarted, ev.BossResumed)


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
    now = rec.ts
    if not math.isfinite(now):
        # inf or nan is no moment (and no snapshot could hold an infinite
        # clock): the event applies at the current clock, the bad ts is on record
        state.reject(seq, "clock", f"ts {now!r} is not a finite number: "
                                   f"{type(rec.event).__name__} applied at {state.clock!r}")
        now = state.clock
    if type(rec.event) in _BOSS_LISTENS_AGAIN:
        liveness.extend_deadlines(state, now)
    if now > state.clock:
        timers.advance(state, now, seq, out)
    try:
        handler(state, rec.event, seq, out)
        if state.due:
            workflows.settle(state, seq, out)
    except Exception as exc:  # noqa: BLE001 - see below
        # The last line of defence of a total fold. The event is committed
        # already: raising would stop every later fold on it - status,
        # replay, the operator's cancel, the next boss. Reducers check before
        # they change anything (the property tests hold them to it, and fail
        # on any rejection from here); should one still raise, the event is
        # recorded as refused, visibly, and the fold goes on. A fix to the
        # reducer then replays the same log cleanly.
        state.reject(seq, FOLD_SOURCE, f"could not apply {rec.event.TYPE}: "
                                       f"{type(exc).__name__}: {exc}"[:1000])
        out.clear()
        state.due.clear()
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
