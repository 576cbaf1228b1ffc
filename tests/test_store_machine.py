"""SQLite, MariaDB and memory stores driven by the same random operations must agree.

The memory store is the naive model; a hypothesis state machine applies each
append (with and without ``expected_head``, good and unencodable batches),
read and snapshot operation to all three and checks after every step that
they answered alike and hold the same log. The MariaDB database is created
once for the test function; each example starts from emptied stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ecloud.events.types import (
    ContextSet,
    TaskCancelled,
    TaskDispatched,
    TaskFinished,
    Tick,
    WorkerHeartbeat,
)
from ecloud.log.memory_store import MemoryStore
from ecloud.log.store import LogStore, Snapshot
from ecloud.log.url import open_store_url
from tests.support.storetools import index_columns, wipe

TAGS = ["worker.heartbeat", "task.cancelled", "task.dispatched", "task.finished", "context.set", "tick"]

ids = st.one_of(st.text(max_size=12), st.text(min_size=250, max_size=260, alphabet="ab✓"))
texts = st.text(max_size=30)
events = st.one_of(
    st.builds(WorkerHeartbeat, worker_id=ids, msg_id=texts),
    st.builds(TaskCancelled, task_id=ids, reason=texts),
    st.builds(TaskDispatched, task_id=ids, attempt=st.integers(0, 2**40), worker_id=ids),
    st.builds(
        TaskFinished,
        task_id=ids,
        attempt=st.integers(0, 10),
        worker_id=ids,
        exit_code=st.none() | st.integers(-(2**31), 2**31 - 1),
        duration=st.floats(allow_nan=False, allow_infinity=False),
    ),
    st.builds(ContextSet, key=texts, value=texts),
    st.just(Tick()),
)
timestamps = st.floats(allow_nan=False, allow_infinity=False)


def outcome(fn: Callable[[], Any]) -> tuple:
    """What an operation did: its result, or the kind of error it raised."""
    try:
        return ("ok", fn())
    except Exception as exc:  # compared across backends, messages differ by URL
        return ("error", type(exc).__name__)


class StoresAgree(RuleBasedStateMachine):
    stores: ClassVar[dict[str, LogStore]] = {}

    @initialize()
    def start_empty(self) -> None:
        for s in self.stores.values():
            wipe(s)
        self.saved = 0

    def each(self, op: Callable[[LogStore], Any]) -> Any:
        results = {name: outcome(lambda s=s: op(s)) for name, s in self.stores.items()}
        model = results["memory"]
        for name, result in results.items():
            assert result == model, f"{name} answered {result!r}, memory answered {model!r}"
        return model

    @property
    def head(self) -> int:
        return self.stores["memory"].head()

    @rule(
        batch=st.lists(events, max_size=12),
        ts=timestamps,
        offset=st.none() | st.integers(-2, 2),
    )
    def append(self, batch: list, ts: float, offset: int | None) -> None:
        expected = None if offset is None else max(0, self.head + offset)
        self.each(lambda s: s.append(batch, ts=ts, expected_head=expected))

    @rule(batch=st.lists(events, max_size=5), bad_at=st.integers(0, 5),
          bad=st.sampled_from(["object", "field"]))
    def append_unencodable(self, batch: list, bad_at: int, bad: str) -> None:
        poison: Any = object() if bad == "object" else WorkerHeartbeat(worker_id=object())  # type: ignore[arg-type]
        batch = batch[:bad_at] + [poison] + batch[bad_at:]
        before = self.head
        assert self.each(lambda s: s.append(batch, ts=1.0)) == ("error", "CodecError")
        assert self.head == before

    @rule(
        start=st.integers(-1, 60),
        length=st.none() | st.integers(-1, 60),
        types=st.none() | st.lists(st.sampled_from(TAGS), max_size=3),
    )
    def read(self, start: int, length: int | None, types: list[str] | None) -> None:
        end = None if length is None else start + length
        self.each(lambda s: list(s.read(start, end, types=types)))
        self.each(lambda s: list(s.read_raw(start, end)))

    @rule()
    def index_columns_agree(self) -> None:
        self.each(index_columns)

    @rule(
        reducer=st.sampled_from(["r1", "r2"]),
        back=st.integers(-1, 8),
        data=st.binary(max_size=300),
    )
    def save_snapshot(self, reducer: str, back: int, data: bytes) -> None:
        self.saved += 1
        snap = Snapshot(max(0, self.head - back), reducer, data, float(self.saved))
        self.each(lambda s: s.save_snapshot(snap))  # back == -1 is beyond the head: an error

    @rule(reducer=st.sampled_from(["r1", "r2", "r3"]), at_most=st.none() | st.integers(0, 60))
    def load_snapshot(self, reducer: str, at_most: int | None) -> None:
        self.each(lambda s: s.load_snapshot(reducer, at_most))

    @invariant()
    def same_head(self) -> None:
        self.each(lambda s: s.head())


@pytest.mark.mysql
def test_sqlite_mysql_and_memory_stores_agree(sqlite_url: str, mysql_url: str) -> None:
    stores: dict[str, LogStore] = {
        "memory": MemoryStore(),
        "sqlite": open_store_url(sqlite_url),
        "mysql": open_store_url(mysql_url),
    }
    for s in stores.values():
        s.page_size = 7  # type: ignore[attr-defined]  # reads cross page boundaries
    StoresAgree.stores = stores
    try:
        run_state_machine_as_test(
            StoresAgree,
            settings=settings(
                max_examples=60,
                stateful_step_count=20,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        StoresAgree.stores = {}
        for s in stores.values():
            s.close()
