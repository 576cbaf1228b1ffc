"""Where a workflow stands: running, succeeded, failed or aborted, with
the exit status ``ecloud run`` gives for it and the DAGMan values its final
task sees (``$DAG_STATUS``, ``$FAILED_COUNT``). Pure and read-only: for
``ecloud status``, the page, ``ecloud run`` and a final task's dispatch."""

from __future__ import annotations

from collections.abc import Iterable

from attrs import frozen

from ecloud.projections.state import ENDED, FAILED, SUCCEEDED, State

#: DAGMan's ``$DAG_STATUS`` values that ecloud can be in
DAG_STATUS = {"ok": 0, "failed": 2, "aborted": 3}


@frozen
class WorkflowResult:
    """Where a workflow stands: ``status`` running, succeeded, failed or
    aborted; ``exit`` the exit status of ``ecloud run`` for it once it is
    over (0 succeeded, 1 failed, the abort's ``return``); and the DAGMan
    ``$DAG_STATUS`` / ``$FAILED_COUNT`` its final task sees. As DAGMan's: a
    final task, once it ran, decides over everything - an abort included
    (``aborted_by`` still names the task that aborted)."""

    status: str
    exit: int | None
    failed: int
    dag_status: int
    final: str | None = None
    aborted_by: str | None = None


def workflow_result(state: State, source: str,
                    task_ids: Iterable[str] | None = None) -> WorkflowResult:
    """The result of the workflow ``source`` (its tasks: ``task_ids``, or
    every task of the log pushed from it). O(its tasks)."""
    workflow = state.workflows.get(source)
    if task_ids is None:
        sources = state.batch_sources
        records = [t for t in state.tasks.values() if sources.get(t.batch_seq, "") == source]
    else:
        records = [state.tasks[t] for t in task_ids if t in state.tasks]
    final_id = workflow.final if workflow is not None else None
    aborted = workflow.aborted if workflow is not None else None
    failed = sum(1 for t in records if t.status == FAILED)
    open_ = any(t.status not in ENDED for t in records)
    dag_status = (DAG_STATUS["aborted"] if aborted is not None
                  else DAG_STATUS["failed"] if failed else DAG_STATUS["ok"])
    aborted_by = aborted.task_id if aborted is not None else None
    if open_:
        return WorkflowResult("running", None, failed, dag_status, final_id, aborted_by)
    final = state.tasks.get(final_id) if final_id is not None else None
    if final is not None:
        # DAGMan: the final node's result is the workflow's, over any abort
        ok = final.status == SUCCEEDED
    elif aborted is not None:
        return WorkflowResult("aborted", aborted.returns, failed, dag_status, final_id, aborted_by)
    else:
        ok = all(t.status == SUCCEEDED for t in records)
    return WorkflowResult("succeeded" if ok else "failed", 0 if ok else 1, failed, dag_status,
                          final_id, aborted_by)


def dag_macros(state: State, task_id: str) -> tuple[tuple[str, str], ...]:
    """``DAG_STATUS`` and ``FAILED_COUNT`` for a dispatch of a task of a
    workflow, as the workflow stands now (DAGMan gives them to every script,
    meant for the final node's). O(1): the record's counters."""
    workflow = state.workflow_of(state.tasks[task_id])
    if workflow is None:
        return ()
    status = (DAG_STATUS["aborted"] if workflow.aborted is not None
              else DAG_STATUS["failed"] if workflow.failed else DAG_STATUS["ok"])
    return (("DAG_STATUS", str(status)), ("FAILED_COUNT", str(workflow.failed)))


__all__ = ["DAG_STATUS", "WorkflowResult", "dag_macros", "workflow_result"]
