"""``ecloud run`` as a user runs it: a subprocess in an empty directory, with
nothing but the package (SQLite log, embedded broker, local workers)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecloud.log.url import open_store
from tests.support.brokers import wait_for
from tests.support.e2e import ROOT, finished_events, write_tasks

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
    assert "pushed 56 new task(s)" in result.stderr and "embedded MQTT broker" in result.stderr
    assert "56 of 56 tasks done (100%): 56 succeeded" in result.stderr  # the last progress line
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


def test_the_readme_s_two_runs_in_one_directory_count_progress_over_the_run_s_tasks(
        tmp_path: Path) -> None:
    """The second run's progress counts the tasks of its own file, not the
    whole reused log (it once said 106/50 done, then 106/106)."""
    assert ecloud(tmp_path, "run", str(EXAMPLES / "dag50.json"), "--local", "4").returncode == 0
    datastore = shutil.copytree(EXAMPLES / "pipeline" / "datastore", tmp_path / "datastore")
    result = ecloud(tmp_path, "run", str(EXAMPLES / "pipeline" / "tasks.json"),
                    "--datastore", str(datastore), "--local", "4")
    assert result.returncode == 0, result.stderr
    assert "pushed 50 new task(s)" in result.stderr
    assert "50 of 50 tasks done (100%): 50 succeeded" in result.stderr
    assert "106" not in result.stderr


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


def test_a_file_that_changes_a_task_of_the_log_is_refused_showing_the_difference(
        tmp_path: Path) -> None:
    ecloud(tmp_path, "push", str(EXAMPLES / "diamond.json"))
    more = write_tasks(tmp_path / "more.json", [{"id": "a", "command": "echo changed"},
                                                 {"id": "z", "command": "true"}])
    before = len(log_of(tmp_path))
    result = ecloud(tmp_path, "run", str(more), "--local", "1")
    assert result.returncode == 2, result.stderr
    assert "task 'a': command: " in result.stderr and "'echo changed'" in result.stderr
    assert "--replace" in result.stderr and "Traceback" not in result.stderr
    added = [r.event for r in log_of(tmp_path)[before:]]  # nothing applied, nothing started:
    assert [e.TYPE for e in added] == ["input.rejected"]  # the refusal is recorded, once
    assert "task 'a': command: " in added[0].reason and "file='more.json'" not in added[0].excerpt
    assert f"file='{more}'" in added[0].excerpt


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


def test_run_on_a_secured_broker_gives_its_local_workers_the_ca_and_accounts(
        tmp_path: Path, secure_broker) -> None:
    """The ecloud.toml that `ecloud broker config` writes (TLS, no anonymous
    clients, an account per worker): the run's local workers connect with
    the CA and accounts of their own, and the run completes."""
    result = ecloud(tmp_path, "run", str(EXAMPLES / "diamond.json"), "--local", "2",
                    "--config", str(secure_broker.files.toml), timeout=120)
    assert result.returncode == 0, result.stderr
    successes = [e.task_id for e in finished_events(log_of(tmp_path)) if e.exit_code == 0]
    assert sorted(successes) == ["a", "b", "c", "d"]
    log = secure_broker.log()
    assert "not authorised" not in log.lower() and "unknown ca" not in log.lower()


def test_a_run_whose_workers_the_broker_refuses_fails_within_seconds_saying_why(
        tmp_path: Path, secure_broker) -> None:
    """Local workers the broker refuses (here: no worker accounts - the
    config has no broker_passwd_file) exit with the broker's reason, and the
    run fails with it instead of waiting forever."""
    toml = tmp_path / "no-accounts.toml"
    toml.write_text("\n".join(line for line in secure_broker.files.toml.read_text().splitlines()
                              if not line.startswith(("broker_passwd_file", "worker_secret",
                                                      "broker_pid_file"))) + "\n")
    started = time.monotonic()
    result = ecloud(tmp_path, "run", str(EXAMPLES / "diamond.json"), "--local", "2",
                    "--config", str(toml), timeout=120)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 30
    assert "no local worker is left" in result.stderr
    assert "refused this worker" in result.stderr and "Traceback" not in result.stderr


def test_a_task_no_worker_can_run_ends_the_run_with_exit_3_naming_it(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.json", [
        {"id": "small", "command": "true"},
        {"id": "huge", "command": "true", "slots": 64},
        {"id": "after", "command": "true", "depends_on": ["huge"]},
    ])
    started = time.monotonic()
    result = ecloud(tmp_path, "run", str(tasks), "--local", "2", timeout=60)
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 30
    text = result.stderr.replace("\n", " ")
    assert "unschedulable: huge needs 64 slot(s); the largest of the 2 live worker(s) has 1" in text
    status = json.loads(ecloud(tmp_path, "status", "--json").stdout)
    assert status["tasks"]["succeeded"] == 1
    assert [u["task"] for u in status["unschedulable"]] == ["huge"]
    why = ecloud(tmp_path, "why", "huge")
    assert why.returncode == 0 and "unschedulable: needs 64 slot(s)" in why.stdout


def test_a_task_that_fails_1100_times_ends_failed_and_every_view_of_the_log_works(
        tmp_path: Path) -> None:
    """A retry budget larger than 2**10 used to overflow the backoff in the
    fold (retry_backoff x 2^(n-1)) at about the 1,025th failure: the event
    was logged already, so every later fold - status, replay, the next boss
    - crashed on it. The fold is total now."""
    assert ecloud(tmp_path, "context", "set", "max_backoff", "0.001").returncode == 0
    tasks = write_tasks(tmp_path / "t.json", [
        {"id": "stubborn", "command": "exit 1", "retries": 1099, "retry_backoff": 0.0001}])
    first = ecloud(tmp_path, "run", str(tasks), "--local", "1", timeout=240)
    assert first.returncode == 1, first.stderr[-2000:]
    assert "Traceback" not in first.stderr
    failures = [e for e in finished_events(log_of(tmp_path)) if e.exit_code == 1]
    assert len(failures) == 1100
    status = json.loads(ecloud(tmp_path, "status", "--json").stdout)
    assert status["tasks"]["failed"] == 1
    verify = subprocess.run([sys.executable, "-m", "ecloud.cli.replay", "--verify"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    why = ecloud(tmp_path, "why", "stubborn")
    assert why.returncode == 0 and "failed for good" in why.stdout
    again = ecloud(tmp_path, "run", str(tasks), "--local", "1", timeout=120)  # a restarted boss
    assert again.returncode == 1 and "continuing" in again.stderr, again.stderr[-2000:]
    assert "Traceback" not in again.stderr


def test_an_edited_task_runs_again_with_what_depends_on_it_and_nothing_else(
        tmp_path: Path) -> None:
    """Run a -> b -> c; edit b's command: the run refuses, showing the
    difference; with --replace, b and c run again (b with the new command),
    a does not; the log keeps both versions of b."""
    marks = tmp_path / "marks"

    def chain(b_says: str) -> Path:
        return write_tasks(tmp_path / "chain.json", [
            {"id": "a", "command": f"echo a >> {marks}"},
            {"id": "b", "command": f"echo {b_says} >> {marks}", "depends_on": ["a"]},
            {"id": "c", "command": f"echo c >> {marks}", "depends_on": ["b"]}])

    first = ecloud(tmp_path, "run", str(chain("b1")), "--local", "2")
    assert first.returncode == 0, first.stderr
    assert marks.read_text().split() == ["a", "b1", "c"]
    edited = chain("b2")
    refused = ecloud(tmp_path, "run", str(edited), "--local", "2")
    assert refused.returncode == 2
    diff = [line for line in refused.stderr.splitlines() if "task 'b': command: " in line]
    assert len(diff) == 1 and "'echo b1 >>" in diff[0] and "-> 'echo b2 >>" in diff[0], diff
    assert "--replace" in refused.stderr
    head = len(log_of(tmp_path))
    replaced = ecloud(tmp_path, "run", str(edited), "--local", "2", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "1 replaced" in replaced.stderr
    assert marks.read_text().split() == ["a", "b1", "c", "b2", "c"]
    status = json.loads(ecloud(tmp_path, "status", "--json").stdout)
    assert status["tasks"]["succeeded"] == 3
    # time travel: before the replacement, b had its old command
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    history = json.loads(subprocess.run(
        [sys.executable, "-m", "ecloud.cli.replay", "--task", "b", "--json"], cwd=tmp_path,
        env=env, capture_output=True, text=True).stdout)
    kinds = [entry["type"] for entry in history["history"]]
    assert "tasks.submitted" in kinds and "tasks.replaced" in kinds
    before = subprocess.run([sys.executable, "-m", "ecloud.cli.replay", "--why", "b", "--until",
                             str(head), "--json"], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert before.returncode == 0 and json.loads(before.stdout)["status"] == "succeeded"
    from ecloud.log.rebuild import load_state

    with open_store(f"sqlite:///{tmp_path}/ecloud.db", create=False) as store:
        assert load_state(store, head).tasks["b"].spec.command == f"echo b1 >> {marks}"
        assert load_state(store).tasks["b"].spec.command == f"echo b2 >> {marks}"
