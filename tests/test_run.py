"""``ecloud run`` as a user runs it: a subprocess in an empty directory, with
nothing but the package (SQLite log, embedded broker, local workers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers import wait_for
from tests.e2e import ROOT, finished_events, write_tasks
from ecloud.events.store import open_store

EXAMPLES = ROOT / "examples"


def ecloud(cwd: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecloud.cli.main", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=kw.pop("timeout", 180), **kw)


def log_of(cwd: Path) -> list:
    with open_store(f"sqlite:///{cwd}/ecloud.db", create=False) as store:
        return list(store.read(1))


def test_run_the_example_dag_on_the_embedded_default(tmp_path: Path) -> None:
    result = ecloud(tmp_path, "run", str(EXAMPLES / "dag50.json"), "--local", "4")
    assert result.returncode == 0, result.stderr
    assert "pushed 56 tasks" in result.stderr and "embedded MQTT broker" in result.stderr
    assert "56/56 done" in result.stderr  # the progress bar's last state
    assert "succeeded" in result.stdout and "56" in result.stdout
    successes = [e.task_id for e in finished_events(log_of(tmp_path)) if e.exit_code == 0]
    assert len(successes) == len(set(successes)) == 56
    status = json.loads(ecloud(tmp_path, "status", "--json").stdout)
    assert status["tasks"]["succeeded"] == 56
    # retired at the end (once seen "lost" in a gate run, not reproduced in 12
    # tries: the message keeps what is needed to tell why if it happens again)
    assert {w["status"] for w in status["workers"]} == {"gone"}, (
        [(w["id"], w["status"], w["reason"]) for w in status["workers"]],
        ecloud(tmp_path, "log", "--from", str(max(1, status["seq"] - 40))).stdout)


def test_the_readme_s_two_runs_in_one_directory_count_progress_over_the_whole_log(
        tmp_path: Path) -> None:
    """The second run's boss runs every task in the reused log: its progress
    bar counts all of them (it once said 106/50 done)."""
    assert ecloud(tmp_path, "run", str(EXAMPLES / "dag50.json"), "--local", "4").returncode == 0
    datastore = shutil.copytree(EXAMPLES / "pipeline" / "datastore", tmp_path / "datastore")
    result = ecloud(tmp_path, "run", str(EXAMPLES / "pipeline" / "tasks.json"),
                    "--datastore", str(datastore), "--local", "4")
    assert result.returncode == 0, result.stderr
    assert "pushed 50 tasks" in result.stderr and "106/106 done" in result.stderr
    assert not re.search(r"\b\d+/50 done", result.stderr)


def test_run_with_the_pure_python_broker(tmp_path: Path) -> None:
    result = ecloud(tmp_path, "run", str(EXAMPLES / "diamond.json"), "--local", "2",
                    env={"ECLOUD_EMBEDDED_BROKER": "python"})
    assert result.returncode == 0, result.stderr
    assert "embedded MQTT broker (python)" in result.stderr


def test_a_failed_run_exits_1_and_a_second_run_continues_after_retry(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    tasks = write_tasks(tmp_path / "t.json", [
        {"id": "once", "command": f"test -e {marker} || {{ touch {marker}; echo no >&2; exit 1; }}"},
        {"id": "then", "command": "true", "depends_on": ["once"]},
    ])
    first = ecloud(tmp_path, "run", str(tasks), "--local", "1")
    assert first.returncode == 1
    assert "failed once (attempt 1): exit code 1" in first.stdout and "blocked" in first.stdout
    assert ecloud(tmp_path, "retry", "--failed").returncode == 0
    second = ecloud(tmp_path, "run", str(tasks), "--local", "1")
    assert second.returncode == 0, second.stderr
    assert "continuing: all 2 tasks" in second.stderr


def test_a_file_partly_in_the_log_is_refused(tmp_path: Path) -> None:
    ecloud(tmp_path, "push", str(EXAMPLES / "diamond.json"))
    more = write_tasks(tmp_path / "more.json", [{"id": "a", "command": "true"},
                                                 {"id": "z", "command": "true"}])
    result = ecloud(tmp_path, "run", str(more), "--local", "1")
    assert result.returncode == 2
    assert "task 'a' is in the log already" in result.stderr and "Traceback" not in result.stderr


def test_interrupted_run_continues_where_it_stopped(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.json", [
        {"id": f"s{i}", "command": "sleep 0.3", "depends_on": [f"s{i - 1}"] if i else []}
        for i in range(12)])
    proc = subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", "run", str(tasks), "--local", "1"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "ecloud.db"

    def some_done() -> bool:
        try:
            return sum(1 for e in finished_events(log_of(tmp_path)) if e.exit_code == 0) >= 3
        except Exception:  # the log is still being created
            return False

    try:
        wait_for(lambda: db.exists() and some_done(), 60, "three tasks done")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "run the same command again to continue" in err
    again = ecloud(tmp_path, "run", str(tasks), "--local", "1")
    assert again.returncode == 0, again.stderr
    successes = [e.task_id for e in finished_events(log_of(tmp_path)) if e.exit_code == 0]
    assert sorted(successes) == sorted(f"s{i}" for i in range(12))  # each exactly once


@pytest.mark.mysql
def test_run_against_mariadb_and_the_machines_mosquitto(tmp_path: Path, mysql_url: str) -> None:
    broker = os.environ.get("ECLOUD_TEST_MQTT", "mqtt://127.0.0.1:1883")
    result = ecloud(tmp_path, "run", str(EXAMPLES / "diamond.json"), "--local", "2",
                    "--db", mysql_url, "--broker", broker,
                    env={"ECLOUD_CLUSTER": f"run{os.getpid()}"})
    assert result.returncode == 0, result.stderr
    with open_store(mysql_url, create=False) as store:
        successes = [r.event.task_id for r in store.read(1, types=["task.finished"])
                     if r.event.exit_code == 0]
    assert sorted(successes) == ["a", "b", "c", "d"]
