"""Rebuild the state from a log: newest usable snapshot, then the suffix.

This is the one place that joins a store (I/O) to the fold (pure); the CLI,
``ecloud-replay`` and the boss all start here.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

from ecloud.errors import StoreError
from ecloud.events.types import Recorded
from ecloud.log.store import LogStore, Snapshot
from ecloud.projections import snapshot as snapshots
from ecloud.projections.fold import REDUCER_VERSION, step
from ecloud.projections.state import State

#: called as progress(done, total) every few thousand events
Progress = Callable[[int, int], None]


def load_snapshot_state(store: LogStore, until: int | None = None) -> State | None:
    """The newest snapshot this reducer version wrote at or before ``until``,
    as a state; None when there is none (or it cannot be read: a damaged
    snapshot costs a longer replay, never a wrong state)."""
    snap = store.load_snapshot(REDUCER_VERSION, at_most=until)
    if snap is None:
        return None
    try:
        state = snapshots.load(snap.data)
    except Exception:  # noqa: BLE001 - any damage means: do not trust it
        return None
    if state.seq != snap.seq:
        return None
    return state


def fold_range(
    store: LogStore,
    state: State,
    until: int | None = None,
    progress: Progress | None = None,
    on_step: Callable[[Recorded, list], None] | None = None,
) -> State:
    """Fold the events after ``state.seq`` up to ``until`` (default: head)."""
    end = store.head() if until is None else until
    if end <= state.seq:
        return state
    total = end - state.seq
    done = 0
    for rec in store.read(state.seq + 1, end):
        _, effects = step(state, rec)
        if on_step is not None:
            on_step(rec, effects)
        done += 1
        if progress is not None and done % 5000 == 0:
            progress(done, total)
    if state.seq != end:
        raise StoreError(f"the log ends at seq {state.seq}, expected {end}")
    if progress is not None:
        progress(total, total)
    return state


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Building a big state makes millions of objects that all live on, so
    the cyclic garbage collector runs thousands of times for nothing: about
    half of a restart's time on a 300,000-task log (bench/restart.py). The
    fold makes no reference cycles worth collecting meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_state(
    store: LogStore,
    until: int | None = None,
    *,
    use_snapshot: bool = True,
    progress: Progress | None = None,
) -> State:
    """The state at ``until`` (default: head)."""
    with collector_paused():
        state = load_snapshot_state(store, until) if use_snapshot else None
        return fold_range(store, state or State(), until, progress)


def save_snapshot(store: LogStore, state: State, now: float) -> Snapshot:
    """Write the state as a snapshot for this reducer version."""
    with collector_paused():
        data = snapshots.dump(state)
    snap = Snapshot(state.seq, REDUCER_VERSION, data, now)
    store.save_snapshot(snap)
    return snap
