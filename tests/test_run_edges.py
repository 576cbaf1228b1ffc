"""What a hostile tester did to ``ecloud run`` after the first round of
fixes, each now a test: two runs started at the same instant, a rerun from
another work directory, a second log in the same work directory, a symbolic
link to the log, a worker killed outright, a worker paused past its
deadline, the broker's keeper killed, two logs sharing one cluster name on
one broker, a database locked for longer than the workers' grace, and text
that looks like terminal markup.

Each task writes a marker line when it starts ("ran once" is read off
what the commands did) and these runs use real processes throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pymysql
import pytest

from ecloud.log.url import open_store
from tests.support.brokers import wait_for
from tests.support.e2e import write_tasks
from tests.support.reaper import Reaper
from tests.support.worker_helpers import reap, tagged
from tests.test_run_crash import environment, markers, start_run


def ecloud(cwd: Path, env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecloud.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def marked(tmp_path: Path, n: int, sleep: float, name: str = "t.json",
           prefix: str = "t") -> tuple[Path, Path]:
    marks = tmp_path / f"{prefix}-markers"
    tasks = [{"id": f"{prefix}{i}", "command": f'echo "$ECLOUD_TASK_ID" >> "{marks}"; sleep {sleep}'}
             for i in range(n)]
    return write_tasks(tmp_path / name, tasks), marks


def dispatches(db: str, task_id: str) -> int:
    with open_store(db, create=False) as store:
        return sum(1 for r in store.read(1, types=["task.dispatched"]) if r.event.task_id == task_id)


@pytest.fixture
def tag(request) -> str:
    name = f"edge-{os.getpid()}-{request.node.name[:40]}"
    yield name
    reap(name)


def test_two_runs_started_at_once_in_one_folder_one_runs_the_other_is_refused(
        tmp_path: Path, tag: str) -> None:
    """Seen: 13 of 16 such pairs, the refused run killed the other's broker."""
    dag, marks = marked(tmp_path, 12, 0.3)
    env = environment(tag)
    for round_ in range(4):
        runs = [start_run(tmp_path, env, str(dag), "--local", "2", name=f"r{round_}-{k}")
                for k in range(2)]
        codes = sorted(r.wait(120) for r in runs)
        outs = [(tmp_path / f"r{round_}-{k}.out").read_text() for k in range(2)]
        assert codes == [0, 4], outs
        assert any("a live boss holds this log (ecloud run" in o for o in outs), outs
    assert markers(marks) == Counter({f"t{i}": 1 for i in range(12)})


def test_a_killed_run_continued_from_another_work_dir_runs_every_task_once(
        tmp_path: Path, tag: str) -> None:
    """The killed run's broker and workers are found by the log's id,
    wherever they are; nothing of them is left after the second run."""
    dag, marks = marked(tmp_path, 8, 2.0)
    env = environment(tag)
    with Reaper() as reaper:
        first = start_run(tmp_path, env, str(dag), "--local", "2", "--work-dir", "wd-one")
        reaper.own(first.pid)
        wait_for(lambda: sum(markers(marks).values()) >= 2, 60, "two tasks started")
        first.kill()
        first.wait()
        again = ecloud(tmp_path, env, "run", str(dag), "--local", "2", "--work-dir", "wd-two")
        assert again.returncode == 0, again.stderr
        assert "the one a killed run of this log left" in again.stderr
        assert markers(marks) == Counter({f"t{i}": 1 for i in range(8)})
        wait_for(lambda: not tagged(tag), 30, "every process of both runs to end")
        wait_for(lambda: (reaper.reap(), not reaper.adopted())[1], 10, "orphans reaped")


def test_a_second_log_in_a_live_runs_work_dir_is_refused(tmp_path: Path, tag: str) -> None:
    """Seen: it took the live run's broker and workers over."""
    dag, marks = marked(tmp_path, 6, 1.0)
    other, _ = marked(tmp_path, 2, 0.1, "other.json", prefix="o")
    env = environment(tag)
    first = start_run(tmp_path, env, str(dag), "--local", "2")
    try:
        wait_for(lambda: sum(markers(marks).values()) >= 1, 60, "the first run to start")
        second = ecloud(tmp_path, env, "run", str(other), "--local", "1", "--db",
                        f"sqlite:///{tmp_path / 'other.db'}", timeout=60)
        assert second.returncode == 4, second.stderr
        assert "is the work directory of another log's run" in second.stderr
        assert first.wait(120) == 0
        assert markers(marks) == Counter({f"t{i}": 1 for i in range(6)})
    finally:
        if first.poll() is None:
            first.kill()


