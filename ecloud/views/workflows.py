"""The workflows of a log as rows: each task file with a final task, an
abort rule or limits, and where it stands (``ecloud status``, the page)."""

from __future__ import annotations

from typing import Any

from ecloud.projections.state import State
from ecloud.projections.workflow_result import workflow_result


def workflow_rows(state: State) -> list[dict[str, Any]]:
    """Each workflow (task file) with a final task, an abort rule or limits:
    where it stands (``ecloud run``'s exit status for it once it is over)."""
    rows = []
    for source in sorted(state.workflows):
        workflow = state.workflows[source]
        result = workflow_result(state, source)
        limits = workflow.limits
        rows.append({"source": source, "status": result.status, "exit": result.exit,
                     "final": result.final, "aborted_by": result.aborted_by,
                     "failed": result.failed, "dag_status": result.dag_status,
                     "running": workflow.active,
                     "max_running": limits.max_running if limits else None,
                     "categories": dict(limits.categories) if limits else {}})
    return rows


__all__ = ["workflow_rows"]
