"""WfCommons workflow instances as ecloud task files (``ecloud import wfformat``).

Pure: :func:`load_instance` parses bytes, :func:`convert` turns the parsed
instance into task dicts and a :class:`Report`; ``ecloud/cli/imports.py``
reads, writes and prints. Three shapes, told apart by structure
(``schemaVersion`` is recorded, not trusted): WfFormat 1.5+
(``workflow.specification`` with tasks by ``id`` and ``files``, and an
optional ``workflow.execution`` with runtimes, commands, cores, machines);
WfFormat 1.3-1.4 (one ``workflow.tasks`` list whose tasks carry it all,
``files`` with ``link`` input/output, tasks naming each other by ``name``);
WorkflowHub and WfFormat 1.0-1.2 (the same as ``workflow.jobs``, ``runtime``
and ``size``, 1.0 with ``arguments`` but no program: only a replay runs).

Dependencies are the union of all ``parents`` and ``children`` lists (they may
disagree), plus an edge from a file's writer to each reader, which takes it
``{"from": writer, "path": ...}``. A file no task writes (a workflow input) is
left out unless ``inputs_from`` names a datastore folder. Ids and file names
are mapped into what ecloud accepts and made unique deterministically. All
linear; tasks come out parents first, ties in instance order.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import shlex
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ecloud import limits
from ecloud.errors import UserError, ValidationError
from ecloud.taskfiles.taskfields import path_problem
from ecloud.taskfiles.taskgraph import ID_RE

#: the replay command: ``sh -c SCRIPT wfreplay SECONDS SIZE PATH SIZE PATH ...``
REPLAY_SCRIPT = ('sleep "$1" || exit; shift; while [ "$#" -gt 1 ]; do case $2 in */*) '
                 'mkdir -p -- "${2%/*}" || exit;; esac; head -c "$1" /dev/zero > "$2" || exit; '
                 'shift 2; done')
#: outputs one replayed command can write within ecloud's argv limit
REPLAY_MAX_OUTPUTS = (limits.COMMAND_ARGS - 5) // 2
MAX_PROBLEMS = 50  # listed in one error, then "... and N more"
SHELL_OPERATORS = frozenset([">", ">>", "<", "<<", "|", "||", "&&", ";", "&", "2>", "2>>", "1>",
                             "1>>", "&>", "2>&1", "1>&2", ">&2"])
RESERVED_TOP = frozenset(["stdout", "stderr", ".ecloud"])  # the worker's, in the working dir
_ID_BAD = re.compile(r"[^A-Za-z0-9._:@+/-]")
_PATH_BAD = re.compile(r"[^A-Za-z0-9._+@=,-]")
_MAX_PATH, _MAX_SEGMENT = 1024, 200
_SPEC_USED = {"id", "name", "parents", "children", "inputFiles", "outputFiles", "runtimeInSeconds"}
_EXEC_USED = {"id", "runtimeInSeconds", "command", "coreCount", "priority"}
_EXEC_IGNORED = {"executedAt", "avgCPU", "readBytes", "writtenBytes", "memoryInBytes",
                 "energyInKWh", "avgPowerInW", "machines", "machine"}
_FLAT_USED = {"name", "id", "parents", "children", "files", "runtime", "runtimeInSeconds",
              "command", "arguments", "cores", "priority"}
_FLAT_IGNORED = {"type", "category", "avgCPU", "bytesRead", "bytesWritten", "readBytes",
                 "writtenBytes", "memory", "memoryInBytes", "energy", "avgPower", "machine"}
_FILE_KEYS = {"name", "path", "size", "sizeInBytes", "link"}
FORMATS = {"spec": "WfFormat 1.5+", "tasks": "WfFormat 1.3-1.4",
           "jobs": "WorkflowHub/WfFormat 1.0-1.2"}
_VERSIONS = {"spec": {"1.5", "1.6"}, "tasks": {"1.3", "1.4"},
             "jobs": {"0.1", "0.2", "1.0", "1.1", "1.2"}}  # usual with each layout



@dataclass
class Note:
    """Something the task file does not carry, or carries changed."""

    kind: str  # ecloud/cli/imports.py says what each means
    count: int = 0
    example: str | None = None


@dataclass
class Report:
    """What a conversion read, made and left out; :meth:`as_dict` for JSON."""

    format: str = ""
    schema_version: str | None = None
    name: str | None = None
    tasks: int = 0
    edges: int = 0
    files: int = 0
    produced_files: int = 0
    workflow_inputs: int = 0
    total_runtime_seconds: float = 0.0
    replay_scale: float | None = None
    max_slots: int = 1
    notes: dict[str, Note] = field(default_factory=dict)

    def note(self, kind: str, count: int = 1, example: Any = None) -> None:
        if count > 0:
            entry = self.notes.setdefault(kind, Note(kind))
            entry.count += count
            if entry.example is None and example is not None:
                entry.example = str(example)

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["total_runtime_seconds"] = round(self.total_runtime_seconds, 6)
        body["notes"] = [asdict(n) for n in self.notes.values()]
        return body


@dataclass
class _Task:
    """One task as read, whatever the shape."""

    key: str  # what other tasks call it: the id, or up to 1.4 the name
    where: str
    alias: str | None = None  # up to 1.4: its id
    parents: list = field(default_factory=list)
    children: list = field(default_factory=list)
    inputs: list = field(default_factory=list)  # file ids
    outputs: list = field(default_factory=list)
    runtime: Any = None
    command: Any = None
    arguments: Any = None  # WorkflowHub's, without a program
    cores: Any = None
    priority: Any = None


class _Reader:
    """The problems (fatal, listed together) and the report, while reading."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.problems: list[str] = []
        self.ignored: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()

    def fields(self, obj: dict, prefix: str, used: set, ignored: set = frozenset()) -> None:
        for key in obj:
            if key not in used:
                (self.ignored if key in ignored else self.unknown)[f"{prefix}.{key}"] += 1

    def items(self, value: Any, where: str, of: type | None = None) -> list:
        """``value`` if it is a list (of ``of``), [] if it is absent; else a problem."""
        if value is None or (type(value) is list and (of is None or all(type(v) is of
                                                                         for v in value))):
            return value or []
        self.problems.append(f"{where}: expected a list{' of strings' if of is str else ''}")
        return []

    def strings(self, value: Any, where: str) -> list[str]:
        return self.items(value, where, str)

    def fail(self, source: str) -> None:
        if self.problems:
            shown = self.problems[:MAX_PROBLEMS]
            if len(self.problems) > MAX_PROBLEMS:
                shown.append(f"... and {len(self.problems) - MAX_PROBLEMS} more problems")
            raise ValidationError(shown, source=source)


