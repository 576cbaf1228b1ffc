"""The first pass over a DAG file: the commands that make nodes.

JOB/NODE, SUBDAG EXTERNAL, FINAL, PROVISIONER and SERVICE lines become
:class:`Draft` nodes and SUBMIT-DESCRIPTION blocks are collected, before any
other command is read, so a command may name a node defined further down (as
DAGMan's own parser allows). A :class:`Scope` is one DAG file with its
INCLUDEs (the top file, or one splice): what ALL_NODES, splice names and
SUBMIT-DESCRIPTIONs are relative to.

This module exists so that the rules of node definitions (names, DIR, NOOP,
DONE, at most one FINAL and one PROVISIONER, submit files against
descriptions) sit in one place, between the line reader below
(:mod:`~ecloud.taskfiles.dagman.daglines`) and the commands that act on nodes
above (:mod:`~ecloud.taskfiles.dagman.dagcommands`). The SPLICE command, which
reads a whole other file, is the parser's own
(:mod:`~ecloud.taskfiles.dagman.dagfile`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ecloud.taskfiles.dagman.daglines import LineReader, Stmt
from ecloud.taskfiles.dagman.dagmodel import AbortDagOn, InlineSubmit, Node, NodeVar, Script

__all__ = ["RESERVED_NAMES", "Draft", "NodeReader", "Scope", "Splice"]

RESERVED_NAMES = frozenset({"PARENT", "CHILD", "ALL_NODES"})
_NODE_SYNTAX = {
    "job": "JOB NodeName SubmitDescription [DIR directory] [NOOP] [DONE]",
    "final": "FINAL NodeName SubmitDescription [DIR directory] [NOOP]",
    "provisioner": "PROVISIONER NodeName SubmitDescription",
    "service": "SERVICE NodeName SubmitDescription",
    "subdag": "SUBDAG EXTERNAL NodeName DagFileName [DIR directory] [NOOP] [DONE]",
}

_QUOTED_TOKEN = re.compile(r'"[^"]*"|\S+')


class Draft:
    """A node being built (frozen into a :class:`Node` at the end)."""

    __slots__ = ("abort_on", "category", "dag_file", "dir", "done", "file", "hold", "inline",
                 "kind", "line", "name", "noop", "post", "pre", "pre_skip", "priority", "retry",
                 "retry_unless_exit", "submit", "submit_token", "vars")

    def __init__(self, name: str, kind: str, directory: Path, file: Path, line: int) -> None:
        self.name = name
        self.kind = kind
        self.dir = directory
        self.file = file
        self.line = line
        self.submit_token: str | None = None
        self.submit: Path | None = None
        self.inline: InlineSubmit | None = None
        self.dag_file: Path | None = None
        self.noop = False
        self.done = False
        self.pre: Script | None = None
        self.post: Script | None = None
        self.hold: Script | None = None
        self.retry = 0
        self.retry_unless_exit: int | None = None
        self.abort_on: AbortDagOn | None = None
        self.pre_skip: int | None = None
        self.priority = 0
        self.category: str | None = None
        self.vars: list[NodeVar] = []

    def freeze(self) -> Node:
        return Node(
            name=self.name, kind=self.kind, dir=self.dir, file=self.file, line=self.line,
            submit=self.submit, inline_submit=self.inline, dag_file=self.dag_file,
            noop=self.noop, done=self.done, pre=self.pre, post=self.post, hold=self.hold,
            retry=self.retry, retry_unless_exit=self.retry_unless_exit, abort_on=self.abort_on,
            pre_skip=self.pre_skip, priority=self.priority, category=self.category,
            vars=tuple(self.vars),
        )


class Splice:
    __slots__ = ("initial", "terminal", "where")

    def __init__(self, initial: list[str], terminal: list[str], where: str) -> None:
        self.initial = initial
        self.terminal = terminal
        self.where = where


class Scope:
    """One DAG file with its INCLUDEs: what ALL_NODES, splice names and
    SUBMIT-DESCRIPTIONs are relative to. The top file is one, each splice another."""

    def __init__(self, prefix: str, base: Path) -> None:
        self.prefix = prefix
        self.base = base
        self.own: list[str] = []          # nodes defined by this file and its INCLUDEs
        self.all: list[str] = []          # ... and those of its splices, in file order
        self.splices: dict[str, Splice] = {}
        self.descriptions: dict[str, tuple[InlineSubmit, str]] = {}
        self.maxjobs: dict[str, int] = {}
        self.inner_maxjobs: list[dict[str, int]] = []


class NodeReader(LineReader):
    """The parser's second layer: pass 1, the nodes (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.nodes: dict[str, Draft] = {}
        self.final: Draft | None = None
        self.provisioner: Draft | None = None

    def _node(self, st: Stmt, scope: Scope, kind: str) -> None:
        words = _QUOTED_TOKEN.findall(st.text)[1:]
        if kind == "subdag":
            if not words or words[0].upper() != "EXTERNAL":
                self.problem(st.where, "SUBDAG needs the EXTERNAL keyword (only SUBDAG EXTERNAL "
                                       f"exists): {_NODE_SYNTAX[kind]}")
                return
            words = words[1:]
        syntax = _NODE_SYNTAX[kind]
        if len(words) < 2:
            self.problem(st.where, f"{st.tokens[0]} needs a node name and a "
                                   f"{'DAG file' if kind == 'subdag' else 'submit description'}: "
                                   f"{syntax}")
            return
        name, target, options = words[0], _unquote(words[1]), words[2:]
        directory, noop, done, bad = _node_options(options)
        if bad is not None:
            self.problem(st.where, f"{bad}: {syntax}")
            return
        full = scope.prefix + name
        if not self._node_name_ok(st, scope, name, full):
            return
        if kind == "final":
            if done:
                self.problem(st.where, f"a FINAL node cannot be DONE: {syntax}")
            if scope.prefix:
                self.problem(st.where, f"FINAL node {full!r} is in a splice; splices cannot "
                                       "have a FINAL node")
                return
            if self.final is not None:
                self.problem(st.where, f"a DAG has at most one FINAL node; {self.final.name!r} "
                                       f"is one already ({self.final.file}:{self.final.line})")
                return
        if kind == "provisioner" and self.provisioner is not None:
            self.problem(st.where, "a DAG has at most one PROVISIONER node; "
                                   f"{self.provisioner.name!r} is one already "
                                   f"({self.provisioner.file}:{self.provisioner.line})")
            return
        if kind == "service" and done:
            self.problem(st.where, f"a SERVICE node cannot be DONE: {syntax}")
        draft = Draft(full, kind, self.join(scope.base, directory) if directory else scope.base,
                       st.file, st.line)
        draft.noop, draft.done = noop, done
        if kind == "subdag":
            draft.dag_file = self.join(draft.dir, target)
        elif st.body is not None and target.startswith("{"):
            draft.inline = st.body
        else:
            draft.submit_token = target
        self.nodes[full] = draft
        scope.own.append(full)
        scope.all.append(full)
        if kind == "final":
            self.final = draft
        elif kind == "provisioner":
            self.provisioner = draft

    def _node_name_ok(self, st: Stmt, scope: Scope, name: str, full: str) -> bool:
        if name.upper() in RESERVED_NAMES:
            self.problem(st.where, f"{name!r} is a reserved word and cannot name a node")
            return False
        if "+" in name:
            self.problem(st.where, f"node name {name!r} contains '+', which DAGMan reserves "
                                   "for splice names (Splice+Node)")
            return False
        if name in scope.splices:
            self.problem(st.where, f"node name {name!r} is already a splice name "
                                   f"({scope.splices[name].where})")
            return False
        first = self.nodes.get(full)
        if first is not None:
            self.problem(st.where, f"duplicate node {full!r} (first defined at "
                                   f"{first.file}:{first.line})")
            return False
        return True

    def _description(self, st: Stmt, scope: Scope) -> None:
        if len(st.tokens) < 3 or st.body is None:
            self.problem(st.where, "SUBMIT-DESCRIPTION needs a name and a { block: "
                                   "SUBMIT-DESCRIPTION DescriptionName {")
            return
        name = st.tokens[1]
        if name in scope.descriptions:
            self.problem(st.where, f"SUBMIT-DESCRIPTION {name!r} is defined twice (first at "
                                   f"{scope.descriptions[name][1]})")
            return
        scope.descriptions[name] = (st.body, st.where)

    def _resolve_submits(self, scope: Scope) -> None:
        """A JOB's submit name is a SUBMIT-DESCRIPTION of this file if one has
        that name (defined anywhere in it), otherwise a file in the node's DIR."""
        for full in scope.own:
            draft = self.nodes[full]
            token = draft.submit_token
            if token is None:
                continue
            if token in scope.descriptions:
                draft.inline = scope.descriptions[token][0]
            else:
                draft.submit = self.join(draft.dir, token)


def _unquote(token: str) -> str:
    """A submit file or DIR may be written in double quotes (to hold spaces)."""
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        return token[1:-1]
    return token


def _node_options(options: list[str]) -> tuple[str | None, bool, bool, str | None]:
    """``[DIR directory] [NOOP] [DONE]``, in that order (as DAGMan requires):
    the directory, NOOP, DONE, and what is wrong (or None)."""
    i = 0
    directory = None
    if i < len(options) and options[i].upper() == "DIR":
        if i + 1 >= len(options):
            return None, False, False, "DIR needs a directory"
        directory = _unquote(options[i + 1])
        i += 2
    noop = i < len(options) and options[i].upper() == "NOOP"
    i += noop
    done = i < len(options) and options[i].upper() == "DONE"
    i += done
    if i < len(options):
        return None, False, False, (f"unexpected {options[i]!r} (the options are DIR, NOOP "
                                    "and DONE, in that order)")
    return directory, noop, done, None

