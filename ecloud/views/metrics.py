"""Prometheus metrics of a cluster, derived from its log.

:class:`Meters` is fed every event a :class:`~ecloud.views.follower.Follower`
folds (with the state right after it) and keeps the counters and histograms;
the gauges are read from the folded state when Prometheus scrapes. The
:class:`LogCollector` yields all of them under the follower's lock, so one
scrape is one consistent moment: ``ecloud_folded_seq`` names the seq its
task and worker counts are the state at (the tests compare them with a
replay to that seq).

The follower folds the whole log from seq 1, so counters and histograms
cover the log's whole history (and a restart recounts them, which
``rate()`` takes as a counter reset). Names and meanings:

* ``ecloud_tasks{state}``, ``ecloud_workers{state}``, ``ecloud_vms_booting``,
  ``ecloud_worker_slots{kind="total"|"used"}``: gauges of the state;
* ``ecloud_log_head_seq``, ``ecloud_folded_seq``, ``ecloud_replay_lag_events``
  (head minus folded): how far behind the log this view is;
* ``ecloud_events_total{type}``: events folded (``rate()`` = events appended
  per second);
* ``ecloud_append_batch_size``: events per append (a batch is stamped with
  one time; a run of events with equal ``ts`` is one batch);
* ``ecloud_dispatch_latency_seconds``: from a dispatch's commit to the
  commit of the worker's start report;
* ``ecloud_queue_wait_seconds``: from a task becoming ready (submitted with
  its dependencies met) to its first dispatch;
* ``ecloud_task_duration_seconds{outcome}``: reported durations of attempts.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.projections.state import LIVE, TASK_STATUSES, WORKER_STATUSES, State
from ecloud.views.summary import booting

if TYPE_CHECKING:
    from ecloud.views.follower import Follower

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
                    7200.0, 14400.0, 43200.0, 86400.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Bucket counts, sum and count: what a Prometheus histogram exposes."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class Meters:
    """The counters and histograms, fed one folded event at a time."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.batch = Histogram(BATCH_BUCKETS)
        self.dispatch_latency = Histogram(LATENCY_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.durations = {"succeeded": Histogram(DURATION_BUCKETS),
                          "failed": Histogram(DURATION_BUCKETS)}
        self._batch_ts: float | None = None
        self._batch_len = 0

    def observe(self, rec: Recorded, state: State) -> None:
        """Account for one event; ``state`` is the state right after it."""
        event = rec.event
        self.events[event.TYPE] += 1
        if rec.ts == self._batch_ts:
            self._batch_len += 1
        else:
            if self._batch_len:
                self.batch.observe(self._batch_len)
            self._batch_ts, self._batch_len = rec.ts, 1
        kind = type(event)
        if kind is ev.TaskStarted:
            task = state.tasks.get(event.task_id)
            if (task is not None and task.attempt == event.attempt and task.started_at == state.clock
                    and task.dispatched_at is not None):
                self.dispatch_latency.observe(max(0.0, state.clock - task.dispatched_at))
        elif kind is ev.TaskDispatched and event.attempt == 1:
            task = state.tasks.get(event.task_id)
            if task is not None and task.dispatched_at == state.clock and task.worker == event.worker_id:
                ready = task.submitted_at
                for dep in task.spec.depends_on:
                    done = state.tasks[dep].finished_at
                    if done is not None and done > ready:
                        ready = done
                self.queue_wait.observe(max(0.0, state.clock - ready))
        elif kind is ev.TaskFinished and not event.returned:
            outcome = "succeeded" if event.exit_code == 0 and not event.reason else "failed"
            self.durations[outcome].observe(max(0.0, event.duration))


def _histogram(name: str, doc: str, hist: Histogram, labels: dict[str, str] | None = None,
               family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    if family is None:
        family = HistogramMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), hist.cumulative(), hist.sum)
    return family


def families(state: State, meters: Meters, head: int) -> Iterator[Any]:
    """Every metric at this moment (call with the state and meters still)."""
    tasks = GaugeMetricFamily("ecloud_tasks", "Tasks per state.", labels=["state"])
    for status in TASK_STATUSES:
        tasks.add_metric([status], state.counts[status])
    yield tasks
    per_status = Counter(w.status for w in state.workers.values())
    workers = GaugeMetricFamily("ecloud_workers", "Workers per state.", labels=["state"])
    for status in WORKER_STATUSES:
        workers.add_metric([status], per_status[status])
    yield workers
    live = [w for w in state.workers.values() if w.status in LIVE]
    slots = GaugeMetricFamily("ecloud_worker_slots", "Slots of live workers.", labels=["kind"])
    slots.add_metric(["total"], sum(w.slots for w in live))
    slots.add_metric(["used"], sum(min(w.used, w.slots) for w in live))
    yield slots
    yield GaugeMetricFamily("ecloud_vms_booting",
                            "VMs requested that no worker has announced itself from yet.",
                            value=len(booting(state)))
    yield GaugeMetricFamily("ecloud_log_head_seq", "The last seq in the log.", value=head)
    yield GaugeMetricFamily("ecloud_folded_seq", "The seq this view's state is at.",
                            value=state.seq)
    yield GaugeMetricFamily("ecloud_replay_lag_events",
                            "Events in the log not folded into this view yet.",
                            value=max(0, head - state.seq))
    events = CounterMetricFamily("ecloud_events", "Events folded, per type.", labels=["type"])
    for tag in sorted(ev.EVENT_TYPES):
        events.add_metric([tag], meters.events[tag])
    yield events
    yield _histogram("ecloud_append_batch_size", "Events per append.", meters.batch)
    yield _histogram("ecloud_dispatch_latency_seconds",
                     "From a dispatch's commit to its start report's.", meters.dispatch_latency)
    yield _histogram("ecloud_queue_wait_seconds",
                     "From a task becoming ready to its first dispatch.", meters.queue_wait)
    family = None
    for outcome, hist in meters.durations.items():
        family = _histogram("ecloud_task_duration_seconds", "Reported attempt durations.",
                            hist, {"outcome": outcome}, family)
    yield family


class LogCollector(Collector):
    """A prometheus-client collector reading a follower at scrape time."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower

    def collect(self) -> Iterator[Any]:
        yield from self.follower.metric_families()