def test_a_symbolic_link_to_the_log_names_the_same_log(tmp_path: Path, tag: str) -> None:
    """Seen: the lock file followed the path given, so two bosses ran one log."""
    dag, marks = marked(tmp_path, 4, 1.5)
    env = environment(tag)
    first = start_run(tmp_path, env, str(dag), "--local", "2")
    try:
        wait_for(lambda: sum(markers(marks).values()) >= 1, 60, "the first run to start")
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "link.db").symlink_to(tmp_path / "ecloud.db")
        second = ecloud(tmp_path / "elsewhere", env, "run", str(dag), "--local", "2", "--db",
                        f"sqlite:///{tmp_path / 'elsewhere' / 'link.db'}", timeout=60)
        assert second.returncode == 4, second.stderr
        assert first.wait(120) == 0
        assert markers(marks) == Counter({f"t{i}": 1 for i in range(4)})
    finally:
        if first.poll() is None:
            first.kill()


def test_a_worker_killed_outright_leaves_no_attempt_running(tmp_path: Path, tag: str) -> None:
    """Seen: the killed agent's task process ran on (re-parented to PID 1),
    beside its re-dispatched attempt, past the end of the run."""
    ends = tmp_path / "ends"
    task = write_tasks(tmp_path / "t.json", [{"id": "a", "command": (
        f'echo "start $ECLOUD_ATTEMPT" >> "{ends}"; '
        f'if [ "$ECLOUD_ATTEMPT" = 1 ]; then sleep 30; fi; echo "end $ECLOUD_ATTEMPT" >> "{ends}"')}])
    env = environment(tag)
    run = start_run(tmp_path, env, str(task), "--local", "2")
    try:
        wait_for(lambda: ends.exists() and "start 1" in ends.read_text(), 60, "attempt 1")
        pid = int((tmp_path / ".ecloud-workers" / "local-1.pid").read_text())
        holder = pid if "a" in _running_on(tmp_path, "local-1") else \
            int((tmp_path / ".ecloud-workers" / "local-2.pid").read_text())
        os.kill(holder, signal.SIGKILL)
        assert run.wait(120) == 0, (tmp_path / "run.out").read_text()
        lines = ends.read_text().splitlines()
        assert lines == ["start 1", "start 2", "end 2"], lines  # attempt 1 never finished
        wait_for(lambda: not tagged(tag), 30, "nothing of the run left (the sleep 30 included)")
    finally:
        if run.poll() is None:
            run.kill()


def _running_on(tmp_path: Path, worker: str) -> list[str]:
    work = tmp_path / ".ecloud-workers" / worker
    return [p.name for p in work.iterdir()] if work.exists() else []


def test_a_worker_paused_past_its_deadline_takes_its_task_back(tmp_path: Path, tag: str) -> None:
    """Seen: given up on, the task was dispatched to the same worker again
    and again (and given back every 2 s), then ran a second time; or the
    run gave up with 'unschedulable: no worker is live'."""
    ends = tmp_path / "ends"
    task = write_tasks(tmp_path / "t.json", [{"id": "a", "command": (
        f'echo "start $ECLOUD_ATTEMPT" >> "{ends}"; sleep 12; echo "end $ECLOUD_ATTEMPT" >> "{ends}"')}])
    env = environment(tag)
    assert ecloud(tmp_path, env, "context", "set", "heartbeat_timeout", "3").returncode == 0
    run = start_run(tmp_path, env, str(task), "--local", "1")
    try:
        wait_for(lambda: ends.exists() and "start 1" in ends.read_text(), 60, "attempt 1")
        agent = int((tmp_path / ".ecloud-workers" / "local-1.pid").read_text())
        os.kill(agent, signal.SIGSTOP)
        try:
            wait_for(lambda: _log_has(tmp_path, "worker.lost"), 30, "the worker's loss")
        finally:
            os.kill(agent, signal.SIGCONT)
        assert run.wait(120) == 0, (tmp_path / "run.out").read_text()
        assert ends.read_text().splitlines() == ["start 1", "end 1"]
        assert dispatches(f"sqlite:///{tmp_path / 'ecloud.db'}", "a") == 1
    finally:
        if run.poll() is None:
            run.kill()


def _log_has(tmp_path: Path, event_type: str) -> bool:
    try:
        with open_store(f"sqlite:///{tmp_path / 'ecloud.db'}", create=False) as store:
            return any(True for _ in store.read(1, types=[event_type]))
    except Exception:  # noqa: BLE001 - the log is still being made
        return False


