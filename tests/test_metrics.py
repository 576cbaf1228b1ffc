"""The metrics fold (:class:`ecloud.views.metrics.Meters`) over generated
histories: deterministic, and every family consistent with the state."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from ecloud.events import types as ev
from ecloud.projections.fold import step
from ecloud.projections.state import TASK_STATUSES, State
from ecloud.views.metrics import Meters, families
from tests.support.folding import Driver, driven_logs

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _meter(records) -> tuple[Meters, State]:
    state, meters = State(), Meters()
    for rec in records:
        step(state, rec)
        meters.observe(rec, state)
    return meters, state


def _samples(state: State, meters: Meters, head: int) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families(state, meters, head) for s in family.samples}


@SETTINGS
@given(driven_logs())
def test_the_metrics_fold_is_deterministic_and_agrees_with_the_log(d: Driver) -> None:
    meters, state = _meter(d.log)
    again, _ = _meter(d.log)
    assert _samples(state, meters, len(d.log)) == _samples(state, again, len(d.log))
    samples = _samples(state, meters, len(d.log))
    assert sum(meters.events.values()) == len(d.log)
    for status in TASK_STATUSES:
        assert samples[("ecloud_tasks", (("state", status),))] == state.counts[status]
    runs = sum(1 for i, rec in enumerate(d.log) if i == 0 or rec.ts != d.log[i - 1].ts)
    assert meters.batch.count == runs - 1  # the last batch may still grow
    last = next((i for i in range(len(d.log) - 1, 0, -1) if d.log[i].ts != d.log[i - 1].ts), 0)
    assert meters.batch.sum == last  # every event before the last batch, counted once
    starts = sum(1 for r in d.log if isinstance(r.event, ev.TaskStarted))
    assert meters.dispatch_latency.count <= starts
    finishes = sum(1 for r in d.log if isinstance(r.event, ev.TaskFinished) and not r.event.returned)
    assert sum(h.count for h in meters.durations.values()) == finishes
    for hist in (meters.batch, meters.dispatch_latency, meters.queue_wait, *meters.durations.values()):
        cumulative = [n for _, n in hist.cumulative()]
        assert cumulative == sorted(cumulative) and cumulative[-1] == hist.count
