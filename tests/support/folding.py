"""Test helpers for the fold: a driver that appends events with consecutive
seqs and a controllable clock, an invariant checker, and a hypothesis
strategy that generates realistic (and deliberately unruly) event logs."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from ecloud.events import types as ev
from ecloud.events.types import AbortOn, InputSpec, NodeSpec, Recorded, TaskSpec, WorkflowLimits
from ecloud.projections import context
from ecloud.projections.autoscale import autoscale
from ecloud.projections.fold import FOLD_SOURCE, step
from ecloud.projections.liveness import losses
from ecloud.projections.reconcile import reconcile
from ecloud.projections.scheduler import schedule
from ecloud.projections.state import (
    ACTIVE,
    ATTEMPT_NONE,
    ATTEMPT_SUCCEEDED,
    BLOCKED,
    BLOCKING,
    DRAINING,
    FINAL,
    LIVE,
    READY,
    SUCCEEDED,
    TASK_STATUSES,
    VM_FAILED,
    VM_GONE,
    VM_KILLING,
    VM_REQUESTED,
    WAITING,
    State,
)


class Driver:
    """Appends events to an in-memory log and folds them one by one."""

    def __init__(self, start: float = 1000.0) -> None:
        self.state = State()
        self.log: list[Recorded] = []
        self.effects: list[tuple[int, object]] = []
        self.now = start

    def apply(self, event, dt: float = 0.0) -> list:
        self.now += dt
        rec = Recorded(len(self.log) + 1, self.now, event)
        self.log.append(rec)
        _, out = step(self.state, rec)
        last = self.state.rejected[-1] if self.state.rejected else None
        assert last is None or last.seq != rec.seq or last.source != FOLD_SOURCE, (
            f"a reducer raised on {event!r}: {last.reason}")
        self.effects.extend((rec.seq, e) for e in out)
        return out

    def schedule(self) -> list:
        out = []
        for decision in schedule(self.state):
            out.extend(self.apply(decision))
        return out

    def losses(self) -> list:
        """The boss's loss decisions (rules 2), appended and folded."""
        out = []
        for decision in losses(self.state):
            out.extend(self.apply(decision))
        return out

    def autoscale(self, prefix: str = "vm-") -> list:
        """The autoscaler's decisions, then the reconciler's, each appended
        and folded (as the boss does)."""
        out = []
        for decision in autoscale(self.state, prefix):
            out.extend(self.apply(decision))
        for decision in reconcile(self.state):
            out.extend(self.apply(decision))
        return out

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return "Driver(log=[\n" + "".join(f"  {r.seq} @{r.ts:g}: {r.event!r},\n" for r in self.log) + "])"

    def statuses(self) -> dict[str, str]:
        return {tid: t.status for tid, t in self.state.tasks.items()}


