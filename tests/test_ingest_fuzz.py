"""Hostile input at the boss's edge, fuzzed with hypothesis.

A run is replayed twice through the boss's own ingest - :func:`to_events`
(parse, schema, bounds, state match) and the fold, with the scheduler's
decisions fed back as the boss does - once as honest workers would drive it,
once with junk mixed in at random places: random bytes, random JSON,
oversized payloads and fields, wrong types, unknown report kinds, messages
naming another worker, reports from workers that never announced
themselves, about tasks that do not exist, attempts never dispatched or held
by another worker, implausible values, topics outside the cluster's, and
reports from a second agent under a live worker's id (another incarnation:
its heartbeats, goodbye, will or results must neither keep the worker alive
nor take it down).

Asserted: the ingest never raises; every junk message becomes exactly one
``input.rejected`` event (with a bounded excerpt) and the honest run has
none; and the task, worker, VM and context state and every effect are
exactly those of the run without the junk.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ecloud import wire
from ecloud.boss.edge import to_events
from ecloud.boss.heard import HeardReports
from ecloud.effects.messaging.outbox import Outbox
from ecloud.events import types as ev
from ecloud.events.types import Recorded, TaskSpec
from ecloud.projections.effects import Ack, Dispatch
from ecloud.projections.fold import step
from ecloud.projections.scheduler import schedule
from ecloud.projections.snapshot import canonical
from ecloud.projections.state import ACTIVE, LIVE, State

CLUSTER = "fz"
WORKERS = ("w1", "w2")
ROUNDS = 30
KINDS = ("bytes", "json", "oversize", "wrong_type", "huge_field", "unknown_kind",
         "foreign_worker", "unknown_worker", "unknown_task", "future_attempt",
         "other_workers_attempt", "implausible", "bad_topic", "other_incarnation")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=20)


def topic(worker: str) -> str:
    return wire.from_topic(CLUSTER, worker)


def payload(worker: str, *reports: dict) -> bytes:
    return orjson.dumps({"v": wire.PROTOCOL, "worker": worker, "reports": list(reports)})


class Run:
    """The boss's ingest and fold for one run, without broker or log."""

    def __init__(self, specs: list[TaskSpec], failing: set[str]) -> None:
        self.state = State()
        self.failing = failing
        self.effects: list = []
        self.rejected: list[ev.InputRejected] = []
        self.rejected_seqs: set[int] = set()
        self.outbox = Outbox(lambda t, p: None, CLUSTER, clock=lambda: 0.0)
        self.heard = HeardReports(clock=lambda: 0.0)
        self.decisions: list = []
        self.held: list[Dispatch] = []  # dispatches the workers will answer next round
        self.msg = 0
        self.ts = 1_000.0
        self._fold([ev.TasksSubmitted("b1", tuple(specs), "fuzz")])

    def msg_id(self) -> str:
        self.msg += 1
        return f"m{self.msg}"

    def _fold(self, events: list) -> None:
        self.ts += 1.0
        for item in events:
            if isinstance(item, ev.InputRejected):
                self.rejected.append(item)
                self.rejected_seqs.add(self.state.seq + 1)
            _, effects = step(self.state, Recorded(self.state.seq + 1, self.ts, item))
            self.effects.extend(effects)
            self.held.extend(e for e in effects if isinstance(e, Dispatch))
        self.decisions = schedule(self.state)

    def honest_messages(self, first: bool) -> list[tuple[str, bytes]]:
        if first:
            return [(topic(w), payload(w, {"kind": "hello", "msg_id": self.msg_id(), "host": w,
                                           "slots": 2, "protocol": 1, "incarnation": "i1"}))
                    for w in WORKERS]
        messages = []
        for d in self.held:
            code = 1 if d.task_id in self.failing else 0
            messages.append((topic(d.worker_id), payload(d.worker_id, {
                "kind": "finished", "msg_id": self.msg_id(), "task_id": d.task_id,
                "attempt": d.attempt, "exit_code": code, "duration": 0.5})))
        self.held = []
        messages += [(topic(w), payload(w, {"kind": "heartbeat", "msg_id": ""})) for w in WORKERS]
        return messages

    def round(self, messages: list[tuple[str, bytes]]) -> None:
        events = list(self.decisions)
        for t, p in messages:
            events += to_events(t, p, CLUSTER, self.state, self.outbox, self.heard)
        self._fold(events)

    def outcome(self) -> tuple[Any, list]:
        data = canonical(self.state)
        for key in ("seq", "rejected", "strangers"):  # what junk may leave: its record
            data.pop(key)
        # a worker's rank is the seq of its announcement, a failure names the
        # seq of its report: rejected events before them shift the numbers,
        # not the order
        order = sorted(w["rank"] for w in data["workers"])
        for w in data["workers"]:
            w["rank"] = order.index(w["rank"])
        for failure in data["recent_failures"]:
            failure["seq"] = 0
        # the acks of rejected reports (so that an agent stops resending) aside
        effects = [e for e in self.effects
                   if not (isinstance(e, Ack) and e.cause in self.rejected_seqs)]
        return data, [attrs.evolve(e, cause=0) for e in effects]


