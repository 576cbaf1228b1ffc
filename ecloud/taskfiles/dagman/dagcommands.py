"""The second pass over a DAG file: the commands that say something of nodes
already defined - SCRIPT, PARENT/CHILD, RETRY, ABORT-DAG-ON, PRE_SKIP,
PRIORITY, CATEGORY, MAXJOBS, VARS and DONE - read in file order.

This module exists to hold each command's syntax and checks (one handler per
keyword, all listed in :attr:`CommandReader.pass_two`), away from the node
definitions below it (:mod:`~ecloud.taskfiles.dagman.dagnodes`) and the file
and splice handling above it (:mod:`~ecloud.taskfiles.dagman.dagfile`). A
command names one node or ALL_NODES - the nodes of its own file, never those
of a splice; PARENT/CHILD may also name a splice, meaning its initial or
terminal nodes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ecloud.taskfiles.dagman.daglines import Stmt
from ecloud.taskfiles.dagman.dagmodel import AbortDagOn, NodeVar, Script
from ecloud.taskfiles.dagman.dagnodes import Draft, NodeReader, Scope

__all__ = ["CommandReader"]

_INT = re.compile(r"[+-]?[0-9]+\Z")
_VAR_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+.")


class CommandReader(NodeReader):
    """The parser's third layer: pass 2, the commands about nodes (see the
    module's docstring); the edges PARENT/CHILD make."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.edges: dict[tuple[str, str], None] = {}
        self.has_parent: set[str] = set()
        self.has_child: set[str] = set()
        self.pass_two: dict[str, Callable[[Stmt, Scope], None]] = {
            "SCRIPT": self._script, "PARENT": self._parent, "RETRY": self._retry,
            "ABORT-DAG-ON": self._abort, "PRE_SKIP": self._pre_skip, "PRIORITY": self._priority,
            "CATEGORY": self._category, "MAXJOBS": self._maxjobs, "VARS": self._vars,
            "DONE": self._done,
        }

    def _targets(self, st: Stmt, scope: Scope, token: str, command: str,
                 refuse: tuple[str, ...] = ()) -> list[Draft]:
        """The nodes a command names: one node, or ALL_NODES - this file's own
        nodes, without the FINAL and SERVICE nodes (nor splices' nodes)."""
        if token.upper() == "ALL_NODES":
            return [d for d in (self.nodes[n] for n in scope.own)
                    if d.kind not in ("final", "service")]
        if token in scope.splices:
            self.problem(st.where, f"{command} cannot be applied to splice {token!r}, only to "
                                   "the nodes inside it")
            return []
        draft = self.nodes.get(scope.prefix + token)
        if draft is None:
            self.problem(st.where, f"{command}: unknown node {token!r}")
            return []
        if draft.kind in refuse:
            self.problem(st.where, f"{command} cannot be applied to the {draft.kind.upper()} "
                                   f"node {draft.name!r}")
            return []
        return [draft]

    def _number(self, st: Stmt, command: str, what: str, token: str | None,
                minimum: int | None = None, maximum: int | None = None) -> int | None:
        if token is None:
            self.problem(st.where, f"{command}: missing {what}")
            return None
        bounds = ""
        if minimum is not None and maximum is not None:
            bounds = f" from {minimum} to {maximum}"
        elif minimum is not None:
            bounds = f" >= {minimum}"
        if not _INT.match(token):
            self.problem(st.where, f"{command}: bad number {token!r} for {what} "
                                   f"(expected a whole number{bounds})")
            return None
        value = int(token)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.problem(st.where, f"{command}: bad number {token!r} for {what} "
                                   f"(expected a whole number{bounds})")
            return None
        return value

    def _extra(self, st: Stmt, words: list[str], count: int, syntax: str) -> bool:
        if len(words) > count:
            self.problem(st.where, f"unexpected {words[count]!r} at the end of the line: {syntax}")
            return True
        return False

    def _script(self, st: Stmt, scope: Scope) -> None:
        syntax = ("SCRIPT [DEFER status time] [DEBUG filename type] PRE|POST|HOLD "
                  "<NodeName | ALL_NODES> ExecutableName [arguments]")
        words = st.tokens
        i = 1
        defer_status = defer_seconds = None
        debug_file = debug_streams = None
        if i < len(words) and words[i].upper() == "DEFER":
            defer_status = self._number(st, "SCRIPT DEFER", "status",
                                        words[i + 1] if i + 1 < len(words) else None, minimum=1)
            defer_seconds = self._number(st, "SCRIPT DEFER", "time",
                                         words[i + 2] if i + 2 < len(words) else None, minimum=0)
            if defer_status is None or defer_seconds is None:
                return
            i += 3
        if i < len(words) and words[i].upper() == "DEBUG":
            if i + 2 >= len(words):
                self.problem(st.where, f"SCRIPT DEBUG needs a file name and STDOUT, STDERR or "
                                       f"ALL: {syntax}")
                return
            debug_file, debug_streams = words[i + 1], words[i + 2].upper()
            if debug_streams not in ("STDOUT", "STDERR", "ALL"):
                self.problem(st.where, f"SCRIPT DEBUG: {words[i + 2]!r} is not STDOUT, STDERR "
                                       "or ALL")
                return
            i += 3
        if i >= len(words) or words[i].upper() not in ("PRE", "POST", "HOLD"):
            found = f", not {words[i]!r}" if i < len(words) else ""
            self.problem(st.where, f"SCRIPT needs PRE, POST or HOLD{found}: {syntax}")
            return
        kind = words[i].lower()
        if i + 1 >= len(words):
            self.problem(st.where, f"SCRIPT {kind.upper()} needs a node name: {syntax}")
            return
        command = st.rest_after(i + 2)
        if not command:
            self.problem(st.where, f"SCRIPT {kind.upper()} for {words[i + 1]!r} names no "
                                   f"script to run: {syntax}")
            return
        script = Script(kind, command, st.file, st.line, defer_status, defer_seconds,
                        debug_file, debug_streams)
        for draft in self._targets(st, scope, words[i + 1], "SCRIPT"):
            setattr(draft, kind, script)

    def _parent(self, st: Stmt, scope: Scope) -> None:
        syntax = "PARENT ParentNodeName [ParentNodeName2 ...] CHILD ChildNodeName [ChildNodeName2 ...]"
        words = st.tokens[1:]
        split = None
        for n, word in enumerate(words):
            if word == "CHILD" or word.upper() == "CHILD":
                split = n
                break
        if split is None:
            self.problem(st.where, f"PARENT without CHILD: {syntax}")
            return
        parents_named, children_named = words[:split], words[split + 1:]
        if not parents_named:
            self.problem(st.where, f"no parent node before CHILD: {syntax}")
        if not children_named:
            self.problem(st.where, f"no child node after CHILD: {syntax}")
        parents = self._ends(st, scope, parents_named, "terminal")
        children = self._ends(st, scope, children_named, "initial")
        for parent in parents:
            for child in children:
                edge = (parent, child)
                if edge not in self.edges:
                    self.edges[edge] = None
                    self.has_child.add(parent)
                    self.has_parent.add(child)

    def _ends(self, st: Stmt, scope: Scope, names: list[str], end: str) -> list[str]:
        """The nodes a PARENT/CHILD list names, splices replaced by their
        terminal (as parents) or initial (as children) nodes, without repeats."""
        found: dict[str, None] = {}
        prefix = scope.prefix
        for name in names:
            splice = scope.splices.get(name) if scope.splices else None
            if splice is not None:
                found.update(dict.fromkeys(getattr(splice, end)))
                continue
            draft = self.nodes.get(prefix + name if prefix else name)
            if draft is None:
                self.problem(st.where, f"PARENT/CHILD: unknown node {name!r}")
            elif draft.kind == "final":
                self.problem(st.where, f"PARENT/CHILD cannot name the FINAL node {draft.name!r} "
                                       "(it runs after all the others)")
            else:
                found[draft.name] = None
        return list(found)

    def _retry(self, st: Stmt, scope: Scope) -> None:
        syntax = "RETRY <NodeName | ALL_NODES> NumberOfRetries [UNLESS-EXIT value]"
        words = st.tokens[1:]
        if not words:
            self.problem(st.where, f"RETRY needs a node name: {syntax}")
            return
        count = self._number(st, "RETRY", "the number of retries",
                             words[1] if len(words) > 1 else None, minimum=0)
        unless = None
        if len(words) > 2:
            if words[2].upper() != "UNLESS-EXIT":
                self.problem(st.where, f"unexpected {words[2]!r}: {syntax}")
                return
            unless = self._number(st, "RETRY", "the UNLESS-EXIT value",
                                  words[3] if len(words) > 3 else None)
            if unless is None or self._extra(st, words, 4, syntax):
                return
        if count is None:
            return
        for draft in self._targets(st, scope, words[0], "RETRY", ("final", "service")):
            draft.retry = count
            draft.retry_unless_exit = unless

    def _abort(self, st: Stmt, scope: Scope) -> None:
        syntax = "ABORT-DAG-ON <NodeName | ALL_NODES> AbortExitValue [RETURN DAGReturnValue]"
        words = st.tokens[1:]
        if not words:
            self.problem(st.where, f"ABORT-DAG-ON needs a node name: {syntax}")
            return
        value = self._number(st, "ABORT-DAG-ON", "the exit value",
                             words[1] if len(words) > 1 else None)
        returned = None
        if len(words) > 2:
            if words[2].upper() != "RETURN":
                self.problem(st.where, f"unexpected {words[2]!r}: {syntax}")
                return
            returned = self._number(st, "ABORT-DAG-ON", "the DAG return value",
                                    words[3] if len(words) > 3 else None, minimum=0, maximum=255)
            if returned is None or self._extra(st, words, 4, syntax):
                return
        if value is None:
            return
        for draft in self._targets(st, scope, words[0], "ABORT-DAG-ON", ("final",)):
            draft.abort_on = AbortDagOn(value, returned)

    def _pre_skip(self, st: Stmt, scope: Scope) -> None:
        syntax = "PRE_SKIP <NodeName | ALL_NODES> non-zero-exit-code"
        words = st.tokens[1:]
        if not words:
            self.problem(st.where, f"PRE_SKIP needs a node name: {syntax}")
            return
        value = self._number(st, "PRE_SKIP", "the exit code", words[1] if len(words) > 1 else None)
        if value is None or self._extra(st, words, 2, syntax):
            return
        if value == 0:
            self.problem(st.where, f"PRE_SKIP: the exit code must not be 0: {syntax}")
            return
        for draft in self._targets(st, scope, words[0], "PRE_SKIP"):
            draft.pre_skip = value

    def _priority(self, st: Stmt, scope: Scope) -> None:
        syntax = "PRIORITY <NodeName | ALL_NODES> PriorityValue"
        words = st.tokens[1:]
        if not words:
            self.problem(st.where, f"PRIORITY needs a node name: {syntax}")
            return
        value = self._number(st, "PRIORITY", "the priority", words[1] if len(words) > 1 else None)
        if value is None or self._extra(st, words, 2, syntax):
            return
        for draft in self._targets(st, scope, words[0], "PRIORITY", ("final", "service")):
            draft.priority = value

    def _category(self, st: Stmt, scope: Scope) -> None:
        syntax = "CATEGORY <NodeName | ALL_NODES> CategoryName"
        words = st.tokens[1:]
        if len(words) < 2:
            self.problem(st.where, f"CATEGORY needs a node name and a category: {syntax}")
            return
        if self._extra(st, words, 2, syntax):
            return
        category = _scoped_category(scope.prefix, words[1])
        for draft in self._targets(st, scope, words[0], "CATEGORY", ("final", "service")):
            draft.category = category

    def _maxjobs(self, st: Stmt, scope: Scope) -> None:
        syntax = "MAXJOBS CategoryName MaxJobsValue"
        words = st.tokens[1:]
        if not words:
            self.problem(st.where, f"MAXJOBS needs a category and a number: {syntax}")
            return
        value = self._number(st, "MAXJOBS", "the number of jobs",
                             words[1] if len(words) > 1 else None, minimum=0)
        if value is None or self._extra(st, words, 2, syntax):
            return
        scope.maxjobs[_scoped_category(scope.prefix, words[0])] = value

    def _vars(self, st: Stmt, scope: Scope) -> None:
        syntax = 'VARS <NodeName | ALL_NODES> [PREPEND | APPEND] macroname="string" ...'
        if len(st.tokens) < 2:
            self.problem(st.where, f"VARS needs a node name: {syntax}")
            return
        rest = st.rest_after(2)
        placement = None
        head = rest.split(None, 1)
        if head and head[0].upper() in ("PREPEND", "APPEND"):
            placement = head[0].lower()
            rest = head[1] if len(head) > 1 else ""
        pairs, error = _parse_vars(rest)
        if error is not None:
            self.problem(st.where, f"VARS: {error}: {syntax}")
            return
        targets = self._targets(st, scope, st.tokens[1], "VARS")
        new = [NodeVar(name, value, placement) for name, value in pairs]
        for draft in targets:
            draft.vars.extend(new)

    def _done(self, st: Stmt, scope: Scope) -> None:
        syntax = "DONE NodeName"
        words = st.tokens[1:]
        if not words:
            self.problem(st.where, f"DONE needs a node name: {syntax}")
            return
        if self._extra(st, words, 1, syntax):
            return
        if words[0].upper() == "ALL_NODES":
            self.problem(st.where, f"DONE takes one node name, not ALL_NODES: {syntax}")
            return
        for draft in self._targets(st, scope, words[0], "DONE", ("final", "service")):
            draft.done = True


