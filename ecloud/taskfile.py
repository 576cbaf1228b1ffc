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
once (ids, dependencies, cycles, inputs) are :mod:`ecloud.taskgraph`'s.
Everything is linear in the size of the file and nothing recurses, so a file
of a million tasks validates in seconds.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from ecloud.errors import UserError, ValidationError
from ecloud.events.types import InputSpec, TaskSpec
from ecloud.taskgraph import (
    ID_RE,
    MAX_ID_LENGTH,
    Graph,
    Known,
    locate,
    never_known,
    quote,
)

__all__ = ["parse_task_file", "parse_tasks", "validate_against", "MAX_ID_LENGTH"]


TASK_KEYS = frozenset(
    ["id", "command", "depends_on", "inputs", "outputs", "retries", "retry_backoff",
     "timeout", "priority", "env", "slots", "results"]
)
_SIMPLE_KEYS = frozenset(["id", "command", "depends_on"])
_STORE_INPUT_KEYS = frozenset(["path", "name", "sha256"])
_FROM_INPUT_KEYS = frozenset(["from", "path", "name"])

_ID_FULLMATCH = ID_RE.fullmatch
_ID_CHAR_RE = re.compile(r"[^A-Za-z0-9._:/@+-]")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_MISSING: Any = object()
_NO_DEPS: list = []  # never mutated