# ------------------------------------------------------------------ reading


def load_instance(raw: bytes, source: str) -> Any:
    """Parse an instance's bytes; a :class:`UserError` saying why not."""
    import orjson

    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if not raw.strip():
        raise UserError(f"{source}: the file is empty (expected a WfCommons instance, JSON)")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UserError(f"{source}: not JSON: {exc.msg} at line {exc.lineno}, column "
                        f"{exc.colno}") from None


def _detect(data: Any, source: str) -> tuple[str, dict]:
    what = (f"{source}: unknown format: not a WfCommons instance (an object whose \"workflow\" "
            "has \"specification\" (WfFormat 1.5+), \"tasks\" (1.3-1.4) or \"jobs\" "
            "(WorkflowHub, WfFormat 1.0-1.2)): ")
    if type(data) is not dict:
        raise UserError(what + "the top level is not an object")
    workflow = data.get("workflow")
    if type(workflow) is not dict:
        raise UserError(what + 'no "workflow" object')
    if type(workflow.get("specification")) is dict:
        return "spec", workflow
    for key in ("tasks", "jobs"):
        if type(workflow.get(key)) is list:
            return key, workflow
    raise UserError(what + '"workflow" has none of them')


def _read_spec(workflow: dict, rd: _Reader, files: dict[str, Any]) -> list[_Task]:
    spec = workflow["specification"]
    for k, f in enumerate(rd.items(spec.get("files"), "workflow.specification.files")):
        if type(f) is not dict or type(f.get("id")) is not str or not f["id"]:
            rd.problems.append(f'workflow.specification.files[{k}]: expected an object with "id"')
        else:
            files.setdefault(f["id"], f.get("sizeInBytes"))
    tasks = []
    for k, t in enumerate(rd.items(spec.get("tasks"), "workflow.specification.tasks")):
        where = f"workflow.specification.tasks[{k}]"
        if type(t) is not dict or type(t.get("id")) is not str or not t["id"]:
            rd.problems.append(f'{where}: expected a task object with a non-empty "id"')
            continue
        rd.fields(t, "specification.tasks[]", _SPEC_USED)
        tasks.append(_Task(
            t["id"], where, None, rd.strings(t.get("parents"), f"{where}.parents"),
            rd.strings(t.get("children"), f"{where}.children"),
            rd.strings(t.get("inputFiles"), f"{where}.inputFiles"),
            rd.strings(t.get("outputFiles"), f"{where}.outputFiles"),
            runtime=t.get("runtimeInSeconds")))
    execution = workflow.get("execution")
    if type(execution) is not dict:
        rd.report.note("no_execution")
        return tasks
    by_key = {t.key: t for t in tasks}
    seen: set[str] = set()
    for k, e in enumerate(rd.items(execution.get("tasks"), "workflow.execution.tasks")):
        if type(e) is not dict or type(e.get("id")) is not str:
            rd.problems.append(f'workflow.execution.tasks[{k}]: expected a task object with "id"')
            continue
        task = by_key.get(e["id"])
        if task is None or e["id"] in seen:
            rd.report.note("stray_execution", 1, e["id"])
            continue
        seen.add(e["id"])
        rd.fields(e, "execution.tasks[]", _EXEC_USED, _EXEC_IGNORED)
        task.runtime = e.get("runtimeInSeconds", task.runtime)
        task.command, task.cores, task.priority = map(e.get, ("command", "coreCount", "priority"))
    _machines(execution, rd)
    return tasks


