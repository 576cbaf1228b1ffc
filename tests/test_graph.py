"""``ecloud graph`` and the DAG view behind it (and behind the web page)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.projections.fold import fold
from ecloud.projections.state import TASK_STATUSES
from ecloud.views import dag
from tests.support.e2e import ROOT
from tests.support.folding import Driver, driven_logs
from tests.test_run import ecloud

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NODE = re.compile(r'^  "([^"]+)" \[label=')
EDGE = re.compile(r'^  "([^"]+)" -> "([^"]+)"')


def graphviz() -> str:
    program = shutil.which("dot")
    if program is None:
        pytest.fail("Graphviz's dot is missing: apt-get install graphviz (.ci/run installs it)")
    return program


def test_the_diamond_gives_dot_with_4_nodes_and_4_edges(tmp_path: Path) -> None:
    assert ecloud(tmp_path, "push", str(ROOT / "examples" / "diamond.json")).returncode == 0
    done = ecloud(tmp_path, "graph")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    nodes = [m.group(1) for line in lines if (m := NODE.match(line))]
    edges = [m.groups() for line in lines if (m := EDGE.match(line))]
    assert len(nodes) == 4 and len(edges) == 4
    assert all(f'{n}\\nwaiting' in done.stdout or f'{n}\\nready' in done.stdout for n in nodes)
    # and Graphviz itself reads 4 nodes and 4 edges from it
    plain = subprocess.run([graphviz(), "-Tplain"], input=done.stdout, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert sum(1 for line in plain if line.startswith("node ")) == 4
    assert sum(1 for line in plain if line.startswith("edge ")) == 4


def test_svg_and_png_through_graphviz(tmp_path: Path) -> None:
    graphviz()
    assert ecloud(tmp_path, "push", str(ROOT / "examples" / "diamond.json")).returncode == 0
    assert ecloud(tmp_path, "graph", "-o", "dag.svg").returncode == 0
    assert "<svg" in (tmp_path / "dag.svg").read_text()
    assert ecloud(tmp_path, "graph", "--format", "png", "-o", "dag.out").returncode == 0
    assert (tmp_path / "dag.out").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_bad_graph_requests_are_refused_clearly(tmp_path: Path) -> None:
    missing = ecloud(tmp_path, "graph")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert ecloud(tmp_path, "push", str(ROOT / "examples" / "diamond.json")).returncode == 0
    late = ecloud(tmp_path, "graph", "--until", "99")
    assert late.returncode == 2 and "past the end of the log" in late.stderr
    bad = ecloud(tmp_path, "graph", "--group", "colour")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def _sweep(n: int, name=lambda i: f"sim-{i:04d}") -> list[TaskSpec]:
    """prep -> n sims -> one post per 10 sims -> report."""
    specs = [TaskSpec("prep", "true")]
    specs += [TaskSpec(name(i), "true", depends_on=("prep",)) for i in range(n)]
    posts = [TaskSpec(f"post-{p:03d}", "true", depends_on=tuple(name(i) for i in range(p * 10, p * 10 + 10)))
             for p in range(n // 10)]
    return specs + posts + [TaskSpec("report", "true", depends_on=tuple(p.id for p in posts))]


def _state(specs: list[TaskSpec]):
    d = Driver()
    d.apply(ev.TasksSubmitted("b", tuple(specs)))
    return d.state


def test_a_4000_task_sweep_is_drawn_as_its_stages() -> None:
    state = _state(_sweep(4000))
    graph = dag.build(state)
    assert graph["mode"] == "pattern"
    by_key = {n["key"]: n for n in graph["nodes"]}
    assert set(by_key) == {"prep", "sim-#", "post-#", "report"}
    assert by_key["sim-#"]["tasks"] == 4000 and by_key["post-#"]["tasks"] == 400
    assert [by_key[k]["level"] for k in ("prep", "sim-#", "post-#", "report")] == [0, 1, 2, 3]
    assert {(e["source"], e["target"]): e["count"] for e in graph["edges"]} == {
        ("prep", "sim-#"): 4000, ("sim-#", "post-#"): 4000, ("post-#", "report"): 400}


def test_names_without_a_pattern_are_grouped_by_level() -> None:
    letters = "abcdefghijklmnopqrstuvwxyz"
    state = _state(_sweep(400, name=lambda i: "s" + letters[i // 26 % 26] + letters[i % 26]
                          + letters[i // 676]))
    graph = dag.build(state)
    assert graph["mode"] == "level"
    assert [n["key"] for n in sorted(graph["nodes"], key=lambda n: n["level"])] == \
        ["level 0", "level 1", "level 2", "level 3"]


def test_dot_export_of_a_grouped_graph_counts_edges() -> None:
    text = dag.to_dot(dag.build(_state(_sweep(200))))
    assert '"sim-#" [label="sim-# (200)\\n200 waiting"' in text
    assert '"sim-#" -> "post-#" [label="200"];' in text


@SETTINGS
@given(driven_logs())
def test_every_grouping_accounts_for_every_task_and_dependency(d: Driver) -> None:
    state = fold(d.log)
    depth = dag.levels(state)
    for tid, task in state.tasks.items():
        assert all(depth[dep] < depth[tid] for dep in task.spec.depends_on)
    for mode in ("task", "pattern", "level"):
        graph = dag.build(state, mode)
        assert sum(n["tasks"] for n in graph["nodes"]) == len(state.tasks)
        for status in TASK_STATUSES:
            assert sum(n["counts"][status] for n in graph["nodes"]) == state.counts[status]
        deps = sum(len(t.spec.depends_on) for t in state.tasks.values())
        assert sum(e["count"] for e in graph["edges"]) <= deps
        if mode == "task":
            assert sum(e["count"] for e in graph["edges"]) == deps
            levels = {n["key"]: n["level"] for n in graph["nodes"]}
            assert all(levels[e["source"]] < levels[e["target"]] for e in graph["edges"])
        orders = {(n["level"], n["order"]) for n in graph["nodes"]}
        assert len(orders) == len(graph["nodes"])  # no two nodes drawn in one place
    assert dag.build(state, "task") == dag.build(fold(d.log), "task")  # deterministic