def check_invariants(state: State) -> None:
    """Every structural promise the state makes, checked the slow way."""
    tasks = state.tasks
    counts = dict.fromkeys(TASK_STATUSES, 0)
    for task in tasks.values():
        counts[task.status] += 1
    assert counts == state.counts, (counts, state.counts)
    eligible = sorted(t.ready_key for t in tasks.values() if t.status == READY and t.not_before is None)
    assert list(state.ready) == eligible
    for tid, task in tasks.items():
        deps = [tasks[d] for d in task.spec.depends_on]
        node = task.spec.node
        done, final = node is not None and node.done, node is not None and node.final
        assert task.unmet == sum(1 for d in deps if d.status != SUCCEEDED), tid
        blocking = any(d.status in BLOCKING for d in deps)
        if node is not None and node.noop:  # settled within the event that made it ready
            assert task.status != READY, tid
        if final and task.status == WAITING:  # waits exactly while its workflow is open
            workflow = state.workflow_of(task)
            assert workflow is not None and workflow.open > 0, tid
        if final and task.status in (SUCCEEDED, "failed"):  # ran last: nothing is open
            workflow = state.workflow_of(task)
            assert workflow is not None and workflow.open == 0, tid
        if task.status not in FINAL:
            # blocked exactly when a dependency failed, was cancelled or is blocked
            assert (task.status == BLOCKED) == blocking, (tid, task.status, blocking)
        if task.status in (READY, *ACTIVE):
            assert task.unmet == 0, tid
        if task.status == WAITING and not final:
            assert task.unmet > 0, tid
        if task.status in ACTIVE:
            worker = state.workers[task.worker]
            assert worker.status in LIVE
            assert (tid, task.attempt) in worker.running, tid
        if task.status == SUCCEEDED and not done:
            assert all(d.status == SUCCEEDED for d in deps), tid
        # the attempt table and the task's agree: a dispatched or running task
        # has its latest attempt in the same status, and any other task's has
        # ended (or never began); a succeeded task's attempt succeeded
        if task.attempt == 0:
            assert task.attempt_status == ATTEMPT_NONE, tid
        elif task.status in ACTIVE:
            assert task.attempt_status == task.status, (tid, task.attempt_status)
        else:
            assert task.attempt_status not in (ATTEMPT_NONE, *ACTIVE), (tid, task.attempt_status)
        if task.status == SUCCEEDED and task.attempt:
            assert task.attempt_status == ATTEMPT_SUCCEEDED, (tid, task.attempt_status)
    check_workflows(state)
    free = []
    for wid, worker in state.workers.items():
        assert worker.used == sum(worker.running.values()), wid
        # (a worker may hold more than slots + ahead: what it queued while it
        # was quick stays when it stops being quick or queue_ahead shrinks)
        assert worker.used >= 0, wid
        # queueing ahead is for quick workers only, as many per slot as the context says
        assert worker.ahead == (context.queue_ahead(state) * worker.slots if worker.quick else 0), wid
        if worker.status not in LIVE:
            assert not worker.running, wid
        if worker.status in ("idle", "busy") and worker.used < worker.slots + worker.ahead:
            free.append((worker.rank, wid))
        if worker.status == "idle":
            assert worker.used == 0, wid
        assert (worker.idle_since is None) == (worker.used > 0), wid
        if worker.vm_id is not None:
            assert wid in state.vm_workers[worker.vm_id], wid
    assert list(state.free) == sorted(free)
    # liveness: under rules 2 the overdue workers are exactly the live ones
    # silent past their deadline (under rules 1 the fold loses those itself)
    timeout = context.heartbeat_timeout(state)
    silent = {wid for wid, w in state.workers.items()
              if w.status in LIVE and min(w.last_seen + timeout,
                                          w.will_at + timeout / 3 if w.will_at is not None
                                          else float("inf")) <= state.clock}
    if state.rules >= 2:
        assert set(state.overdue) == silent, (set(state.overdue), silent)
    else:
        assert not state.overdue
    # VMs: the lookups agree with the records; a VM on its way out gives no work
    ids = {vm.vm_id: name for name, vm in state.vms.items() if vm.vm_id is not None}
    assert len(ids) == sum(1 for vm in state.vms.values() if vm.vm_id is not None)
    assert state.vm_ids == ids
    open_vms = {name for name, vm in state.vms.items()
                if vm.status != VM_GONE
                and not (vm.status == VM_FAILED and vm.vm_id is None and not vm.uncertain)}
    assert set(state.open_vms) == open_vms
    for vm in state.vms.values():
        if vm.status in (VM_KILLING, VM_FAILED) and vm.vm_id is not None:
            for worker in state.workers_on(vm.vm_id):
                assert worker.status == DRAINING, (vm.vm_name, worker.worker_id)


def check_workflows(state: State) -> None:
    """Each workflow's counters are what its tasks' statuses say."""
    from ecloud.projections.state import ACTIVE as RUNNING_NOW
    from ecloud.projections.state import ENDED

    for source, workflow in state.workflows.items():
        mine = [t for t in state.tasks.values()
                if state.batch_sources.get(t.batch_seq, "") == source]
        assert workflow.open == sum(1 for t in mine if t.status not in ENDED
                                    and t.spec.id != workflow.final), source
        assert workflow.active == sum(1 for t in mine if t.status in RUNNING_NOW), source
        assert workflow.failed == sum(1 for t in mine if t.status == "failed"), source
        per: dict[str, int] = {}
        for t in mine:
            if t.status in RUNNING_NOW and t.spec.node is not None and t.spec.node.category:
                per[t.spec.node.category] = per.get(t.spec.node.category, 0) + 1
        assert {c: n for c, n in workflow.active_in.items() if n} == per, source


# ----------------------------------------------------------------- strategies

WORKERS = ["w0", "w1", "w2"]


def _pick(draw, items):
    items = sorted(items)
    if not items:
        return None
    return items[draw(st.integers(0, len(items) - 1))]


