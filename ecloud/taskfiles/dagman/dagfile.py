"""Read an HTCondor DAGMan input file (``.dag``) into a :class:`Dag`.

The syntax is DAGMan's as the HTCondor manual documents it
(``docs/automated-workflows``): one command per line, keywords in any case,
node names case-sensitive, ``#`` starting a comment line. Nothing here runs
anything; the result says what a DAGMan run would do, in ecloud's terms.

How the file is read, and why:

* **Two passes, as DAGMan does.** The commands that create nodes (JOB/NODE,
  SUBDAG, FINAL, PROVISIONER, SERVICE, SPLICE, SUBMIT-DESCRIPTION) are read
  first, everything else second, so a command may name a node defined further
  down (DAGMan's own parser works this way since gittrac #5732).
* **INCLUDE is textual**: the included file's lines take the INCLUDE line's
  place, node names unchanged. (DAGMan handles INCLUDE in its second pass, so
  there a PARENT naming a node of a later INCLUDE fails; here it works, and an
  ``ALL_NODES`` command also reaches nodes of INCLUDEs further down.)
* **SPLICE is expanded in place**: the spliced file's nodes become nodes of
  this DAG named ``Splice+Node`` (nested: ``Outer+Inner+Node``); a PARENT or
  CHILD naming a splice means its initial nodes (no parent inside the splice)
  as children and its terminal nodes (no child inside) as parents. Its
  categories are scoped the same way unless global (``+name``), and MAXJOBS of
  an outer file override those of an inner one. ``ALL_NODES`` does not reach
  into splices, and RETRY/VARS/PRIORITY/... cannot name a splice.
* **Paths**: ecloud reads a DAG as if ``condor_submit_dag`` ran in the DAG
  file's folder (the manual's ``-usedagdir``): relative paths of the top file
  - node DIRs, INCLUDE and SPLICE files - are taken from there. A node's
  submit file (or SUBDAG's DAG file) is relative to the node's DIR, where the
  job is submitted; a SPLICE's DIR becomes the folder its file is read from and
  prefixes the relative DIRs of its nodes. INCLUDE files are relative to that
  same folder, not to the file holding the INCLUDE (as in DAGMan).
* **Directives ecloud does not act on** (CONFIG, DOT, ENV, NODE_STATUS_FILE,
  JOBSTATE_LOG, SET_JOB_ATTR, SAVE_POINT_FILE, REJECT, CONNECT, PIN_IN,
  PIN_OUT, MAXPRE, MAXPOST, MAXIDLE) are kept as :class:`Ignored` entries, so
  a caller can list (or refuse) them. Note that CONNECT/PIN_IN/PIN_OUT would
  add edges in DAGMan, and REJECT makes DAGMan refuse the file.
* **Errors**: every problem is collected, each as ``file:line: message``, and
  raised together as one :class:`~ecloud.errors.ValidationError`. Cycles are
  not looked for here (the task graph does that).

Line continuation with a trailing backslash is not part of the DAG file
syntax the manual documents ("comments do not span lines" is all it says), so
a trailing ``\\`` is ordinary text here.

The parser is built in layers, one module each, every layer a subclass of
the one below: :mod:`~ecloud.taskfiles.dagman.daglines` (lines, INCLUDEs,
problems), :mod:`~ecloud.taskfiles.dagman.dagnodes` (pass 1: the nodes),
:mod:`~ecloud.taskfiles.dagman.dagcommands` (pass 2: the commands about
nodes), and this module on top: a file's two passes, SPLICE (which reads
another file the same way) and the :class:`Dag` at the end. The result's
classes are in :mod:`~ecloud.taskfiles.dagman.dagmodel` and importable from
here as well.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from ecloud.errors import ValidationError
from ecloud.taskfiles.dagman.dagcommands import CommandReader
from ecloud.taskfiles.dagman.daglines import Stmt
from ecloud.taskfiles.dagman.dagmodel import (
    SCRIPT_MACROS,
    AbortDagOn,
    Dag,
    Ignored,
    InlineSubmit,
    Node,
    NodeVar,
    Script,
    expand_script_macros,
)
from ecloud.taskfiles.dagman.dagnodes import RESERVED_NAMES, Scope, Splice

__all__ = [
    "SCRIPT_MACROS",
    "AbortDagOn",
    "Dag",
    "Ignored",
    "InlineSubmit",
    "Node",
    "NodeVar",
    "Script",
    "expand_script_macros",
    "parse_dag",
]


# Directives DAGMan accepts that ecloud records and does not act on. MAXPRE,
# MAXPOST and MAXIDLE are condor_submit_dag options, not DAG commands in the
# manual; they are accepted here too so a file written with them still reads.
IGNORED_KEYWORDS = frozenset({
    "CONFIG", "DOT", "ENV", "NODE_STATUS_FILE", "JOBSTATE_LOG", "SET_JOB_ATTR",
    "SAVE_POINT_FILE", "REJECT", "CONNECT", "PIN_IN", "PIN_OUT",
    "MAXPRE", "MAXPOST", "MAXIDLE",
})

_NODE_KEYWORDS = {"JOB": "job", "NODE": "job", "FINAL": "final", "PROVISIONER": "provisioner",
                  "SERVICE": "service", "SUBDAG": "subdag"}
_PASS_ONE = frozenset({*_NODE_KEYWORDS, "SPLICE", "SUBMIT-DESCRIPTION"})
_KNOWN = sorted({*_PASS_ONE, *IGNORED_KEYWORDS, "SCRIPT", "PARENT", "RETRY", "ABORT-DAG-ON",
                 "PRE_SKIP", "PRIORITY", "CATEGORY", "MAXJOBS", "VARS", "DONE", "INCLUDE"})


def parse_dag(path: str | Path) -> Dag:
    """Read a DAG input file, with its INCLUDEs and SPLICEs, into a :class:`Dag`.

    Raises :class:`~ecloud.errors.ValidationError` (``source`` = the path)
    listing every problem found, each starting ``file:line:``.
    """
    enabled = gc.isenabled()
    gc.disable()  # thousands of acyclic objects: the cycle collector would only slow this down
    try:
        return _Parser(Path(os.path.abspath(path))).run()
    finally:
        if enabled:
            gc.enable()


class _Parser(CommandReader):
    """The parser's top layer: a file's two passes, its splices, the result."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.ignored: list[Ignored] = []
        self.splices: dict[str, Path] = {}

    def run(self) -> Dag:
        text = self._load(self.path, None, "DAG")
        scope = self._scope(self.path, self.path.parent, "", (self.path,), text)
        if self.problems:
            raise ValidationError(self.problems, source=str(self.path))
        return Dag(
            path=self.path,
            nodes={name: draft.freeze() for name, draft in self.nodes.items()},
            edges=tuple(self.edges),
            final=self.final.name if self.final is not None else None,
            maxjobs=_merged_maxjobs(scope),
            ignored=tuple(self.ignored),
            splices=dict(self.splices),
        )

    # ------------------------------------------------------------------ scopes

    def _scope(self, path: Path, base: Path, prefix: str, chain: tuple[Path, ...],
               text: str | None) -> Scope:
        scope = Scope(prefix, base)
        if text is None:
            return scope
        stmts: list[Stmt] = []
        self._read(path, text, base, (path,), stmts)
        for st in stmts:  # pass 1: what makes nodes
            kind = _NODE_KEYWORDS.get(st.keyword)
            if kind is not None:
                self._node(st, scope, kind)
            elif st.keyword == "SPLICE":
                self._splice(st, scope, chain)
            elif st.keyword == "SUBMIT-DESCRIPTION":
                self._description(st, scope)
        self._resolve_submits(scope)
        for st in stmts:  # pass 2: everything else, in file order
            handler = self.pass_two.get(st.keyword)
            if handler is not None:
                handler(st, scope)
            elif st.keyword in IGNORED_KEYWORDS:
                self.ignored.append(Ignored(st.keyword, st.file, st.line, st.text))
            elif st.keyword not in _PASS_ONE:
                self.problem(st.where, f"unknown keyword {st.tokens[0]!r} (expected one of "
                                       f"{', '.join(_KNOWN)})")
        return scope

    # ------------------------------------------------------------------ splices

    def _splice(self, st: Stmt, scope: Scope, chain: tuple[Path, ...]) -> None:
        syntax = "SPLICE SpliceName SpliceFileName [DIR directory]"
        words = st.tokens[1:]
        if len(words) < 2:
            self.problem(st.where, f"SPLICE needs a splice name and a DAG file: {syntax}")
            return
        name, file, options = words[0], words[1], words[2:]
        directory = None
        if options and options[0].upper() == "DIR":
            if len(options) < 2:
                self.problem(st.where, f"DIR needs a directory: {syntax}")
                return
            directory, options = options[1], options[2:]
        if options:
            self.problem(st.where, f"unexpected {options[0]!r} on a SPLICE line: {syntax}")
            return
        full = scope.prefix + name
        if name.upper() in RESERVED_NAMES or "+" in name:
            self.problem(st.where, f"{name!r} cannot name a splice (a reserved word, or it "
                                   "holds '+')")
            return
        if name in scope.splices:
            self.problem(st.where, f"splice name {name!r} is used twice (first at "
                                   f"{scope.splices[name].where}); splice names are unique "
                                   "in a DAG file")
            return
        if full in self.nodes:
            node = self.nodes[full]
            self.problem(st.where, f"splice name {name!r} is already a node name "
                                   f"({node.file}:{node.line})")
            return
        base = self.join(scope.base, directory) if directory else scope.base
        target = self.join(base, file)
        splice = Splice([], [], st.where)
        scope.splices[name] = splice
        if target in chain:
            self.problem(st.where, f"SPLICE {name!r} splices {target}, which is already being "
                                   "spliced (a splice cycle)")
            return
        text = self._load(target, st.where, "SPLICE")
        if text is None:
            return
        self.splices[full] = target
        inner = self._scope(target, base, full + "+", (*chain, target), text)
        scope.all.extend(inner.all)
        scope.inner_maxjobs.append(_merged_maxjobs(inner))
        splice.initial = [n for n in inner.all if n not in self.has_parent]
        splice.terminal = [n for n in inner.all if n not in self.has_child]


def _merged_maxjobs(scope: Scope) -> dict[str, int]:
    """MAXJOBS of splices, overridden by the file's own: a higher level wins."""
    merged: dict[str, int] = {}
    for inner in scope.inner_maxjobs:
        merged.update(inner)
    merged.update(scope.maxjobs)
    return merged

