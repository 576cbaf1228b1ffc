"""The pure core stays pure: nothing under ecloud/projections/ may import I/O,
clocks or randomness (checked on the source, so a lazy import counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import ecloud.projections

FORBIDDEN = {
    "pymysql", "paho", "pyone", "socket", "time", "datetime", "random", "secrets",
    "os", "subprocess", "threading", "asyncio", "sqlite3", "requests", "uuid",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_projections_import_no_io_clock_or_randomness() -> None:
    package = Path(ecloud.projections.__file__).parent
    files = sorted(package.glob("*.py"))
    assert len(files) >= 8
    offenders = {
        f.name: sorted(imported_modules(f) & FORBIDDEN)
        for f in files
        if imported_modules(f) & FORBIDDEN
    }
    assert offenders == {}


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import time\n    from pymysql import connect\n")
    assert imported_modules(sample) == {"time", "pymysql"}


def test_the_views_are_pure_too_except_the_follower() -> None:
    """The DAG, page, metrics and cost views fold and read like the reducers
    (a past seq must look the same every time); only the follower, which
    tails the log for the web page, does I/O."""
    import ecloud.views

    package = Path(ecloud.views.__file__).parent
    files = [f for f in sorted(package.glob("*.py")) if f.name != "follower.py"]
    assert {f.name for f in files} >= {"dag.py", "summary.py", "metrics.py", "cost.py"}
    offenders = {f.name: sorted(imported_modules(f) & FORBIDDEN)
                 for f in files if imported_modules(f) & FORBIDDEN}
    assert offenders == {}
