"""Workflow features through ``ecloud run``, as a user runs it: a subprocess
in an empty folder, an SQLite log, the embedded broker and real local worker
processes running real shell commands (issue 21). Each test names the
feature it holds to its promise; the commands leave marks in files that the
tests read afterwards (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.e2e import finished_events, write_tasks
from tests.test_run import ecloud, log_of


def _run(tmp_path: Path, tasks: list | dict, *args: str):
    file = write_tasks(tmp_path / "flow.json", tasks) if isinstance(tasks, list) else None
    if file is None:
        file = tmp_path / "flow.json"
        file.write_text(json.dumps(tasks))
    return ecloud(tmp_path, "run", str(file), *args, "--json")


def _attempts(tmp_path: Path, task_id: str) -> list:
    return [e for e in finished_events(log_of(tmp_path)) if e.task_id == task_id]


def test_pre_and_post_scripts_decide_as_dagman_does(tmp_path: Path) -> None:
    """pre runs first in the same place; a failing command rescued by its
    post succeeds; a failing pre fails the task without running command or
    post; a pre exiting with pre_skip succeeds without running either."""
    result = _run(tmp_path, [
        {"id": "staged", "pre": "echo from-pre > input.txt", "command": "cat input.txt",
         "post": ["sh", "-c", 'test "$0" = 0 && echo post-saw-$0 > ../../post.txt', "$RETURN"]},
        {"id": "rescued", "command": "exit 4", "post": ["sh", "-c", 'test "$0" = 4', "$RETURN"]},
        {"id": "no-pre", "pre": "exit 2", "command": f"touch {tmp_path}/ran-no-pre",
         "post": f"touch {tmp_path}/post-no-pre"},
        {"id": "skipped", "pre": "exit 9", "pre_skip": 9,
         "command": f"touch {tmp_path}/ran-skipped", "post": "exit 1"},
    ])
    summary = json.loads(result.stdout)
    assert summary["counts"]["succeeded"] == 3, result.stderr
    assert [t["id"] for t in summary["failed"]] == ["no-pre"]
    assert result.returncode == 1
    staged = _attempts(tmp_path, "staged")[0]
    assert staged.exit_code == 0 and staged.stage == "post" and "from-pre" in staged.stdout_tail
    assert _attempts(tmp_path, "rescued")[0].stage == "post"
    failed = _attempts(tmp_path, "no-pre")[0]
    assert (failed.exit_code, failed.stage) == (2, "pre")
    assert not (tmp_path / "ran-no-pre").exists() and not (tmp_path / "post-no-pre").exists()
    skipped = _attempts(tmp_path, "skipped")[0]
    assert (skipped.exit_code, skipped.stage) == (0, "pre_skip")
    assert not (tmp_path / "ran-skipped").exists()


def test_retry_unless_exit_stops_the_retries(tmp_path: Path) -> None:
    result = _run(tmp_path, [
        {"id": "hopeless", "command": "exit 5", "retries": 3, "retry_backoff": 0,
         "retry_unless_exit": 5},
        {"id": "flaky", "command": f"test -e {tmp_path}/m || {{ touch {tmp_path}/m; exit 5; }}",
         "retries": 3, "retry_backoff": 0, "retry_unless_exit": 6},
    ])
    assert result.returncode == 1, result.stderr
    assert len(_attempts(tmp_path, "hopeless")) == 1
    assert [e.exit_code for e in _attempts(tmp_path, "flaky")] == [5, 0]


def test_abort_on_cancels_the_rest_and_exits_with_its_return(tmp_path: Path) -> None:
    result = _run(tmp_path, [
        {"id": "slow", "command": "sleep 60"},
        {"id": "trigger", "command": "sleep 1; exit 3", "abort_on": {"exit": 3, "return": 7}},
    ], "--local", "2")
    assert result.returncode == 7, result.stderr
    summary = json.loads(result.stdout)
    assert summary["workflow"]["status"] == "aborted"
    assert [t["id"] for t in summary["cancelled"]] == ["slow"]


def test_after_an_abort_the_final_task_runs_and_decides_as_in_dagman(tmp_path: Path) -> None:
    """DAGMan: the final node's result overrides every other, an abort's
    included; it sees DAG_STATUS 3 (aborted)."""
    result = _run(tmp_path, [
        {"id": "slow", "command": "sleep 60"},
        {"id": "after-slow", "command": f"touch {tmp_path}/never", "depends_on": ["slow"]},
        {"id": "trigger", "command": "sleep 1; exit 3", "retries": 2,
         "abort_on": {"exit": 3, "return": 7}},
        {"id": "last", "final": True,
         "command": f'echo "$DAG_STATUS $FAILED_COUNT" > {tmp_path}/final.txt'},
    ], "--local", "3")
    assert result.returncode == 0, result.stderr  # the final task succeeded
    summary = json.loads(result.stdout)
    assert summary["workflow"]["status"] == "succeeded"
    assert summary["workflow"]["aborted_by"] == "trigger"
    assert {t["id"] for t in summary["cancelled"]} == {"slow", "after-slow"}
    assert len(_attempts(tmp_path, "trigger")) == 1  # the abort overrides its retries
    assert (tmp_path / "final.txt").read_text().split() == ["3", "1"]  # DAGMan: aborted, 1 failed
    assert not (tmp_path / "never").exists()


def test_the_final_task_runs_after_a_failure_and_decides_the_result(tmp_path: Path) -> None:
    result = _run(tmp_path, [
        {"id": "bad", "command": "exit 1"},
        {"id": "blocked", "command": "true", "depends_on": ["bad"]},
        {"id": "good", "command": "true"},
        {"id": "report", "final": True,
         "command": f'echo "$DAG_STATUS $FAILED_COUNT" > {tmp_path}/final.txt'},
    ])
    summary = json.loads(result.stdout)
    assert summary["workflow"] == {"status": "succeeded", "exit": 0, "final": "report",
                                   "aborted_by": None, "failed": 1, "dag_status": 2}
    assert result.returncode == 0, result.stderr  # the final task's result is the run's
    assert (tmp_path / "final.txt").read_text().split() == ["2", "1"]
    report = _attempts(tmp_path, "report")[0]
    good = _attempts(tmp_path, "good")[0]
    assert report.msg_id and good.msg_id
    seqs = {rec.event.task_id: rec.seq for rec in log_of(tmp_path)
            if type(rec.event).__name__ == "TaskDispatched"}
    finished = {rec.event.task_id: rec.seq for rec in log_of(tmp_path)
                if type(rec.event).__name__ == "TaskFinished"}
    assert seqs["report"] > max(finished["bad"], finished["good"])  # it ran last


def test_noop_and_done_tasks_run_nothing(tmp_path: Path) -> None:
    result = _run(tmp_path, [
        {"id": "was-done", "command": f"touch {tmp_path}/done-ran", "done": True},
        {"id": "join", "command": f"touch {tmp_path}/noop-ran", "noop": True,
         "depends_on": ["was-done"]},
        {"id": "child", "command": f"touch {tmp_path}/child-ran", "depends_on": ["join"]},
    ])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["succeeded"] == 3
    assert (tmp_path / "child-ran").exists()
    assert not (tmp_path / "done-ran").exists() and not (tmp_path / "noop-ran").exists()
    assert _attempts(tmp_path, "was-done") == [] and _attempts(tmp_path, "join") == []


def _exclusive(lock: Path) -> str:
    """A command that fails if another holder of ``lock`` runs at the same time."""
    return f"mkdir {lock} || exit 9; sleep 0.4; rmdir {lock}"


def _at_most(folder: Path, most: int, me: str) -> str:
    """A command that fails if more than ``most`` run at once."""
    return (f"mkdir -p {folder}; touch {folder}/{me}; n=$(ls {folder} | wc -l); sleep 0.4; "
            f"rm {folder}/{me}; test $n -le {most}")


def test_category_and_workflow_limits_hold_with_workers_to_spare(tmp_path: Path) -> None:
    tasks = [{"id": f"big{i}", "command": _exclusive(tmp_path / "big.lock"), "category": "big"}
             for i in range(4)]
    tasks += [{"id": f"small{i}", "command": _at_most(tmp_path / "running", 3, f"s{i}")}
              for i in range(6)]
    result = _run(tmp_path, {"workflow": {"max_running": 3, "categories": {"big": 1}},
                             "tasks": tasks}, "--local", "6")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["counts"]["succeeded"] == 10


def test_workdir_stdin_stdout_and_stderr_relative_to_the_task_file(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_text("hello\n")
    result = _run(tmp_path, [
        {"id": "placed", "command": "tr a-z A-Z; echo oops >&2", "workdir": "work",
         "stdin": "in.txt", "stdout": "out.txt", "stderr": "err/err.txt",
         "pre": "mkdir -p err"},
    ])
    assert result.returncode == 0, result.stderr
    assert (work / "out.txt").read_text() == "HELLO\n"
    assert (work / "err" / "err.txt").read_text() == "oops\n"
    assert "HELLO" in _attempts(tmp_path, "placed")[0].stdout_tail


def test_a_bad_workflow_key_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = _run(tmp_path, [{"id": "a", "command": "true", "final": True, "depends_on": []},
                             {"id": "b", "command": "true", "final": True},
                             {"id": "c", "command": "true", "pre_skip": 3}])
    assert result.returncode == 2
    assert "at most one final task" in result.stderr
    assert "pre_skip: needs a pre script" in result.stderr
    assert not (tmp_path / "ecloud.db").exists()


def test_a_changed_limit_holds_when_the_file_is_pushed_again(tmp_path: Path) -> None:
    """(hostile tester) pushing the same tasks with another "workflow"
    changed nothing; the limits are the last push's."""
    tasks = [{"id": "a", "command": "true", "category": "c"}]
    file = tmp_path / "flow.json"
    for most, per in ((1, 1), (3, 2)):
        file.write_text(json.dumps({"workflow": {"max_running": most, "categories": {"c": per}},
                                    "tasks": tasks}))
        assert ecloud(tmp_path, "push", str(file)).returncode == 0
    rows = json.loads(ecloud(tmp_path, "status", "--json").stdout)["workflows"]
    assert [(r["max_running"], r["categories"]) for r in rows] == [(3, {"c": 2})]
