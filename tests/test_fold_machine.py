"""The task and worker reducers against a naive model.

The model keeps only each task's *own* fate (pending, on a worker, succeeded,
failed, cancelled) and derives waiting/ready/blocked by rescanning every
dependency after every step - slow and obviously right. The reducers keep
counters and indexes for speed; after every rule the two must agree.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.projections.state import BLOCKED, READY, SUCCEEDED, WAITING
from tests.support.folding import Driver, check_invariants

PENDING, ON_WORKER, DONE, FAILED, CANCELLED = "pending", "on_worker", "succeeded", "failed", "cancelled"
OWN_FINAL = {DONE: "succeeded", FAILED: "failed", CANCELLED: "cancelled"}


class Model:
    def __init__(self) -> None:
        self.deps: dict[str, tuple[str, ...]] = {}
        self.retries: dict[str, int] = {}
        self.fate: dict[str, str] = {}
        self.failures: dict[str, int] = {}
        self.holder: dict[str, tuple[str, int]] = {}  # task -> (worker, attempt)
        self.started: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.slots: dict[str, int] = {}  # live workers -> slots
        self.held: dict[str, list[tuple[str, int]]] = {}  # worker -> attempts held

    def status(self, tid: str) -> str:
        fate = self.fate[tid]
        if fate in OWN_FINAL:
            return OWN_FINAL[fate]
        if fate == ON_WORKER:
            return "running" if tid in self.started else "dispatched"
        parents = [self.status(d) for d in self.deps[tid]]
        if any(p in ("failed", "cancelled", "blocked") for p in parents):
            return BLOCKED
        if all(p == SUCCEEDED for p in parents):
            return READY
        return WAITING

    def release(self, worker: str, tid: str, attempt: int) -> None:
        if (tid, attempt) in self.held.get(worker, []):
            self.held[worker].remove((tid, attempt))

    def requeue_all(self, worker: str) -> None:
        for tid, attempt in self.held.pop(worker, []):
            if self.holder.get(tid) == (worker, attempt) and self.fate[tid] == ON_WORKER:
                self.fate[tid] = PENDING
                del self.holder[tid]
                self.started.discard(tid)
        self.slots.pop(worker, None)


class FoldMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = Driver()
        self.m = Model()
        self.n = 0

    # ------------------------------------------------------------------ rules

    @rule(data=st.data(), size=st.integers(1, 5))
    def submit(self, data, size: int) -> None:
        specs = []
        existing = sorted(self.m.fate)
        for i in range(size):
            pool = existing + [s.id for s in specs]
            deps = data.draw(st.lists(st.sampled_from(pool), max_size=2, unique=True)) if pool else []
            specs.append(TaskSpec(f"t{self.n + i}", "true", depends_on=tuple(deps),
                                  retries=data.draw(st.integers(0, 1)), retry_backoff=0.0))
        self.n += size
        self.d.apply(ev.TasksSubmitted(f"b{self.n}", tuple(specs)))
        for s in specs:
            self.m.deps[s.id] = s.depends_on
            self.m.retries[s.id] = s.retries
            self.m.fate[s.id] = PENDING
            self.m.failures[s.id] = 0
            self.m.attempts[s.id] = 0

    @rule(worker=st.sampled_from(["w0", "w1"]), slots=st.integers(1, 3))
    def announce(self, worker: str, slots: int) -> None:
        self.d.apply(ev.WorkerAnnounced(worker, "h", slots, 1, f"inc{len(self.d.log)}"))
        self.m.requeue_all(worker)  # a new incarnation replaces any old one
        self.m.slots[worker] = slots
        self.m.held[worker] = []

    @rule()
    def schedule(self) -> None:
        before = len(self.d.log)
        self.d.schedule()
        for rec in self.d.log[before:]:
            x = rec.event
            self.m.attempts[x.task_id] = x.attempt
            self.m.fate[x.task_id] = ON_WORKER
            self.m.holder[x.task_id] = (x.worker_id, x.attempt)
            self.m.held[x.worker_id].append((x.task_id, x.attempt))
        # Queueing ahead never leaves a slot idle: after a round that queued
        # a task ahead anywhere, no live worker has a free slot left.
        workers = self.d.state.workers
        if any(workers[r.event.worker_id].free < 0 for r in self.d.log[before:]):
            assert all(w.free <= 0 for w in workers.values() if w.status in ("idle", "busy"))

    @rule(key_value=st.sampled_from(["0", "1", "2", None]))
    def queue_ahead(self, key_value: str | None) -> None:
        """The operator changes (or drops) ``queue_ahead`` at any moment."""
        if key_value is None:
            self.d.apply(ev.ContextDropped("queue_ahead"))
        else:
            self.d.apply(ev.ContextSet("queue_ahead", key_value))

    def _on_worker(self) -> list[str]:
        return sorted(t for t, f in self.m.fate.items() if f == ON_WORKER)

    @precondition(lambda self: self._on_worker())
    @rule(data=st.data())
    def start(self, data) -> None:
        tid = data.draw(st.sampled_from(self._on_worker()))
        worker, attempt = self.m.holder[tid]
        self.d.apply(ev.TaskStarted(tid, attempt, worker), dt=1)
        self.m.started.add(tid)

    @precondition(lambda self: self._on_worker())
    @rule(data=st.data(), ok=st.booleans(), duration=st.sampled_from([0.01, 0.99, 1.0, 60.0]))
    def finish(self, data, ok: bool, duration: float) -> None:
        tid = data.draw(st.sampled_from(self._on_worker()))
        worker, attempt = self.m.holder[tid]
        self.d.apply(ev.TaskFinished(tid, attempt, worker, 0 if ok else 3, duration), dt=1)
        self.m.release(worker, tid, attempt)
        del self.m.holder[tid]
        self.m.started.discard(tid)
        if ok:
            self.m.fate[tid] = DONE
        else:
            self.m.failures[tid] += 1
            self.m.fate[tid] = PENDING if self.m.failures[tid] <= self.m.retries[tid] else FAILED

    def _queued(self) -> list[str]:
        return [t for t in self._on_worker() if t not in self.m.started]

    @precondition(lambda self: self._queued())
    @rule(data=st.data())
    def give_back(self, data) -> None:
        """A worker gives back a dispatch it never started: ready again, no failure."""
        tid = data.draw(st.sampled_from(self._queued()))
        worker, attempt = self.m.holder[tid]
        self.d.apply(ev.TaskFinished(tid, attempt, worker, None, 0.0,
                                     reason="waited 2 s in the queue", returned=True), dt=1)
        self.m.release(worker, tid, attempt)
        del self.m.holder[tid]
        self.m.fate[tid] = PENDING
        assert not self.d.state.workers[worker].quick  # it gets nothing more queued for now

    @precondition(lambda self: self.m.fate)
    @rule(data=st.data())
    def stale_report(self, data) -> None:
        """A report for an attempt that is not the current one changes nothing."""
        tid = data.draw(st.sampled_from(sorted(self.m.fate)))
        attempt = self.m.attempts[tid] - data.draw(st.integers(1, 2))
        self.d.apply(ev.TaskFinished(tid, attempt, "w0", 0), dt=1)
        # its status is stale, but the worker no longer holds that attempt
        self.m.release("w0", tid, attempt)

    @precondition(lambda self: self.m.fate)
    @rule(data=st.data())
    def cancel(self, data) -> None:
        tid = data.draw(st.sampled_from(sorted(self.m.fate)))
        self.d.apply(ev.TaskCancelled(tid))
        if self.m.fate[tid] not in OWN_FINAL:
            if self.m.fate[tid] == ON_WORKER:
                del self.m.holder[tid]  # the worker keeps the slot until it reports
                self.m.started.discard(tid)
            self.m.fate[tid] = CANCELLED

    @precondition(lambda self: self.m.fate)
    @rule(data=st.data())
    def retry(self, data) -> None:
        tid = data.draw(st.sampled_from(sorted(self.m.fate)))
        self.d.apply(ev.RetryRequested(tid))
        if self.m.fate[tid] in (FAILED, CANCELLED):
            self.m.fate[tid] = PENDING
            self.m.failures[tid] = 0

    @rule(worker=st.sampled_from(["w0", "w1"]), how=st.sampled_from(["lost", "left", "silence"]))
    def worker_goes(self, worker: str, how: str) -> None:
        if how == "lost":
            self.d.apply(ev.WorkerLost(worker))
            self.m.requeue_all(worker)
        elif how == "left":
            self.d.apply(ev.WorkerLeft(worker))
            self.m.requeue_all(worker)
        else:  # every worker falls silent past the deadline
            self.d.apply(ev.Tick(), dt=1000)
            for w in list(self.m.slots):
                self.m.requeue_all(w)

    # ------------------------------------------------------------- invariants

    @invariant()
    def statuses_agree_with_the_model(self) -> None:
        expected = {tid: self.m.status(tid) for tid in self.m.fate}
        assert self.d.statuses() == expected

    @invariant()
    def workers_agree_with_the_model(self) -> None:
        live = {w: r.slots for w, r in self.d.state.workers.items() if r.status in ("idle", "busy")}
        assert live == self.m.slots
        for w, held in self.m.held.items():
            assert sorted(self.d.state.workers[w].running) == sorted(held)

    @invariant()
    def structure(self) -> None:
        check_invariants(self.d.state)


FoldMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_fold_machine = FoldMachine.TestCase