@st.composite
def node_spec(draw, final_allowed: bool) -> NodeSpec | None:
    """Workflow roles now and then: noop, done, final, a category, abort_on,
    retry_unless_exit (most tasks have none)."""
    if draw(st.integers(0, 2)) > 0:
        return None
    role = draw(st.sampled_from(["noop", "done", "final" if final_allowed else "noop", "plain"]))
    return NodeSpec(
        noop=role == "noop", done=role == "done", final=role == "final",
        category=draw(st.sampled_from([None, "c", "d"])),
        abort_on=draw(st.sampled_from([None, None, AbortOn(1, 7)])),
        retry_unless_exit=draw(st.sampled_from([None, 1])),
    )


def _is_final(spec: TaskSpec) -> bool:
    return spec.node is not None and spec.node.final


@st.composite
def task_batch(draw, first: int, existing: list[str], max_tasks: int = 8,
               finals: frozenset = frozenset()) -> list[TaskSpec]:
    """A batch of tasks depending on earlier ones (never on a final task);
    at most one final task, with no dependencies."""
    n = draw(st.integers(1, max_tasks))
    specs: list[TaskSpec] = []
    has_final = False
    for i in range(n):
        pool = [t for t in existing if t not in finals] + [s.id for s in specs if not _is_final(s)]
        node = node_spec(not has_final)
        node = draw(node)
        has_final = has_final or (node is not None and node.final)
        deps = (draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))
                if pool and not (node is not None and node.final) else [])
        specs.append(
            TaskSpec(
                id=f"t{first + i}",
                command="true",
                depends_on=tuple(deps),
                retries=draw(st.integers(0, 2)),
                retry_backoff=draw(st.sampled_from([0.0, 5.0, 20.0])),
                timeout=draw(st.sampled_from([None, None, 50.0])),
                priority=draw(st.integers(0, 2)),
                slots=draw(st.sampled_from([1, 1, 1, 2])),
                inputs=tuple(InputSpec("o", from_task=d) for d in deps if draw(st.booleans())),
                results=draw(st.sampled_from([None, None, f"out/{first + i}"])),
                node=node,
            )
        )
    if draw(st.booleans()):
        specs.reverse()  # dependencies listed after their dependants
    return specs