def test_the_embedded_broker_killed_mid_run_is_started_again(tmp_path: Path, tag: str) -> None:
    dag, marks = marked(tmp_path, 10, 0.5)
    env = environment(tag)
    run = start_run(tmp_path, env, str(dag), "--local", "2")
    try:
        record = tmp_path / ".ecloud-workers" / "embedded-broker" / "keeper.json"
        wait_for(lambda: sum(markers(marks).values()) >= 2 and record.exists(), 60, "a start")
        os.kill(json.loads(record.read_text())["keeper_pid"], signal.SIGKILL)
        assert run.wait(180) == 0, (tmp_path / "run.out").read_text()
        assert "the embedded broker stopped: started it again" in (tmp_path / "run.out").read_text()
        assert markers(marks) == Counter({f"t{i}": 1 for i in range(10)})
    finally:
        if run.poll() is None:
            run.kill()


def test_two_logs_on_one_cluster_name_of_one_broker_are_told_apart(
        tmp_path: Path, tag: str, mosquitto_broker) -> None:
    """Seen: both runs sat a while, then both exited 3 ('no worker is live')."""
    env = {**environment(tag), "ECLOUD_CLUSTER": f"shared{os.getpid()}"}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first_dag, first_marks = marked(tmp_path / "one", 6, 2.0)
    second_dag, _ = marked(tmp_path / "two", 2, 0.1)
    first = start_run(tmp_path / "one", env, str(first_dag), "--local", "1", "--broker",
                      mosquitto_broker.url)
    try:
        wait_for(lambda: sum(markers(first_marks).values()) >= 1, 60, "the first run to start")
        second = ecloud(tmp_path / "two", env, "run", str(second_dag), "--local", "1", "--broker",
                        mosquitto_broker.url, timeout=90)
        assert second.returncode == 1, second.stderr
        assert "another boss" in second.stderr and "cannot share a cluster name" in second.stderr
        assert first.wait(120) == 0, (tmp_path / "one" / "run.out").read_text()
        assert markers(first_marks) == Counter({f"t{i}": 1 for i in range(6)})
    finally:
        if first.poll() is None:
            first.kill()


@pytest.mark.mysql
def test_a_database_locked_longer_than_the_workers_grace_runs_nothing_twice(
        tmp_path: Path, tag: str, mysql_url: str, mysql_server) -> None:
    """Seen: with the log's tables locked (LOCK TABLES) past the workers'
    grace, the boss's loop - and its beat - stood still; the workers gave up
    and every task ran twice. The boss beats from a thread of its own."""
    dag, marks = marked(tmp_path, 3, 14.0)
    env = {**environment(tag), "ECLOUD_LOCAL_BOSS_GRACE": "5",
           "ECLOUD_CLUSTER": f"lock{os.getpid()}"}
    run = start_run(tmp_path, env, str(dag), "--local", "3", "--db", mysql_url)
    try:
        wait_for(lambda: sum(markers(marks).values()) >= 3, 60, "three tasks started")
        database = mysql_url.rsplit("/", 1)[1]
        conn = pymysql.connect(host=mysql_server.host, port=mysql_server.port,
                               user=mysql_server.user, password=mysql_server.password or "",
                               database=database)
        try:
            with conn.cursor() as cur:
                cur.execute("LOCK TABLES events READ, head READ")
                time.sleep(9)  # the fault's length: past the workers' 5 s grace
                cur.execute("UNLOCK TABLES")
        finally:
            conn.close()
        assert run.wait(120) == 0, (tmp_path / "run.out").read_text()
        assert markers(marks) == Counter({f"t{i}": 1 for i in range(3)})
    finally:
        if run.poll() is None:
            run.kill()


def test_text_that_looks_like_markup_is_shown_as_it_is(tmp_path: Path, tag: str) -> None:
    """Seen: a task file or a context value with '[/]' in it crashed status,
    context show and ecloud run's summary with a rich MarkupError."""
    env = environment(tag)
    store = tmp_path / "store"
    store.mkdir()
    task = write_tasks(tmp_path / "t.json", [{"id": "a", "command": "true", "retries": 0,
                                               "inputs": ["x[/]y", "data[raw].csv"]}])
    result = ecloud(tmp_path, env, "run", str(task), "--local", "1", "--datastore", str(store))
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "x[/]y" in result.stdout  # the failure names the path as it is
    assert ecloud(tmp_path, env, "context", "set", "boss_address", "[/]").returncode == 0
    for args in (("status",), ("context", "show"), ("why", "a"), ("log",)):
        shown = ecloud(tmp_path, env, *args)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, (args, shown.stderr)
    assert "[/]" in ecloud(tmp_path, env, "context", "show").stdout
