"""``ecloud-replay --verify``: prove the log folds the same way every way.

Three folds of the same log run side by side, one event at a time:

- **full**: a replay from an empty state;
- **again**: a second replay from empty, taken in chunks with a snapshot
  round trip (dump, load) between chunks, the way a boss that snapshots and
  restarts sees the log - this checks determinism and snapshot fidelity;
- **snapshot**: the newest stored snapshot plus the suffix after it (when
  there is one), the path a restarting boss actually takes.

After every event the effects of the three must be equal; at the snapshot's
seq and at the end their whole states must be equal. On a difference, the
first divergent seq is named (for a state difference found only at the end,
by bisection with re-folds).
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field

from ecloud.log.rebuild import Progress, fold_range, load_snapshot_state
from ecloud.log.store import LogStore
from ecloud.projections import snapshot as snapshots
from ecloud.projections.fold import step
from ecloud.projections.snapshot import canonical
from ecloud.projections.state import State

CHUNK = 10_000


@define
class Report:
    until: int
    checks: list[tuple[str, bool, str]] = field(factory=list)
    divergent_seq: int | None = None

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def fail(self, name: str, seq: int, detail: str) -> None:
        self.checks.append((name, False, detail))
        if self.divergent_seq is None or seq < self.divergent_seq:
            self.divergent_seq = seq


def first_difference(a: dict, b: dict) -> str:
    """Name the first place two canonical states differ."""
    for key in a:
        if a[key] != b.get(key):
            if isinstance(a[key], list) and isinstance(b.get(key), list):
                for i, (x, y) in enumerate(zip(a[key], b[key], strict=False)):
                    if x != y:
                        name = x.get("spec", {}).get("id") or x.get("worker_id") if isinstance(x, dict) else i
                        return f"{key}[{i}] ({name})"
                return f"{key}: {len(a[key])} vs {len(b[key])} entries"
            return f"{key}: {a[key]!r} vs {b.get(key)!r}"
    return "?"


def _chunked_state(store: LogStore, until: int) -> State:
    """The 'again' fold up to ``until``: chunks with snapshot round trips."""
    state = State()
    while state.seq < until:
        state = fold_range(store, state, min(state.seq + CHUNK, until))
        state = snapshots.load(snapshots.dump(state))
    return state


def _bisect(lo: int, hi: int, differs: Callable[[int], bool]) -> int:
    """Smallest seq in (lo, hi] whose states differ, given they agree at lo."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if differs(mid):
            hi = mid
        else:
            lo = mid
    return hi


def verify(store: LogStore, until: int | None = None, progress: Progress | None = None) -> Report:
    end = store.head() if until is None else min(until, store.head())
    report = Report(end)
    full, again = State(), State()
    snap = load_snapshot_state(store, end)
    snap_seq = snap.seq if snap is not None else None
    broken: set[str] = set()
    done = 0
    for rec in store.read(1, end):
        _, fx_full = step(full, rec)
        if "again" not in broken:
            _, fx_again = step(again, rec)
            if fx_again != fx_full:
                broken.add("again")
                report.fail("determinism", rec.seq, f"seq {rec.seq}: two replays emit different effects")
            elif rec.seq % CHUNK == 0:
                again = snapshots.load(snapshots.dump(again))
        if snap is not None and "snapshot" not in broken:
            if rec.seq == snap_seq:
                a, b = canonical(full), canonical(snap)
                if a != b:
                    broken.add("snapshot")
                    report.fail("snapshot", rec.seq,
                                f"stored snapshot at seq {rec.seq} disagrees with full replay: "
                                f"{first_difference(a, b)}")
            elif rec.seq > snap_seq:
                _, fx_snap = step(snap, rec)
                if fx_snap != fx_full:
                    broken.add("snapshot")
                    report.fail("snapshot", rec.seq,
                                f"seq {rec.seq}: snapshot plus suffix emits different effects")
        done += 1
        if progress is not None and done % 5000 == 0:
            progress(done, end)
    if full.seq != end:
        report.fail("full replay", full.seq + 1, f"the log ends at seq {full.seq}, expected {end}")
        return report
    final = canonical(full)
    if "again" not in broken:
        other = canonical(again)
        if other != final:
            where = _bisect(0, end, lambda m: canonical(_chunked_state(store, m))
                            != canonical(fold_range(store, State(), m)))
            report.fail("determinism", where,
                        f"replays disagree from seq {where}: {first_difference(final, other)}")
        else:
            report.checks.append(("determinism", True,
                                  f"two replays agree on every effect and the state at seq {end}"))
    if snap is None:
        report.checks.append(("snapshot", True, "no stored snapshot to check (full replay only)"))
    elif "snapshot" not in broken:
        other = canonical(snap)
        if other != final:
            base = snap_seq or 0

            def differs(m: int) -> bool:
                restored = load_snapshot_state(store, end)
                assert restored is not None
                return canonical(fold_range(store, restored, m)) != canonical(fold_range(store, State(), m))

            where = _bisect(base, end, differs)
            report.fail("snapshot", where,
                        f"snapshot at seq {base} plus suffix disagrees from seq {where}: "
                        f"{first_difference(final, other)}")
        else:
            report.checks.append(("snapshot", True,
                                  f"snapshot at seq {snap_seq} plus suffix equals full replay"))
    report.checks.insert(0, ("full replay", True, f"{end} events folded"))
    return report
