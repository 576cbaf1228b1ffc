"""One task's or one worker's life, read from the log: every event that names
it, and every change the fold made to it, with the reason.

A history folds from the first event instead of filtering the log, because a
change often comes from an event that does not name its subject: a tick fires
a worker's heartbeat deadline, a lost worker sends its tasks back to ready.
Only the fold knows what an event did, so a history compares its subject
before and after each step rather than guess from event types. A subject is
described by a :class:`Subject` (what names it, which fields of its record
count, how to word a change); ``ecloud-replay --task`` and ``--worker`` are
two subjects over the same loop. Entries are plain data: wording and JSON are
the CLI's business (:mod:`ecloud.cli.render`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import evolve, frozen

from ecloud.errors import UserError
from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.log.rebuild import Progress, fold_range
from ecloud.projections.state import DRAINING, GONE, LIVE, LOST, State

#: the part of a record a history watches; None while the subject does not exist
View = dict[str, Any] | None


@frozen
class Subject:
    """What a history follows. ``look`` picks the fields whose change is news
    (not every field: a heartbeat moving ``last_seen`` is not a transition),
    ``why`` words a change from one view to the next."""

    kind: str
    id: str
    mentions: Callable[[Any], bool]
    look: Callable[[State], View]
    why: Callable[[View, dict[str, Any]], str]


@frozen
class Entry:
    """One line of a history: an event that names the subject, or changed it,
    or both. ``why`` is None when the subject did not change. A run of
    heartbeats collapses into one entry from ``seq`` to ``last_seq``."""

    seq: int
    ts: float
    event: Any
    before: View
    after: View
    why: str | None = None
    rejected: str = ""
    count: int = 1
    last_seq: int = 0


def follow(store, subject: Subject, until: int | None, progress: Progress | None
           ) -> tuple[list[Entry], State]:
    """Fold the log from the start up to ``until`` and keep an entry for every
    step that names or changes the subject; also return the final state."""
    entries: list[Entry] = []
    state = State()
    before: View = None

    def look(rec: Recorded, effects: list) -> None:
        nonlocal before
        now = subject.look(state)
        changed = now != before
        mentioned = subject.mentions(rec.event)
        if changed or mentioned:
            why = subject.why(before, now) if changed and now is not None else None
            entries.append(Entry(rec.seq, rec.ts, rec.event, before, now, why,
                                 _rejection(state, rec.seq) if mentioned else "",
                                 last_seq=rec.seq))
        before = now

    fold_range(store, state, until, progress, on_step=look)
    return entries, state


def _rejection(state: State, seq: int) -> str:
    """Why the fold refused the event at ``seq`` ('' if it did not): a refused
    announcement or an overtaken dispatch names its subject but changes nothing,
    and the history must say so rather than look like a no-op."""
    if state.rejected and state.rejected[-1].seq == seq:
        return state.rejected[-1].reason
    return ""


def not_in_log(kind: str, ident: str, until: int | None) -> UserError:
    """The error for a subject the log (up to ``until``) never names: the
    operator's typo, so one line and exit status 2, never a traceback."""
    return UserError(f"no {kind} {ident!r} in the log"
                     + (f" up to seq {until}" if until is not None else ""))


# ----------------------------------------------------------------------- tasks


def task_subject(task_id: str) -> Subject:
    def mentions(event: Any) -> bool:
        if isinstance(event, ev.TasksSubmitted):
            return any(t.id == task_id for t in event.tasks)
        return getattr(event, "task_id", None) == task_id

    def look(state: State) -> View:
        task = state.tasks.get(task_id)
        if task is None:
            return None
        return {"status": task.status, "attempt": task.attempt,
                "attempt_status": task.attempt_status, "worker": task.worker,
                "reason": task.reason, "blocked_by": task.blocked_by}

    def why(before: View, now: dict[str, Any]) -> str:
        return now["reason"] or (f"blocked by {now['blocked_by']}" if now["blocked_by"] else "")

    return Subject("task", task_id, mentions, look, why)


def task_history(store, task_id: str, until: int | None, progress: Progress | None = None
                 ) -> tuple[list[Entry], State]:
    """Every event about the task and every status change of it, with the reason."""
    entries, state = follow(store, task_subject(task_id), until, progress)
    if task_id not in state.tasks:
        raise not_in_log("task", task_id, until)
    return entries, state


# --------------------------------------------------------------------- workers


