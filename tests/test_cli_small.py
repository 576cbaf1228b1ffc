"""The small things an operator trips on (issue 20's list): a negative
context value, numbers in JSON, a reader that stops reading, a request no
boss will perform, and a status that thousands of gone workers do not bury."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.log.url import open_store
from tests.support.e2e import ROOT
from tests.test_cli import EXAMPLES, run


def test_a_negative_context_value_is_refused_for_what_it_is(sqlite_url: str) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    result = run("context", "set", "queue_ahead", "-3", "--db", sqlite_url)
    assert result.exit_code == 2
    assert "queue_ahead: '-3' must be a whole number >= 0" in result.stderr
    assert "No such option" not in result.stderr


def test_context_show_json_gives_numbers_as_numbers(sqlite_url: str) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    assert run("context", "set", "heartbeat_timeout", "45", "--db", sqlite_url).exit_code == 0
    values = json.loads(run("context", "show", "--json", "--db", sqlite_url).stdout)
    assert values["heartbeat_timeout"] == 45.0 and values["queue_ahead"] == 2
    assert values["boss_address"] is None


def test_a_reader_that_stops_reading_is_no_failure(tmp_path: Path, sqlite_url: str) -> None:
    run("push", EXAMPLES / "dag50.json", "--db", sqlite_url)
    for args in (["log"], ["log", "--json"], ["tasks"]):
        reader = subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", *args, "--db",
                                   sqlite_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert reader.stdout is not None and reader.stderr is not None
        reader.stdout.readline()
        reader.stdout.close()  # as `| head -1` does
        assert reader.wait(timeout=60) == 0, (args, reader.stderr.read())
        assert b"Traceback" not in reader.stderr.read()


def test_a_spawn_with_no_boss_running_says_nothing_will_happen_yet(sqlite_url: str) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    result = run("workers", "spawn", "2", "--db", sqlite_url)
    assert result.exit_code == 0
    assert "requested 2 VM(s)" in result.stdout
    assert "no boss is running on this log: nothing happens until one starts" in result.stderr


def test_status_shows_live_workers_and_only_the_latest_gone(sqlite_url: str) -> None:
    start = time.time() - 60  # status judges "recent" against the present
    with open_store(sqlite_url, create=True) as store:
        store.append([ev.TasksSubmitted("b", (TaskSpec("t", "true"),))], ts=start)
        for i in range(30):
            store.append([ev.WorkerAnnounced(f"old{i:02d}", "h", 1, 1, f"i{i}")], ts=start + i)
            store.append([ev.WorkerLeft(f"old{i:02d}")], ts=start + i + 0.5)
        store.append([ev.WorkerAnnounced("alive", "h", 1, 1, "ia")], ts=start + 40)
    text = run("status", "--db", sqlite_url).stdout
    assert "alive" in text
    shown = [f"old{i:02d}" for i in range(30) if f"old{i:02d}" in text]
    assert shown == [f"old{i:02d}" for i in range(25, 30)]  # the latest five to go
    assert "... and 25 more gone or lost earlier" in text
    everyone = json.loads(run("status", "--json", "--db", sqlite_url).stdout)["workers"]
    assert len(everyone) == 31


def test_piped_output_cuts_no_value(tmp_path: Path) -> None:
    """`ecloud config show | cat` showed values cut at 80 columns."""
    long_db = f"sqlite:///{tmp_path}/{'a-rather-long-folder-name/' * 6}ecloud.db"
    result = subprocess.run([sys.executable, "-m", "ecloud.cli.main", "config", "show",
                             "--db", long_db], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert long_db in result.stdout
