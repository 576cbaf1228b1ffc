"""``ecloud run x.dag``: a DAGMan file read, converted and checked as a task
file, and its rescue file written when the run did not succeed.

Re-running: a log that already holds the DAG's tasks continues from the log
(ecloud's own re-run: what ran stays done, a failed node stays failed until
``ecloud retry``); a log without them - a fresh folder, another ``--db`` -
starts from the DAG's newest rescue file, as ``condor_submit_dag`` does (its
``DONE`` nodes are given as done). A run that ends failed or aborted writes
the next rescue file, ``x.dag.rescue001``, ``002``, ..., in DAGMan's format.
"""

from __future__ import annotations

from pathlib import Path

from attrs import define

from ecloud.errors import ValidationError
from ecloud.events.types import WorkflowLimits
from ecloud.projections.state import FAILED, SUCCEEDED, State
from ecloud.taskfiles.dagman.convert import convert, node_names
from ecloud.taskfiles.dagman.dagfile import parse_dag
from ecloud.taskfiles.dagman.rescue import load_dag, next_rescue_path, write_rescue
from ecloud.taskfiles.taskfile import TaskList, parse_tasks


@define
class DagRun:
    """What a run of a DAG file needs after it ends: its nodes by task id,
    the rescue file it started from, and the report lines to show."""

    file: Path
    names: dict[str, str]
    rescue: Path | None
    report: list[str]


def read_dag(file: Path, state: State, max_running: int | None) -> tuple[TaskList, DagRun]:
    """The DAG's tasks, checked as a task file's are (every problem at
    once), against the log's ``state``."""
    if not file.is_file():
        raise ValidationError([f"{file}: no such DAG file"], str(file))
    dag = parse_dag(file)
    converted = convert(dag, max_running=max_running)
    rescue = None
    if not any(task_id in state.tasks for task_id in converted.ids.values()):
        dag, rescue = load_dag(file)  # a fresh run: from the newest rescue file, if any
        if rescue is not None:
            converted = convert(dag, max_running=max_running)
    specs = parse_tasks(converted.content, source=str(file), known=state.tasks.__contains__,
                        redefine=True)
    report = converted.report.lines()
    if rescue is not None:
        done = sum(1 for node in dag.nodes.values() if node.done)
        report.insert(0, f"starting from the rescue file {rescue} ({done} node(s) DONE)")
    return specs, DagRun(file, node_names(converted), rescue, report)


def with_max_running(specs: TaskList, max_running: int | None) -> TaskList:
    """``--maxjobs`` on a task file: its limit in all, over the file's own."""
    if max_running is not None:
        categories = specs.limits.categories if specs.limits is not None else {}
        specs.limits = WorkflowLimits(max_running, dict(categories))
    return specs


def write_rescue_file(run: DagRun, state: State, ids: list[str]) -> Path:
    """The next rescue file of the DAG: every node that succeeded (or was
    done) as ``DONE``, the failed ones counted, as DAGMan writes it."""
    names = run.names
    done = [names[t] for t in ids if t in state.tasks and state.tasks[t].status == SUCCEEDED]
    failed = [names[t] for t in ids if t in state.tasks and state.tasks[t].status == FAILED]
    path = next_rescue_path(run.file)
    return write_rescue(path, run.file, done, len(failed), failed_nodes=failed,
                        total_nodes=len(ids))


__all__ = ["DagRun", "read_dag", "with_max_running", "write_rescue_file"]
