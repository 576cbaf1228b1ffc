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

import re
from pathlib import Path

import attrs
from attrs import define

from ecloud.errors import ValidationError
from ecloud.events.types import WorkflowLimits
from ecloud.projections.state import FAILED, SUCCEEDED, State
from ecloud.taskfiles.dagman.convert import convert, is_dag_file, node_names, task_ids
from ecloud.taskfiles.dagman.dagfile import parse_dag
from ecloud.taskfiles.dagman.rescue import (
    apply_rescue,
    newest_rescue,
    next_rescue_path,
    read_rescue,
    write_rescue,
)
from ecloud.taskfiles.taskfile import TaskList, parse_task_file, parse_tasks


@define
class DagRun:
    """What a run of a DAG file needs after it ends: its nodes by task id,
    the rescue file it started from, and the report lines to show."""

    file: Path
    names: dict[str, str]
    rescue: Path | None
    report: list[str]

    def say(self, console) -> None:
        """The report, one line each, on ``console`` (stderr)."""
        for line in self.report:
            console.print(f"{self.file.name}: {line}", markup=False, highlight=False)


def read_tasks(file: Path, state: State,
               max_running: int | None = None) -> tuple[TaskList, DagRun | None]:
    """What ``ecloud run`` and ``ecloud push`` read: a task file, or a
    DAGMan file (:func:`read_dag`), checked against the log's ``state``;
    ``max_running`` (``--maxjobs``) over the file's own limit."""
    if is_dag_file(file):
        return read_dag(file, state, max_running)
    specs = parse_task_file(file, known=state.tasks.__contains__, redefine=True)
    return with_max_running(specs, max_running), None


def read_dag(file: Path, state: State, max_running: int | None) -> tuple[TaskList, DagRun]:
    """The DAG's tasks, checked as a task file's are (every problem at
    once), against the log's ``state``. Parsed once and converted once: the
    DONE marks (a rescue file's, or the log's) are settled first."""
    if not file.is_file():
        raise ValidationError([f"{file}: no such DAG file"], str(file))
    dag = parse_dag(file)
    ids = task_ids(list(dag.nodes))
    _check_names(file, ids, state)
    rescue = None
    in_log = [t for t in ids.values() if t in state.tasks]
    if not in_log:
        rescue = newest_rescue(file)  # a fresh run: from the newest rescue file, if any
        if rescue is not None:
            dag = apply_rescue(dag, rescue)
    else:
        # continuing: the nodes the log was given as done (a rescue file's
        # DONE, when this log's run started from one) stay done
        done = {t for t in in_log if (n := state.tasks[t].spec.node) is not None and n.done}
        if done:
            dag = attrs.evolve(dag, nodes={
                name: attrs.evolve(node, done=True) if ids[name] in done else node
                for name, node in dag.nodes.items()})
    converted = convert(dag, max_running=max_running)
    try:
        specs = parse_tasks(converted.content, source=str(file), known=state.tasks.__contains__,
                            redefine=True)
    except ValidationError as exc:  # said of the DAG's lines, not of a task file's entries
        raise ValidationError([_at_node(p, dag) for p in exc.problems], str(file)) from None
    report = converted.report.lines()
    if rescue is not None:
        done = sum(1 for node in dag.nodes.values() if node.done)
        report.insert(0, f"starting from the rescue file {rescue} ({done} node(s) DONE)")
    return specs, DagRun(file, node_names(converted), rescue, report)


_TASK_AT = re.compile(r'^tasks\[(\d+)\](?: \(id "[^"]*"\))?: ')


def _at_node(problem: str, dag) -> str:
    """A task-file problem (``tasks[3] (id "x"): ...``) as the DAG's: the
    file and line of the node, by its name (the tasks are the nodes, in order)."""
    match = _TASK_AT.match(problem)
    nodes = list(dag.nodes.values())
    if match is None or int(match.group(1)) >= len(nodes):
        return problem
    node = nodes[int(match.group(1))]
    return f"{node.file}:{node.line}: node {node.name}: {problem[match.end():]}"


def _check_names(file: Path, ids: dict[str, str], state: State) -> None:
    """Node names are one namespace per log: a node whose task the log has
    from another file would be taken for it (and not run). Refused, saying
    how to keep the two DAGs apart."""
    from ecloud.taskfiles.submit import source_of

    source = source_of(file)
    clashes = []
    for name, task_id in ids.items():
        task = state.tasks.get(task_id)
        if task is not None:
            other = state.batch_sources.get(task.batch_seq, "")
            if other != source:
                clashes.append(f"node {name!r}: the log has a task {task_id!r} from "
                               f"{other or 'another push'}")
    if clashes:
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise ValidationError(clashes[:5] + [
            f"node names are one namespace per log{more}: run this DAG with a log of its own "
            f"(--db sqlite:///{file.name}.ecloud.db, or in another folder)"], str(file))


def with_max_running(specs: TaskList, max_running: int | None) -> TaskList:
    """``--maxjobs`` on a task file: its limit in all, over the file's own."""
    if max_running is not None:
        categories = specs.limits.categories if specs.limits is not None else {}
        specs.limits = WorkflowLimits(max_running, dict(categories))
    return specs


def write_rescue_file(run: DagRun, state: State, ids: list[str]) -> Path | None:
    """The next rescue file of the DAG: every node that succeeded (or was
    done) as ``DONE``, the failed ones counted, as DAGMan writes it. None
    when the newest rescue file says the same already (a run that ran
    nothing new)."""
    names = run.names
    done = [names[t] for t in ids if t in state.tasks and state.tasks[t].status == SUCCEEDED]
    failed = [names[t] for t in ids if t in state.tasks and state.tasks[t].status == FAILED]
    newest = newest_rescue(run.file)
    if newest is not None and read_rescue(newest) == set(done):
        return None
    path = next_rescue_path(run.file)
    return write_rescue(path, run.file, done, len(failed), failed_nodes=failed,
                        total_nodes=len(ids))


__all__ = ["DagRun", "read_dag", "read_tasks", "with_max_running", "write_rescue_file"]
