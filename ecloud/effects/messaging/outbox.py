"""Effects that are messages to workers: acks, dispatches, cancels, refusals.

All messages for one worker produced by one batch go out as one MQTT
message (docs/services.md: batch what can be batched). Dispatches and cancels are
sent again every ``resend_after`` seconds for as long as the state says they
have not taken (the task is still ``dispatched`` to that worker; the worker
still holds the cancelled attempt): the worker runs a (task, attempt) once,
so a repeat is harmless and a lost message is not.

Messages name the incarnation of the agent they are for (``to``, see
:mod:`ecloud.wire`): dispatches and cancels the worker's current one, a
refusal the agent refused. Acks name none - a message id is its agent's
own - and ride along with whatever else goes to the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from attrs import define, field

from ecloud import wire
from ecloud.limits import BOSS_MESSAGE_BYTES
from ecloud.projections.effects import Ack, CancelAttempt, Dispatch, RefuseWorker
from ecloud.projections.state import DISPATCHED, LIVE, State

Publish = Callable[[str, bytes], None]


@define
class _Draft:
    acks: list[str] = field(factory=list)
    dispatch: list[wire.DispatchMsg] = field(factory=list)
    cancel: list[wire.CancelMsg] = field(factory=list)
    refuse: str | None = None
    reannounce: bool = False
    retry_after: float | None = None

    def payload(self, to: str) -> wire.BossPayload:
        return wire.BossPayload(self.acks, self.dispatch, self.cancel, self.refuse, self.reannounce,
                                to=to, retry_after=self.retry_after)


def dispatch_message(effect: Dispatch) -> wire.DispatchMsg:
    spec = effect.spec
    return wire.DispatchMsg(
        task_id=spec.id, attempt=effect.attempt, command=spec.command, env=dict(spec.env),
        timeout=spec.timeout, slots=spec.slots, inputs=list(spec.inputs), outputs=list(spec.outputs),
        datastore=effect.datastore, results=spec.results_folder, sources=dict(effect.sources),
        datastore_id=effect.datastore_id, node=spec.node, macros=dict(effect.macros),
    )


class Outbox:
    def __init__(self, publish: Publish, cluster: str, resend_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publish = publish
        self.cluster = cluster
        self.resend_after = resend_after
        self._clock = clock
        #: (worker id, incarnation or None for "any") -> what goes to it
        self._drafts: dict[tuple[str, str | None], _Draft] = {}
        self._dispatches: dict[tuple[str, int], tuple[str, float, wire.DispatchMsg]] = {}
        self._cancels: dict[tuple[str, int], tuple[str, float, wire.CancelMsg]] = {}
        self.sent = 0
        self._walked = float("-inf")  # when resend_due last walked the outstanding messages

    # -------------------------------------------------------------- building

    def _draft(self, worker_id: str, to: str | None = None) -> _Draft:
        key = (worker_id, to)
        draft = self._drafts.get(key)
        if draft is None:
            draft = self._drafts[key] = _Draft()
        return draft

    def perform(self, effects: list, state: State | None = None) -> None:
        """Queue the message effects of one batch (others are ignored).
        Dispatches and cancels go to the incarnation ``state`` knows for
        their worker (any, without a state)."""
        now = self._clock()
        for effect in effects:
            kind = type(effect)
            if kind is Ack:
                self.ack(effect.worker_id, effect.msg_id)
            elif kind is Dispatch:
                msg = dispatch_message(effect)
                self._draft(effect.worker_id, _incarnation(state, effect.worker_id)).dispatch.append(msg)
                self._dispatches[(effect.task_id, effect.attempt)] = (effect.worker_id, now, msg)
            elif kind is CancelAttempt:
                msg = wire.CancelMsg(effect.task_id, effect.attempt, effect.reason)
                if effect.worker_id:
                    self._draft(effect.worker_id, _incarnation(state, effect.worker_id)).cancel.append(msg)
                    self._cancels[(effect.task_id, effect.attempt)] = (effect.worker_id, now, msg)
            elif kind is RefuseWorker:
                draft = self._draft(effect.worker_id, effect.incarnation or "")
                draft.refuse = effect.reason
                draft.retry_after = effect.retry_after

    def ack(self, worker_id: str, msg_id: str) -> None:
        self._draft(worker_id).acks.append(msg_id)

    def refuse(self, worker_id: str, incarnation: str, reason: str) -> None:
        """Tell one agent under ``worker_id`` that it may not go on (for good)."""
        draft = self._draft(worker_id, incarnation)
        draft.refuse = reason
        draft.retry_after = None

    def reannounce(self, worker_id: str, incarnation: str = "") -> None:
        self._draft(worker_id, incarnation).reannounce = True

    def resend_due(self, state: State) -> None:
        """Queue again what has not taken after ``resend_after`` seconds, and
        forget what has. The walk covers every outstanding dispatch (10,000
        with as many busy workers), so it is made at most every fifth of
        ``resend_after``, not on every loop turn: a resend is then late by
        at most that much."""
        now = self._clock()
        if now - self._walked < self.resend_after / 5:
            return
        self._walked = now
        for key, (worker_id, sent, msg) in list(self._dispatches.items()):
            task = state.tasks.get(key[0])
            if (task is None or task.status != DISPATCHED or task.attempt != key[1]
                    or task.worker != worker_id):
                del self._dispatches[key]
            elif now - sent >= self.resend_after:
                self._draft(worker_id, _incarnation(state, worker_id)).dispatch.append(msg)
                self._dispatches[key] = (worker_id, now, msg)
        for key, (worker_id, sent, msg) in list(self._cancels.items()):
            worker = state.workers.get(worker_id)
            if worker is None or worker.status not in LIVE or key not in worker.running:
                del self._cancels[key]
            elif now - sent >= self.resend_after:
                self._draft(worker_id, worker.incarnation).cancel.append(msg)
                self._cancels[key] = (worker_id, now, msg)

    # -------------------------------------------------------------- sending

    def flush(self) -> None:
        """Publish one message per worker with everything queued for it (one
        per incarnation, in the rare turn that addresses two: a worker's and
        a duplicate's it refuses). Acks go with the addressed message."""
        drafts, self._drafts = self._drafts, {}
        anyone = {wid: d for (wid, to), d in drafts.items() if to is None}
        for (worker_id, to), draft in drafts.items():
            if to is None:
                continue
            acks = anyone.pop(worker_id, None)
            if acks is not None:
                draft.acks[:0] = acks.acks
            self._send(worker_id, draft, to)
        for worker_id, draft in anyone.items():
            self._send(worker_id, draft, "")

    def _send(self, worker_id: str, draft: _Draft, to: str) -> None:
        """One message - or several, when the dispatches together exceed what a
        worker accepts (:data:`ecloud.limits.BOSS_MESSAGE_BYTES`): halved
        until each part fits (a task is at most a quarter of that, so one
        dispatch always does)."""
        payload = wire.dumps(draft.payload(to))
        if len(payload) > BOSS_MESSAGE_BYTES and len(draft.dispatch) > 1:
            half = len(draft.dispatch) // 2
            first = _Draft(draft.acks, draft.dispatch[:half], draft.cancel, draft.refuse,
                           draft.reannounce, draft.retry_after)
            self._send(worker_id, first, to)
            self._send(worker_id, _Draft(dispatch=draft.dispatch[half:]), to)
            return
        self._publish(wire.to_topic(self.cluster, worker_id), payload)
        self.sent += 1


def _incarnation(state: State | None, worker_id: str) -> str:
    """The incarnation a message to ``worker_id`` is for: its current one."""
    worker = state.workers.get(worker_id) if state is not None else None
    return worker.incarnation if worker is not None else ""
