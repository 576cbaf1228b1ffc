"""Reports are believed only from the worker that holds (or held) their
attempt; everything else from outside becomes an ``input.rejected`` event
with the reason and the sender - acknowledged, so an agent stops sending it,
and changing nothing else. Rejected input is logged without its secrets."""

from __future__ import annotations

import orjson

from ecloud import wire
from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.projections.effects import Ack
from ecloud.projections.snapshot import canonical
from tests.test_ingest_fuzz import Run, payload, topic


def finished(task: str, attempt: int, msg_id: str, code: int = 0) -> dict:
    return {"kind": "finished", "msg_id": msg_id, "task_id": task, "attempt": attempt,
            "exit_code": code, "duration": 0.5}


def started_run() -> Run:
    """t0's attempt 1 went to a worker, which was then lost; attempt 2 went
    to the other worker."""
    run = Run([TaskSpec("t0", "sleep 10", retries=1, retry_backoff=0.0)], set())
    run.round(run.honest_messages(first=True))
    run.round([])  # the dispatch of attempt 1 is folded
    first = run.state.tasks["t0"].worker
    run._fold([ev.WorkerLost(first, "connection lost (last will)")])
    run.round([])  # attempt 2 dispatched to the other worker
    task = run.state.tasks["t0"]
    assert task.attempt == 2 and task.worker != first
    return run


def test_a_worker_reporting_an_attempt_it_never_held_is_rejected_and_acked() -> None:
    run = started_run()
    holder = run.state.tasks["t0"].worker
    before = canonical(run.state)["tasks"]
    run.round([(topic(holder), payload(holder, finished("t0", 1, "lie")))])
    assert [r.reason for r in run.rejected] == [f"attempt 1 of 't0' was never {holder!r}'s"]
    assert run.rejected[0].sender == holder and run.rejected[0].msg_id == "lie"
    assert canonical(run.state)["tasks"] == before
    assert any(isinstance(e, Ack) and e.msg_id == "lie" and e.worker_id == holder
               for e in run.effects)


def test_the_worker_that_held_it_may_report_it_late() -> None:
    """Declared lost, it came back: its report of attempt 1 is protocol -
    acknowledged, logged as what it is, no task changes."""
    run = started_run()
    lost = "w1" if run.state.tasks["t0"].worker == "w2" else "w2"
    before = canonical(run.state)["tasks"]
    run.round([(topic(lost), payload(lost, finished("t0", 1, "late")))])
    assert run.rejected == []
    assert canonical(run.state)["tasks"] == before


def test_a_heartbeat_from_a_stranger_is_recorded_once_and_the_stranger_remembered() -> None:
    run = Run([TaskSpec("t0", "true")], set())
    beat = payload("ghost", {"kind": "heartbeat", "msg_id": ""})
    run.round([(topic("ghost"), beat)])
    run.round([(topic("ghost"), beat)])
    assert [r.sender for r in run.rejected] == ["ghost"]
    assert "never announced itself" in run.rejected[0].reason
    assert list(run.state.strangers) == ["ghost"]


def test_a_payload_that_is_not_utf8_is_rejected() -> None:
    run = Run([TaskSpec("t0", "true")], set())
    run.round(run.honest_messages(first=True))
    bad = payload("w1", finished("t0", 1, "x")).replace(b'"t0"', b'"t\xff0"')
    run.round([(topic("w1"), bad)])
    assert len(run.rejected) == 1 and run.rejected[0].reason.startswith("not JSON")


def test_rejected_input_never_carries_env_values_or_passwords() -> None:
    run = Run([TaskSpec("t0", "true")], set())
    forged = orjson.dumps({"v": 1, "worker": "w1", "dispatch": [
        {"task_id": "a", "env": {"API_TOKEN": "tok-very-secret-789"}}],
        "broker_password": "hunter2"})
    broken = b'{"v": 1, "env": {"API_TOKEN": "tok-very-secret-789", "password": "hunter2'
    run.round([(topic("w1"), forged), (topic("w1"), broken)])
    assert len(run.rejected) == 2
    for rejection in run.rejected:
        assert "tok-very-secret-789" not in rejection.excerpt
        assert "hunter2" not in rejection.excerpt
    assert "API_TOKEN" in run.rejected[0].excerpt  # the names stay: they help, they are not secret
    assert wire.redacted_excerpt(b'{"password": "hunter2", "x": 1') == '{"password": "...", "x": 1'


def test_a_worker_that_announced_itself_again_may_still_report_what_it_held() -> None:
    """Lost, then back with a new announcement (a broker restart can do that):
    the new record keeps what the old one held, so its late report is
    still protocol - seen in the chaos suite's broker restarts."""
    run = started_run()
    lost = "w1" if run.state.tasks["t0"].worker == "w2" else "w2"
    run.round([(topic(lost), payload(lost, {"kind": "hello", "msg_id": "h2", "host": lost,
                                             "slots": 2, "protocol": 1, "incarnation": "i1"}))])
    assert run.state.workers[lost].status == "idle"
    run.round([(topic(lost), payload(lost, finished("t0", 1, "late")))])
    assert run.rejected == []


def test_a_superseded_agent_is_refused_for_good_and_recorded_once_in_a_while() -> None:
    """Another agent under a live worker's id (the old one, paused while a
    new one took over, then resumed): every message of it is refused - it
    is told to stop, for good - but only the first is logged, so that it
    cannot fill the log (it did: 2,405 events in 36 minutes)."""
    run = Run([TaskSpec("t0", "true")], set())
    run.round(run.honest_messages(first=True))
    sent: list[tuple[str, bytes]] = []
    run.outbox._publish = lambda topic_, payload_: sent.append((topic_, payload_))
    beat = orjson.dumps({**orjson.loads(payload("w1", {"kind": "heartbeat", "msg_id": ""})),
                         "incarnation": "old"})
    for _ in range(5):
        run.round([(topic("w1"), beat)])
        run.outbox.flush()
    assert len(run.rejected) == 1 and "incarnation old of worker 'w1'" in run.rejected[0].reason
    refusals = [wire.parse_boss_payload(p) for t, p in sent if t == "ecloud/fz/to/w1"]
    refusals = [m for m in refusals if m.refuse]
    assert refusals and all(m.to == "old" and m.retry_after is None for m in refusals)
    assert refusals[0].refuse.startswith("superseded: ")


def test_a_will_that_names_no_incarnation_cannot_take_a_live_worker_down() -> None:
    """Under fold rules 2 every agent's will names its incarnation: one that
    does not (forged on an open broker) is refused, the worker stays."""
    run = Run([TaskSpec("t0", "true")], set())
    run._fold([ev.BossStarted("b", 2)])
    run.round(run.honest_messages(first=True))
    run.round([(topic("w1"), payload("w1", {"kind": "lost"}))])
    assert run.state.workers["w1"].status in ("idle", "busy")  # not lost
    assert [r.reason for r in run.rejected] == [
        "a lost that names no incarnation, about a live worker that has one"]
