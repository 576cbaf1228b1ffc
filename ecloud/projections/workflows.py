"""Workflows: what a task file asks of its tasks as a whole.

A task file (its ``source``) is a workflow. One of plain tasks needs nothing
here; one whose tasks have a ``final`` task, ``noop`` or ``done`` tasks,
categories, an ``abort_on`` rule or scripts, or whose file sets limits, gets a
:class:`~ecloud.projections.state.WorkflowRecord` when it is submitted, and
then:

- **limits**: at most ``max_running`` of its tasks, and ``categories[c]`` of
  category ``c``, are dispatched or running at once (the scheduler skips a
  task with no room; a dispatch past a limit is refused);
- **noop** tasks succeed the moment their dependencies have, running
  nothing; **done** tasks are born succeeded;
- its **final** task waits until every other task has ended (succeeded,
  failed, cancelled or blocked), then runs whatever happened; its result is
  the workflow's;
- **abort_on**: an attempt that ends with that exit status aborts the
  workflow: every unfinished task but the final one is cancelled (running
  attempts killed), and the workflow's result is the rule's ``return``.

Noops and the final task are moved in :func:`settle`, after each event: a
move anywhere in the fold may be what makes them due
(``State.reindex_status`` notes them in ``State.due``).

Where a workflow stands is :mod:`.workflow_result`'s.
"""

from __future__ import annotations

from ecloud.events.types import TaskFinished, TasksSubmitted
from ecloud.projections import tasks
from ecloud.projections.context import number_text, storable
from ecloud.projections.effects import CancelAttempt
from ecloud.projections.state import (
    ACTIVE,
    ATTEMPT_CANCELLED,
    ATTEMPT_LOST,
    CANCELLED,
    ENDED,
    FAILED,
    READY,
    SUCCEEDED,
    WAITING,
    AbortRecord,
    State,
    WorkflowRecord,
)
from ecloud.projections.transitions import (
    ABORTED,
    NOTHING_TO_RUN,
    WORKFLOW_ENDED,
    WORKFLOW_REOPENED,
    move_attempt,
    move_task,
)

# ---------------------------------------------------------------- submission


def needs_record(event: TasksSubmitted) -> bool:
    """Whether a batch asks for workflow bookkeeping at all."""
    return event.limits is not None or any(s.node is not None for s in event.tasks)


def final_problem(state: State, event: TasksSubmitted) -> str | None:
    """A second final task for a workflow that has one (``ecloud push``
    refuses two in a file; this guards pushes of the same file)."""
    finals = [s.id for s in event.tasks if s.node is not None and s.node.final]
    for spec in event.tasks:  # a final task runs after the rest: no edge to or from it
        for dep in spec.depends_on:
            parent = state.tasks.get(dep)
            if (dep in finals or (parent is not None and parent.spec.node is not None
                                  and parent.spec.node.final)
                    or (spec.node is not None and spec.node.final)):
                return f"task {spec.id!r}: a final task neither has nor is a dependency"
    if not finals:
        return None
    if len(finals) > 1:
        return f"the batch has {len(finals)} final tasks ({', '.join(finals[:3])}); at most one"
    workflow = state.workflows.get(event.source)
    if workflow is not None and workflow.final not in (None, finals[0]):
        return f"the workflow already has the final task {workflow.final!r}"
    return None


def limits_problem(event: TasksSubmitted) -> str | None:
    """Limits the fold cannot hold (``ecloud push`` writes none: 1 or more)."""
    limits = event.limits
    if limits is None:
        return None
    counts = list(limits.categories.values())
    if limits.max_running is not None:
        counts.append(limits.max_running)
    for count in counts:
        if not storable(count) or count < 1:
            return f"workflow limit {number_text(count)} is out of range (1 or more)"
    return None


def track(state: State, event: TasksSubmitted) -> None:
    """Before the batch's tasks are added: make or update the record of
    their workflow. A workflow tracked only from now on (an earlier push of
    the same file had plain tasks) counts the tasks it has first."""
    if not needs_record(event):
        return
    source = event.source
    workflow = state.workflows.get(source)
    if workflow is None:
        workflow = state.workflows[source] = WorkflowRecord(source)
        sources = state.batch_sources
        for task in state.tasks.values():
            if sources.get(task.batch_seq, "") == source:
                workflow.count(task, None, task.status)
    if event.limits is not None:
        workflow.limits = event.limits
    for spec in event.tasks:
        if spec.node is not None and spec.node.final:
            workflow.final = spec.id


