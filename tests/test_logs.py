"""``ecloud logs``: an attempt's whole output from each place it can be -
a local worker's directory, the datastore, the worker over MQTT (also
followed while it runs) - and the log's tails when none has it."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ecloud.wire import LogsRequest
from ecloud_worker import logserve
from tests.support.brokers import wait_for
from tests.support.e2e import Cluster
from tests.test_run import ecloud

#: a stream far longer than the 4 KiB the log keeps, and than one MQTT chunk
BIG_LINES = 40_000  # "line 00001\n" ... : 440,000 bytes


def big_command(stream: str) -> str:
    redirect = " >&2" if stream == "stderr" else ""
    return f"seq -f 'line %05g' 1 {BIG_LINES}{redirect}"


def big_text() -> str:
    return "".join(f"line {i:05d}\n" for i in range(1, BIG_LINES + 1))


def _write(path: Path, tasks: list[dict]) -> Path:
    import json

    path.write_text(json.dumps({"tasks": tasks}))
    return path


# ------------------------------------------------------------ local workers


def test_a_local_run_s_output_comes_whole_from_the_worker_directory(tmp_path: Path) -> None:
    tasks = _write(tmp_path / "t.json", [
        {"id": "hello", "command": "echo 'hello from ecloud'; echo 'and a warning' >&2"},
        {"id": "noisy", "command": big_command("stderr") + "; exit 4"},
    ])
    assert ecloud(tmp_path, "run", str(tasks), "--local", "2").returncode == 1  # noisy fails
    hello = ecloud(tmp_path, "logs", "hello")
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout == "hello from ecloud\n" and hello.stderr == "and a warning\n"
    assert ecloud(tmp_path, "logs", "hello", "--stream", "stdout").stderr == ""
    noisy = ecloud(tmp_path, "logs", "noisy", "--attempt", "1")
    assert noisy.returncode == 0 and noisy.stdout == "" and noisy.stderr == big_text()


def test_without_the_output_anywhere_the_log_s_tail_is_shown_and_said_to_be_one(
        tmp_path: Path) -> None:
    tasks = _write(tmp_path / "t.json", [{"id": "noisy", "command": big_command("stdout")}])
    assert ecloud(tmp_path, "run", str(tasks), "--local", "1").returncode == 0
    shutil.rmtree(tmp_path / ".ecloud-workers")
    done = ecloud(tmp_path, "logs", "noisy")
    assert done.returncode == 0
    assert "only the last 4 KiB" in done.stderr and "no local worker directory" in done.stderr
    assert big_text().endswith(done.stdout) and 0 < len(done.stdout) <= 4096


def test_refusals_are_clear(tmp_path: Path) -> None:
    tasks = _write(tmp_path / "t.json", [{"id": "a", "command": "true"},
                                          {"id": "b", "command": "true", "depends_on": ["a"]}])
    assert ecloud(tmp_path, "push", str(tasks)).returncode == 0
    for args, words in ((["nope"], "no task 'nope'"), (["b"], "has not been dispatched"),
                        (["a", "--stream", "both2"], "Invalid value")):
        done = ecloud(tmp_path, "logs", *args)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------- datastore


def test_staged_output_comes_from_the_datastore_checked(tmp_path: Path) -> None:
    datastore = tmp_path / "datastore"
    datastore.mkdir()
    tasks = _write(tmp_path / "t.json", [
        {"id": "make", "command": "echo result > out.txt; " + big_command("stdout"),
         "outputs": ["out.txt"]}])
    assert ecloud(tmp_path, "run", str(tasks), "--datastore", str(datastore),
                  "--local", "1").returncode == 0
    shutil.rmtree(tmp_path / ".ecloud-workers")  # only the datastore has it now
    done = ecloud(tmp_path, "logs", "make")
    assert done.returncode == 0, done.stderr
    assert done.stdout == big_text() and done.stderr == ""
    stdout = datastore / "results" / "make" / "stdout"
    assert stdout.read_text() == big_text()
    # a copy that does not match its checksum is never shown: the tail is,
    # with the reason the datastore's copy was passed over
    stdout.write_text("tampered\n")
    bad = ecloud(tmp_path, "logs", "make")
    assert "tampered" not in bad.stdout and big_text().endswith(bad.stdout)
    assert "only the last 4 KiB" in bad.stderr and "expected sha256" in bad.stderr


# -------------------------------------------------------------- over MQTT


@pytest.fixture
def mqtt_cluster(tmp_path: Path, shared_mqtt_url: str):
    c = Cluster(f"sqlite:///{tmp_path}/log.db", shared_mqtt_url, tmp_path / "boss",
                cluster=f"logs{uuid.uuid4().hex[:6]}")
    c.workdir.mkdir()
    yield c
    c.close()


def _logs(cluster: Cluster, cwd: Path, *args: str, **kw) -> subprocess.Popen:
    """``ecloud logs`` away from the workers' directories: only MQTT reaches them."""
    return subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", "logs", *args,
                             "--db", cluster.db, "--broker", cluster.broker,
                             "--work-dir", str(cwd / "none")],
                            cwd=cwd, env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def test_a_worker_serves_a_running_attempt_over_mqtt_and_follow_ends_with_it(
        mqtt_cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    mqtt_cluster.push([
        {"id": "big", "command": big_command("stdout")},
        {"id": "slow", "command": f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; "
                                  "echo finished; echo bye >&2"}])
    mqtt_cluster.start_boss(workers=2)
    mqtt_cluster.wait_tasks(lambda s: s.tasks["big"].status == "succeeded"
                            and s.tasks["slow"].status == "running", 60, "big done, slow running")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # a finished attempt, bigger than a chunk: whole and byte-exact over MQTT
    big = _logs(mqtt_cluster, elsewhere, "big")
    out, err = big.communicate(timeout=60)
    assert big.returncode == 0, err
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(big_text().encode()).hexdigest()
    # a running one, followed until it ends
    follow = _logs(mqtt_cluster, elsewhere, "slow", "--follow")
    try:
        first = wait_for(lambda: follow.stdout.readline(), 30, "the first line over MQTT")
        assert first == b"started\n"
        assert follow.poll() is None  # still following: the attempt runs
        gate.touch()
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, err
    assert out == b"finished\n" and err == b"bye\n"


def test_an_unreachable_worker_is_named(mqtt_cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    mqtt_cluster.push([{"id": "slow", "command": f"while [ ! -e {gate} ]; do sleep 0.05; done"}])
    mqtt_cluster.start_boss(workers=1)
    mqtt_cluster.wait_tasks(lambda s: s.tasks["slow"].status == "running", 60, "slow running")
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        done = subprocess.run([sys.executable, "-m", "ecloud.cli.main", "logs", "slow",
                               "--db", mqtt_cluster.db, "--broker", "mqtt://127.0.0.1:1",
                               "--work-dir", str(elsewhere)], cwd=elsewhere, env=mqtt_cluster.env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "cannot reach the MQTT broker at 127.0.0.1:1: Connection refused" in done.stderr
        assert "no local worker directory" in done.stderr
    finally:
        gate.touch()


# ------------------------------------------------------- the worker's side


def test_the_worker_serves_only_an_attempt_s_two_output_files(tmp_path: Path) -> None:
    work = tmp_path / "work"
    attempt = work / "a%2F..%2Fb" / "1"  # the runner's escaped directory of task "a/../b"
    attempt.mkdir(parents=True)
    (attempt / "stdout").write_bytes(b"x" * 10)
    (tmp_path / "secret").write_text("not for you")
    ok = logserve.answer(str(work), LogsRequest("r1", "a/../b", 1, "stdout", 4, 3), True)
    assert (ok.size, base64.b64decode(ok.data), ok.running, ok.error) == (10, b"xxx", True, "")
    for request, words in (
        (LogsRequest("r2", "a/../b", 1, "../../secret"), "stream must be"),
        (LogsRequest("r3", "../secret", 1, "stdout"), "no output of"),
        (LogsRequest("r/4", "a/../b", 1, "stdout"), "bad request id"),
        (LogsRequest("r5", "a/../b", 0, "stdout"), "out of range"),
        (LogsRequest("r6", "a/../b", 1, "stdout", 0, 10**9), "bad offset or limit"),
    ):
        reply = logserve.answer(str(work), request, False)
        assert reply.size == -1 and words in reply.error and reply.data == "", request
    assert os.path.exists(tmp_path / "secret")
