"""Snapshots: the folded state as plain data, and back.

Only the records are saved; the indexes (ready queue, backoff heap, free
workers, timers, children, counts, VM lookups) are rebuilt from them on load, so a
snapshot can never disagree with itself. A snapshot is valid only for the
reducer version that wrote it (:data:`ecloud.projections.fold.REDUCER_VERSION`):
the stores never hand an older one back, so a reducer change makes old
snapshots unusable, never wrong.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from ecloud.events.codec import converter
from ecloud.events.types import InputSpec, NodeSpec, TaskSpec, WorkflowLimits
from ecloud.projections.state import (
    ACTIVE,
    LIVE,
    READY,
    T_HEARTBEAT,
    T_TIMEOUT,
    AbortRecord,
    Failure,
    Rejection,
    State,
    TaskRecord,
    VMRecord,
    WorkerRecord,
    WorkflowRecord,
)

_input_out = converter.get_unstructure_hook(InputSpec)
_input_in = converter.get_structure_hook(InputSpec)
_node_out = converter.get_unstructure_hook(NodeSpec)
_node_in = converter.get_structure_hook(NodeSpec)


_TASK_FIELDS = [a for a in TaskRecord.__attrs_attrs__ if a.name != "spec"]  # type: ignore[attr-defined]
_TASK_NAMES = [a.name for a in _TASK_FIELDS]
#: ``format`` of a snapshot whose tasks are rows (absent: objects, as state_to_data)
COMPACT = 2
assert TaskRecord.__attrs_attrs__[0].name == "spec"  # type: ignore[attr-defined]
_SPEC_NAMES = ["id", "command", "depends_on", "inputs", "outputs", "retries", "retry_backoff",
               "timeout", "priority", "env", "slots", "results", "node"]
assert [a.name for a in TaskSpec.__attrs_attrs__] == _SPEC_NAMES, (  # type: ignore[attr-defined]
    "update _spec_row and _spec_from_row")


def _spec_row(spec: TaskSpec) -> list[Any]:
    return [spec.id, spec.command, spec.depends_on,
            [_input_out(i) for i in spec.inputs] if spec.inputs else [], spec.outputs,
            spec.retries, spec.retry_backoff, spec.timeout, spec.priority, spec.env, spec.slots,
            spec.results, None if spec.node is None else _node_out(spec.node)]


def _spec_from_row(row: list[Any]) -> TaskSpec:
    command = row[1]
    return TaskSpec(row[0], command if isinstance(command, str) else tuple(command),
                    tuple(row[2]), tuple(_input_in(i, InputSpec) for i in row[3]) if row[3] else (),
                    tuple(row[4]), *row[5:12],
                    None if len(row) < 13 or row[12] is None else _node_in(row[12], NodeSpec))


def _spec_out(spec: TaskSpec) -> dict[str, Any]:
    """A spec as an object (canonical form and old snapshots): its row, named.
    Same shape as the converter's output (tests compare the two)."""
    data = dict(zip(_SPEC_NAMES, _spec_row(spec), strict=True))
    if data["node"] is None:  # as the converter leaves it out
        del data["node"]
    return data


def _spec_in(data: dict[str, Any]) -> TaskSpec:
    """The inverse of :func:`_spec_out`, without the converter's checks: a
    snapshot is our own output, and its checksum was verified on load.
    ``results`` is absent from snapshots written before it existed."""
    return _spec_from_row([data.get(name) for name in _SPEC_NAMES])


def _task_row(task: TaskRecord) -> list[Any]:
    return [_spec_row(task.spec), *[getattr(task, name) for name in _TASK_NAMES]]
_WORKER_FIELDS = [a.name for a in WorkerRecord.__attrs_attrs__  # type: ignore[attr-defined]
                  if a.name not in ("running", "released")]


def _task_out(task: TaskRecord) -> dict[str, Any]:
    data = {a.name: getattr(task, a.name) for a in _TASK_FIELDS}
    data["spec"] = _spec_out(task.spec)
    return data


def _worker_out(worker: WorkerRecord) -> dict[str, Any]:
    data = {name: getattr(worker, name) for name in _WORKER_FIELDS}
    data["running"] = [[t, a, s] for (t, a), s in sorted(worker.running.items())]
    data["released"] = [[t, a] for t, a in worker.released]
    return data