def _read_flat(workflow: dict, key: str, rd: _Reader, files: dict[str, Any]) -> list[_Task]:
    tasks = []
    for k, t in enumerate(workflow[key]):
        where = f"workflow.{key}[{k}]"
        if type(t) is not dict or type(t.get("name")) is not str or not t["name"]:
            rd.problems.append(f'{where}: expected a task object with a non-empty "name"')
            continue
        rd.fields(t, f"{key}[]", _FLAT_USED, _FLAT_IGNORED)
        task = _Task(t["name"], where, t["id"] if type(t.get("id")) is str else None,
                     rd.strings(t.get("parents"), f"{where}.parents"),
                     rd.strings(t.get("children"), f"{where}.children"),
                     runtime=t.get("runtimeInSeconds", t.get("runtime")),
                     command=t.get("command"), arguments=t.get("arguments"),
                     cores=t.get("cores"), priority=t.get("priority"))
        for j, f in enumerate(rd.items(t.get("files"), f"{where}.files")):
            if type(f) is not dict or type(f.get("name")) is not str or not f["name"]:
                rd.problems.append(f'{where}.files[{j}]: expected a file object with a "name"')
                continue
            rd.fields(f, f"{key}[].files[]", _FILE_KEYS)
            fid = (f["path"] + f["name"]) if type(f.get("path")) is str else f["name"]
            size = f.get("sizeInBytes", f.get("size"))
            link = str(f.get("link", "")).lower()
            if link == "input":
                task.inputs.append(fid)
                files.setdefault(fid, size)
            elif link == "output":
                task.outputs.append(fid)
                files[fid] = size  # the writer's size wins
            else:
                rd.report.note("bad_link", 1, f"{where}.files[{j}]: {f.get('link')!r}")
        tasks.append(task)
    _machines(workflow, rd)
    return tasks


def _machines(holder: dict, rd: _Reader) -> None:
    rd.report.note("machines", len(m) if type(m := holder.get("machines")) is list else 0)


# ----------------------------------------------------------------- converting


