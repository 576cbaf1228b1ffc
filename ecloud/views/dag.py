"""The task DAG as a picture: nodes with task states, edges, a layered
layout, and Graphviz DOT.

A picture of 4,000 boxes is unreadable, so a large DAG is drawn grouped:

* ``task``: one node per task (the default up to :data:`MAX_NODES` tasks);
* ``pattern``: one node per task-name pattern, each run of digits in the id
  read as ``#`` (``sim-0042-post`` belongs to ``sim-#-post``): the way people
  name sweeps, so the groups are the stages they think in;
* ``level``: one node per depth in the DAG (longest chain of dependencies
  above the task), when even the patterns are too many.

Every node carries its tasks' counts per state; an edge between two groups
counts the dependencies it stands for. The layout is by level (columns),
ordered within a level by the mean position of the node's parents, which
keeps most edges short without a layout library in the browser.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from attrs import define

from ecloud.projections.state import TASK_STATUSES, State

#: most nodes drawn one per task / one per pattern before grouping coarser
MAX_NODES = 150
MODES = ("auto", "task", "pattern", "level")

_DIGITS = re.compile(r"\d+")

#: fill colours per task state, shared by the DOT export and the web page
COLOURS = {
    "waiting": "#d9d9d9", "ready": "#9ecae1", "dispatched": "#6baed6", "running": "#2171b5",
    "succeeded": "#41ab5d", "failed": "#e31a1c", "blocked": "#fd8d3c", "cancelled": "#9e69af",
}


def pattern_of(task_id: str) -> str:
    """A task id with every run of digits as ``#``."""
    return _DIGITS.sub("#", task_id)


def levels(state: State) -> dict[str, int]:
    """Each task's depth: 0 without dependencies, else 1 + its deepest
    dependency's. Kahn's order, so a deep chain costs no recursion."""
    tasks = state.tasks
    unmet = {tid: len(t.spec.depends_on) for tid, t in tasks.items()}
    depth = dict.fromkeys(tasks, 0)
    frontier = [tid for tid, n in unmet.items() if n == 0]
    while frontier:
        tid = frontier.pop()
        for child in state.children.get(tid, ()):
            depth[child] = max(depth[child], depth[tid] + 1)
            unmet[child] -= 1
            if unmet[child] == 0:
                frontier.append(child)
    return depth


def _grouping(state: State, mode: str, depth: dict[str, int]) -> tuple[str, dict[str, str]]:
    """The mode used and each task's node key under it."""
    if mode == "auto":
        if len(state.tasks) <= MAX_NODES:
            mode = "task"
        elif len({pattern_of(t) for t in state.tasks}) <= MAX_NODES:
            mode = "pattern"
        else:
            mode = "level"
    if mode == "task":
        return mode, {tid: tid for tid in state.tasks}
    if mode == "pattern":
        return mode, {tid: pattern_of(tid) for tid in state.tasks}
    if mode == "level":
        return mode, {tid: f"level {d}" for tid, d in depth.items()}
    raise ValueError(f"unknown grouping {mode!r}; known: {', '.join(MODES)}")


def group_of(state: State, mode: str) -> dict[str, str]:
    """Each task's node key under ``mode`` (what a click on a DAG node opens:
    the tasks whose key is the node's)."""
    depth = levels(state) if mode not in ("task", "pattern") else {}
    return _grouping(state, mode, depth)[1]


@define(slots=True)
class Layout:
    """What a DAG's drawing keeps while only task states change: the
    grouping, the nodes' places, the edges. Tasks are never removed from a
    log, so a layout holds for as long as no task is submitted
    (:meth:`fits`); rebuilding it costs about 10 us per task, re-counting
    the states onto it about 0.2 us."""

    mode: str
    tasks: int
    #: node key per task id, and the node skeletons (key, label, level, order)
    key_of: dict[str, str]
    nodes: dict[str, dict[str, Any]]
    edges: list[dict[str, Any]]

    def fits(self, state: State) -> bool:
        return self.tasks == len(state.tasks)


