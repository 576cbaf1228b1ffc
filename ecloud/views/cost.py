"""The cost ledger: what a run cost, derived from the log alone.

* **worker-seconds per task**: for every attempt, its run time (its
  reported duration; for an attempt whose worker was lost, from its start,
  or its dispatch, to the loss; for one still running, to the log's clock)
  times the slots it holds. A VM's *busy* time below also counts the time
  between a dispatch and its start (queued on the worker, staging);
* **VM-seconds**: from each VM's request to the moment it was seen gone (or
  the log's clock), split into *booting* (until its first worker announced
  itself), *busy* (some worker on it held an attempt) and *idle* (the rest);
* **bytes staged** in and out, per task and in total (``staged`` of each
  attempt's report).

:class:`Ledger` is a fold like the reducers: fed the recorded events in seq
order, together with the state right after each (it reads which VM a
worker lives on and whether a VM is gone from there), it does no I/O and
reads no clock. Feeding a log in pieces gives the same ledger as feeding it
at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from attrs import define, field

from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.projections.fold import step
from ecloud.projections.state import DISPATCHED, RUNNING, State


@define(slots=True)
class TaskCost:
    attempts: int = 0
    worker_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0


@define(slots=True)
class _Attempt:
    worker: str
    dispatched: float
    slots: int
    started: float | None = None


@define(slots=True)
class _VM:
    requested: float
    ended: float | None = None
    announced: float | None = None
    #: attempts held by workers on this VM, and since when it held any
    holding: int = 0
    busy_since: float | None = None
    busy: float = 0.0


@define(slots=True)
class Ledger:
    tasks: dict[str, TaskCost] = field(factory=dict)
    vms: dict[str, _VM] = field(factory=dict)
    clock: float = 0.0
    seq: int = 0
    _slots: dict[str, int] = field(factory=dict)
    _open: dict[tuple[str, int], _Attempt] = field(factory=dict)

    # ----------------------------------------------------------------- folding

    def apply(self, rec: Recorded, state: State) -> None:
        """Account for one event; ``state`` is the fold's state right after it."""
        self.seq = rec.seq
        self.clock = max(self.clock, rec.ts)
        event, ts = rec.event, rec.ts
        kind = type(event)
        if kind is ev.TasksSubmitted:
            for spec in event.tasks:
                task = state.tasks.get(spec.id)
                if task is None or task.batch_seq != rec.seq:
                    continue  # a batch the fold refused: no task of it exists
                self._slots.setdefault(spec.id, spec.slots)
                self.tasks.setdefault(spec.id, TaskCost())
        elif kind is ev.TaskDispatched:
            key = (event.task_id, event.attempt)
            worker = state.workers.get(event.worker_id)
            # only a dispatch the fold accepted (it refuses one to a lost worker, a repeat)
            if key not in self._open and worker is not None and key in worker.running:
                self._open[key] = _Attempt(event.worker_id, ts, self._slots.get(event.task_id, 1))
                self.tasks[event.task_id].attempts += 1
                self._hold(state, event.worker_id, ts, +1)
        elif kind is ev.TaskStarted:
            attempt = self._open.get((event.task_id, event.attempt))
            if attempt is not None and attempt.started is None:
                attempt.started = ts
        elif kind is ev.TaskFinished:
            self._finished(event, ts, state)
        elif kind is ev.VMRequested or (kind is ev.VMDiscovered and event.vm_name in state.vms):
            self.vms.setdefault(event.vm_name, _VM(ts))  # a VM found in the cloud: from then
        if kind in (ev.WorkerAnnounced, ev.VMAllocated, ev.VMDiscovered):
            self._announced(state, event, ts)
        if kind in (ev.VMStateObserved, ev.VMFailed, ev.VMDiscovered):
            self._ended_vms(state, ts)
        counts = state.counts
        if len(self._open) != counts[DISPATCHED] + counts[RUNNING]:
            self._reconcile(state, ts)

    def _reconcile(self, state: State, ts: float) -> None:
        """Close the attempts the fold no longer lets a worker hold: given
        back when the worker was lost or left (by an event, or by a deadline
        passing inside any event's step). Checked only
        when the count of active tasks says something differs: O(1) per
        event otherwise."""
        workers = state.workers
        for key, attempt in list(self._open.items()):
            worker = workers.get(attempt.worker)
            if worker is None or key not in worker.running:
                self._close(key, ts, None, state)

    def _finished(self, event: ev.TaskFinished, ts: float, state: State) -> None:
        key = (event.task_id, event.attempt)
        if key not in self._open:
            return
        cost = self.tasks[event.task_id]
        for f in event.staged:
            if f.direction == "in":
                cost.bytes_in += f.bytes
            else:
                cost.bytes_out += f.bytes
        self._close(key, ts, event.duration, state)

    def _close(self, key: tuple[str, int], ts: float, duration: float | None, state: State) -> None:
        attempt = self._open.pop(key)
        if duration is None:
            duration = ts - (attempt.started if attempt.started is not None else attempt.dispatched)
        self.tasks[key[0]].worker_seconds += max(0.0, duration) * attempt.slots
        self._hold(state, attempt.worker, ts, -1)

    def _vm_of(self, state: State, worker_id: str) -> _VM | None:
        worker = state.workers.get(worker_id)
        if worker is None or worker.vm_id is None:
            return None
        name = state.vm_ids.get(worker.vm_id)
        return self.vms.get(name) if name is not None else None

    def _hold(self, state: State, worker_id: str, ts: float, delta: int) -> None:
        vm = self._vm_of(state, worker_id)
        if vm is None:
            return
        if delta > 0 and vm.holding == 0:
            vm.busy_since = ts
        vm.holding = max(0, vm.holding + delta)
        if vm.holding == 0 and vm.busy_since is not None:
            vm.busy += ts - vm.busy_since
            vm.busy_since = None

    def _announced(self, state: State, event: Any, ts: float) -> None:
        if isinstance(event, ev.WorkerAnnounced):
            vm = self._vm_of(state, event.worker_id)
        else:
            vm = self.vms.get(event.vm_name)
            if vm is not None and not state.workers_on(event.vm_id, live=False):
                vm = None  # allocated, nobody on it yet
        if vm is not None and vm.announced is None:
            vm.announced = ts

    def _ended_vms(self, state: State, ts: float) -> None:
        for name, vm in self.vms.items():
            if vm.ended is None:
                record = state.vms.get(name)
                # gone, or given up on without ever holding quota (the cloud
                # is not thought to have it: State.open_vms)
                if record is not None and name not in state.open_vms:
                    vm.ended = ts
                    if vm.busy_since is not None:
                        vm.busy += ts - vm.busy_since
                        vm.busy_since, vm.holding = None, 0

    # ------------------------------------------------------------------ reading

    def task_rows(self) -> list[dict[str, Any]]:
        """Every task's cost, running attempts counted up to the log's clock."""
        running: dict[str, float] = {}
        for (tid, _), a in self._open.items():
            since = a.started if a.started is not None else a.dispatched
            running[tid] = running.get(tid, 0.0) + max(0.0, self.clock - since) * a.slots
        return [{"task": tid, "attempts": c.attempts,
                 "worker_seconds": round(c.worker_seconds + running.get(tid, 0.0), 3),
                 "bytes_in": c.bytes_in, "bytes_out": c.bytes_out}
                for tid, c in self.tasks.items()]

    def vm_totals(self) -> dict[str, float]:
        """VM-seconds in all, booting, busy and idle, up to the log's clock."""
        total = booting = busy = 0.0
        for vm in self.vms.values():
            end = vm.ended if vm.ended is not None else self.clock
            up = max(0.0, end - vm.requested)
            boot = max(0.0, (vm.announced if vm.announced is not None else end) - vm.requested)
            held = vm.busy + (max(0.0, end - vm.busy_since) if vm.busy_since is not None else 0.0)
            total += up
            booting += min(boot, up)
            busy += min(held, up)
        idle = max(0.0, total - booting - busy)
        return {"vms": len(self.vms), "vm_seconds": round(total, 3), "booting": round(booting, 3),
                "busy": round(busy, 3), "idle": round(idle, 3)}

    def data(self) -> dict[str, Any]:
        """``ecloud status --cost --json``."""
        rows = self.task_rows()
        return {
            "seq": self.seq,
            "clock": self.clock,
            "total": {
                "tasks": len(rows),
                "attempts": sum(r["attempts"] for r in rows),
                "worker_seconds": round(sum(r["worker_seconds"] for r in rows), 3),
                "bytes_in": sum(r["bytes_in"] for r in rows),
                "bytes_out": sum(r["bytes_out"] for r in rows),
            },
            "vm_seconds": self.vm_totals(),
            "tasks": rows,
        }


def ledger_of(records: Iterable[Recorded], progress: Callable[[int], None] | None = None,
              ) -> tuple[Ledger, State]:
    """Fold ``records`` (a whole log, from seq 1) into the state and the
    ledger together; ``progress(seq)`` every 5,000 events."""
    state, ledger = State(), Ledger()
    for rec in records:
        step(state, rec)
        ledger.apply(rec, state)
        if progress is not None and rec.seq % 5000 == 0:
            progress(rec.seq)
    return ledger, state
