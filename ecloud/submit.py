"""Appending operator commands safely: validate against the state at head N,
append with ``expected_head=N``, and start over if another writer got in
between. A busy boss commits many times a second, so a big push may lose
that race every time; after :data:`ATTEMPTS` tries the command is judged and
appended under the log's write lock instead (the boss waits for it). Nothing
is written unless everything is valid."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ecloud.errors import ConcurrencyError, UserError, ValidationError
from ecloud.events.store import LogStore
from ecloud.events.types import TaskSpec, TasksSubmitted
from ecloud.projections.state import State
from ecloud.projections.tasks import dependency_order
from ecloud.rebuild import fold_range, load_state

#: Tasks per ``tasks.submitted`` event. A large file becomes several events in
#: one transaction: each row stays well under MariaDB's packet limit.
CHUNK = 5000
ATTEMPTS = 3  # optimistic tries before taking the write lock


def dependency_first(specs: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The specs reordered so every in-batch dependency comes first (stable:
    a file already in that order is unchanged)."""
    order = dependency_order(specs)
    if len(order) != len(specs):
        raise UserError("the tasks' dependencies form a cycle")
    return [spec for _, spec in order]


def append_checked(
    store: LogStore,
    build: Callable[[State], list[Any]],
    state: State | None = None,
) -> tuple[State, list[int]]:
    """Append the events ``build(state)`` returns for the current state, with
    optimistic concurrency. ``build`` raises (e.g. :class:`ValidationError`)
    to refuse; then nothing is written."""
    state = state if state is not None else load_state(store)
    for _ in range(ATTEMPTS):
        events = build(state)
        try:
            return state, store.append(events, expected_head=state.seq)
        except ConcurrencyError:
            state = fold_range(store, state)  # catch up and judge again
    judged = state

    def under_lock(head: int) -> list[Any]:
        nonlocal judged
        judged = fold_range(store, judged, until=head)
        return build(judged)

    return judged, store.append_built(under_lock)


def submit_tasks(
    store: LogStore,
    specs: Sequence[TaskSpec],
    source: str,
    validate: Callable[[State], None] | None = None,
    state: State | None = None,
) -> tuple[State, list[int]]:
    """Append ``specs`` as one all-or-nothing submission (one or more
    ``tasks.submitted`` events in one transaction). ``validate(state)`` is
    called against the state the append is checked against."""
    ordered = dependency_first(specs)
    batch = uuid.uuid4().hex[:12]

    def build(current: State) -> list[Any]:
        clash = [s.id for s in ordered if s.id in current.tasks]
        if validate is not None:
            validate(current)
        elif clash:
            raise ValidationError([f"task {i!r} already exists in the log" for i in clash], source)
        chunks = [ordered[i : i + CHUNK] for i in range(0, len(ordered), CHUNK)]
        return [
            TasksSubmitted(batch if len(chunks) == 1 else f"{batch}.{n}", tuple(chunk), source)
            for n, chunk in enumerate(chunks)
        ]

    return append_checked(store, build, state)