def layout(state: State, mode: str = "auto") -> Layout:
    """Group the tasks (see the module docstring) and place the nodes."""
    depth = levels(state)
    mode, key_of = _grouping(state, mode, depth)
    nodes: dict[str, dict[str, Any]] = {}
    for tid in sorted(state.tasks, key=lambda t: (state.tasks[t].batch_seq, state.tasks[t].index)):
        key = key_of[tid]
        node = nodes.get(key)
        if node is None:
            node = nodes[key] = {"key": key, "label": key, "level": depth[tid], "tasks": 0}
        node["level"] = min(node["level"], depth[tid])
        node["tasks"] += 1
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for tid, task in state.tasks.items():
        for dep in task.spec.depends_on:
            a, b = key_of[dep], key_of[tid]
            if a != b:
                edges[(a, b)] += 1
    # a group's level is its shallowest task's; an edge inside a level would
    # point sideways, so push targets right of their sources until none does
    # (bounded: groups can depend on each other both ways, a cycle of groups)
    for _ in range(len(nodes)):
        changed = False
        for (a, b) in edges:
            if nodes[b]["level"] <= nodes[a]["level"]:
                nodes[b]["level"] = nodes[a]["level"] + 1
                changed = True
        if not changed:
            break
    _order(nodes, edges)
    return Layout(mode, len(state.tasks), key_of, nodes,
                  [{"source": a, "target": b, "count": n} for (a, b), n in sorted(edges.items())])


def build(state: State, mode: str = "auto", reuse: Layout | None = None) -> dict[str, Any]:
    """The DAG of ``state`` as plain data: ``mode`` (the grouping used),
    ``nodes`` (key, label, level, order, tasks, counts, and for a one-task
    node its status) and ``edges`` (source, target, count). ``reuse``: a
    layout of this state's tasks made earlier (see :class:`Layout`)."""
    plan = reuse if reuse is not None and reuse.fits(state) else layout(state, mode)
    counts = {key: dict.fromkeys(TASK_STATUSES, 0) for key in plan.nodes}
    key_of = plan.key_of
    for tid, task in state.tasks.items():
        counts[key_of[tid]][task.status] += 1
    nodes = []
    for key, skeleton in plan.nodes.items():
        node = {**skeleton, "counts": counts[key]}
        if node["tasks"] == 1:
            node["status"] = next(s for s, n in counts[key].items() if n)
        nodes.append(node)
    return {"mode": plan.mode, "nodes": nodes, "edges": plan.edges}


def _order(nodes: dict[str, dict[str, Any]], edges: dict[tuple[str, str], int]) -> None:
    """Set each node's ``order`` within its level: the mean order of its
    parents (barycentre), ties kept in submission order."""
    parents: dict[str, list[str]] = defaultdict(list)
    for (a, b) in edges:
        parents[b].append(a)
    by_level: dict[int, list[str]] = defaultdict(list)
    for key, node in nodes.items():
        by_level[node["level"]].append(key)
    for level in sorted(by_level):
        keys = by_level[level]
        rank = {k: i for i, k in enumerate(keys)}
        weights = {}
        for key in keys:
            above = [nodes[p]["order"] for p in parents[key] if "order" in nodes[p]]
            weights[key] = (sum(above) / len(above) if above else rank[key], rank[key])
        for i, key in enumerate(sorted(keys, key=weights.__getitem__)):
            nodes[key]["order"] = i


# ------------------------------------------------------------------------ DOT


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node_label(node: dict[str, Any]) -> str:
    if node["tasks"] == 1:
        return f"{node['label']}\\n{node['status']}"
    parts = [f"{n} {s}" for s, n in node["counts"].items() if n]
    return f"{node['label']} ({node['tasks']})\\n" + ", ".join(parts)


def _fill(node: dict[str, Any]) -> str:
    """The colour of the state most of the node's tasks are in."""
    status = max(TASK_STATUSES, key=lambda s: node["counts"][s])
    return COLOURS[status]


def to_dot(graph: dict[str, Any], title: str = "ecloud") -> str:
    """Graphviz DOT of :func:`build`'s graph: left to right, one box per
    node filled with its (main) state's colour, edges labelled with their
    count when they stand for more than one dependency."""
    lines = [f"digraph {_quote(title)} {{", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for node in graph["nodes"]:
        label = _node_label(node).replace('"', '\\"')
        lines.append(f'  {_quote(node["key"])} [label="{label}", fillcolor="{_fill(node)}"];')
    for edge in graph["edges"]:
        extra = f' [label="{edge["count"]}"]' if edge["count"] > 1 else ""
        lines.append(f"  {_quote(edge['source'])} -> {_quote(edge['target'])}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"