def junk(kind: str, state: State, rng: random.Random, data: st.DataObject) -> tuple[str, bytes]:
    """One hostile message of ``kind``, aimed at what the state holds now."""
    w = rng.choice(WORKERS)
    tasks = sorted(state.tasks)
    task_id = rng.choice(tasks)
    attempt = state.tasks[task_id].attempt
    finished = {"kind": "finished", "msg_id": f"x{rng.random()}", "task_id": task_id,
                "attempt": max(attempt, 1), "exit_code": 0, "duration": 1.0}
    if kind == "bytes":
        return topic(w), data.draw(st.binary(max_size=300), label="bytes")
    if kind == "json":
        return topic(w), orjson.dumps(data.draw(json_values, label="json"))
    if kind == "oversize":
        return topic(w), payload(w, {**finished, "stdout_tail": "x" * wire.MAX_PAYLOAD})
    if kind == "wrong_type":
        field = rng.choice(["attempt", "exit_code", "duration", "task_id", "msg_id"])
        # values of the wrong type for the field (a string is right for ids,
        # None for an exit code, a float for a duration)
        wrong = {"task_id": [1, [1], {"a": 1}, True, 1.5, None],
                 "msg_id": [1, [1], {"a": 1}, True, 1.5, None],
                 "attempt": ["1", [1], {"a": 1}, True, 1.5, None, -0.0],
                 "exit_code": ["0", [0], {"a": 1}, True, 1.5, -0.0],
                 "duration": ["1.0", [1.0], {"a": 1}, True, None]}[field]
        value = data.draw(st.sampled_from(wrong), label="v")
        return topic(w), payload(w, {**finished, field: value})
    if kind == "huge_field":
        field = rng.choice(["reason", "stdout_tail", "task_id", "msg_id"])
        return topic(w), payload(w, {**finished, field: "y" * rng.randint(wire.MAX_TAIL_CHARS + 1, 100_000)})
    if kind == "unknown_kind":
        return topic(w), payload(w, {**finished, "kind": data.draw(st.text(max_size=12), label="k")})
    if kind == "foreign_worker":
        return topic(w), payload("w1" if w == "w2" else "w2", finished)
    if kind == "unknown_worker":
        stranger = f"s{rng.randint(0, 99)}"
        return topic(stranger), payload(stranger, rng.choice([
            finished, {"kind": "started", "msg_id": f"y{rng.random()}", "task_id": task_id,
                       "attempt": 1},
            {"kind": "bye", "msg_id": f"y{rng.random()}", "reason": "bye"}]))
    if kind == "unknown_task":
        return topic(w), payload(w, {**finished, "task_id": f"nope-{rng.randint(0, 9)}"})
    if kind == "future_attempt":
        return topic(w), payload(w, {**finished, "attempt": attempt + rng.randint(1, 5)})
    if kind == "other_workers_attempt":
        held = [t for t in state.tasks.values() if t.status in ACTIVE]
        if not held:
            return topic(w), payload(w, {**finished, "task_id": "nope"})
        t = rng.choice(held)
        other = "w1" if t.worker == "w2" else "w2"
        report = rng.choice([{**finished, "task_id": t.spec.id, "attempt": t.attempt},
                             {"kind": "started", "msg_id": f"z{rng.random()}", "task_id": t.spec.id,
                              "attempt": t.attempt}])
        return topic(other), payload(other, report)
    if kind == "implausible":
        return topic(w), payload(w, rng.choice([
            {**finished, "duration": -1.0}, {**finished, "exit_code": 999},
            {**finished, "signal": 0}, {**finished, "attempt": 0},
            {"kind": "hello", "msg_id": f"h{rng.random()}", "host": w, "slots": 10**6, "protocol": 1,
             "incarnation": "i1"},
            {"kind": "hello", "msg_id": f"h{rng.random()}", "host": w, "slots": 2, "protocol": 1,
             "incarnation": "i1", "vm_id": -4}]))
    if kind == "other_incarnation":
        if w not in state.workers or state.workers[w].status not in LIVE:
            return topic(w), payload(w, {**finished, "task_id": "nope"})  # not live: no one to impersonate
        report = rng.choice([
            {"kind": "heartbeat", "msg_id": ""}, {"kind": "bye", "msg_id": "b9", "reason": "x"},
            {"kind": "lost"}, {"kind": "draining", "msg_id": "d9", "reason": "x"}, finished])
        message = orjson.loads(payload(w, report))
        # a fresh one each time: one agent's messages are recorded once in a while
        return topic(w), orjson.dumps({**message, "incarnation": f"i2-{rng.random()}"})
    assert kind == "bad_topic"
    return rng.choice([f"ecloud/other/from/{w}", f"ecloud/{CLUSTER}/from/{w}/x",
                       f"ecloud/{CLUSTER}/to/{w}", f"ecloud/{CLUSTER}/from/", "x" * 5000]), \
        payload(w, finished)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[TaskSpec], set[str]]:
    n = draw(st.integers(2, 8), label="tasks")
    specs = []
    for i in range(n):
        deps = draw(st.sets(st.sampled_from([f"t{j}" for j in range(i)]), max_size=2)) if i else set()
        specs.append(TaskSpec(f"t{i}", "true", tuple(sorted(deps)), retries=1, retry_backoff=0.0))
    failing = draw(st.sets(st.sampled_from([s.id for s in specs]), max_size=2), label="failing")
    return specs, failing


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), plan=st.lists(st.tuples(st.integers(0, ROUNDS - 1),
                                                     st.sampled_from(KINDS)),
                                           min_size=1, max_size=12),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_junk_at_the_edge_is_rejected_and_changes_nothing(scenario, plan, seed, data) -> None:
    specs, failing = scenario
    honest, hostile = Run(specs, failing), Run(specs, failing)
    rng = random.Random(seed)
    sent = 0
    for r in range(ROUNDS):
        messages = honest.honest_messages(first=r == 0)
        assert hostile.honest_messages(first=r == 0) == messages  # same state, same workers
        honest.round(messages)
        mixed = list(messages)
        for when, kind in plan:
            if when == r:
                mixed.insert(rng.randint(0, len(mixed)), junk(kind, hostile.state, rng, data))
                sent += 1
                event(f"junk: {kind}")  # --hypothesis-show-statistics tallies the classes
        hostile.round(mixed)
    assert honest.rejected == []
    assert len(hostile.rejected) == sent, [r.reason for r in hostile.rejected]
    for rejection in hostile.rejected:
        assert len(rejection.excerpt) <= 201 and len(rejection.reason) <= wire.MAX_TEXT + 1
        assert len(rejection.source) <= 320
    assert hostile.outcome() == honest.outcome()


