"""Effects that are messages to workers: acks, dispatches, cancels, refusals.

All messages for one worker produced by one batch go out as one MQTT
message (SERVICES.md: batch what can be batched). Dispatches and cancels are
sent again every ``resend_after`` seconds for as long as the state says they
have not taken (the task is still ``dispatched`` to that worker; the worker
still holds the cancelled attempt): the worker runs a (task, attempt) once,
so a repeat is harmless and a lost message is not.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from attrs import define, field

from ecloud import wire
from ecloud.projections.effects import Ack, CancelAttempt, Dispatch, RefuseWorker
from ecloud.projections.state import DISPATCHED, LIVE, State

Publish = Callable[[str, bytes], None]
REMEMBERED_ACKS = 2000  # per worker: how many acked msg_ids to recognise resends by
INFLIGHT_FOR = 60.0  # seconds a report counts as on its way into the log
MAX_INFLIGHT = 100_000  # reports on their way before old claims are swept


@define
class _Draft:
    acks: list[str] = field(factory=list)
    dispatch: list[wire.DispatchMsg] = field(factory=list)
    cancel: list[wire.CancelMsg] = field(factory=list)
    refuse: str | None = None
    reannounce: bool = False

    def payload(self) -> wire.BossPayload:
        return wire.BossPayload(self.acks, self.dispatch, self.cancel, self.refuse, self.reannounce)


def dispatch_message(effect: Dispatch) -> wire.DispatchMsg:
    spec = effect.spec
    return wire.DispatchMsg(
        task_id=spec.id, attempt=effect.attempt, command=spec.command, env=dict(spec.env),
        timeout=spec.timeout, slots=spec.slots, inputs=list(spec.inputs), outputs=list(spec.outputs),
        datastore=effect.datastore, results=spec.results_folder, sources=dict(effect.sources),
    )


class Outbox:
    def __init__(self, publish: Publish, cluster: str, resend_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publish = publish
        self.cluster = cluster
        self.resend_after = resend_after
        self._clock = clock
        self._drafts: dict[str, _Draft] = {}
        self._dispatches: dict[tuple[str, int], tuple[str, float, wire.DispatchMsg]] = {}
        self._cancels: dict[tuple[str, int], tuple[str, float, wire.CancelMsg]] = {}
        self._acked: dict[str, OrderedDict[str, None]] = {}
        # reports turned into events but not yet committed and acked: a resend
        # of one of these (several pile up at the broker while a boss is down)
        # is neither logged again nor acked before the original commits
        self._inflight: dict[tuple[str, str], float] = {}
        self.sent = 0
        self._walked = float("-inf")  # when resend_due last walked the outstanding messages

    # -------------------------------------------------------------- building

    def _draft(self, worker_id: str) -> _Draft:
        draft = self._drafts.get(worker_id)
        if draft is None:
            draft = self._drafts[worker_id] = _Draft()
        return draft

    def perform(self, effects: list) -> None:
        """Queue the message effects of one batch (others are ignored)."""
        now = self._clock()
        for effect in effects:
            kind = type(effect)
            if kind is Ack:
                self.ack(effect.worker_id, effect.msg_id)
            elif kind is Dispatch:
                msg = dispatch_message(effect)
                self._draft(effect.worker_id).dispatch.append(msg)
                self._dispatches[(effect.task_id, effect.attempt)] = (effect.worker_id, now, msg)
            elif kind is CancelAttempt:
                msg = wire.CancelMsg(effect.task_id, effect.attempt, effect.reason)
                if effect.worker_id:
                    self._draft(effect.worker_id).cancel.append(msg)
                    self._cancels[(effect.task_id, effect.attempt)] = (effect.worker_id, now, msg)
            elif kind is RefuseWorker:
                self._draft(effect.worker_id).refuse = effect.reason

    def ack(self, worker_id: str, msg_id: str) -> None:
        self._draft(worker_id).acks.append(msg_id)
        self.remember(worker_id, msg_id)

    def remember(self, worker_id: str, msg_id: str) -> None:
        """Know ``msg_id`` as committed without sending an ack now (a boss
        starting learns this from the log's tail)."""
        self._inflight.pop((worker_id, msg_id), None)
        seen = self._acked.setdefault(worker_id, OrderedDict())
        seen[msg_id] = None
        if len(seen) > REMEMBERED_ACKS:
            seen.popitem(last=False)

    def in_flight(self, worker_id: str, msg_id: str) -> bool:
        """Whether this report is already on its way into the log. Claims
        it if not (for ``INFLIGHT_FOR`` seconds: a report whose event never
        brings an ack is logged again if resent after that)."""
        key = (worker_id, msg_id)
        now = self._clock()
        since = self._inflight.get(key)
        if since is not None and now - since < INFLIGHT_FOR:
            return True
        if len(self._inflight) > MAX_INFLIGHT:
            self._inflight = {k: t for k, t in self._inflight.items() if now - t < INFLIGHT_FOR}
        self._inflight[key] = now
        return False

    def already_acked(self, worker_id: str, msg_id: str) -> bool:
        """A report committed and acked before: its resend needs only an ack."""
        seen = self._acked.get(worker_id)
        return seen is not None and msg_id in seen

    def reannounce(self, worker_id: str) -> None:
        self._draft(worker_id).reannounce = True

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
            if task is None or task.status != DISPATCHED or task.attempt != key[1] or task.worker != worker_id:
                del self._dispatches[key]
            elif now - sent >= self.resend_after:
                self._draft(worker_id).dispatch.append(msg)
                self._dispatches[key] = (worker_id, now, msg)
        for key, (worker_id, sent, msg) in list(self._cancels.items()):
            worker = state.workers.get(worker_id)
            if worker is None or worker.status not in LIVE or key not in worker.running:
                del self._cancels[key]
            elif now - sent >= self.resend_after:
                self._draft(worker_id).cancel.append(msg)
                self._cancels[key] = (worker_id, now, msg)

    # -------------------------------------------------------------- sending

    def flush(self) -> None:
        """Publish one message per worker with everything queued for it."""
        drafts, self._drafts = self._drafts, {}
        for worker_id, draft in drafts.items():
            self._publish(wire.to_topic(self.cluster, worker_id), wire.dumps(draft.payload()))
            self.sent += 1

    @property
    def waiting(self) -> int:
        """Dispatches and cancels not yet confirmed by the state."""
        return len(self._dispatches) + len(self._cancels)