def _scoped_category(prefix: str, category: str) -> str:
    """Categories in a splice are scoped like node names (``Splice+cat``),
    except global ones, which start with ``+``."""
    return category if category.startswith("+") else prefix + category


def _parse_vars(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """The ``name="value"`` pairs of a VARS line, as the manual gives them:
    a name of letters, digits, ``_`` and ``.`` (``+`` only first, turned into
    ``My.``), white space allowed around ``=``, the value in double quotes with
    ``\\"`` for a double quote and ``\\\\`` for a backslash (no other escape).
    Returns the pairs and the first problem (or None)."""
    pairs: list[tuple[str, str]] = []
    i, size = 0, len(text)
    while True:
        while i < size and text[i].isspace():
            i += 1
        if i >= size:
            break
        start = i
        while i < size and text[i] in _VAR_NAME_CHARS:
            if text[i] == "+" and i != start:
                return pairs, f"'+' can only start a macro name ({text[start:i + 1]!r})"
            i += 1
        name = text[start:i]
        if not name:
            return pairs, f"unexpected {text[i]!r} where a macro name should start"
        if name == "+":
            return pairs, "a macro name needs a letter or digit after '+'"
        while i < size and text[i].isspace():
            i += 1
        if i >= size or text[i] != "=":
            if name.upper() in ("PREPEND", "APPEND"):
                return pairs, f"{name} must come right after the node name"
            found = repr(text[i]) if i < size else "the end of the line"
            return pairs, f"expected = after macro name {name!r}, found {found}"
        i += 1
        while i < size and text[i].isspace():
            i += 1
        if i >= size or text[i] != '"':
            return pairs, f"the value of {name!r} must be in double quotes"
        i += 1
        value: list[str] = []
        while True:
            if i >= size:
                return pairs, f"the value of {name!r} has no closing double quote"
            char = text[i]
            if char == "\\":
                following = text[i + 1] if i + 1 < size else ""
                if following not in ("\\", '"') or not following:
                    return pairs, (f"unknown escape sequence \\{following} in the value of "
                                   f"{name!r} (only \\\\ and \\\" are allowed)")
                value.append(following)
                i += 2
                continue
            i += 1
            if char == '"':
                break
            value.append(char)
        if name.lower().startswith("queue"):
            return pairs, f"macro name {name!r} begins with 'queue', which is not allowed"
        if name.startswith("+"):
            name = "My." + name[1:]
        pairs.append((name, "".join(value)))
    if not pairs:
        return pairs, 'no name="value" pairs'
    return pairs, None

