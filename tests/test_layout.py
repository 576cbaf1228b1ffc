"""The layout keeps the promises of docs/architecture.md: small modules,
few loose ones, and every package documented."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = [p for d in ("ecloud", "worker", "onehook") for p in sorted((ROOT / d).rglob("*.py"))]
MAX_LINES = 600
LOOSE = {"__init__.py", "config.py", "errors.py", "limits.py", "strictjson.py", "wire.py"}


def test_no_module_is_over_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in CODE
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_more_than_five_loose_modules_in_ecloud() -> None:
    loose = {p.name for p in (ROOT / "ecloud").glob("*.py")}
    assert loose == LOOSE  # a new module goes into the package of the part it serves


def test_every_package_says_what_it_is_for() -> None:
    silent = [str(p.parent.relative_to(ROOT)) for p in CODE if p.name == "__init__.py"
              and '"""' not in p.read_text()]
    missing = [str(d.relative_to(ROOT)) for d in sorted((ROOT / "ecloud").rglob("*"))
               if d.is_dir() and list(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert (silent, missing) == ([], [])


def test_docs_name_no_file_outside_the_repository() -> None:
    """Docstrings cite docs/ and the README, never notes that are not here."""
    outside = ("DESIGN.md", "SERVICES.md", "OPENNEBULA.md", "/work/shared", "shared/")
    here = Path(__file__).resolve()
    cited = [str(p.relative_to(ROOT)) for p in CODE + sorted((ROOT / "tests").rglob("*.py"))
             if p != here and any(o in p.read_text() for o in outside)]
    assert cited == []


def test_every_slow_module_named_exists() -> None:
    from tests.conftest import SLOW_MODULES

    assert sorted(m for m in SLOW_MODULES if not (ROOT / "tests" / m).is_file()) == []


def test_the_worker_is_installed_as_ecloud_worker_not_as_worker(tmp_path) -> None:
    """Installing ecloud must not take the global name ``worker``; the
    checkout's bin/ecloud-worker finds the agent all the same."""
    import subprocess
    import sys

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert run(sys.executable, "-c", "import ecloud_worker.agent").returncode == 0
    taken = run(sys.executable, "-c", "import worker")
    assert taken.returncode != 0 and "No module named 'worker'" in taken.stderr
    helped = run(sys.executable, str(ROOT / "bin" / "ecloud-worker"), "--help")
    assert helped.returncode == 0 and "--broker" in helped.stdout
