"""Effects a restarted boss must issue again, read off the state.

Every effect is idempotent by its key (docs/design.md, "Effects and idempotency"), so issuing one
that had in fact been performed before the crash does no harm; issuing none
for one that had not would lose it. The state says which are still open:

- a task ``dispatched`` but never reported started: send the dispatch again;
- an attempt a live worker still holds although the task moved on
  (cancelled, timed out, superseded): tell the worker to kill it;
- a VM requested but never allocated: spawn it (the name finds an earlier one);
- a VM asked to die that was not seen gone: kill it.
"""

from __future__ import annotations

from ecloud.projections.effects import CancelAttempt, KillVM, SpawnVM
from ecloud.projections.state import DISPATCHED, LIVE, State
from ecloud.projections.tasks import dispatch_effect
from ecloud.projections.vms import worker_context


def outstanding(state: State) -> list:
    seq = state.seq
    effects: list = []
    for task in state.tasks.values():
        if task.status == DISPATCHED and task.worker is not None:
            effects.append(dispatch_effect(state, seq, task, task.worker))
    for wid in sorted(state.workers):
        worker = state.workers[wid]
        if worker.status not in LIVE:
            continue
        for task_id, attempt in sorted(worker.running):
            if state.current_attempt(task_id, attempt, wid) is None:
                effects.append(CancelAttempt(seq, task_id, attempt, wid, "no longer wanted"))
    for name in sorted(state.vms):
        vm = state.vms[name]
        if vm.status == "requested":
            effects.append(SpawnVM(seq, name, worker_context(state)))
        elif vm.status == "killing" and vm.vm_id is not None:
            effects.append(KillVM(seq, vm.vm_id, vm.reason or "kill requested"))
    return effects