def state_to_data(state: State) -> dict[str, Any]:
    """Plain data for the state's records, in a canonical order."""
    return {
        "seq": state.seq,
        "clock": state.clock,
        "tasks": [_task_out(t) for t in state.tasks.values()],
        **_rest_out(state),
    }


def _rest_out(state: State) -> dict[str, Any]:
    return {
        "workers": [_worker_out(state.workers[w]) for w in sorted(state.workers)],
        "vms": [converter.unstructure(state.vms[n]) for n in sorted(state.vms)],
        "context": dict(sorted(state.context.items())),
        "rejected": [converter.unstructure(r) for r in state.rejected],
        "strangers": [[w, at] for w, at in state.strangers.items()],
        "batch_sources": [[seq, source] for seq, source in state.batch_sources.items()],
        "recent_failures": [converter.unstructure(f) for f in state.recent_failures],
        "spawn_failures": state.spawn_failures,
        "spawn_failed_at": state.spawn_failed_at,
        "spawn_refusal": state.spawn_refusal,
        "ceiling": state.ceiling,
        "boss_started_at": state.boss_started_at,
        "rules": state.rules,
        "workflows": [{"source": w.source,
                       "limits": None if w.limits is None else converter.unstructure(w.limits),
                       "final": w.final,
                       "aborted": None if w.aborted is None else converter.unstructure(w.aborted)}
                      for w in state.workflows.values()],
    }


def _index_tasks(state: State, tasks: list[TaskRecord]) -> None:
    """The task indexes other than ``ready`` and ``counts`` (which
    ``add_task`` keeps), from tasks in submission order. Children in
    submission order, exactly as the fold builds them."""
    for task in tasks:
        for dep in task.spec.depends_on:
            state.children.setdefault(dep, []).append(task.spec.id)
        if task.status == READY and task.not_before is not None:
            state.delayed.append((task.not_before, task.batch_seq, task.index, task.spec.id))
        if task.status in ACTIVE and task.deadline is not None:
            state.timers.append((task.deadline, T_TIMEOUT, task.spec.id, task.attempt))


def _add_task_rows(state: State, rows: list[list[Any]]) -> None:
    """Tasks from a compact snapshot's rows, with every task index, in one
    pass. This is most of a restart's time on a big log (bench/restart.py),
    so it is :func:`_spec_from_row`, ``add_task`` and :func:`_index_tasks`
    written out inline with their lookups hoisted. Rows are in submission
    order: :func:`dump` writes ``state.tasks`` in insertion order, and the
    fold only ever adds tasks."""
    tasks, counts, children = state.tasks, state.counts, state.children
    delayed, timers, ready_keys = state.delayed, state.timers, []
    spec_type, record_type, input_in = TaskSpec, TaskRecord, _input_in
    active = ACTIVE
    for row in rows:
        s = row[0]
        task_id, command, deps = s[0], s[1], tuple(s[2])
        spec = spec_type(task_id, command if command.__class__ is str else tuple(command), deps,
                         tuple(input_in(i, InputSpec) for i in s[3]) if s[3] else (),
                         tuple(s[4]), s[5], s[6], s[7], s[8], s[9], s[10], s[11],
                         None if s[12] is None else _node_in(s[12], NodeSpec))
        task = record_type(spec, *row[1:])
        tasks[task_id] = task
        status = task.status
        counts[status] += 1
        for dep in deps:
            kids = children.get(dep)
            if kids is None:
                children[dep] = [task_id]
            else:
                kids.append(task_id)
        if status == READY:
            if task.not_before is None:
                ready_keys.append((-s[8], task.batch_seq, task.index, task_id))
            else:
                delayed.append((task.not_before, task.batch_seq, task.index, task_id))
        elif status in active and task.deadline is not None:
            timers.append((task.deadline, T_TIMEOUT, task_id, task.attempt))
    state.ready.update(ready_keys)


