"""The boss's edge: MQTT messages in, events out.

A message becomes events only once it has been parsed and checked
(:func:`ecloud.wire.parse_worker_payload`); anything malformed becomes one
``input.rejected`` event with the reason and a bounded excerpt, and changes
nothing else. A report whose ``msg_id`` was already committed and acked is a
resend: it is acked again and not logged twice; a resend of a report still
on its way into the log (both waited at the broker while no boss was up) is
dropped, and the ack follows the original's commit. A heartbeat from a worker the
boss does not count as live asks that worker to announce itself again.

A well-formed report is then matched against the state (:func:`mismatch`):
a report from a worker that never announced itself, about a task that does
not exist, an attempt never dispatched or an attempt another worker holds
becomes an ``input.rejected`` event too. The broker's ACL already keeps a
worker to its own topic; this keeps it to its own attempts.

Two agents may speak under one worker id (see :mod:`ecloud.wire`): a
report from an incarnation other than the live worker's - a duplicate the
fold refused, or its will - is rejected here, so it can neither keep the
worker alive nor take it down; only its announcement goes on to the fold,
which refuses it with a reason.
"""

from __future__ import annotations

from ecloud import wire
from ecloud.boss.heard import HeardReports
from ecloud.effects.messaging.outbox import Outbox
from ecloud.events import types as ev
from ecloud.projections.state import ACTIVE, LIVE, State


def report_event(worker_id: str, report, incarnation: str = "") -> object | None:
    """The event for one parsed report from the agent ``incarnation``."""
    kind = type(report)
    if kind is wire.Started:
        return ev.TaskStarted(report.task_id, report.attempt, worker_id, report.msg_id)
    if kind is wire.Finished:
        return ev.TaskFinished(
            report.task_id, report.attempt, worker_id, report.exit_code, report.duration,
            report.signal, report.reason, report.stdout_tail, report.stderr_tail, report.msg_id,
            tuple(report.staged), report.returned, report.stage,
        )
    if kind is wire.Heartbeat:
        return ev.WorkerHeartbeat(worker_id, report.msg_id, incarnation)
    if kind is wire.Hello:
        return ev.WorkerAnnounced(worker_id, report.host, report.slots, report.protocol,
                                  report.incarnation, report.vm_id, report.msg_id,
                                  tuple(sorted((t, a) for t, a in report.running)))
    if kind is wire.Bye:
        return ev.WorkerLeft(worker_id, report.reason or "said goodbye", report.msg_id,
                             incarnation)
    if kind is wire.Draining:
        return ev.WorkerDraining(worker_id, report.reason or "shutting down", report.msg_id,
                                 incarnation)
    if kind is wire.Lost:
        return ev.WorkerLost(worker_id, "connection lost (last will)", incarnation, will=True)
    raise AssertionError(f"unhandled report {kind.__name__}")  # pragma: no cover


def mismatch(state: State, worker_id: str, report) -> str | None:
    """Why a well-formed report cannot be what it says, judged against the
    state; None when it may be. A start or an end is believed only of an
    attempt its worker holds, or held (``WorkerRecord.released``: one that
    ended, or that it was declared lost holding and came back with - a late
    report, protocol: the fold acknowledges it so the worker stops resending,
    cancels a superseded attempt and changes no task). Anything else is no
    honest worker's: refused."""
    kind = type(report)
    if kind is wire.Hello or kind is wire.Lost or kind is wire.Heartbeat:
        return None  # a heartbeat from a stranger asks it to announce itself
    worker = state.workers.get(worker_id)
    if worker is None:
        return f"worker {worker_id!r} never announced itself"
    if kind is wire.Bye or kind is wire.Draining:
        return None
    key = (report.task_id, report.attempt)
    if key in worker.running:
        return None
    task = state.tasks.get(report.task_id)
    if task is None:
        return f"no task {report.task_id!r}"
    if report.attempt > task.attempt:
        return (f"attempt {report.attempt} of {report.task_id!r} was never dispatched "
                f"(the latest is {task.attempt})")
    if report.attempt == task.attempt and task.status in ACTIVE and task.worker != worker_id:
        return f"attempt {report.attempt} of {report.task_id!r} is held by {task.worker!r}"
    if key in worker.released:
        return None
    return f"attempt {report.attempt} of {report.task_id!r} was never {worker_id!r}'s"


