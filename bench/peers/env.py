"""The peers' own virtual environment, created on first use.

    python -m bench.peers.env            # make sure it exists, print its python
    python -m bench.peers.env --rebuild  # throw it away and build it again

Where: ``$ECLOUD_BENCH_CACHE/peers-venv`` (``~/.cache/ecloud-bench/peers-venv``
by default). What: :data:`REQUIREMENTS`, installed with the venv's own pip.
Celery must never be installed into the project's venv: it would drag kombu,
billiard, vine, amqp, redis... into the environment the tests run in.

Idempotent: a marker file in the venv holds the requirement list (and the
interpreter's version) it was installed with; when it matches, nothing is
run but a stat. When the list changes, pip installs the new list over the
old venv; when the venv's interpreter is gone or broken (the base Python
moved), the venv is made again. A file lock keeps two harnesses started at
once from building it together. A pip failure raises :class:`PeersEnvError`
with the command and the end of pip's output.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# kombu's default transport for amqp:// is pyamqp, i.e. the ``amqp`` package,
# which celery already requires. kombu's Redis transport needs ``redis`` and
# (kombu 5.7) ``packaging``, which celery does not pull in: both explicit.
REQUIREMENTS: tuple[str, ...] = ("celery==5.7.*", "redis", "packaging")
MARKER = ".ecloud-bench-requirements.json"
PIP_TIMEOUT = 600.0  # seconds for one pip install


class PeersEnvError(RuntimeError):
    """The peers' venv could not be made or installed into."""


def cache_dir() -> Path:
    """``$ECLOUD_BENCH_CACHE``, else ``~/.cache/ecloud-bench``."""
    base = os.environ.get("ECLOUD_BENCH_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "ecloud-bench"


def venv_dir() -> Path:
    return cache_dir() / "peers-venv"


def venv_python(venv: Path | None = None) -> Path:
    return (venv or venv_dir()) / "bin" / "python"


def _run(cmd: Sequence[str | os.PathLike], what: str, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        proc = subprocess.run([str(c) for c in cmd], check=False, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise PeersEnvError(f"{what}: timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}") from exc
    except OSError as exc:
        raise PeersEnvError(f"{what}: could not run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(line if len(line) <= 300 else line[:300] + " ..."
                         for line in proc.stdout.strip().splitlines()[-25:])
        raise PeersEnvError(
            f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}\n"
            f"(the peers' venv is {venv_dir()}; delete it or set ECLOUD_BENCH_CACHE to start afresh)")
    return proc.stdout


def _interpreter_version(python: Path) -> str | None:
    try:
        out = subprocess.run([str(python), "-c", "import sys; print(sys.version)"], check=False,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _wanted(requirements: Sequence[str]) -> dict:
    return {"requirements": sorted(requirements), "python": sys.version.split()[0]}


def _read_marker(venv: Path) -> dict | None:
    try:
        return json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure(requirements: Sequence[str] = REQUIREMENTS, *, rebuild: bool = False,
           log=None) -> Path:
    """Make sure the peers' venv exists with ``requirements``; return its python.

    ``log`` (a callable taking a str, default: print to stderr) hears about
    the slow steps only (creating the venv, running pip)."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    venv = venv_dir()
    python = venv_python(venv)
    wanted = _wanted(requirements)
    if not rebuild and python.exists() and _read_marker(venv) == wanted:
        return python  # the common case: no lock, no subprocess
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "peers-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another harness may be building it
        try:
            marker = _read_marker(venv)
            if not rebuild and python.exists() and marker == wanted:
                return python
            if rebuild or not python.exists() or _interpreter_version(python) is None \
                    or (marker is not None and marker.get("python") != wanted["python"]):
                if venv.exists():
                    say(f"peers venv: removing {venv}")
                    shutil.rmtree(venv)
                say(f"peers venv: creating {venv}")
                # from a venv, ``-m venv`` bases the new one on the base interpreter
                _run([sys.executable, "-m", "venv", venv], "creating the peers' venv", 120)
            (venv / MARKER).unlink(missing_ok=True)  # half-installed until pip succeeds
            say(f"peers venv: pip install {' '.join(requirements)}")
            _run([python, "-m", "pip", "install", "--no-input", "--quiet", *requirements],
                 "pip install into the peers' venv", PIP_TIMEOUT)
            (venv / MARKER).write_text(json.dumps(wanted, indent=1) + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return python


def installed_version(python: Path, distribution: str) -> str | None:
    """The version of ``distribution`` installed for ``python`` (None if absent)."""
    code = ("import importlib.metadata as m, sys\n"
            "try: print(m.version(sys.argv[1]))\n"
            "except m.PackageNotFoundError: pass\n")
    try:
        out = subprocess.run([str(python), "-c", code, distribution], check=False,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="remove the venv and build it again")
    args = parser.parse_args(argv)
    try:
        python = ensure(rebuild=args.rebuild)
    except PeersEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"python": str(python), "requirements": list(REQUIREMENTS),
                      "celery_version": installed_version(python, "celery")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