def convert(data: Any, *, source: str = "", replay_scale: float | None = None,
            inputs_from: str | None = None) -> tuple[list[dict], Report]:
    """The task dicts of a parsed instance (parents first), and the report.

    Raises :class:`UserError` for what is not an instance or a bad
    ``inputs_from``, and :class:`ValidationError` listing every problem
    (malformed tasks, unknown or duplicate tasks, a cycle, tasks with no
    command to run).
    """
    if inputs_from is not None and (problem := path_problem(inputs_from, "the datastore's root")):
        raise UserError(f"--inputs-from: {problem}")
    shape, workflow = _detect(data, source)
    version = data.get("schemaVersion")
    report = Report(FORMATS[shape], version if type(version) is str else None,
                    data.get("name") if type(data.get("name")) is str else None,
                    replay_scale=replay_scale)
    report.note("version", int(report.schema_version not in _VERSIONS[shape]), version)
    rd = _Reader(report)
    files: dict[str, Any] = {}
    tasks = _read_spec(workflow, rd, files) if shape == "spec" else \
        _read_flat(workflow, shape, rd, files)
    if not tasks and not rd.problems:
        rd.problems.append(f"workflow{'.specification' if shape == 'spec' else ''}.tasks: "
                           "no task")
    keys = _index(tasks, rd, shape != "spec")
    rd.fail(source)
    parents = _dependencies(tasks, keys, rd)
    rd.fail(source)
    ids = _unique([t.key for t in tasks], _map_id, "id", report)
    names = list(dict.fromkeys(f for t in tasks for f in (*t.outputs, *t.inputs)))
    paths = dict(zip(names, _unique(names, _map_path, "path", report), strict=True))
    report.files = len(paths)
    inputs = _data_edges(tasks, parents, ids, paths, files, report, inputs_from)
    order = _order(tasks, parents, rd)
    rd.fail(source)
    commands = _commands(tasks, paths, files, rd, replay_scale)
    rd.fail(source)
    out = []
    for i in order:
        task: dict[str, Any] = {"id": ids[i], "command": commands[i]}
        if parents[i]:
            task["depends_on"] = [ids[j] for j in parents[i]]
        if inputs[i]:
            task["inputs"] = inputs[i]
        if tasks[i].outputs:
            task["outputs"] = list(dict.fromkeys(paths[f] for f in tasks[i].outputs))
        slots = _number(tasks[i].cores, 1, "cores", report, 1, limits.SLOTS, math.ceil)
        if slots > 1:
            task["slots"] = slots
            report.max_slots = max(report.max_slots, slots)
        priority = _number(tasks[i].priority, 0, "priority", report, -limits.PRIORITY,
                           limits.PRIORITY, round)
        if priority:
            task["priority"] = priority
        out.append(task)
    report.tasks = len(out)
    report.edges = sum(map(len, parents))
    for kind, counter in (("ignored", rd.ignored), ("unknown", rd.unknown)):
        for name, count in sorted(counter.items()):
            report.note(f"{kind}:{name}", count)
    return out, report


def _index(tasks: list[_Task], rd: _Reader, by_name: bool) -> dict[str, int]:
    """What a reference resolves to: a task's key; up to 1.4 also its ``id``
    when no name takes it (the first task wins an ambiguous one)."""
    keys: dict[str, int] = {}
    for i, t in enumerate(tasks):
        first = keys.setdefault(t.key, i)
        if first != i:
            rd.problems.append(f"{t.where}: duplicate task {'name' if by_name else 'id'} "
                               f"{t.key!r}, first at {tasks[first].where}")
    for i, t in enumerate(tasks):
        if t.alias is not None:
            keys.setdefault(t.alias, i)
    return keys


def _dependencies(tasks: list[_Task], keys: dict[str, int], rd: _Reader) -> list[dict]:
    """Each task's parents (an ordered set of positions): its own ``parents``
    and every task that lists it among its ``children``."""
    parents: list[dict[int, None]] = [{} for _ in tasks]
    up: set[tuple[int, int]] = set()
    down: set[tuple[int, int]] = set()
    for i, t in enumerate(tasks):
        for kind, refs in (("parents", t.parents), ("children", t.children)):
            for ref in refs:
                j = keys.get(ref)
                if j is None:
                    rd.problems.append(f"{t.where}.{kind}: unknown task {ref!r}")
                elif j == i:
                    rd.problems.append(f"{t.where}.{kind}: the task names itself (a cycle)")
                elif kind == "parents":
                    parents[i][j] = None
                    up.add((j, i))
                else:
                    parents[j][i] = None
                    down.add((i, j))
    if up and down and (one_sided := up ^ down):  # both sides are used: where they disagree
        p, c = min(one_sided)
        rd.report.note("one_sided", len(one_sided), f"{tasks[p].key} -> {tasks[c].key}")
    return parents


