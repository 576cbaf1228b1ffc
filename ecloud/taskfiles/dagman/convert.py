"""A parsed DAG as ecloud tasks: what ``ecloud run x.dag`` pushes.

Each node becomes one task of the same name (a name that is not an ecloud id
is mapped to one, and the report says so), its edges its ``depends_on``, and
the rest maps onto the workflow keys of a task file:

==========================  ==================================================
DAGMan                      ecloud task
==========================  ==================================================
JOB submit file             ``command``: the executable (absolute) and its
                            arguments; ``env``: ``environment``; ``workdir``:
                            ``initialdir`` (default the node's DIR);
                            ``stdin``/``stdout``/``stderr``: ``input``/
                            ``output``/``error``; ``slots``: ``request_cpus``
SCRIPT PRE / POST           ``pre`` / ``post`` (argv; ``$JOB`` and
                            ``$MAX_RETRIES`` filled in here, the others by the
                            worker when it runs them), run in the node's DIR
PRE_SKIP, RETRY n           ``pre_skip``, ``retries`` (no backoff: DAGMan
UNLESS-EXIT v               retries at once), ``retry_unless_exit``
ABORT-DAG-ON v RETURN r     ``abort_on``
PRIORITY, CATEGORY,         ``priority``, ``category``; the file's
MAXJOBS, -maxjobs           ``workflow.categories`` and ``max_running``
FINAL, NOOP, DONE           ``final``, ``noop``, ``done``
SUBDAG EXTERNAL             a task that runs ``ecloud run`` on the nested DAG,
                            with a log of its own beside it
SPLICE, INCLUDE             already expanded by the parser
==========================  ==================================================

Everything else is listed in the :class:`DagReport` (directives and submit
commands ecloud does not act on, each once with a count), never dropped
unsaid.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from attrs import define, field

from ecloud import limits
from ecloud.errors import ValidationError
from ecloud.taskfiles.dagman.dagmodel import Dag, Node, Script
from ecloud.taskfiles.dagman.submitfile import parse_node_submit
from ecloud.taskfiles.taskgraph import ID_RE

#: what a nested DAG (SUBDAG EXTERNAL) runs with: this interpreter's ecloud
NESTED_RUN = (sys.executable, "-m", "ecloud.cli.main", "run")
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._:@+/-]")


@define
class DagReport:
    """What the conversion could not carry over, for the operator."""

    #: (directive keyword, where) of every DAG directive ecloud does not act on
    ignored_directives: list[tuple[str, str]] = field(factory=list)
    #: submit command -> how many nodes' submit files had it
    ignored_commands: Counter = field(factory=Counter)
    #: node name -> the task id it got, where the two differ
    renamed: dict[str, str] = field(factory=dict)
    #: (node, macro names) of submit files that used undefined macros
    undefined: list[tuple[str, tuple[str, ...]]] = field(factory=list)
    notes: list[str] = field(factory=list)

    def lines(self) -> list[str]:
        """The report, one line per kind of thing left out."""
        out = []
        keywords = Counter(k for k, _ in self.ignored_directives)
        for keyword, count in sorted(keywords.items()):
            where = next(w for k, w in self.ignored_directives if k == keyword)
            out.append(f"ignored: {keyword} ({count}x, first at {where})")
        for key, count in sorted(self.ignored_commands.items()):
            out.append(f"ignored submit command: {key} (in {count} node(s))")
        for node, macros in self.undefined[:5]:
            out.append(f"node {node}: undefined submit macros {', '.join(macros)} (empty)")
        if len(self.undefined) > 5:
            out.append(f"... and {len(self.undefined) - 5} more nodes with undefined macros")
        for name, task_id in list(self.renamed.items())[:5]:
            out.append(f"node {name!r} runs as task {task_id!r} (not an ecloud id)")
        if len(self.renamed) > 5:
            out.append(f"... and {len(self.renamed) - 5} more renamed nodes")
        return out + self.notes


@define
class ConvertedDag:
    """The DAG as a task file's content (``{"workflow": ..., "tasks": [...]}``,
    for :func:`ecloud.taskfiles.taskfile.parse_tasks` to check like any
    other), the task id of each node, and the report."""

    content: dict[str, Any]
    ids: dict[str, str]
    report: DagReport


def task_ids(names: list[str]) -> dict[str, str]:
    """Node name -> task id: the name itself when it is an ecloud id, else
    the name with the other characters made ``_`` and a short hash of the
    name (so two names that map alike stay apart)."""
    ids: dict[str, str] = {}
    taken = set(names)
    for name in names:
        if len(name) <= limits.ID_LENGTH and ID_RE.fullmatch(name):
            ids[name] = name
            continue
        base = _BAD_ID_CHARS.sub("_", name).strip("/") or "node"
        if not re.match(r"[A-Za-z0-9_]", base):
            base = "_" + base
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        candidate = f"{base[:limits.ID_LENGTH - 9]}~{digest}".replace("~", "_")
        while candidate in taken:
            candidate += "_"
        taken.add(candidate)
        ids[name] = candidate
    return ids


def convert(dag: Dag, *, max_running: int | None = None) -> ConvertedDag:
    """The tasks of ``dag``. Raises :class:`ValidationError` listing every
    node whose submit description cannot be read, and for a DAG DAGMan
    itself would refuse (REJECT).

    ``getenv``: the workers ``ecloud run`` starts inherit its environment,
    the submitter's, so a job sees it without a copy in every task; only
    ``environment`` is written into the tasks."""
    if dag.rejected is not None:
        raise ValidationError([f"{dag.rejected.file}:{dag.rejected.line}: REJECT: DAGMan refuses "
                               "to run this file (an incomplete rescue DAG)"], str(dag.path))
    report = DagReport()
    for item in dag.ignored:
        report.ignored_directives.append((item.keyword, f"{item.file}:{item.line}"))
    ids = task_ids(list(dag.nodes))
    report.renamed = {n: t for n, t in ids.items() if n != t}
    parents: dict[str, list[str]] = {name: [] for name in dag.nodes}
    for parent, child in dag.edges:
        parents[child].append(ids[parent])
    problems: list[str] = []
    tasks = []
    for number, (name, node) in enumerate(dag.nodes.items(), start=1):
        try:
            tasks.append(_task(node, ids[name], parents[name], report, number))
        except ValidationError as exc:
            problems += exc.problems
    if problems:
        raise ValidationError(problems, str(dag.path))
    content: dict[str, Any] = {"tasks": tasks}
    workflow: dict[str, Any] = {}
    if max_running is not None:
        workflow["max_running"] = max_running
    if dag.maxjobs:
        workflow["categories"] = dict(dag.maxjobs)
    if workflow:
        content["workflow"] = workflow
    return ConvertedDag(content, ids, report)


def _task(node: Node, task_id: str, depends_on: list[str], report: DagReport,
          number: int) -> dict[str, Any]:
    command: str | list[str]
    env: dict[str, str] = {}
    workdir = str(node.dir)
    stdin = stdout = stderr = None
    slots = 1
    noop = node.noop
    if node.noop:
        # DAGMan submits no job (its submit file need not exist) but runs the
        # node's scripts: a node with scripts runs them around a command that
        # does nothing; one without is a noop task
        command = ["true"]
        noop = node.pre is None and node.post is None
    elif node.kind == "subdag":
        command = _nested_run(node)
    else:
        final = node.kind == "final"
        # a final node's $(DAG_STATUS) and $(FAILED_COUNT) are known only when
        # it starts: placeholders now, the worker's environment variables then.
        # Each node is a cluster of one job of its own, as condor_submit makes it.
        macros = {"ClusterId": number, "Cluster": number, "ProcId": 0, "Process": 0,
                  **(_LATE if final else {})}
        submit = parse_node_submit(node, dagman_macros=macros, environ=os.environ)
        for ignored in submit.ignored:
            report.ignored_commands[ignored.key.lower()] += 1
        for var in node.vars:  # VARS +Name / My.Name: a job attribute, not a macro
            if var.name.lower().startswith("my."):
                report.ignored_commands[f"{var.name} (VARS)"] += 1
        if submit.request_memory_mib is not None:  # read, but workers are matched on slots
            report.ignored_commands["request_memory"] += 1
        if submit.undefined_macros:
            report.undefined.append((node.name, submit.undefined_macros))
        command = submit.argv()
        if final and any(mark in arg for arg in command for mark in _LATE.values()):
            command = _late_shell(command)
        env = submit.environment_dict(None)
        workdir = str(submit.initialdir)
        stdin = str(submit.input) if submit.input is not None else None
        stdout = str(submit.output) if submit.output is not None else None
        stderr = str(submit.error) if submit.error is not None else None
        slots = max(1, min(submit.request_cpus or 1, limits.SLOTS))
    task: dict[str, Any] = {
        "id": task_id, "command": command, "depends_on": depends_on, "retries": node.retry,
        "retry_backoff": 0, "priority": node.priority, "env": env, "slots": slots,
        "pre": _script(node.pre, node, workdir), "post": _script(node.post, node, workdir),
        "pre_skip": node.pre_skip if node.pre is not None else None,
        "retry_unless_exit": node.retry_unless_exit,
        "abort_on": ({"exit": node.abort_on.exit_value, "return": node.abort_on.dag_return}
                     if node.abort_on is not None else None),
        "final": node.kind == "final", "noop": noop, "done": node.done,
        "category": node.category, "workdir": workdir,
        "stdin": stdin, "stdout": stdout, "stderr": stderr,
    }
    if task["abort_on"] is not None and task["abort_on"]["return"] is None:
        del task["abort_on"]["return"]
    for script in (node.pre, node.post):
        if script is not None and (script.defer_status is not None or script.debug_file):
            report.notes.append(f"node {node.name}: SCRIPT DEFER and DEBUG are not acted on "
                                f"({script.file}:{script.line}): the script runs once, its "
                                "output goes to the attempt's stdout and stderr")
    if node.hold is not None:
        report.notes.append(f"node {node.name}: its HOLD script never runs (jobs are not held "
                            "here)")
    return {k: v for k, v in task.items() if v is not None and v is not False}


def _nested_run(node: Node) -> list[str]:
    """SUBDAG EXTERNAL: ``ecloud run`` on the nested DAG with a log of its own,
    fresh for each attempt - so that, as a sub-DAG submitted again in DAGMan,
    it starts from its newest rescue file and runs what did not succeed."""
    assert node.dag_file is not None
    nested = node.dag_file
    db = nested.parent / (nested.name + ".ecloud.db")
    # as many workers and slots as the outer run has (ecloud run puts them
    # in its workers' environment), so that a node it can run, this can
    script = ('db=$1; shift; rm -f "$db" "$db-wal" "$db-shm"; '
              'exec "$@" --local "${ECLOUD_RUN_LOCAL:-2}" --slots "${ECLOUD_RUN_SLOTS:-1}"')
    return ["/bin/sh", "-c", script, "sh", str(db), *NESTED_RUN, str(nested),
            "--db", f"sqlite:///{db}", "--work-dir",
            str(nested.parent / (nested.name + ".ecloud-workers"))]


#: placeholders for the macros a final node's submit file may use, filled at run time
_LATE = {"DAG_STATUS": "@@ecloud:DAG_STATUS@@", "FAILED_COUNT": "@@ecloud:FAILED_COUNT@@"}


def _late_shell(argv: list[str]) -> str:
    """``argv`` as one shell command whose placeholders read the variables
    the worker sets for a final task (``DAG_STATUS``, ``FAILED_COUNT``)."""
    words = []
    for arg in argv:
        word = shlex.quote(arg)
        if not word.startswith("'"):  # shlex leaves safe words unquoted: quote them too
            word = f"'{word}'"
        for name, mark in _LATE.items():
            word = word.replace(mark, f"'\"${name}\"'")
        words.append(word)
    return "exec " + " ".join(words)


def _script(script: Script | None, node: Node, workdir: str) -> list[str] | None:
    """A script as an argv: ``$JOB`` and ``$MAX_RETRIES`` (known now) filled
    in, the other macros left for the worker; run in the node's DIR, as
    DAGMan does, even when the job runs in another ``initialdir``."""
    if script is None:
        return None
    argv = script.argv({"JOB": node.name, "MAX_RETRIES": node.retry})
    if not argv:
        return None
    program = node.dir / argv[0]
    if not argv[0].startswith("/") and program.exists():  # a path, relative to DIR
        argv[0] = str(program)
    if str(node.dir) != workdir:
        argv = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(node.dir), *argv]
    return argv


def node_names(converted: ConvertedDag) -> dict[str, str]:
    """Task id -> node name (the inverse of ``ids``)."""
    return {task_id: name for name, task_id in converted.ids.items()}


#: words a DAGMan file's first command starts with (what ``ecloud run`` sniffs for)
_DAG_FIRST_WORDS = frozenset({
    "JOB", "NODE", "SUBDAG", "SPLICE", "INCLUDE", "FINAL", "PARENT", "SCRIPT", "VARS",
    "RETRY", "CONFIG", "DOT", "SUBMIT-DESCRIPTION", "PROVISIONER", "SERVICE", "CATEGORY",
    "MAXJOBS", "PRIORITY", "ABORT-DAG-ON", "NODE_STATUS_FILE", "JOBSTATE_LOG", "ENV",
    "SET_JOB_ATTR", "SAVE_POINT_FILE", "REJECT", "DONE", "PRE_SKIP",
})
_RESCUE_NAME = re.compile(r"\.rescue\d{3}$")


def is_dag_file(path: Path) -> bool:
    """Whether ``ecloud run`` reads ``path`` as a DAGMan file: named
    ``*.dag``, or (any name) its first command is a DAG command. A rescue
    file (``x.dag.rescue001``) is refused with what to run instead: it is
    partial, read together with its DAG."""
    if path.suffix.lower() == ".dag":
        return True
    if _RESCUE_NAME.search(path.name):
        raise ValidationError([f"{path} is a DAGMan rescue file: it only marks nodes DONE. Run "
                               f"the DAG itself ({path.name[:-10]}): a run in a fresh log "
                               "starts from its newest rescue file"], str(path))
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return False  # the task-file reader says why
    for line in head.decode("utf-8", errors="replace").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        return words[0].upper() in _DAG_FIRST_WORDS
    return False


__all__ = ["ConvertedDag", "DagReport", "convert", "is_dag_file", "node_names", "task_ids"]
