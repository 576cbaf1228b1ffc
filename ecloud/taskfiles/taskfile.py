"""Task files: the JSON an operator pushes, checked whole before anything is written.

A task file is a JSON list of task objects, or ``{"tasks": [...]}``; the
schema in ``ecloud/schema/taskfile.schema.json`` documents every key for
editors and people. This module is the authority, though: it finds every
problem in one pass - shape, types, unknown keys, ids, dependencies, cycles,
inputs - and raises one :class:`ValidationError` listing them all, each with
its location (``tasks[3] (id "b"): depends_on[0]: unknown task "zz"``).

Decisions that the schema cannot express:

* **Ids** are 1-200 ASCII letters, digits and ``. _ - : / @ +``, split by
  ``/`` into segments that each start with a letter, digit or ``_``. So an id
  is never empty, never looks like a flag (``-x``), and is always a safe
  relative path: no ``.``/``..`` segment, no leading, trailing or double ``/``.
* **Inputs from a task** (``{"from": "a", "path": "out.txt"}``) must name a
  *direct* dependency, one listed in ``depends_on``: data edges are explicit,
  and the check stays linear (transitive reachability for every input is not).
  The path must equal one of that task's ``outputs`` or match one of them as
  an :func:`fnmatch.fnmatchcase` glob. For a task already in the log only the
  dependency is checked; its outputs are not at hand here.
* **Results folders** (``"results": "campaign/run-17"``, default
  ``results/<id>``) are datastore paths, so relative and never climbing out
  with ``..``; two tasks of one file may not share one (their outputs would
  overwrite each other and the lineage of a file would be ambiguous).
* **Cycles** are reported once per strongly connected group of tasks, as one
  concrete cycle through that group's earliest task, ``a -> b -> a`` meaning
  "a depends on b, which depends on a". A task naming itself is reported as a
  self-dependency instead.

Each task is parsed on its own here; the checks that need several tasks at
once (ids, dependencies, cycles, inputs) are :mod:`ecloud.taskfiles.taskgraph`'s.
Everything is linear in the size of the file and nothing recurses, so a file
of a million tasks validates in seconds.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from ecloud.errors import UserError, ValidationError
from ecloud.events.types import TaskSpec, WorkflowLimits
from ecloud.strictjson import StrictJSONError
from ecloud.strictjson import loads as strict_loads
from ecloud.taskfiles.taskfields import (
    TASK_KEYS,
    kind,
    parse_task,
    unknown_key,
    workflow_limits,
)
from ecloud.taskfiles.taskgraph import MAX_ID_LENGTH, Graph, Known, locate, never_known, quote

__all__ = ["MAX_ID_LENGTH", "TASK_KEYS", "TaskList", "parse_task_file", "parse_tasks",
           "validate_against"]


def parse_task_file(path: str | Path, *, known: Known = never_known,
                    redefine: bool = False) -> TaskList:
    """Read and validate a task file; see :func:`parse_tasks`.

    Raises :class:`UserError` when the file cannot be read, and
    :class:`ValidationError` (with ``source`` = the path) listing every problem.
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read task file {source}: {exc.strerror or exc}") from None
    return parse_tasks(raw, source=source, known=known, redefine=redefine)


class TaskList(list):
    """The tasks of a task file, in file order, with what the file says of
    them as a whole: ``limits``, the top-level ``"workflow"`` object (how
    many of its tasks run at once), or None."""

    limits: WorkflowLimits | None = None


def parse_tasks(data: Any, *, source: str = "", known: Known = never_known,
                redefine: bool = False) -> TaskList:
    """Validate task-file content and return its tasks, in file order.

    ``data`` is the parsed JSON, or its text as ``str``/``bytes``. ``known(id)``
    tells whether a task id is already in the log: such ids may be depended
    on, and - with ``redefine`` (a file pushed again) - defined again, to be
    compared with the log's (:mod:`ecloud.taskfiles.submit`).
    """
    with _gc_paused():
        return _parse(data, source, known, redefine)


def _parse(data: Any, source: str, known: Known, redefine: bool = False) -> TaskList:
    problems: list[tuple[int, str]] = []
    if isinstance(data, (str, bytes, bytearray, memoryview)):
        data = _load_json(data, problems)
        if problems:
            raise ValidationError([p for _, p in problems], source=source)
    items = _task_list(data, problems)
    if items is None:
        raise ValidationError([p for _, p in problems], source=source)
    bad: list[str] = []
    limits = workflow_limits(data.get("workflow") if isinstance(data, dict) else None, bad)
    problems += [(-1, f"top level: {p}") for p in bad]
    graph = Graph(len(items))
    specs = [parse_task(i, raw, graph, problems) for i, raw in enumerate(items)]
    graph.check(known, problems, redefine)
    _check_results_folders(specs, problems)
    _check_final(specs, problems)
    if problems:
        problems.sort(key=lambda p: p[0])  # stable: by task, then in the order found
        raise ValidationError([p for _, p in problems], source=source)
    tasks = TaskList(_absolute_workdirs(specs, source))  # type: ignore[arg-type]
    tasks.limits = limits
    return tasks


