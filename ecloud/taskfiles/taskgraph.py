"""The cross-task checks of a task file: ids unique in the file and new to the
log, dependencies that exist, no cycles (each reported once, as a concrete
cycle), inputs taken only from a direct dependency's declared outputs.

:mod:`ecloud.taskfiles.taskfile` parses each task on its own and feeds a
:class:`Graph`; the graph then checks everything that needs more than one
task at a time. Linear in the size of the file; nothing recurses.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

#: Whether an id already exists in the log.
Known = Callable[[str], bool]


def never_known(_id: str) -> bool:
    """The ``known`` of a file checked on its own (no log)."""
    return False


MAX_ID_LENGTH = 200
ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+-]*(?:/[A-Za-z0-9_][A-Za-z0-9._:@+-]*)*")
_GLOB_CHARS = frozenset("*?[")


class Graph:
    """What the cross-task checks need, by position in the file."""

    __slots__ = ("back", "deps", "duplicates", "froms", "ids", "index", "outputs", "pending")

    def __init__(self, n: int) -> None:
        self.ids: list[str | None] = [None] * n
        self.deps: list[Sequence[str]] = [()] * n
        self.outputs: list[Sequence[str]] = [()] * n
        self.froms: dict[int, list[tuple[int, str, str]]] = {}
        self.index: dict[str, int] = {}  # id -> position of its first definition
        self.duplicates: list[int] = []  # positions that define an id again
        self.back: list[int] = [-1] * n  # the position of a lone, earlier dependency
        self.pending: list[int] = []  # positions whose dependencies need the full check

    def add(self, i: int, tid: str | None, deps: Sequence[str]) -> None:
        """Record task ``i``, in file order. A lone dependency on an earlier
        task - the bulk of any big file - is settled here and then."""
        if tid is not None:
            self.ids[i] = tid
            if self.index.setdefault(tid, i) != i:
                self.duplicates.append(i)
        if deps:
            self.deps[i] = deps
            if len(deps) == 1 and deps[0] != tid:
                j = self.index.get(deps[0])
                if j is not None:
                    self.back[i] = j
                    return
            self.pending.append(i)

    def check(self, known: Known, problems: list[tuple[int, str]],
              redefine: bool = False) -> None:
        """``redefine``: ids already in the log are allowed (a file pushed
        again: its tasks are compared with the log's, not refused)."""
        ids, deps, index = self.ids, self.deps, self.index

        def where(i: int) -> str:
            return locate(i, ids[i])

        for i in self.duplicates:
            tid = ids[i]
            problems.append(
                (i, f'{where(i)}: duplicate id {quote(tid)}, first defined at tasks[{index[tid]}]')
            )
        if known is not never_known and not redefine:
            for tid, i in index.items():
                if known(tid):
                    problems.append((i, f'{where(i)}: id {quote(tid)} already exists in the log'))

        forward = False  # does any task depend on one after its own position?
        edges: dict[int, list[int]] = {}  # pending position -> positions of its dependencies
        lookup = index.get
        for i in self.pending:
            tid = ids[i]
            seen: dict[str, int] = {}
            out = edges[i] = []
            for k, d in enumerate(deps[i]):
                if d == tid:
                    problems.append((i, f"{where(i)}: depends_on[{k}]: a task cannot depend on itself"))
                    continue
                prev = seen.setdefault(d, k)
                if prev != k:
                    problems.append(
                        (i, f'{where(i)}: depends_on[{k}]: {quote(d)} is listed twice '
                            f'(also depends_on[{prev}])')
                    )
                    continue
                j = lookup(d)
                if j is None:
                    if not known(d):
                        problems.append((i, f"{where(i)}: depends_on[{k}]: unknown task {quote(d)}"))
                else:
                    out.append(j)
                    if j > i:
                        forward = True
        if forward:  # without an edge pointing forward, there can be no cycle
            adj: list[Sequence[int]] = [(b,) if b >= 0 else () for b in self.back]
            for i, out in edges.items():
                adj[i] = out
            _report_cycles(adj, where, ids, problems)
        for i, froms in self.froms.items():
            self._check_froms(i, froms, known, where, problems)

    def _check_froms(self, i, froms, known, where, problems) -> None:
        dl = self.deps[i]
        if len(dl) > 8:
            dl = set(dl)
        for k, src, path in froms:
            at = f"{where(i)}: inputs[{k}]"
            if src == self.ids[i]:
                problems.append((i, f"{at}: a task cannot take input from itself"))
            elif src not in dl:
                if src in self.index or known(src):
                    problems.append((i, f'{at}: takes input from {quote(src)}, which is not in depends_on '
                                        "(inputs can only come from direct dependencies)"))
                else:
                    problems.append((i, f"{at}: from unknown task {quote(src)}"))
            else:
                j = self.index.get(src)
                # j is None: a task in the log (its outputs are not known here:
                # accepted) or an unknown dependency (already reported).
                if j is not None and not matches_output(path, self.outputs[j]):
                    problems.append((i, f'{at}: {quote(src)} does not declare output {quote(path)} '
                                        f"(its outputs: {listing(self.outputs[j])})"))


def _report_cycles(adj: list[Sequence[int]], where, ids, problems) -> None:
    """Report one cycle per strongly connected group of tasks.

    First peel off, Kahn-style, every task that nothing left depends on: in a
    valid file that is all of them, in linear time. Only what remains can hold
    a cycle; an iterative Tarjan finds its strongly connected groups.
    """
    n = len(adj)
    dependents = [0] * n
    for out in adj:
        for w in out:
            dependents[w] += 1
    peeled = [v for v in range(n) if not dependents[v]]
    for v in peeled:  # grows while we walk it
        for w in adj[v]:
            dependents[w] -= 1
            if not dependents[w]:
                peeled.append(w)
    if len(peeled) == n:
        return
    left = [v for v in range(n) if dependents[v]]  # a cycle, or what one depends on

    order = [0] * n  # discovery number; 0: not visited yet
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    groups: list[list[int]] = []
    counter = 0
    for root in left:
        if order[root]:
            continue
        counter += 1
        order[root] = low[root] = counter
        stack.append(root)
        on_stack[root] = True
        work = [(root, 0)]
        while work:
            v, e = work[-1]
            out = adj[v]
            if e < len(out):
                work[-1] = (v, e + 1)
                w = out[e]
                if not dependents[w]:
                    continue  # peeled: in no cycle
                if not order[w]:
                    counter += 1
                    order[w] = low[w] = counter
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w] and order[w] < low[v]:
                    low[v] = order[w]
                continue
            work.pop()
            if work:
                u = work[-1][0]
                if low[v] < low[u]:
                    low[u] = low[v]
            if low[v] == order[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(group)
    member = [-1] * n
    for g, group in enumerate(groups):
        for v in group:
            member[v] = g
    for g, group in enumerate(groups):
        start = min(group)
        text = " -> ".join(ids[v] for v in _cycle_through(start, adj, member, g))
        problems.append((start, f"{where(start)}: dependency cycle: {text}"))


def _cycle_through(start: int, adj: list[Sequence[int]], member: list[int], g: int) -> list[int]:
    """A shortest cycle from ``start`` back to itself inside group ``g`` (BFS)."""
    parent = {start: start}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in adj[v]:
            if w == start:
                path = [v]
                while v != start:
                    v = parent[v]
                    path.append(v)
                path.reverse()
                path.append(start)
                return path
            if member[w] == g and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError("a strongly connected group without a cycle")  # pragma: no cover

# ------------------------------------------------------------------ formatting

def locate(i: int, tid: Any) -> str:
    """The location of task ``i``, with its id when that id is well-formed."""
    if type(tid) is str and len(tid) <= MAX_ID_LENGTH and ID_RE.fullmatch(tid):
        return f'tasks[{i}] (id "{tid}")'
    return f"tasks[{i}]"
def matches_output(path: str, outputs: Sequence[str]) -> bool:
    for out in outputs:
        if path == out or (not _GLOB_CHARS.isdisjoint(out) and fnmatch.fnmatchcase(path, out)):
            return True
    return False
def quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
def listing(items: Sequence[str]) -> str:
    return ", ".join(quote(x) for x in items) if items else "none"
