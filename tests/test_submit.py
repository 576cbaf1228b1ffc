"""Pushing into a log that keeps moving (a busy boss commits many times a
second): the optimistic appends lose every race, and the push is then judged
and appended under the log's write lock - it never gives up."""

from __future__ import annotations

import pytest

from ecloud.errors import ValidationError
from ecloud.events.types import TaskSpec, WorkerHeartbeat
from ecloud.log.rebuild import load_state
from ecloud.log.store import LogStore
from ecloud.log.url import open_store_url
from ecloud.taskfiles.submit import ATTEMPTS, submit_tasks


def test_a_push_that_loses_every_optimistic_race_is_appended_under_the_lock(
        durable_url: str) -> None:
    with open_store_url(durable_url) as store, open_store_url(durable_url) as boss:
        calls = []

        def validate(state) -> None:
            calls.append(state.seq)
            if len(calls) <= ATTEMPTS:  # another writer gets in before each optimistic append
                boss.append([WorkerHeartbeat("w")])

        specs = [TaskSpec(f"t{i}", "true") for i in range(3)]
        state, seqs = submit_tasks(store, specs, "test", validate=validate)
        assert len(calls) == ATTEMPTS + 1  # the last judgement was made under the lock
        assert calls[-1] == ATTEMPTS  # ... on the log with every interfering event
        assert seqs == [ATTEMPTS + 1]
        assert set(load_state(store).tasks) == {"t0", "t1", "t2"}


def test_a_push_judged_invalid_under_the_lock_appends_nothing(durable_url: str) -> None:
    with open_store_url(durable_url) as store, open_store_url(durable_url) as other:
        calls = []

        def validate(state) -> None:
            calls.append(state.seq)
            if len(calls) <= ATTEMPTS:
                other.append([WorkerHeartbeat("w")])
            else:
                raise ValidationError(["t0: refused under the lock"], "test")

        with pytest.raises(ValidationError):
            submit_tasks(store, [TaskSpec("t0", "true")], "test", validate=validate)
        assert store.head() == ATTEMPTS
        assert other.append([WorkerHeartbeat("w")]) == [ATTEMPTS + 1]  # the lock was let go


def test_memory_store_too(store: LogStore) -> None:
    calls = []

    def validate(state) -> None:
        calls.append(state.seq)
        if len(calls) <= ATTEMPTS:
            store.append([WorkerHeartbeat("w")])

    _, seqs = submit_tasks(store, [TaskSpec("a", "true")], "test", validate=validate)
    assert seqs == [ATTEMPTS + 1]