def rejected(topic: str, reason: str, payload: bytes, sender: str = "",
             msg_id: str = "") -> ev.InputRejected:
    """The ``input.rejected`` event for a message, every field bounded, no
    secret in its excerpt (:func:`ecloud.wire.redacted_excerpt`)."""
    return ev.InputRejected(f"mqtt {wire.excerpt(topic.encode(), 300)}",
                            wire.bounded_reason(reason), wire.redacted_excerpt(payload),
                            sender, msg_id)


def to_events(topic: str, payload: bytes, cluster: str, state: State, outbox: Outbox,
              heard: HeardReports) -> list:
    """Events for one MQTT message (possibly none, e.g. only resends)."""
    worker_id = wire.worker_of(topic, cluster)
    if worker_id is None:
        return [rejected(topic, "not a worker topic of this cluster", payload)]
    if worker_id in wire.SERVICE_USERS:
        return [rejected(topic, f"{worker_id!r} is a broker account of ecloud's own, not a "
                                "worker's", payload)]
    try:
        message = wire.parse_worker_payload(payload, worker_id)
    except wire.WireError as exc:
        return [rejected(topic, str(exc), payload, worker_id)]
    events = []
    worker = state.workers.get(worker_id)
    live = worker is not None and worker.status in LIVE
    incarnation = message.incarnation
    other = (live and bool(incarnation) and incarnation != worker.incarnation)  # type: ignore[union-attr]
    for report in message.reports:
        if report.msg_id and heard.already_acked(worker_id, report.msg_id):
            outbox.ack(worker_id, report.msg_id)
            continue
        if other and type(report) is not wire.Hello:
            # another agent under this id - superseded, or a duplicate: it is
            # told to stop for good; recorded once in a while, not per message
            why = (f"a {report.kind} from incarnation {incarnation[:8]} of worker {worker_id!r}, "
                   f"which is not its live incarnation ({worker.incarnation[:8]})")  # type: ignore[union-attr]
            outbox.refuse(worker_id, incarnation, f"superseded: {why}")
            if heard.stranger_due(f"{worker_id}/{incarnation}"):
                events.append(rejected(topic, why, payload, worker_id, report.msg_id))
            continue
        if (live and not incarnation and state.rules >= 2 and worker.incarnation  # type: ignore[union-attr]
                and type(report) in (wire.Lost, wire.Bye, wire.Draining)):
            events.append(rejected(topic, f"a {report.kind} that names no incarnation, about a "
                                   "live worker that has one", payload, worker_id,
                                   report.msg_id))
            continue
        problem = mismatch(state, worker_id, report)
        if problem is not None:
            # judged before a resend is recognised: every one is logged, and
            # acknowledged once logged, so that an agent stops sending it
            if not (report.msg_id and heard.in_flight(worker_id, report.msg_id)):
                events.append(rejected(topic, problem, payload, worker_id, report.msg_id))
            continue
        if report.msg_id and heard.in_flight(worker_id, report.msg_id):
            continue  # a resend of a report not yet committed: its ack follows the commit
        if type(report) is wire.Heartbeat and not live:
            outbox.reannounce(worker_id, incarnation)
            if worker is None and heard.stranger_due(worker_id):
                events.append(rejected(topic, f"a heartbeat from worker {worker_id!r}, which "
                                       "never announced itself (asked to announce)", payload,
                                       worker_id))
            continue
        events.append(report_event(worker_id, report, incarnation))
    return events
