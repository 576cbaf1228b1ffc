"""Commands that start fast and fail fast: ``ecloud --help`` imports none of
the heavy modules (bench/cli_start.py has the times), the help of the
commands imported late is the commands' own, and a database that does not
answer is reported within the connect timeout."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import threading

import click

from ecloud.cli.lazy import LAZY
from ecloud.log.mysql_connect import CONNECT_TIMEOUT
from tests.support.e2e import ROOT

HEAVY = ("pyone", "requests", "paho", "pymysql", "rich", "cattrs", "attr", "starlette",
         "ecloud.boss", "ecloud.events.types", "ecloud.projections")


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    return set(json.loads(result.stdout.splitlines()[-1]))


def test_help_imports_none_of_the_heavy_modules() -> None:
    modules = imported_after(
        "from ecloud.cli.main import cli\n"
        "try:\n    cli(['--help'], prog_name='ecloud')\nexcept SystemExit:\n    pass")
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
    assert heavy == []


def test_a_command_imports_its_own_modules_only() -> None:
    modules = imported_after(
        "from ecloud.cli.main import cli\n"
        "try:\n    cli(['tasks', '--help'], prog_name='ecloud')\nexcept SystemExit:\n    pass")
    assert "ecloud.cli.tasks" in modules
    assert not {"pyone", "paho", "ecloud.cli.run", "ecloud.boss.loop"} & modules


def test_the_late_commands_help_is_their_own() -> None:
    """LAZY keeps each late command's short help so that --help need not
    import it; it must say what the command itself says."""
    for name, (module, attribute, short) in LAZY.items():
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), name
        assert command.get_short_help_str(1000) == short, (
            f"ecloud/cli/lazy.py's help of {name!r} differs from its docstring")


def test_a_database_that_never_answers_is_reported_within_the_connect_timeout() -> None:
    """Something accepts the TCP connection and never speaks (a proxy, a
    firewall, a hung server): the command fails saying so, at the connect
    timeout, not after PyMySQL's 10 s or the 120 s of a query."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # and say nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ecloud.cli.main", "status", "--db",
             f"mysql://root@127.0.0.1:{port}/nothing"], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=CONNECT_TIMEOUT + 30)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    assert result.returncode == 1
    assert f"cannot connect to MariaDB at 127.0.0.1:{port}" in result.stderr
    assert f"no answer within {CONNECT_TIMEOUT:g}s" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_typo_is_matched_against_every_command_imported_or_not() -> None:
    from click.testing import CliRunner

    from ecloud.cli.main import cli

    result = CliRunner().invoke(cli, ["taks"])
    assert result.exit_code == 2 and "'tasks'" in result.output
    result = CliRunner().invoke(cli, ["worker"])
    assert "'workers'" in result.output
    result = CliRunner().invoke(cli, ["status", "--watch", "nan"])
    assert result.exit_code == 2 and "nan is not a number" in result.output