def _act(draw, d: Driver, action: str) -> None:
    state = d.state
    tasks = state.tasks
    if action == "submit":
        source = draw(st.sampled_from(["", "a.json", "b.json"]))
        finals = frozenset(t for t, r in tasks.items() if _is_final(r.spec))
        specs = draw(task_batch(len(tasks), sorted(tasks), finals=finals))
        limits = draw(st.sampled_from([None, None, WorkflowLimits(2, {"c": 1}),
                                       WorkflowLimits(None, {"d": 1})]))
        d.apply(ev.TasksSubmitted(f"b{len(d.log)}", tuple(specs), source, limits))
    elif action == "bad_submit" and tasks:
        dup = _pick(draw, tasks)
        d.apply(ev.TasksSubmitted("bad", (TaskSpec(dup, "true"),)))
    elif action == "announce":
        d.apply(
            ev.WorkerAnnounced(
                draw(st.sampled_from(WORKERS)),
                "host",
                draw(st.integers(1, 3)),
                draw(st.sampled_from([1, 1, 1, 2])),
                draw(st.sampled_from(["i0", "i1"])),
                draw(st.sampled_from([None, 1, 2])),
                # sometimes the attempts it says it holds (after a loss: taken back or stopped)
                running=tuple(sorted({(t, max(1, tasks[t].attempt - draw(st.integers(0, 1))))
                                      for t in draw(st.lists(st.sampled_from(sorted(tasks)),
                                                             max_size=2))}))
                if tasks and draw(st.integers(0, 3)) == 0 else (),
            )
        )
    elif action == "heartbeat":
        # mostly the worker's own incarnation; sometimes none (an old agent),
        # sometimes another agent's under the same id (it must change nothing)
        wid = draw(st.sampled_from(WORKERS))
        worker = d.state.workers.get(wid)
        own = worker.incarnation if worker is not None else "i0"
        d.apply(ev.WorkerHeartbeat(wid, incarnation=draw(st.sampled_from([own, own, "", "x9"]))),
                dt=1)
    elif action == "schedule":
        d.schedule()
    elif action == "bogus_dispatch" and tasks:
        tid = _pick(draw, tasks)
        d.apply(ev.TaskDispatched(tid, draw(st.integers(1, 3)), draw(st.sampled_from(WORKERS))))
    elif action in ("start", "finish"):
        active = [tid for tid, t in tasks.items() if t.status in ACTIVE]
        if active and draw(st.integers(0, 4)) > 0:
            task = tasks[_pick(draw, active)]
            tid, attempt, worker = task.spec.id, task.attempt, task.worker
        elif tasks:  # a report that may well be stale
            tid = _pick(draw, tasks)
            attempt, worker = draw(st.integers(1, 3)), draw(st.sampled_from(WORKERS))
        else:
            return
        if action == "start":
            d.apply(ev.TaskStarted(tid, attempt, worker, msg_id=f"m{len(d.log)}"), dt=1)
        else:
            code = draw(st.sampled_from([0, 0, 0, 1, 2, None]))
            sig = 9 if code is None else None
            d.apply(ev.TaskFinished(tid, attempt, worker, code, 1.0, sig, msg_id=f"m{len(d.log)}"), dt=1)
    elif action == "replace" and tasks:
        # an edited task file pushed with --replace: new commands, priorities,
        # sometimes new dependencies (a cycle among them is refused)
        specs = []
        for tid in sorted({_pick(draw, tasks) for _ in range(draw(st.integers(1, 2)))}):
            old = tasks[tid].spec
            deps = old.depends_on
            if draw(st.booleans()):
                deps = tuple(sorted({_pick(draw, tasks) for _ in range(draw(st.integers(0, 2)))}
                                    - {tid}))
            specs.append(attrs.evolve(old, command=f"edited {len(d.log)}", depends_on=deps,
                                      inputs=(), priority=draw(st.integers(0, 2))))
        d.apply(ev.TasksReplaced(f"r{len(d.log)}", tuple(specs), "edited.json"))
    elif action == "cancel" and tasks:
        d.apply(ev.TaskCancelled(_pick(draw, tasks)))
    elif action == "retry" and tasks:
        d.apply(ev.RetryRequested(_pick(draw, tasks)))
    elif action == "tick":
        d.apply(ev.Tick(), dt=draw(st.sampled_from([1.0, 10.0, 35.0, 100.0])))
    elif action == "lost":
        wid = draw(st.sampled_from(WORKERS))
        worker = d.state.workers.get(wid)
        silent = worker.last_seen if worker is not None else 0.0
        d.apply(ev.WorkerLost(wid, "test", draw(st.sampled_from(["", "i0", "i1"])),
                              draw(st.sampled_from([None, silent, silent - 1.0])),
                              will=draw(st.booleans())))
    elif action == "left":
        d.apply(ev.WorkerLeft(draw(st.sampled_from(WORKERS))))
    elif action == "draining":
        d.apply(ev.WorkerDraining(draw(st.sampled_from(WORKERS)), "test",
                                  incarnation=draw(st.sampled_from(["", "i0", "i1"]))))
    elif action == "boss":
        d.apply(ev.BossStarted("b", draw(st.sampled_from([1, 2, 3, 3]))))
    elif action == "resumed":
        d.apply(ev.BossResumed(draw(st.sampled_from([3.0, 40.0])), "test"),
                dt=draw(st.sampled_from([1.0, 40.0])))
    elif action == "losses":
        d.losses()
    elif action == "vm":
        name = draw(st.sampled_from(["vm-a", "vm-b"]))
        kind = draw(st.sampled_from(["request", "allocate", "observe", "fail", "kill",
                                     "discover", "callback", "absent"]))
        vm_id = draw(st.integers(1, 3))
        if kind == "request":
            d.apply(ev.VMRequested(name))
        elif kind == "allocate":
            d.apply(ev.VMAllocated(name, vm_id))
        elif kind == "observe":
            d.apply(ev.VMStateObserved(vm_id, draw(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9])), 3))
        elif kind == "discover":
            d.apply(ev.VMDiscovered(vm_id, draw(st.sampled_from([name, "vm-c"])),
                                    draw(st.sampled_from([3, 5, 8])), 3))
        elif kind == "callback":  # a hook's hint: any order, duplicates, bad moments
            d.apply(ev.VMCallback(vm_id, draw(st.sampled_from([name, "vm-c"])),
                                  draw(st.sampled_from([3, 5, 6, 8, 2**40])), 3,
                                  draw(st.sampled_from([5.0, 5.0, 9.5, 1.0, float("nan")]))))
        elif kind == "absent":
            d.apply(ev.VMFailed(name, "not in the pool", "absent"))
        elif kind == "fail":
            d.apply(ev.VMFailed(name, "quota", "authorization"))
        else:
            d.apply(ev.VMKillRequested(vm_id))
    elif action == "context":
        d.apply(ev.ContextSet("heartbeat_timeout", draw(st.sampled_from(["30", "60", "-1"]))))
    elif action == "autoscale":
        d.autoscale()
    elif action == "policy":
        key, values = draw(st.sampled_from(sorted(POLICY.items())))
        d.apply(ev.ContextSet(key, draw(st.sampled_from(values))))
    elif action == "cloud":
        cloud(draw, d)


