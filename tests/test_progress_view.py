"""The run's progress arithmetic (ecloud/views/progress.py) and the task
filters of ``ecloud tasks`` (ecloud/views/task_list.py), on made-up times and
folded states."""

from __future__ import annotations

import pytest

from ecloud.cli.tasks import parse_since
from ecloud.errors import UserError
from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.views import task_list
from ecloud.views.progress import (
    LINE_EVERY,
    QUIET_LINE_EVERY,
    LinePolicy,
    Rate,
    Tally,
    clock,
    line,
    tally,
)
from tests.support.folding import Driver


def test_the_rate_is_taken_over_the_recent_window_not_since_a_fixed_minimum() -> None:
    """16 s into a run at 4.5 tasks/s the rate is 4.5 (it once divided by at
    least 60 s and said 1.12), and it follows a change of pace within the
    window."""
    rate = Rate(window=30.0)
    for second in range(17):
        rate.add(float(second), int(4.5 * second))
    assert rate.per_second() == pytest.approx(4.5, rel=0.05)
    assert rate.eta(45) == pytest.approx(10.0, rel=0.05)
    for second in range(17, 80):  # then it slows to 1 task/s
        rate.add(float(second), 72 + (second - 16))
    assert rate.per_second() == pytest.approx(1.0, rel=0.05)


def test_no_rate_before_a_second_of_samples_and_no_eta_without_progress() -> None:
    rate = Rate()
    rate.add(0.0, 0)
    rate.add(0.5, 3)
    assert rate.per_second() is None and rate.eta(10) is None
    rate.add(5.0, 3)
    rate.add(10.0, 3)
    assert rate.eta(0) == 0.0
    rate2 = Rate()
    rate2.add(0.0, 0)
    rate2.add(10.0, 0)
    assert rate2.per_second() == 0.0 and rate2.eta(5) is None


def test_counts_mean_what_they_say() -> None:
    t = tally({"succeeded": 28, "failed": 13, "blocked": 11, "running": 4, "dispatched": 8,
               "ready": 7, "waiting": 2, "cancelled": 0}, 73)
    assert (t.done, t.failed, t.blocked, t.running, t.queued) == (52, 13, 11, 4, 15)
    text = line(t, 16.0, Rate())
    assert text.startswith("[0:16] 52 of 73 tasks done (71%): 28 succeeded, 13 failed, "
                           "11 blocked · 4 running · 15 queued · 2 waiting")
    assert clock(3725) == "1:02:05" and clock(None) == "?"


def test_plain_lines_come_on_news_at_once_and_otherwise_every_few_seconds() -> None:
    policy = LinePolicy()
    start = Tally(total=10, waiting=10)
    assert policy.due(0.0, start)  # the first look
    assert not policy.due(1.0, Tally(total=10, succeeded=1, queued=9))
    assert policy.due(LINE_EVERY, Tally(total=10, succeeded=2, queued=8))
    failed = Tally(total=10, succeeded=2, failed=1, queued=7)
    assert policy.due(LINE_EVERY + 1.5, failed)  # a failure is news
    assert not policy.due(LINE_EVERY + 2.0, failed)
    assert not policy.due(LINE_EVERY + 1.5 + QUIET_LINE_EVERY - 1, failed)
    assert policy.due(LINE_EVERY + 1.5 + QUIET_LINE_EVERY, failed)  # still alive
    assert policy.due(LINE_EVERY + 1.5 + QUIET_LINE_EVERY + 0.1,
                      Tally(total=10, succeeded=9, failed=1))  # the end, at once


def folded() -> Driver:
    d = Driver(start=1000.0)
    d.apply(ev.TasksSubmitted("b", tuple(TaskSpec(f"sim-{i:03d}", "true", retries=0) for i in range(6))
                              + (TaskSpec("post", "true", ("sim-000",)),)))
    d.apply(ev.WorkerAnnounced("w1", "h", 1, 1, "i1"))
    d.apply(ev.WorkerAnnounced("w2", "h", 1, 1, "i2"))
    d.schedule()  # sim-000 -> w1, sim-001 -> w2
    d.apply(ev.TaskFinished("sim-000", 1, "w1", 0, duration=2.0), dt=5)
    d.apply(ev.TaskFinished("sim-001", 1, "w2", 4, duration=1.0), dt=10)
    return d


def test_the_filters_pick_by_state_name_worker_and_time() -> None:
    d = folded()
    state = d.state
    ids = lambda tasks: [t.spec.id for t in tasks]  # noqa: E731
    assert ids(task_list.select(state, states=("failed",))) == ["sim-001"]
    assert ids(task_list.select(state, states=("succeeded", "failed"))) == ["sim-000", "sim-001"]
    assert ids(task_list.select(state, name="sim-00[4-9]")) == ["sim-004", "sim-005"]
    assert ids(task_list.select(state, name="post")) == ["post"]
    assert ids(task_list.select(state, worker="w2")) == ["sim-001"]
    assert ids(task_list.select(state, since=1010.0)) == ["sim-001"]
    assert len(task_list.select(state)) == 7
    assert ids(task_list.select(state, among=["post", "nope"])) == ["post"]
    row = task_list.row(state, state.tasks["sim-001"])
    assert (row["state"], row["worker"], row["exit_code"], row["reason"]) == (
        "failed", "w2", 4, "exit code 4")


def test_since_takes_how_long_ago_or_a_time_and_refuses_anything_else() -> None:
    assert parse_since("90s", 1000.0) == 910.0
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200
    assert parse_since("1d", 100_000.0) == 100_000.0 - 86_400
    assert parse_since("2026-11-26T14:05:00", 0.0) == 1795701900.0
    with pytest.raises(UserError, match="how long ago"):
        parse_since("yesterday", 0.0)


def test_since_refuses_what_cannot_be_meant() -> None:
    for text in ("nan", "-inf", "1e400", "2026", "0"):
        with pytest.raises(UserError, match="not a time"):
            parse_since(text, 1_800_000_000.0)