def on_submitted(state: State, event: TasksSubmitted, seq: int, out: list) -> None:
    """A batch of tasks (see :func:`ecloud.projections.tasks.add_batch`),
    its workflow's record made or updated first, so that its new tasks are
    counted in it as they are added."""
    problem = (tasks.submission_problem(state, event) or final_problem(state, event)
               or limits_problem(event))
    if problem is not None:
        state.reject(seq, f"batch {event.batch_id}", problem)
        return
    if event.source:
        state.batch_sources[seq] = event.source
    track(state, event)
    tasks.add_batch(state, event, seq)


def recount(state: State, source: str) -> None:
    """Count a workflow's tasks again from their statuses (after specs were
    replaced: a category or a role may have changed), and note what that
    makes due."""
    workflow = state.workflows.get(source)
    if workflow is None:
        return
    workflow.open = workflow.active = workflow.failed = 0
    workflow.active_in = {}
    sources = state.batch_sources
    for task in state.tasks.values():
        if sources.get(task.batch_seq, "") == source:
            workflow.count(task, None, task.status)
            node = task.spec.node
            if node is not None and (node.noop or node.final):
                state.due.append(task.spec.id)


# ------------------------------------------------------------------- settling


def settle(state: State, seq: int, out: list) -> None:
    """The moves an event's moves call for (``State.due``), until none is
    left: a noop that became ready succeeds (its children may become ready,
    and noops among them succeed in turn); a final task whose workflow has
    nothing else open becomes ready."""
    due = state.due
    while due:
        task = state.tasks.get(due.pop())
        if task is None:
            continue
        node = task.spec.node
        if node is None:
            continue
        if node.noop and task.status == READY and task.not_before is None:
            task.reason = ""
            move_task(state, task, SUCCEEDED, NOTHING_TO_RUN)
            tasks.release_children(state, task)
        elif node.final and task.status == WAITING:
            workflow = state.workflow_of(task)
            if workflow is not None and workflow.open == 0 and task.unmet == 0:
                move_task(state, task, READY, WORKFLOW_ENDED)
        elif node.final and task.status in (SUCCEEDED, FAILED):
            workflow = state.workflow_of(task)
            if workflow is not None and workflow.open > 0:
                # a task of its workflow runs again (ecloud retry): the final
                # task runs again at the end, as DAGMan's at the end of every run
                task.failures = 0
                task.reason = "its workflow runs again: it runs once more at the end"
                move_task(state, task, WAITING, WORKFLOW_REOPENED)


# --------------------------------------------------------------------- abort


def on_finished(state: State, event: TaskFinished, seq: int, out: list) -> None:
    """A report of an attempt's end (see :func:`ecloud.projections.tasks.on_finished`),
    and then, if it was the task's current attempt and ended with the
    task's ``abort_on`` exit status, the abort of its workflow."""
    current = (state.current_attempt(event.task_id, event.attempt, event.worker_id) is not None
               and not event.returned)
    tasks.on_finished(state, event, seq, out)
    value = tasks.returned_value(event)
    if not current or value is None:
        return
    task = state.tasks[event.task_id]
    node = task.spec.node
    if node is None or node.abort_on is None or value != node.abort_on.exit:
        return
    if event.exit_code is not None and task.exit_code != event.exit_code:
        return  # refused (out of range): nothing applied
    workflow = state.workflow_of(task)
    if workflow is None or workflow.aborted is not None:
        return
    rule = node.abort_on
    # DAGMan exits with the node's value when the rule names no RETURN (a
    # negative one - a signal - as the shell would see it)
    returns = rule.returns if rule.returns is not None else rule.exit % 256
    workflow.aborted = AbortRecord(task.spec.id, rule.exit, returns, state.clock)
    abort(state, workflow, seq, out)


def abort(state: State, workflow: WorkflowRecord, seq: int, out: list) -> None:
    """Cancel every unfinished task of ``workflow`` but its final one (in
    submission order: the effects come out in one order on every replay)."""
    assert workflow.aborted is not None
    why = (f"workflow aborted: {workflow.aborted.task_id} exited {workflow.aborted.exit} "
           f"(its abort_on)")
    sources = state.batch_sources
    doomed = [t for t in state.task_order()
              if t.status not in ENDED and t.spec.id != workflow.final
              and sources.get(t.batch_seq, "") == workflow.source]
    for task in doomed:
        if task.status in ACTIVE or task.attempt_status == ATTEMPT_LOST:
            move_attempt(state, task, ATTEMPT_CANCELLED, ABORTED)
        if task.status in ACTIVE:
            out.append(CancelAttempt(seq, task.spec.id, task.attempt, task.worker or "",
                                     "workflow aborted"))
        task.worker = None
        task.deadline = None
        task.reason = why
        task.blocked_by = None
        move_task(state, task, CANCELLED, ABORTED)
        task.not_before = None


__all__ = [
    "abort",
    "final_problem",
    "limits_problem",
    "needs_record",
    "on_finished",
    "on_submitted",
    "recount",
    "settle",
    "track",
]