#: values the generated histories give the autoscaling policy ("-1" is refused)
POLICY = {
    "max_workers": ["0", "2", "4", "4"], "min_workers": ["0", "1", "2"],
    "slots_per_worker": ["1", "2"], "max_booting": ["1", "2", "4"],
    "idle_timeout": ["5", "50"], "boot_timeout": ["20", "100"],
    "spawn_backoff": ["0", "5", "30", "-1"],
}


def cloud(draw, d: Driver) -> None:
    """The cloud and the workers on its VMs, mostly well behaved: a requested
    VM is allocated (a fresh id) or refused, an allocated one gets its worker
    (named after the VM) or fails to boot, a VM asked to die is seen gone."""
    vms = d.state.vms
    kind = draw(st.sampled_from(["allocate", "allocate", "announce", "announce", "refuse",
                                 "boot_failure", "out_of_service", "gone", "heartbeats"]))
    if kind == "heartbeats":
        for wid in sorted(d.state.workers):
            if d.state.workers[wid].status in LIVE:
                d.apply(ev.WorkerHeartbeat(wid))
        d.apply(ev.Tick(), dt=draw(st.sampled_from([1.0, 10.0, 25.0])))
        return
    wanted = {
        "allocate": [n for n, vm in vms.items() if vm.status == VM_REQUESTED and vm.vm_id is None],
        "refuse": [n for n, vm in vms.items() if vm.status == VM_REQUESTED],
        "announce": [n for n, vm in vms.items() if vm.vm_id is not None and vm.status != VM_GONE],
        "boot_failure": [n for n, vm in vms.items() if vm.vm_id is not None],
        "out_of_service": [n for n, vm in vms.items() if vm.vm_id is not None],
        "gone": [n for n, vm in vms.items() if vm.vm_id is not None],
    }[kind]
    name = _pick(draw, wanted)
    if name is None:
        return
    vm = vms[name]
    if kind == "allocate":
        d.apply(ev.VMAllocated(name, 100 + len(d.log)), dt=1)
    elif kind == "refuse":
        why = draw(st.sampled_from(["quota", "authorization", "error"]))
        d.apply(ev.VMFailed(name, f"{why} (test)", why), dt=1)
    elif kind == "announce":
        d.apply(ev.WorkerAnnounced(name, "host", draw(st.integers(1, 2)), 1,
                                   draw(st.sampled_from(["i0", "i1"])), vm.vm_id), dt=1)
    elif kind == "boot_failure":
        d.apply(ev.VMStateObserved(vm.vm_id, 3, draw(st.sampled_from([36, 61])), None, name), dt=1)
    elif kind == "out_of_service":  # put in POWEROFF, SUSPENDED, ... from outside
        d.apply(ev.VMStateObserved(vm.vm_id, draw(st.sampled_from([2, 4, 5, 8, 9])), 0, None,
                                   name), dt=1)
    else:
        d.apply(ev.VMStateObserved(vm.vm_id, 6, 0, None, name), dt=1)


# Weighted: mostly the work moving forward, with every kind of trouble mixed in.
ACTIONS = [
    *["schedule"] * 4, *["start"] * 3, *["finish"] * 5, *["heartbeat"] * 2, "tick", "tick",
    "submit", "bad_submit", "announce", "bogus_dispatch", "cancel", "retry",
    "lost", "left", "boss", "context", "vm", "autoscale", "policy", "cloud", "cloud",
    "draining", "resumed", "losses", "losses", "replace",
]


@st.composite
def driven_logs(draw, max_steps: int = 60) -> Driver:
    """A driver after a random but plausible history (the first event submits
    tasks, the second announces a worker)."""
    d = Driver()
    _act(draw, d, "submit")
    _act(draw, d, "announce")
    for action in draw(st.lists(st.sampled_from(ACTIONS), min_size=15, max_size=max_steps)):
        _act(draw, d, action)
    return d