def _unique(raws: list[str], mapping, what: str, report: Report) -> list[str]:
    """``mapping`` of each of ``raws``, made unique with a suffix (ids
    ``-2``, ``-3``..., paths ``_2``...) in order; the ones the mapping left
    alone are served first."""
    mapped = [mapping(r) for r in raws]
    taken = set(mapped)
    out: list[str] = list(mapped)
    given: set[str] = set()
    for keep in (True, False):
        for i, m in enumerate(mapped):
            if (m == raws[i]) != keep:
                continue
            if not keep:
                report.note(f"{what}s_mapped", 1, f"{raws[i]!r} -> {m!r}")
            new, k = m, 1
            while new in given or (new != m and new in taken):
                k += 1
                new = (m[:limits.ID_LENGTH - 8].rstrip("/") + f"-{k}" if what == "id"
                       else f"{m}_{k}")
            if new != m:
                report.note(f"{what}_collisions", 1, f"{raws[i]!r} -> {new!r}")
            given.add(new)
            out[i] = new
    return out


def _map_id(raw: str) -> str:
    text = _ID_BAD.sub("_", raw)
    text = "/".join(p if (p[0].isalnum() or p[0] == "_") else "_" + p
                    for p in text.split("/") if p) or "task"
    if len(text) > limits.ID_LENGTH:
        text = text[:limits.ID_LENGTH - 11].rstrip("/") + "_" + _digest(raw)
    assert ID_RE.fullmatch(text), text
    return text


def _map_path(raw: str) -> str:
    parts = []
    for part in raw.split("/"):
        if part not in ("", "."):
            part = "__" if part == ".." else _PATH_BAD.sub("_", part)
            parts.append(part if len(part) <= _MAX_SEGMENT
                         else part[:_MAX_SEGMENT - 11] + "_" + _digest(part))
    parts = parts or ["file"]
    if parts[0] in RESERVED_TOP:
        parts[0] += "_"
    text = "/".join(parts)
    return text if len(text) <= _MAX_PATH else f"long/{parts[-1][:_MAX_SEGMENT - 11]}_" \
        f"{_digest(raw)}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def _data_edges(tasks: list[_Task], parents: list[dict], ids: list[str],
                paths: dict[str, str], files: dict[str, Any], report: Report,
                inputs_from: str | None) -> list[list[dict]]:
    """Each task's ``inputs``: a file another task writes comes from that
    task (a parent if one of its writers is, else the first writer, which
    becomes a parent); a workflow input from ``inputs_from``, or not at all."""
    writers: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        for f in dict.fromkeys(t.outputs):
            writers.setdefault(f, []).append(i)
    report.produced_files = len(writers)
    many = [f for f, w in writers.items() if len(w) > 1]
    report.note("many_writers", len(many), many[0] if many else None)
    workflow_inputs: dict[str, None] = {}
    inputs: list[list[dict]] = []
    for i, t in enumerate(tasks):
        mine: list[dict] = []
        for f in dict.fromkeys(t.inputs):
            path = paths[f]
            others = [w for w in writers.get(f, ()) if w != i]
            if not others:
                workflow_inputs[f] = None
                if inputs_from is not None:
                    mine.append({"path": f"{inputs_from}/{path}", "name": path})
                continue
            writer = next((w for w in others if w in parents[i]), None)
            if writer is None:
                writer = others[0]
                parents[i][writer] = None
                report.note("implied", 1, f"{tasks[writer].key} -> {t.key}")
            entry = {"from": ids[writer], "path": path}
            if "/" in path:
                entry["name"] = path  # where it lands (default: the last component)
            mine.append(entry)
        inputs.append(mine)
    report.workflow_inputs = len(workflow_inputs)
    report.note("inputs_from" if inputs_from is not None else "inputs_left_out",
                len(workflow_inputs), next(iter(workflow_inputs), None))
    for f in paths:
        if files.get(f) is None:
            report.note("no_size", 1, f)
    return inputs


def _order(tasks: list[_Task], parents: list[dict], rd: _Reader) -> list[int]:
    """Parents first, ties in instance order (Kahn's, with a heap); a cycle
    is a problem naming one, ``a -> b -> a`` (a depends on b, ...)."""
    n = len(tasks)
    waiting = [len(p) for p in parents]
    children: list[list[int]] = [[] for _ in range(n)]
    for i, ps in enumerate(parents):
        for j in ps:
            children[j].append(i)
    ready = [i for i in range(n) if not waiting[i]]
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in children[i]:
            waiting[c] -= 1
            if not waiting[c]:
                heapq.heappush(ready, c)
    if len(order) < n:
        i = next(i for i in range(n) if waiting[i])
        seen: dict[int, int] = {}
        path = []
        while i not in seen:  # each task left waits on another task left: walk to a repeat
            seen[i] = len(path)
            path.append(i)
            i = next(j for j in parents[i] if waiting[j])
        cycle = [*path[seen[i]:], i]
        rd.problems.append(f"dependency cycle: {' -> '.join(tasks[k].key for k in cycle)} "
                           f"({n - len(order)} task(s) cannot be ordered)")
    return order


