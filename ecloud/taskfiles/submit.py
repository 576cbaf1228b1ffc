"""Appending operator commands safely: validate against the state at head N,
append with ``expected_head=N``, and start over if another writer got in
between. A busy boss commits many times a second, so a big push may lose
that race every time; after :data:`ATTEMPTS` tries the command is judged and
appended under the log's write lock instead (the boss waits for it). Nothing
is written unless everything is valid."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

from ecloud import limits
from ecloud.errors import ConcurrencyError, UserError, ValidationError
from ecloud.events.types import (
    NodeSpec,
    TaskCancelled,
    TaskSpec,
    TasksReplaced,
    TasksSubmitted,
    WorkflowLimits,
)
from ecloud.log.rebuild import fold_range, load_state
from ecloud.log.store import LogStore
from ecloud.projections.state import FINAL, State
from ecloud.projections.tasks import dependency_order

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


# ------------------------------------------------------- a file pushed again


@frozen
class PushPlan:
    """What pushing a task file does to a log: ``new`` tasks are added;
    ``same`` ones (the log's spec equals the file's) are left as they are;
    ``changed`` ones - (the log's spec, the file's) - are replaced (with
    ``--replace``); ``removed`` are the tasks the file pushed before and no
    longer has, with whether each has finished."""

    new: list[TaskSpec]
    same: list[str]
    changed: list[tuple[TaskSpec, TaskSpec]]
    removed: list[tuple[str, bool]]


def source_of(file: str | Path) -> str:
    """How a pushed file is named in the log: its absolute path."""
    return str(Path(file).resolve())


def plan_push(state: State, specs: Sequence[TaskSpec], file: str | Path) -> PushPlan:
    tasks = state.tasks
    new, same, changed = [], [], []
    for spec in specs:
        had = tasks.get(spec.id)
        if had is None:
            new.append(spec)
        elif had.spec == spec:
            same.append(spec.id)
        else:
            changed.append((had.spec, spec))
    names = {source_of(file), str(file)}
    batches = {seq for seq, source in state.batch_sources.items() if source in names}
    ids = {spec.id for spec in specs}
    removed = [(t.spec.id, t.status in FINAL) for t in state.task_order()
               if t.batch_seq in batches and t.spec.id not in ids] if batches else []
    return PushPlan(new, same, changed, removed)


def check_dispatch_sizes(plan: PushPlan, state: State, file: Any) -> None:
    """A task's dispatch carries, beside its spec (bounded on its own), the
    results folder of every task its inputs come ``from``: thousands of
    long folders would make a dispatch no worker accepts. Raises
    :class:`ValidationError` naming each task whose folders pass
    :data:`limits.SOURCES_BYTES`."""
    mine = {s.id: s for s in plan.new}
    mine.update({new.id: new for _, new in plan.changed})
    problems = []
    for spec in mine.values():
        upstream = {i.from_task for i in spec.inputs if i.from_task}
        if not upstream:
            continue
        total = 0
        for task_id in upstream:
            other = mine.get(task_id)
            if other is None and task_id in state.tasks:
                other = state.tasks[task_id].spec
            folder = other.results_folder if other is not None else f"results/{task_id}"
            total += len(task_id.encode()) + len(folder.encode()) + 8  # as JSON: quotes, colon
        if total > limits.SOURCES_BYTES:
            problems.append(f"task {spec.id!r}: inputs: the results folders of the {len(upstream):,} "
                            f"tasks its inputs come from take {total:,} bytes in its dispatch, at "
                            f"most {limits.SOURCES_BYTES:,} allowed (shorter `results` folders, or "
                            "fewer upstream tasks per task)")
    if problems:
        raise ValidationError(problems, str(file))


def diff_lines(plan: PushPlan, limit: int = 20) -> list[str]:
    """The changed tasks, a line per changed field (``old -> new``), at most
    ``limit`` lines."""
    lines = []
    for old, new in plan.changed:
        for name in _SPEC_FIELDS:
            before, after = getattr(old, name), getattr(new, name)
            if before == after:
                continue
            if name == "node":  # its keys are the task file's: one line each
                for key in _NODE_FIELDS:
                    was = getattr(before, key) if before is not None else None
                    now = getattr(after, key) if after is not None else None
                    if was != now and (was or now):
                        lines.append(f"task {old.id!r}: {key}: {_shown(was)} -> {_shown(now)}")
            else:
                lines.append(f"task {old.id!r}: {name}: {_shown(before)} -> {_shown(after)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more changes"]
    return lines


_SPEC_FIELDS = [a.name for a in TaskSpec.__attrs_attrs__ if a.name != "id"]  # type: ignore[attr-defined]
_NODE_FIELDS = [a.name for a in NodeSpec.__attrs_attrs__]  # type: ignore[attr-defined]


def _shown(value: Any) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def push_file(store: LogStore, specs: Sequence[TaskSpec], file: str | Path, *,
              replace: bool = False, state: State | None = None) -> tuple[State, list[int], PushPlan]:
    """Push a parsed task file: add its new tasks, and - with ``replace`` -
    give changed tasks their new specs (they and their descendants run
    again) and cancel the unfinished tasks it no longer has. Without
    ``replace`` a changed task refuses the whole push (:class:`ValidationError`
    with the differences). All or nothing, checked against the log's head."""
    from ecloud.projections.replace import replace_problem
    from ecloud.taskfiles.taskfile import validate_against

    source = source_of(file)
    plan_seen: list[PushPlan] = []
    #: the file's workflow limits (a TaskList's), carried by its first new batch
    limits = getattr(specs, "limits", None)

    def build(current: State) -> list[Any]:
        plan = plan_push(current, specs, file)
        plan_seen[:] = [plan]
        if plan.changed and not replace:
            raise ValidationError(
                diff_lines(plan) + [f"{len(plan.changed)} task(s) of the file differ from the log: "
                                    "push with --replace to run them (and what depends on them) "
                                    "again with the new specs"], str(file))
        if plan.new:
            validate_against(plan.new, current.tasks.__contains__, source=str(file))
        check_dispatch_sizes(plan, current, file)
        events: list[Any] = []
        batch = uuid.uuid4().hex[:12]
        # the file's limits, when they change what the log holds for it (a file
        # pushed again with another "workflow", ecloud run --maxjobs N again)
        held = current.workflows[source].limits if source in current.workflows else None
        wanted = limits if limits is not None else (
            WorkflowLimits() if held is not None else None)
        carry = wanted if wanted != held else None
        if plan.new:
            ordered = dependency_first(plan.new)
            chunks = [ordered[i:i + CHUNK] for i in range(0, len(ordered), CHUNK)]
            events += [TasksSubmitted(batch if len(chunks) == 1 else f"{batch}.{n}", tuple(chunk),
                                      source, carry if n == 0 else None)
                       for n, chunk in enumerate(chunks)]
        elif carry is not None:
            events.append(TasksSubmitted(batch, (), source, carry))
        if plan.changed:
            news = tuple(new for _, new in plan.changed)
            problem = replace_problem(current, news, {s.id: s for s in plan.new})
            if problem is not None:
                raise ValidationError([problem], str(file))
            events.append(TasksReplaced(f"{batch}.r", news, source))
        if replace:
            events += [TaskCancelled(tid, f"removed from {file}")
                       for tid, finished in plan.removed if not finished]
        return events

    state_after, seqs = append_checked(store, build, state)
    return state_after, seqs, plan_seen[0]
