"""A few numbers of the boss's state, copied every turn for other threads
(the progress bar of ``ecloud run``, its local-worker upkeep, tests): only
the boss's thread touches the state itself."""

from __future__ import annotations

import time
from typing import Any

from ecloud.projections.scheduler import stuck
from ecloud.projections.state import State
from ecloud.views.progress import status_counts

#: seconds: the view's workers and VMs are at most this old
ROSTER_EVERY = 0.25


class BossView:
    def __init__(self) -> None:
        #: the latest copy (replaced whole, never changed in place)
        self.view: dict[str, Any] = {}
        self._roster_at = 0.0  # when the view's workers and VMs were last copied
        self._unallocated = 0  # VMs without an id, as of the roster's copy
        #: the tasks of the owner's run, counted apart (None: none)
        self._watched: list[str] | None = None
        self._run_counts: dict[str, int] | None = None
        self._run_counted_at = 0.0

    def watch(self, task_ids: list[str]) -> None:
        """Count these tasks apart in :attr:`view` (``run_counts``): the
        tasks of the file ``ecloud run`` runs, which the log may hold among
        others. Thread-safe (one assignment)."""
        self._watched = list(task_ids)

    def publish(self, state: State, roster_changed: bool) -> bool:
        """Copy the counts and the head, and the roster when due; True when
        the roster was copied. The roster - every worker and VM with its
        status - costs a walk over all of them (1.6 ms at 10,000 workers,
        which turned a boss holding that many heartbeating workers into one
        busy copying it), so it is copied when a worker or VM came, went or
        changed (``roster_changed``; at most every :data:`ROSTER_EVERY`
        seconds past 1,000 workers), and at least every that many seconds
        otherwise: a worker's idle/busy status there may lag by as much."""
        now = time.monotonic()
        roster = self.view.get("workers"), self.view.get("vms")
        due = now - self._roster_at >= ROSTER_EVERY
        copied = roster[0] is None or due or (roster_changed and len(state.workers) <= 1000)
        if copied:
            roster = ({w: (r.status, sorted(r.running)) for w, r in state.workers.items()},
                      [(vm.vm_id, vm.status) for vm in state.vms.values() if vm.vm_id is not None])
            # VMs asked for that have no id yet (their spawn is on its way)
            self._unallocated = sum(1 for name in state.open_vms
                                    if state.vms[name].vm_id is None)
            self._roster_at = now
        counts = state.counts
        run_counts = self._count_run(state, now, copied)
        # only when nothing runs: then it costs a walk over the ready tasks
        blocked = stuck(state) if not (counts["dispatched"] or counts["running"]) else {}
        self.view = {"seq": state.seq, "counts": dict(counts), "total": len(state.tasks),
                     "workers": roster[0], "vms": roster[1], "stuck": blocked,
                     "run_counts": run_counts,
                     "vms_unallocated": self._unallocated,
                     "vm_failures": [(vm.vm_name, vm.reason) for vm in state.vms.values()
                                     if vm.failed_at is not None] if blocked else []}
        return copied

    def _count_run(self, state: State, now: float, due: bool) -> dict[str, int] | None:
        """The watched tasks' counts per status: the state's own counts when
        they are every task of the log; else a walk over them, as often as
        the roster is copied (a run of 100,000 tasks costs ~10 ms a walk)."""
        watched = self._watched
        if watched is None:
            return None
        if len(watched) == len(state.tasks):
            self._run_counts = dict(state.counts)
        elif due or self._run_counts is None or now - self._run_counted_at >= ROSTER_EVERY:
            self._run_counts = status_counts(state, watched)
            self._run_counted_at = now
        return self._run_counts


__all__ = ["ROSTER_EVERY", "BossView"]