# ------------------------------------------------------------------ commands


def _commands(tasks: list[_Task], paths: dict[str, str], files: dict[str, Any], rd: _Reader,
              scale: float | None) -> list[Any]:
    report = rd.report
    out: list[Any] = []
    missing: list[str] = []
    for t in tasks:
        runtime = (float(t.runtime) if _is_number(t.runtime) and 0 <= t.runtime <= limits.TIMEOUT
                   else 0.0)
        if runtime != t.runtime:  # none recorded, or not 0 to a year (the longest timeout)
            report.note("no_runtime" if t.runtime is None else "bad_runtime", 1,
                        f"{t.key}: {t.runtime!r}")
        report.total_runtime_seconds += runtime
        if scale is not None:
            out.append(_replay(t, runtime * scale, paths, files, rd))
            continue
        out.append(_recorded(t, report))
        if out[-1] is None:
            missing.append(t.key)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        rd.problems.append(f"{len(missing)} task(s) have no recorded command: "
                           f"{', '.join(missing[:5])}{more}; give --replay-runtimes 1 to replay "
                           "their recorded runtimes and file sizes instead")
    return out


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _recorded(t: _Task, report: Report) -> Any:
    """``[program, *arguments]``; a shell line if an argument is an operator."""
    cmd = t.command
    if cmd is None:
        report.note("no_program", 1 if t.arguments else 0, t.key)
        return None
    program = cmd.get("program") if type(cmd) is dict else None
    args = (cmd.get("arguments") if type(cmd) is dict else None) or []
    if (type(program) is not str or not program.strip() or type(args) is not list
            or not all(type(a) in (str, int, float) for a in args)):
        report.note("bad_command", 1, t.key)
        return None
    argv = [program, *(a if type(a) is str else str(a) for a in args)]
    if len(argv) > 1 and argv[1].rsplit("/", 1)[-1] == program.rsplit("/", 1)[-1]:
        argv = argv[1:]  # Makeflow records the executable again as the first argument
        report.note("program_repeated", 1, t.key)
    if any(a in SHELL_OPERATORS for a in argv):
        report.note("shell", 1, t.key)
        return " ".join(a if a in SHELL_OPERATORS else shlex.quote(a) for a in argv)
    return argv


def _replay(t: _Task, seconds: float, paths: dict[str, str], files: dict[str, Any],
            rd: _Reader) -> list[str]:
    """``sh -c REPLAY_SCRIPT wfreplay SECONDS SIZE PATH...``: no quoting to get wrong."""
    outputs = list(dict.fromkeys(t.outputs))
    if len(outputs) > REPLAY_MAX_OUTPUTS:
        rd.problems.append(f"{t.where}: writes {len(outputs):,} files; a replayed command writes "
                           f"at most {REPLAY_MAX_OUTPUTS:,} (ecloud's limit of "
                           f"{limits.COMMAND_ARGS:,} arguments)")
        return []
    argv = ["sh", "-c", REPLAY_SCRIPT, "wfreplay", f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"]
    for f in outputs:
        size = files.get(f)
        if size is not None and (not _is_number(size) or size < 0):
            rd.report.note("bad_size", 1, f"{f}: {size!r}")
            size = None
        argv += [str(round(size or 0)), paths[f]]
    return argv


def _number(value: Any, default: int, what: str, report: Report, low: int, high: int,
            whole) -> int:
    """A core count or priority as a whole number in [low, high] (notes when
    it is not one, is rounded or is capped)."""
    if value is None:
        return default
    if not _is_number(value):
        report.note(f"bad_{what}", 1, repr(value))
        return default
    number = whole(value)
    if number != value and value >= low:
        report.note(f"{what}_rounded", 1, f"{value} -> {number}")
    if not low <= number <= high:
        report.note(f"{what}_capped", 1, str(value))
    return max(low, min(high, number))