def state_from_data(data: dict[str, Any]) -> State:
    """Rebuild a state (records and every index) from :func:`state_to_data`,
    or from a snapshot's compact form (:func:`dump`)."""
    from ecloud.projections import context

    state = State(seq=data["seq"], clock=data["clock"], spawn_failures=data["spawn_failures"],
                  spawn_failed_at=data["spawn_failed_at"], boss_started_at=data["boss_started_at"],
                  rules=data.get("rules", 1), spawn_refusal=data.get("spawn_refusal", ""),
                  ceiling=data.get("ceiling"))
    if data.get("format") == COMPACT:
        _add_task_rows(state, data["tasks"])
    else:
        for item in data["tasks"]:
            fields = dict(item)
            spec = _spec_in(fields.pop("spec"))
            state.add_task(TaskRecord(spec=spec, **fields))
        _index_tasks(state, state.task_order())
    for item in data["workers"]:
        fields = dict(item)
        running = {(t, a): s for t, a, s in fields.pop("running")}
        released = [(t, a) for t, a in fields.pop("released", ())]
        worker = WorkerRecord(running=running, released=released, **fields)
        state.workers[worker.worker_id] = worker
    for item in data["vms"]:
        vm = converter.structure(item, VMRecord)
        state.vms[vm.vm_name] = vm
        if vm.vm_id is not None:
            state.vm_ids[vm.vm_id] = vm.vm_name
        state.track_vm(vm)
    state.context.update(data["context"])
    state.rejected.extend(converter.structure(r, Rejection) for r in data["rejected"])
    state.strangers.update((w, at) for w, at in data.get("strangers", ()))
    state.batch_sources.update((seq, source) for seq, source in data.get("batch_sources", ()))
    state.recent_failures.extend(converter.structure(f, Failure) for f in data["recent_failures"])
    _restore_workflows(state, data.get("workflows", ()))
    timeout = context.heartbeat_timeout(state)
    for worker in state.workers.values():
        if worker.status in LIVE:
            deadline = worker.last_seen + timeout
            if worker.will_at is not None:
                deadline = min(deadline, worker.will_at + timeout / 3)  # liveness.deadline
            if state.rules >= 2 and deadline <= state.clock:
                state.overdue[worker.worker_id] = None  # as the fold leaves it: see liveness
            else:
                state.timers.append((deadline, T_HEARTBEAT, worker.worker_id, worker.incarnation))
        if state.is_listed_free(worker):
            state.free.add((worker.rank, worker.worker_id))
        if worker.vm_id is not None:
            state.vm_workers.setdefault(worker.vm_id, []).append(worker.worker_id)
    state.delayed.sort()
    state.timers.sort()
    return state


def _restore_workflows(state: State, rows) -> None:
    """The workflow records, and their counters from the tasks (indexes)."""
    for row in rows:
        state.workflows[row["source"]] = WorkflowRecord(
            row["source"],
            None if row["limits"] is None else converter.structure(row["limits"], WorkflowLimits),
            row["final"],
            None if row["aborted"] is None else converter.structure(row["aborted"], AbortRecord))
    if state.workflows:
        for task in state.tasks.values():
            workflow = state.workflow_of(task)
            if workflow is not None:
                workflow.count(task, None, task.status)


def dump(state: State) -> bytes:
    """Compressed JSON bytes for a snapshot store. Tasks - nearly all of a
    big state - are written as rows (lists in field order) rather than
    objects: no key repeated 300,000 times to write, parse and match up,
    which made loading a snapshot take twice as long."""
    data = {"format": COMPACT, "seq": state.seq, "clock": state.clock,
            "tasks": [_task_row(t) for t in state.tasks.values()], **_rest_out(state)}
    return zlib.compress(orjson.dumps(data), 1)


def load(blob: bytes) -> State:
    return state_from_data(orjson.loads(zlib.decompress(blob)))


def canonical(state: State) -> dict[str, Any]:
    """The state's meaning as plain data, independent of index layout: two
    states are the same iff their canonical forms are equal. (Indexes are
    derived from the records, so they are left out.) Here, not a method of
    State: the state's module must not import its own codec (no cycle)."""
    return state_to_data(state)


def clone_state(state: State) -> State:
    """A deep copy, indexes rebuilt."""
    return state_from_data(state_to_data(state))