def worker_subject(worker_id: str) -> Subject:
    def mentions(event: Any) -> bool:
        if isinstance(event, ev.InputRejected):  # a malformed message on its own topic
            return event.source.startswith("mqtt ") and event.source.endswith(f"/from/{worker_id}")
        return getattr(event, "worker_id", None) == worker_id

    def look(state: State) -> View:
        w = state.workers.get(worker_id)
        if w is None:
            return None
        return {"status": w.status, "incarnation": w.incarnation, "reason": w.reason,
                "used": w.used, "slots": w.slots, "running": tuple(sorted(w.running))}

    return Subject("worker", worker_id, mentions, look, _worker_why)


def _worker_why(before: View, now: dict[str, Any]) -> str:
    """Word a worker's change. Lost and gone carry the fold's own reason; the
    rest is read off the view: a new incarnation is an (re)announcement, a
    change in what it holds is a task taken or ended."""
    if now["status"] in (LOST, GONE):
        return now["reason"]
    if now["status"] == DRAINING and before is not None and before["status"] != DRAINING:
        return f"draining: {now['reason']}"
    joined = f"announced as incarnation {now['incarnation'] or '-'} with {now['slots']} slot(s)"
    if before is None:
        return joined
    if before["status"] not in LIVE:
        return f"{joined}, after being {before['status']}"
    if before["incarnation"] != now["incarnation"]:
        return f"restarted: {joined}; what the old incarnation held went back to ready"
    took = [f"took {t}#{a}" for t, a in now["running"] if (t, a) not in before["running"]]
    ended = [f"{t}#{a} ended" for t, a in before["running"] if (t, a) not in now["running"]]
    return "; ".join(took + ended + [f"{now['used']}/{now['slots']} slot(s) in use"])


def worker_history(store, worker_id: str, until: int | None, progress: Progress | None = None
                   ) -> tuple[list[Entry], State]:
    """Every event about the worker (heartbeats as runs) and every change of
    it, with the reason. A worker whose every announcement was refused has a
    history but no record; one the log never names is an error."""
    entries, state = follow(store, worker_subject(worker_id), until, progress)
    if not entries:
        raise not_in_log("worker", worker_id, until)
    return collapse_heartbeats(entries), state


def collapse_heartbeats(entries: list[Entry]) -> list[Entry]:
    """Fold each run of heartbeats that changed nothing into one entry: a
    worker sends one every few seconds, and a day of them would drown the few
    lines that matter."""
    out: list[Entry] = []
    for entry in entries:
        quiet = isinstance(entry.event, ev.WorkerHeartbeat) and entry.why is None
        prev = out[-1] if out else None
        if quiet and prev is not None and isinstance(prev.event, ev.WorkerHeartbeat) \
                and prev.why is None:
            out[-1] = evolve(prev, count=prev.count + 1, last_seq=entry.seq)
        else:
            out.append(entry)
    return out


def attempts(entries: list[Entry]) -> list[dict[str, Any]]:
    """The attempts a worker was given, in the order it got them, with the
    seqs of their dispatch, start and finish, the result it reported and -
    when it was let go while holding one - the seq and reason it lost it."""
    table: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in entries:
        event = entry.event
        if isinstance(event, (ev.TaskDispatched, ev.TaskStarted, ev.TaskFinished)) \
                and not entry.rejected:
            _note_report(table, entry.seq, event)
        if entry.why is not None and entry.before is not None and entry.after is not None:
            _note_given_back(table, entry)
    return list(table.values())


_STAGE = {ev.TaskDispatched: "dispatched", ev.TaskStarted: "started", ev.TaskFinished: "finished"}


def _note_report(table: dict, seq: int, event: Any) -> None:
    row = table.setdefault((event.task_id, event.attempt), {
        "task": event.task_id, "attempt": event.attempt, "dispatched": None, "started": None,
        "finished": None, "exit_code": None, "signal": None, "reason": "",
        "given_back": None, "given_back_why": ""})
    row[_STAGE[type(event)]] = seq
    if isinstance(event, ev.TaskFinished):
        row.update(exit_code=event.exit_code, signal=event.signal, reason=event.reason)


def _note_given_back(table: dict, entry: Entry) -> None:
    """Attempts that left the worker without a result of their own: it was
    lost, left or restarted holding them."""
    finished = entry.event if isinstance(entry.event, ev.TaskFinished) else None
    for key in entry.before["running"]:
        if key in entry.after["running"] or key not in table:
            continue
        if finished is not None and (finished.task_id, finished.attempt) == key:
            continue
        table[key].update(given_back=entry.seq, given_back_why=entry.why)