def parse_task_file(path: str | Path, *, known: Known = never_known) -> list[TaskSpec]:
    """Read and validate a task file; see :func:`parse_tasks`.

    Raises :class:`UserError` when the file cannot be read, and
    :class:`ValidationError` (with ``source`` = the path) listing every problem.
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read task file {source}: {exc.strerror or exc}") from None
    return parse_tasks(raw, source=source, known=known)


def parse_tasks(data: Any, *, source: str = "", known: Known = never_known) -> list[TaskSpec]:
    """Validate task-file content and return its tasks, in file order.

    ``data`` is the parsed JSON, or its text as ``str``/``bytes``. ``known(id)``
    tells whether a task id is already in the log: such ids may be depended
    on, but not defined again.
    """
    with _gc_paused():
        return _parse(data, source, known)


def _parse(data: Any, source: str, known: Known) -> list[TaskSpec]:
    problems: list[tuple[int, str]] = []
    if isinstance(data, (str, bytes, bytearray, memoryview)):
        data = _load_json(data, problems)
        if problems:
            raise ValidationError([p for _, p in problems], source=source)
    items = _task_list(data, problems)
    if items is None:
        raise ValidationError([p for _, p in problems], source=source)
    graph = Graph(len(items))
    specs = [_parse_task(i, raw, graph, problems) for i, raw in enumerate(items)]
    graph.check(known, problems)
    _check_results_folders(specs, problems)
    if problems:
        problems.sort(key=lambda p: p[0])  # stable: by task, then in the order found
        raise ValidationError([p for _, p in problems], source=source)
    return specs  # type: ignore[return-value]  # no problem: every entry parsed


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
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        problems.append((-1, f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"))
        return None


def _task_list(data: Any, problems: list[tuple[int, str]]) -> list | None:
    if isinstance(data, dict):
        for key in data:
            if key != "tasks":
                problems.append((-1, f"top level: {_unknown_key(key, ('tasks',))}"))
        if "tasks" not in data:
            problems.append((-1, 'top level: missing key "tasks"'))
            return None
        items = data["tasks"]
        if not isinstance(items, list):
            problems.append((-1, f"tasks: expected a list of tasks, got {_kind(items)}"))
            return None
    elif isinstance(data, list):
        items = data
    else:
        problems.append(
            (-1, f'top level: expected a list of tasks or {{"tasks": [...]}}, got {_kind(data)}')
        )
        return None
    if not items:
        problems.append((-1, "no tasks: the task list is empty"))
        return None
    return items


# ------------------------------------------------------------------ one task


def _parse_task(i: int, raw: Any, graph: Graph, problems: list[tuple[int, str]]) -> TaskSpec | None:
    """Check one task object; record its graph facts; return it or None.

    Written for speed: a key that is absent costs one dict lookup.
    """
    if type(raw) is not dict:
        problems.append((i, f"tasks[{i}]: expected a task object, got {_kind(raw)}"))
        return None
    get = raw.get
    if _SIMPLE_KEYS.issuperset(raw):
        # Fast path for the bulk of big generated files: id, command and
        # plain dependencies, all well-formed. Anything else: the full checks.
        tid = get("id")
        command = get("command")
        deps = get("depends_on", _NO_DEPS)
        if (type(tid) is str and len(tid) <= MAX_ID_LENGTH
                and (tid.isalnum() and tid.isascii() or _ID_FULLMATCH(tid))
                and type(command) is str and command and not command.isspace()
                and type(deps) is list and (len(deps) == 1 and type(deps[0]) is str
                                            or all(type(d) is str for d in deps))):
            deps = tuple(deps)
            graph.add(i, tid, deps)
            return TaskSpec(tid, command, deps, (), (), 0, 10.0, None, 0, {}, 1)
    bad: list[str] = []  # this task's problems, without the location prefix

    if not TASK_KEYS.issuperset(raw):
        bad += [_unknown_key(k, TASK_KEYS) for k in raw if k not in TASK_KEYS]

    tid = get("id", _MISSING)
    if type(tid) is str and len(tid) <= MAX_ID_LENGTH and _ID_FULLMATCH(tid):
        pass
    elif tid is _MISSING:
        bad.append('missing "id"')
    else:
        bad.append(f"id: {_id_problem(tid)}")
    # Even a malformed id goes in the graph: references to it then resolve.
    graph_id = tid if type(tid) is str and tid else None

    command = get("command", _MISSING)
    if type(command) is str:
        if not command or command.isspace():
            bad.append("command: must not be empty")
    elif type(command) is list:
        command = tuple(command)
        if not command:
            bad.append("command: an argv list must not be empty")
        elif not all(type(a) is str for a in command):
            bad += [f"command[{k}]: expected a string, got {_kind(a)}"
                    for k, a in enumerate(command) if type(a) is not str]
        elif not command[0]:
            bad.append("command[0]: the program name must not be empty")
    elif command is _MISSING:
        bad.append('missing "command"')
    else:
        bad.append(f"command: expected a string or a list of strings, got {_kind(command)}")

    deps = get("depends_on", _MISSING)
    if type(deps) is list:
        deps = tuple(deps)
        if len(deps) == 1 and type(deps[0]) is str or all(type(d) is str for d in deps):
            graph.add(i, graph_id, deps)
        else:
            bad += [f"depends_on[{k}]: expected a task id (string), got {_kind(d)}"
                    for k, d in enumerate(deps) if type(d) is not str]
            graph.add(i, graph_id, tuple(d for d in deps if type(d) is str))
    else:
        graph.add(i, graph_id, ())
        if deps is _MISSING:
            deps = ()
        else:
            bad.append(f"depends_on: expected a list of task ids, got {_kind(deps)}")

    outputs = get("outputs", _MISSING)
    if type(outputs) is list:
        outputs = tuple(outputs)
        for k, out in enumerate(outputs):
            problem = _rel_path_problem(out)
            if problem:
                bad.append(f"outputs[{k}]: {problem}")
        graph.outputs[i] = tuple(o for o in outputs if type(o) is str)
    elif outputs is _MISSING:
        outputs = ()
    else:
        bad.append(f"outputs: expected a list of paths, got {_kind(outputs)}")

    inputs = get("inputs", _MISSING)
    if type(inputs) is list:
        inputs = tuple(_parse_inputs(i, inputs, graph, bad))
    elif inputs is _MISSING:
        inputs = ()
    else:
        bad.append(f"inputs: expected a list, got {_kind(inputs)}")

    retries = get("retries", 0)
    if type(retries) is not int or retries < 0:
        bad.append(f"retries: expected an integer >= 0, got {_kind(retries)}")
    backoff = get("retry_backoff", _MISSING)
    if backoff is _MISSING:
        backoff = 10.0
    elif _is_number(backoff) and backoff >= 0:
        backoff = float(backoff)
    else:
        bad.append(f"retry_backoff: expected a number of seconds >= 0, got {_kind(backoff)}")
    timeout = get("timeout")
    if timeout is not None:
        if _is_number(timeout) and timeout > 0:
            timeout = float(timeout)
        else:
            bad.append(f"timeout: expected a number of seconds > 0 or null, got {_kind(timeout)}")
    priority = get("priority", 0)
    if type(priority) is not int:
        bad.append(f"priority: expected an integer, got {_kind(priority)}")
    slots = get("slots", 1)
    if type(slots) is not int or slots < 1:
        bad.append(f"slots: expected an integer >= 1, got {_kind(slots)}")

    env = get("env", _MISSING)
    if env is _MISSING:
        env = {}
    elif type(env) is dict:
        for name, value in env.items():
            if not _ENV_NAME_RE.fullmatch(name):
                bad.append(f"env: {quote(name)} is not a valid variable name "
                           "(letters, digits and _, not starting with a digit)")
            if type(value) is not str:
                bad.append(f"env[{quote(name)}]: expected a string, got {_kind(value)}")
            elif "\0" in value:
                bad.append(f"env[{quote(name)}]: must not contain a NUL character")
    else:
        bad.append(f"env: expected an object of string values, got {_kind(env)}")

    results = get("results")
    if results is not None:
        problem = _rel_path_problem(results, "the datastore's root")
        if problem:
            bad.append(f"results: {problem}")
        elif results.strip("/") != results or "//" in results:
            bad.append(f"results: {quote(results)} must not have empty parts "
                       "(a leading, trailing or doubled '/')")

    if bad:
        where = locate(i, tid)
        problems += [(i, f"{where}: {p}") for p in bad]
        return None
    # Positional: noticeably faster than keywords for a million tasks.
    return TaskSpec(tid, command, deps, inputs, outputs, retries, backoff, timeout, priority, env,
                    slots, results)


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


def _parse_inputs(i: int, inputs: list, graph: Graph, bad: list[str]) -> list[InputSpec]:
    specs = []
    froms = []
    for k, inp in enumerate(inputs):
        at = f"inputs[{k}]"
        if type(inp) is str:
            if inp:
                specs.append(InputSpec(path=inp))
            else:
                bad.append(f"{at}: the path must not be empty")
            continue
        if type(inp) is not dict:
            bad.append(f'{at}: expected a path or an object with "path", got {_kind(inp)}')
            continue
        src = inp.get("from", _MISSING)
        allowed = _STORE_INPUT_KEYS if src is _MISSING else _FROM_INPUT_KEYS
        for key in inp:
            if key not in allowed:
                if key == "sha256":
                    bad.append(f'{at}: "sha256" is only for datastore inputs, not with "from"')
                else:
                    bad.append(f"{at}: {_unknown_key(key, allowed)}")
        path, name, sha = inp.get("path", _MISSING), inp.get("name"), inp.get("sha256")
        ok = True
        if path is _MISSING:
            bad.append(f'{at}: missing "path"')
            ok = False
        elif src is _MISSING:
            if type(path) is not str or not path:
                bad.append(f"{at}.path: expected a non-empty string, got {_kind(path)}")
                ok = False
        else:
            problem = _rel_path_problem(path)
            if problem:
                bad.append(f"{at}.path: {problem}")
                ok = False
        if name is not None:
            problem = _rel_path_problem(name)
            if problem:
                bad.append(f"{at}.name: {problem}")
                ok = False
        if sha is not None and src is _MISSING:
            if type(sha) is not str or not _SHA256_RE.fullmatch(sha):
                bad.append(f"{at}.sha256: expected 64 hexadecimal digits, got {_kind(sha)}")
                ok = False
            else:
                sha = sha.lower()
        if src is _MISSING:
            src = None
        elif type(src) is not str or not src:
            bad.append(f"{at}.from: expected a task id, got {_kind(src)}")
            ok = False
        elif ok:  # checked against the upstream task once all tasks are read
            froms.append((k, src, path))
        if ok:
            specs.append(InputSpec(path=path, name=name, sha256=sha, from_task=src))
    if froms:
        graph.froms[i] = froms
    return specs


# ------------------------------------------------------------------ helpers




def _id_problem(tid: Any) -> str | None:
    if type(tid) is not str:
        return f"expected a string, got {_kind(tid)}"
    if ID_RE.fullmatch(tid) and len(tid) <= MAX_ID_LENGTH:
        return None
    if not tid:
        return "must not be empty"
    if len(tid) > MAX_ID_LENGTH:
        return f"is {len(tid)} characters long, at most {MAX_ID_LENGTH} are allowed"
    bad = _ID_CHAR_RE.search(tid)
    if bad:
        char = bad.group()
        what = "whitespace" if char.isspace() else f"character {quote(char)}"
        return (f"{quote(tid)} contains {what}; ids use letters, digits and . _ - : / @ +")
    return (f"{quote(tid)}: each /-separated part must start with a letter, digit or _ "
            "(no empty, leading or trailing parts)")


def _rel_path_problem(path: Any, root: str = "the task's working directory") -> str | None:
    if type(path) is not str:
        return f"expected a relative path (string), got {_kind(path)}"
    if not path:
        return "must not be empty"
    if path.startswith("/"):
        return f"{quote(path)} is absolute; paths are relative to {root}"
    if ".." in path.split("/"):
        return f"{quote(path)} must not contain '..'"
    if "\0" in path:
        return "must not contain a NUL character"
    return None




def _is_number(value: Any) -> bool:
    t = type(value)
    return t is int or (t is float and math.isfinite(value))


def _unknown_key(key: str, valid) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"unknown key {quote(key)}{hint}"


def _kind(value: Any) -> str:
    """``value`` described the JSON way, with short scalars shown."""
    if value is None:
        return "null"
    if value is True or value is False:
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {quote(shown)}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__



