"""One task of a task file, field by field: types, ranges, limits, paths.

:func:`parse_task` checks one task object and returns its :class:`TaskSpec`,
or None after appending every problem, each prefixed with the task's
location (``tasks[3] (id "b"): env["X"]: ...``). Each field has a checker
of its own here; the bounds are :mod:`ecloud.limits`'. The checks that need
several tasks at once (ids, dependencies, cycles, inputs ``from`` a task)
are :mod:`ecloud.taskfiles.taskgraph`'s: the checkers record what they need in the
:class:`~ecloud.taskfiles.taskgraph.Graph`.

Paths - inputs, outputs, results folders - are relative and normalized
(:func:`path_problem`): no leading ``/``, no ``.``, ``..`` or empty part,
so none can climb out of the datastore or the working directory, and one
file on the datastore has one name.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from ecloud import limits
from ecloud.events.types import AbortOn, InputSpec, NodeSpec, TaskSpec, WorkflowLimits
from ecloud.limits import utf8_length
from ecloud.taskfiles.taskgraph import ID_RE, Graph, locate, quote

#: the keys of a workflow's node (scripts, roles, placement): NodeSpec's fields
NODE_KEYS = frozenset(
    ["pre", "post", "pre_skip", "retry_unless_exit", "abort_on", "final", "noop", "done",
     "category", "workdir", "stdin", "stdout", "stderr"]
)
TASK_KEYS = frozenset(
    ["id", "command", "depends_on", "inputs", "outputs", "retries", "retry_backoff",
     "timeout", "priority", "env", "slots", "results"]
) | NODE_KEYS
_SIMPLE_KEYS = frozenset(["id", "command", "depends_on"])
_STORE_INPUT_KEYS = frozenset(["path", "name", "sha256"])
_FROM_INPUT_KEYS = frozenset(["from", "path", "name"])

_ID_FULLMATCH = ID_RE.fullmatch
_ID_CHAR_RE = re.compile(r"[^A-Za-z0-9._:/@+-]")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
MISSING: Any = object()
_NO_DEPS: list = []  # never mutated
#: a command this short (in characters) is within the limit whatever it holds
_SURELY_SHORT = limits.COMMAND_BYTES // 4


def parse_task(i: int, raw: Any, graph: Graph, problems: list[tuple[int, str]]) -> TaskSpec | None:
    """Check one task object; record its graph facts; return it or None."""
    if type(raw) is not dict:
        problems.append((i, f"tasks[{i}]: expected a task object, got {kind(raw)}"))
        return None
    fast = _fast_path(i, raw, graph)
    if fast is not None:
        return fast
    bad: list[str] = []  # this task's problems, without the location prefix
    if not TASK_KEYS.issuperset(raw):
        bad += [unknown_key(k, TASK_KEYS) for k in raw if k not in TASK_KEYS]
    get = raw.get
    tid = _task_id(get("id", MISSING), bad)
    # Even a malformed id goes in the graph: references to it then resolve.
    graph_id = tid if type(tid) is str and tid else None
    spec = TaskSpec(
        tid, _command(get("command", MISSING), bad), _depends_on(i, graph_id, get, graph, bad),
        _inputs(i, get("inputs", MISSING), graph, bad), _outputs(i, get("outputs", MISSING), graph, bad),
        _integer("retries", get("retries", 0), 0, limits.RETRIES, bad),
        _seconds("retry_backoff", get("retry_backoff", 10.0), 0.0, limits.RETRY_BACKOFF, bad),
        _timeout(get("timeout"), bad),
        _integer("priority", get("priority", 0), -limits.PRIORITY, limits.PRIORITY, bad),
        _env(get("env", MISSING), bad),
        _integer("slots", get("slots", 1), 1, limits.SLOTS, bad),
        _results(get("results"), bad),
        node_spec(raw, bad) if not NODE_KEYS.isdisjoint(raw) else None)
    if not bad:
        _datastore_paths(spec, bad)
    if not bad:
        _whole_task(spec, bad)
    if bad:
        where = locate(i, tid)
        problems += [(i, f"{where}: {p}") for p in bad]
        return None
    return spec


def _fast_path(i: int, raw: dict, graph: Graph) -> TaskSpec | None:
    """The bulk of big generated files: id, a short command and plain
    dependencies, all well-formed; a dict lookup per absent key. Anything
    else (None) goes through the full checks."""
    if not _SIMPLE_KEYS.issuperset(raw):
        return None
    get = raw.get
    tid = get("id")
    command = get("command")
    deps = get("depends_on", _NO_DEPS)
    if (type(tid) is str and len(tid) <= limits.ID_LENGTH
            and ((tid.isalnum() and tid.isascii()) or _ID_FULLMATCH(tid))
            and type(command) is str and command and not command.isspace()
            and len(command) <= _SURELY_SHORT and "\0" not in command
            and type(deps) is list and len(deps) <= limits.LIST_ENTRIES
            and ((len(deps) == 1 and type(deps[0]) is str) or all(type(d) is str for d in deps))):
        deps = tuple(deps)
        graph.add(i, tid, deps)
        return TaskSpec(tid, command, deps, (), (), 0, 10.0, None, 0, {}, 1)
    return None


# -------------------------------------------------------------- the fields


def _task_id(tid: Any, bad: list[str]) -> Any:
    if tid is MISSING:
        bad.append('missing "id"')
        return None
    problem = id_problem(tid)
    if problem:
        bad.append(f"id: {problem}")
    return tid


def _command(command: Any, bad: list[str], name: str = "command") -> Any:
    """A command (``name``: which key, e.g. a script's "pre"): a shell
    string or an argv list, within :mod:`ecloud.limits`."""
    if command is MISSING:
        bad.append(f'missing "{name}"')
    elif type(command) is str:
        if not command or command.isspace():
            bad.append(f"{name}: must not be empty")
        else:
            _text_limit(name, command, limits.COMMAND_BYTES, bad)
    elif type(command) is list:
        command = tuple(command)
        if not command:
            bad.append(f"{name}: an argv list must not be empty")
        elif len(command) > limits.COMMAND_ARGS:
            bad.append(f"{name}: {len(command):,} arguments, at most "
                       f"{limits.COMMAND_ARGS:,} allowed")
        elif not all(type(a) is str for a in command):
            bad += [f"{name}[{k}]: expected a string, got {kind(a)}"
                    for k, a in enumerate(command) if type(a) is not str]
        elif not command[0]:
            bad.append(f"{name}[0]: the program name must not be empty")
        else:
            for k, arg in enumerate(command):
                _text_limit(f"{name}[{k}]", arg, limits.COMMAND_BYTES, bad)
    else:
        bad.append(f"{name}: expected a string or a list of strings, got {kind(command)}")
    return command


def _text_limit(field: str, text: str, most: int, bad: list[str]) -> None:
    """No NUL, and at most ``most`` bytes in UTF-8."""
    if "\0" in text:
        bad.append(f"{field}: must not contain a NUL character")
    size = utf8_length(text) if len(text) > most // 4 else 0
    if size > most:
        bad.append(f"{field}: {size:,} bytes, at most {most:,} allowed")


def _depends_on(i: int, graph_id: str | None, get, graph: Graph, bad: list[str]) -> tuple:
    deps = get("depends_on", MISSING)
    if deps is MISSING:
        graph.add(i, graph_id, ())
        return ()
    if type(deps) is not list:
        graph.add(i, graph_id, ())
        bad.append(f"depends_on: expected a list of task ids, got {kind(deps)}")
        return ()
    deps = tuple(deps)
    if len(deps) > limits.LIST_ENTRIES:
        bad.append(f"depends_on: {len(deps):,} entries, at most {limits.LIST_ENTRIES:,} allowed")
        graph.add(i, graph_id, ())  # not one problem per entry too
        return ()
    if not all(type(d) is str for d in deps):
        bad += [f"depends_on[{k}]: expected a task id (string), got {kind(d)}"
                for k, d in enumerate(deps) if type(d) is not str]
        deps = tuple(d for d in deps if type(d) is str)
    graph.add(i, graph_id, deps)
    return deps


def _outputs(i: int, outputs: Any, graph: Graph, bad: list[str]) -> tuple:
    if outputs is MISSING:
        return ()
    if type(outputs) is not list:
        bad.append(f"outputs: expected a list of paths, got {kind(outputs)}")
        return ()
    if len(outputs) > limits.LIST_ENTRIES:
        bad.append(f"outputs: {len(outputs):,} entries, at most {limits.LIST_ENTRIES:,} allowed")
    for k, out in enumerate(outputs):
        problem = path_problem(out)
        if problem:
            bad.append(f"outputs[{k}]: {problem}")
    graph.outputs[i] = tuple(o for o in outputs if type(o) is str)
    return tuple(outputs)


def _integer(field: str, value: Any, low: int, high: int, bad: list[str]) -> Any:
    if type(value) is not int or not low <= value <= high:
        bad.append(f"{field}: expected an integer from {low:,} to {high:,}, got {kind(value)}")
    return value


def _seconds(field: str, value: Any, low: float, high: float, bad: list[str]) -> Any:
    if is_number(value) and low <= value <= high:
        return float(value)
    bad.append(f"{field}: expected a number of seconds from {low:g} to {high:,.0f}, "
               f"got {kind(value)}")
    return value


def _timeout(value: Any, bad: list[str]) -> Any:
    if value is None:
        return None
    if is_number(value) and 0 < value <= limits.TIMEOUT:
        return float(value)
    bad.append(f"timeout: expected a number of seconds > 0 and at most {limits.TIMEOUT:,.0f}, "
               f"or null, got {kind(value)}")
    return value


def _env(env: Any, bad: list[str]) -> Any:
    if env is MISSING:
        return {}
    if type(env) is not dict:
        bad.append(f"env: expected an object of string values, got {kind(env)}")
        return env
    if len(env) > limits.ENV_VARS:
        bad.append(f"env: {len(env):,} variables, at most {limits.ENV_VARS:,} allowed")
    for name, value in env.items():
        if len(name) > limits.ENV_NAME_LENGTH or not _ENV_NAME_RE.fullmatch(name):
            shown = name if len(name) <= 40 else name[:37] + "..."
            bad.append(f"env: {quote(shown)} is not a valid variable name (1-"
                       f"{limits.ENV_NAME_LENGTH} letters, digits and _, not starting with a "
                       "digit)")
        if type(value) is not str:
            bad.append(f"env[{quote(name)}]: expected a string, got {kind(value)}")
        else:
            _text_limit(f"env[{quote(name)}]", value, limits.ENV_VALUE_BYTES, bad)
    return env


def _results(results: Any, bad: list[str]) -> Any:
    if results is not None:
        problem = path_problem(results, "the datastore's root")
        if problem:
            bad.append(f"results: {problem}")
    return results


def _datastore_paths(spec: TaskSpec, bad: list[str]) -> None:
    """Paths on the datastore - an input, or the results folder and an
    output under it - leave room for the datastore's root within the
    system's PATH_MAX (:data:`limits.DATASTORE_PATH_BYTES`)."""
    most = limits.DATASTORE_PATH_BYTES
    for k, item in enumerate(spec.inputs):
        if not item.from_task and utf8_length(item.path) > most:
            bad.append(f"inputs[{k}]: a datastore path of {utf8_length(item.path):,} bytes, at "
                       f"most {most:,} allowed (room is kept for the datastore's root)")
    folder = utf8_length(spec.results_folder)
    for k, out in enumerate(spec.outputs):
        if folder + 1 + utf8_length(out) > most:
            bad.append(f"outputs[{k}]: stored as {spec.results_folder[:30]}.../{out[:30]}..., a "
                       f"datastore path of {folder + 1 + utf8_length(out):,} bytes, at most "
                       f"{most:,} allowed (room is kept for the datastore's root)")


def _whole_task(spec: TaskSpec, bad: list[str]) -> None:
    """The task as the log stores it must fit :data:`limits.TASK_BYTES`.
    Measured only when its parts could add up to that much."""
    from ecloud.events.codec import converter

    rough = (sum(map(len, spec.command)) if type(spec.command) is tuple else len(spec.command))
    rough += sum(map(len, spec.depends_on)) + sum(len(k) + len(v) for k, v in spec.env.items())
    rough += sum(len(i.path) + len(i.name or "") + 80 for i in spec.inputs)
    rough += sum(map(len, spec.outputs))
    if rough * 4 + 64 * (len(spec.depends_on) + len(spec.outputs) + len(spec.env)) \
            < limits.TASK_BYTES:
        return
    import orjson

    size = len(orjson.dumps(converter.unstructure(spec, TaskSpec)))
    if size > limits.TASK_BYTES:
        bad.append(f"the task is {size:,} bytes as JSON, at most {limits.TASK_BYTES:,} allowed")


# ------------------------------------------------------ workflow node keys


def node_spec(raw: dict, bad: list[str]) -> NodeSpec:
    """The workflow keys of a task (:data:`NODE_KEYS`) as its NodeSpec.
    ``workdir`` stays as written here; :func:`ecloud.taskfiles.taskfile.parse_tasks`
    makes a relative one absolute (relative to the task file)."""
    get = raw.get
    pre, post = get("pre"), get("post")
    if pre is not None:
        pre = _command(pre, bad, "pre")
    if post is not None:
        post = _command(post, bad, "post")
    pre_skip = _exit_status("pre_skip", get("pre_skip"), bad, low=1)
    if pre_skip is not None and pre is None:
        bad.append("pre_skip: needs a pre script (the exit status it names is the pre script's)")
    flags = {name: _flag(name, get(name, False), bad) for name in ("final", "noop", "done")}
    category = get("category")
    if category is not None and not is_category(category):
        bad.append(f"category: expected a name of 1-{limits.ID_LENGTH} letters, digits and "
                   f"._-:/@+ (like an id; it may start with +), got {kind(category)}")
    workdir = get("workdir")
    if workdir is not None:
        if type(workdir) is not str or not workdir or "\0" in workdir \
                or utf8_length(workdir) > limits.PATH_BYTES:
            bad.append(f"workdir: expected a directory path (relative to the task file, or "
                       f"absolute) of at most {limits.PATH_BYTES:,} bytes, got {kind(workdir)}")
    streams = {}
    for name in ("stdin", "stdout", "stderr"):
        value = streams[name] = get(name)
        if value is not None and (type(value) is not str or not value or "\0" in value
                                  or utf8_length(value) > limits.PATH_BYTES):
            bad.append(f"{name}: expected a file path (relative to the working directory, or "
                       f"absolute) of at most {limits.PATH_BYTES:,} bytes, got {kind(value)}")
    if flags["final"]:
        if raw.get("depends_on"):
            bad.append("final: a final task runs after every other task of its file; it "
                       "cannot have depends_on")
        if flags["done"]:
            bad.append("final: a final task cannot be done (it runs at the end of every run)")
    return NodeSpec(
        pre=pre, post=post, pre_skip=pre_skip,
        retry_unless_exit=_exit_status("retry_unless_exit", get("retry_unless_exit"), bad,
                                       low=-255),
        abort_on=_abort_on(get("abort_on"), bad),
        final=flags["final"], noop=flags["noop"], done=flags["done"], category=category,
        workdir=workdir, stdin=streams["stdin"], stdout=streams["stdout"],
        stderr=streams["stderr"])


def is_category(name: Any) -> bool:
    """A category name: like a task id, and may start with ``+`` (DAGMan's
    global categories, which splices do not scope)."""
    return (type(name) is str and 0 < len(name) <= limits.ID_LENGTH
            and ID_RE.fullmatch(name[1:] if name.startswith("+") else name) is not None)


def _exit_status(name: str, value: Any, bad: list[str], low: int = 0) -> Any:
    """An exit status a task file names: ``low``..255, or null. A negative
    one (``retry_unless_exit``, ``abort_on.exit``) is a signal: -9 is an
    attempt SIGKILL ended, as DAGMan's ``$RETURN`` says it."""
    if value is None:
        return None
    if type(value) is not int or not low <= value <= 255:
        bad.append(f"{name}: expected an exit status from {low} to 255, got {kind(value)}")
    return value


def _flag(name: str, value: Any, bad: list[str]) -> Any:
    if type(value) is not bool:
        bad.append(f"{name}: expected true or false, got {kind(value)}")
    return value


_ABORT_KEYS = frozenset(["exit", "return"])


def _abort_on(value: Any, bad: list[str]) -> AbortOn | None:
    if value is None:
        return None
    if type(value) is not dict:
        bad.append(f'abort_on: expected {{"exit": N, "return": R}}, got {kind(value)}')
        return None
    bad += [f"abort_on: {unknown_key(k, _ABORT_KEYS)}" for k in value if k not in _ABORT_KEYS]
    if "exit" not in value:
        bad.append('abort_on: missing "exit" (the exit status that aborts the workflow)')
        return None
    exit_status = _exit_status("abort_on.exit", value["exit"], bad, low=-255)
    returns = _exit_status("abort_on.return", value.get("return"), bad)
    return AbortOn(exit_status, returns)


def workflow_limits(value: Any, bad: list[str]) -> WorkflowLimits | None:
    """A task file's top-level ``"workflow"`` object: how many of its tasks
    run at once, in all and per category."""
    if value is None:
        return None
    if type(value) is not dict:
        bad.append(f'workflow: expected {{"max_running": N, "categories": {{...}}}}, '
                   f"got {kind(value)}")
        return None
    keys = ("max_running", "categories")
    bad += [f"workflow: {unknown_key(k, keys)}" for k in value if k not in keys]
    most = value.get("max_running")
    if most is not None:
        most = _integer("workflow.max_running", most, 1, limits.MAX_RUNNING, bad)
    categories = value.get("categories", {})
    if type(categories) is not dict:
        bad.append(f"workflow.categories: expected an object of category -> most running, "
                   f"got {kind(categories)}")
        categories = {}
    for name, count in categories.items():
        if not is_category(name):
            bad.append(f"workflow.categories: {quote(name)} is not a category name")
        _integer(f"workflow.categories[{quote(name)}]", count, 1, limits.MAX_RUNNING, bad)
    return WorkflowLimits(most, dict(categories))


# ------------------------------------------------------------------ inputs


def _inputs(i: int, inputs: Any, graph: Graph, bad: list[str]) -> tuple:
    if inputs is MISSING:
        return ()
    if type(inputs) is not list:
        bad.append(f"inputs: expected a list, got {kind(inputs)}")
        return ()
    if len(inputs) > limits.LIST_ENTRIES:
        bad.append(f"inputs: {len(inputs):,} entries, at most {limits.LIST_ENTRIES:,} allowed")
    specs = []
    froms = []
    for k, inp in enumerate(inputs):
        spec = _input(k, inp, bad, froms)
        if spec is not None:
            specs.append(spec)
    if froms:
        graph.froms[i] = froms
    return tuple(specs)


def _input(k: int, inp: Any, bad: list[str], froms: list) -> InputSpec | None:
    at = f"inputs[{k}]"
    if type(inp) is str:
        problem = path_problem(inp, "the datastore's root")
        if problem:
            bad.append(f"{at}: {problem}")
            return None
        return InputSpec(path=inp)
    if type(inp) is not dict:
        bad.append(f'{at}: expected a path or an object with "path", got {kind(inp)}')
        return None
    src = inp.get("from", MISSING)
    allowed = _STORE_INPUT_KEYS if src is MISSING else _FROM_INPUT_KEYS
    for key in inp:
        if key not in allowed:
            bad.append(f'{at}: "sha256" is only for datastore inputs, not with "from"'
                       if key == "sha256" else f"{at}: {unknown_key(key, allowed)}")
    path, name, sha = inp.get("path", MISSING), inp.get("name"), inp.get("sha256")
    before = len(bad)
    if path is MISSING:
        bad.append(f'{at}: missing "path"')
    else:
        problem = path_problem(path, "the datastore's root" if src is MISSING
                               else "the upstream task's results")
        if problem:
            bad.append(f"{at}.path: {problem}")
    if name is not None and (problem := path_problem(name)):
        bad.append(f"{at}.name: {problem}")
    if sha is not None and src is MISSING:
        if type(sha) is not str or not _SHA256_RE.fullmatch(sha):
            bad.append(f"{at}.sha256: expected 64 hexadecimal digits, got {kind(sha)}")
        else:
            sha = sha.lower()
    if src is MISSING:
        src = None
    elif type(src) is not str or not src:
        bad.append(f"{at}.from: expected a task id, got {kind(src)}")
    elif len(bad) == before:  # checked against the upstream task once all tasks are read
        froms.append((k, src, path))
    if len(bad) != before:
        return None
    return InputSpec(path=path, name=name, sha256=sha, from_task=src)


# ----------------------------------------------------------------- helpers


def id_problem(tid: Any) -> str | None:
    if type(tid) is not str:
        return f"expected a string, got {kind(tid)}"
    if len(tid) <= limits.ID_LENGTH and ID_RE.fullmatch(tid):
        return None
    if not tid:
        return "must not be empty"
    if len(tid) > limits.ID_LENGTH:
        return f"is {len(tid)} characters long, at most {limits.ID_LENGTH} are allowed"
    bad = _ID_CHAR_RE.search(tid)
    if bad:
        char = bad.group()
        what = ("whitespace" if char.isspace() else "a NUL character" if char == "\0"
                else f"character {quote(char)}")
        return f"{quote(tid)} contains {what}; ids use letters, digits and . _ - : / @ +"
    return (f"{quote(tid)}: each /-separated part must start with a letter, digit or _ "
            "(no empty, leading or trailing parts)")


def path_problem(path: Any, root: str = "the task's working directory") -> str | None:
    """Why ``path`` is not a relative, normalized path of at most
    :data:`limits.PATH_BYTES` bytes (None: it is one)."""
    if type(path) is not str:
        return f"expected a relative path (string), got {kind(path)}"
    if not path:
        return "must not be empty"
    if "\0" in path:
        return "must not contain a NUL character"
    if utf8_length(path) > limits.PATH_BYTES:
        return f"is {utf8_length(path):,} bytes long, at most {limits.PATH_BYTES:,} allowed"
    shown = quote(path if len(path) <= 60 else path[:57] + "...")
    if path.startswith("/"):
        return f"{shown} is absolute; paths are relative to {root}"
    parts = path.split("/")
    if ".." in parts:
        return f"{shown} must not contain '..' (it may not climb out of {root})"
    if "." in parts or "" in parts:
        return (f"{shown} is not normalized: no '.' parts and no leading, trailing or doubled "
                "'/'")
    return None


def is_number(value: Any) -> bool:
    t = type(value)
    return t is int or (t is float and math.isfinite(value))


def unknown_key(key: str, valid) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"unknown key {quote(key)}{hint}"


def kind(value: Any) -> str:
    """``value`` described the JSON way, with short scalars shown."""
    if value is None:
        return "null"
    if value is True or value is False:
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        shown = str(value) if abs(value) < 10**30 else f"of {len(str(abs(value)))} digits"
        return f"integer {shown}"
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