def test_the_honest_run_finishes_its_tasks() -> None:
    """The fuzzed runs are worth something: unhindered, every task ends."""
    specs = [TaskSpec(f"t{i}", "true", (f"t{i - 1}",) if i else (), retries=1,
                      retry_backoff=0.0) for i in range(6)]
    run = Run(specs, {"t5"})
    for r in range(ROUNDS):
        run.round(run.honest_messages(first=r == 0))
    counts = run.state.counts
    assert counts["succeeded"] == 5 and counts["failed"] == 1


def test_a_report_about_an_earlier_attempt_is_protocol_not_junk() -> None:
    """A worker that comes back after its attempt was given up on reports
    that earlier attempt: it is logged as what it is and acknowledged (so the
    worker stops resending), and no task changes."""
    run = Run([TaskSpec("t0", "true", retries=2, retry_backoff=0.0)], {"t0"})
    run.round(run.honest_messages(first=True))
    run.round([])  # the dispatch of attempt 1 is folded
    run.round(run.honest_messages(first=False))  # attempt 1 fails
    run.round([])  # attempt 2 is dispatched
    task = run.state.tasks["t0"]
    assert task.attempt == 2 and task.status == "dispatched"
    before = canonical(run.state)["tasks"]
    worker = task.worker
    run.round([(topic(worker), payload(worker, {
        "kind": "finished", "msg_id": "late", "task_id": "t0", "attempt": 1, "exit_code": 0,
        "duration": 1.0}))])
    assert run.rejected == [] and canonical(run.state)["tasks"] == before
    assert any(getattr(e, "msg_id", None) == "late" for e in run.effects)  # acknowledged