def _check_final(specs: list[TaskSpec | None], problems: list[tuple[int, str]]) -> None:
    """At most one final task, and no task depends on it (it runs last)."""
    finals = [(i, s) for i, s in enumerate(specs)
              if s is not None and s.node is not None and s.node.final]
    if not finals:
        return
    for i, spec in finals[1:]:
        problems.append((i, f"{locate(i, spec.id)}: final: a file has at most one final task "
                            f"(the first is {quote(finals[0][1].id)})"))
    final_id = finals[0][1].id
    for i, spec in enumerate(specs):
        if spec is not None and final_id in spec.depends_on:
            problems.append((i, f"{locate(i, spec.id)}: depends_on: {quote(final_id)} is the "
                                "final task, which runs after every other"))


def _absolute_workdirs(specs: list[TaskSpec], source: str) -> list[TaskSpec]:
    """A relative ``workdir`` is relative to the task file's folder (the
    current directory for a file with no path): the log keeps it absolute,
    so the workers (on this machine, or sharing its file system) find it."""
    if not any(s.node is not None and s.node.workdir for s in specs):
        return specs
    base = Path(source).resolve().parent if source else Path.cwd()
    out = []
    for spec in specs:
        node = spec.node
        if node is not None and node.workdir and not node.workdir.startswith("/"):
            node = attrs.evolve(node, workdir=os.path.normpath(base / node.workdir))
            spec = attrs.evolve(spec, node=node)
        out.append(spec)
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector: building a million acyclic objects would
    otherwise trigger it thousands of times for nothing (2-3x slower)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def validate_against(specs: Sequence[TaskSpec], known: Known, *, source: str = "") -> None:
    """Check already-parsed tasks against the log as it is now.

    ``ecloud push`` parses a file, then re-checks it against the log head it
    appends at: ids must still be new and dependencies must exist. Raises
    :class:`ValidationError` listing every problem.
    """
    problems: list[tuple[int, str]] = []
    graph = Graph(len(specs))
    with _gc_paused():
        for i, spec in enumerate(specs):
            graph.add(i, spec.id, spec.depends_on)
            if spec.outputs:
                graph.outputs[i] = spec.outputs
            if spec.inputs:
                froms = [(k, x.from_task, x.path) for k, x in enumerate(spec.inputs) if x.from_task]
                if froms:
                    graph.froms[i] = froms
        graph.check(known, problems)
    _check_results_folders(specs, problems)
    if problems:
        problems.sort(key=lambda p: p[0])
        raise ValidationError([p for _, p in problems], source=source)


# ------------------------------------------------------------------ top level


def _load_json(text: Any, problems: list[tuple[int, str]]) -> Any:
    if isinstance(text, memoryview):
        text = bytes(text)
    if isinstance(text, (bytes, bytearray)) and text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]  # a UTF-8 byte order mark, as some editors write
    if not text or text.isspace():
        problems.append((-1, "the file is empty (expected a JSON list of tasks)"))
        return None
    try:
        return strict_loads(text)
    except StrictJSONError as exc:
        problems.append((-1, str(exc)))
        return None


def _task_list(data: Any, problems: list[tuple[int, str]]) -> list | None:
    if isinstance(data, dict):
        for key in data:
            if key not in ("tasks", "workflow"):
                problems.append((-1, f"top level: {unknown_key(key, ('tasks', 'workflow'))}"))
        if "tasks" not in data:
            problems.append((-1, 'top level: missing key "tasks"'))
            return None
        items = data["tasks"]
        if not isinstance(items, list):
            problems.append((-1, f"tasks: expected a list of tasks, got {kind(items)}"))
            return None
    elif isinstance(data, list):
        items = data
    else:
        problems.append(
            (-1, f'top level: expected a list of tasks or {{"tasks": [...]}}, got {kind(data)}')
        )
        return None
    if not items:
        problems.append((-1, "no tasks: the task list is empty"))
        return None
    return items


# ------------------------------------------------------------------ the file


def _check_results_folders(specs: list[TaskSpec | None], problems: list[tuple[int, str]]) -> None:
    """Two tasks of a file must not push to one folder. Only a file that sets
    some ``results`` can collide (default folders are distinct by id)."""
    if not any(s is not None and s.results is not None for s in specs):
        return
    owner: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec is None:
            continue
        folder = spec.results_folder
        first = owner.setdefault(folder, i)
        if first != i:
            problems.append((i, f"{locate(i, spec.id)}: results: folder {quote(folder)} is "
                                f"already task {quote(specs[first].id)}'s"))  # type: ignore[union-attr]
