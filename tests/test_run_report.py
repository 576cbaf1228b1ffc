"""What ``ecloud run`` tells a log file or CI while it runs and when it ends,
and where every failure is found afterwards: real runs (SQLite log,
embedded broker, local worker processes), output not a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.support.e2e import ROOT, write_tasks
from tests.test_run import ecloud

LINE = re.compile(r"^\[\d+:\d\d\] (\d+) of (\d+) tasks done \(\d+%\)(?:: (.*))?$")


def counts_of(line: str) -> tuple[int, int, dict[str, int]]:
    """(done, total, {name: count}) of a plain progress line."""
    match = LINE.match(line)
    assert match, line
    named = {}
    for part in re.split(r", | · ", match.group(3) or ""):
        number = re.match(r"^(\d+) (succeeded|failed|blocked|cancelled|running|queued|waiting)$",
                          part)
        if number:
            named[number.group(2)] = int(number.group(1))
    return int(match.group(1)), int(match.group(2)), named


def progress_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if LINE.match(line)]


def test_progress_lines_reach_a_file_while_the_run_goes_on_with_this_run_s_counts(
        tmp_path: Path) -> None:
    # an earlier run leaves 3 tasks in the log: this run's total is its own 6
    first = write_tasks(tmp_path / "first.json", [{"id": f"old{i}", "command": "true"}
                                                  for i in range(3)])
    assert ecloud(tmp_path, "run", str(first), "--local", "1").returncode == 0
    gate = tmp_path / "gate"
    tasks = write_tasks(tmp_path / "t.json", [
        {"id": "bad", "command": "echo broken >&2; exit 3"},
        {"id": "after-bad", "command": "true", "depends_on": ["bad"]},
        {"id": "ok1", "command": "true"},
        {"id": "ok2", "command": "true"},
        {"id": "ok3", "command": "true"},
        # holds the run open until the test has seen the lines it waits for
        {"id": "held", "command": f"while [ ! -e {gate} ]; do sleep 0.05; done"},
    ])
    err = tmp_path / "run.err"
    with err.open("w") as sink:
        run = subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", "run", str(tasks),
                                "--local", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=sink, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 90
            seen = None
            while time.monotonic() < deadline and run.poll() is None:
                for line in progress_lines(err):
                    done, total, named = counts_of(line)
                    if named.get("failed") == 1 and named.get("blocked") == 1:
                        seen = (done, total, named)
                if seen:
                    break
                time.sleep(0.1)
            assert seen is not None, err.read_text()
            assert run.poll() is None  # seen while the run goes on, not only at its end
            done, total, named = seen
            assert total == 6 and done < 6 and named.get("running", 0) <= 1
            assert named.get("succeeded", 0) <= 3
        finally:
            gate.touch()
            stdout, _ = run.communicate(timeout=120)
    assert run.returncode == 1
    last = progress_lines(err)[-1]
    assert counts_of(last) == (6, 6, {"succeeded": 4, "failed": 1, "blocked": 1}), last
    assert "failed bad (attempt 1): exit code 3 - output: ecloud logs bad" in stdout
    assert "blocked after-bad: behind bad" in stdout


def test_forty_failures_are_all_counted_named_and_listed(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.json",
                        [{"id": f"f{i:02d}", "command": f"exit {1 + i % 5}"} for i in range(40)]
                        + [{"id": "child", "command": "true", "depends_on": ["f07"]},
                           {"id": "fine", "command": "true"}])
    result = ecloud(tmp_path, "run", str(tasks), "--local", "2")
    assert result.returncode == 1, result.stderr
    named = re.findall(r"^  failed (f\d\d) ", result.stdout, re.M)
    assert len(named) == 20 and len(set(named)) == 20
    assert "... and 20 more failed: ecloud tasks --state failed" in result.stdout
    assert re.search(r"failed\s+│\s+40", result.stdout)
    assert "blocked child: behind f07" in result.stdout

    listed = json.loads(ecloud(tmp_path, "tasks", "--state", "failed", "--json").stdout)
    assert listed["count"] == 40
    assert sorted(r["id"] for r in listed["tasks"]) == [f"f{i:02d}" for i in range(40)]
    assert {r["exit_code"] for r in listed["tasks"]} == {1, 2, 3, 4, 5}
    table = ecloud(tmp_path, "tasks", "--state", "failed").stdout
    assert "40 task(s)" in table and all(f"f{i:02d}" in table for i in range(40))

    status = json.loads(ecloud(tmp_path, "status", "--json").stdout)
    assert status["tasks"]["failed"] == 40 and status["tasks"]["blocked"] == 1
    assert len(status["failed"]) == 40
    assert "... and 30 more: ecloud tasks --state failed" in ecloud(tmp_path, "status").stdout

    outcome = json.loads(ecloud(tmp_path, "run", str(tasks), "--local", "1", "--json").stdout)
    assert outcome["exit_status"] == 1 and outcome["tasks"] == 42
    assert outcome["counts"] == {"failed": 40, "blocked": 1, "succeeded": 1}
    assert len(outcome["failed"]) == 40 and outcome["blocked"][0]["blocked_by"] == "f07"


def test_on_a_terminal_the_run_s_page_stays_after_the_run_until_ctrl_c(tmp_path: Path) -> None:
    """README's `ecloud run ... --web` example: a run of seconds would close
    its page before anyone saw it. On a terminal it stays; Ctrl-C ends it
    with the run's own exit status."""
    import pty
    import signal
    import urllib.request

    tasks = write_tasks(tmp_path / "t.json", [{"id": f"t{i}", "command": "true"}
                                              for i in range(3)])
    main, child = pty.openpty()
    run = subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", "run", str(tasks),
                            "--local", "1", "--web", "127.0.0.1:0"], cwd=tmp_path,
                           stdin=child, stdout=child, stderr=child,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(child)
    seen = b""
    try:
        deadline = time.monotonic() + 90
        while b"until Ctrl-C" not in seen and time.monotonic() < deadline:
            try:
                seen += os.read(main, 4096)
            except OSError:
                break
        text = seen.decode(errors="replace")
        url = re.search(r"its page stays at (http://\S+) until Ctrl-C", text)
        assert url, text
        with urllib.request.urlopen(url.group(1) + "api/page", timeout=10) as page:
            body = json.loads(page.read())
        assert body["progress"]["counts"]["succeeded"] == 3
        assert run.poll() is None
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 0
    finally:
        if run.poll() is None:
            run.kill()
        os.close(main)


def test_a_reader_that_goes_away_stops_no_run_and_hides_no_failure(tmp_path: Path) -> None:
    """`ecloud run x.json | head -1`: the run goes on to its end, silenced,
    and exits with its own status (it once stopped at once and exited 0)."""
    tasks = write_tasks(tmp_path / "t.json",
                        [{"id": f"ok{i}", "command": "sleep 0.05"} for i in range(30)]
                        + [{"id": "bad", "command": "exit 7"}])
    run = subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", "run", str(tasks),
                            "--local", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.stdout is not None
    run.stdout.readline()
    run.stdout.close()  # as `| head -1` does
    assert run.wait(timeout=180) == 1
    listed = json.loads(ecloud(tmp_path, "tasks", "--json").stdout)
    assert {r["id"]: r["state"] for r in listed["tasks"]} == {
        **{f"ok{i}": "succeeded" for i in range(30)}, "bad": "failed"}


def test_a_file_run_again_starts_no_worker_and_leaves_no_vm_booting(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.json", [{"id": f"t{i}", "command": "true"}
                                              for i in range(4)])
    for _ in range(3):
        result = ecloud(tmp_path, "run", str(tasks), "--local", "2")
        assert result.returncode == 0, result.stderr
        vms = json.loads(ecloud(tmp_path, "workers", "list", "--json").stdout)
        assert {vm["status"] for vm in vms} <= {"gone"}, vms
    assert len(vms) == 2  # the first run's two; the others found nothing to do


def test_tasks_since_sees_cancels_and_blocks_and_quick_tasks_have_a_runtime(
        tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.json", [
        {"id": "quick", "command": "true"},
        {"id": "slow", "command": "sleep 1.2"},
        {"id": "root", "command": "sleep 600"},
        {"id": "leaf", "command": "true", "depends_on": ["root"]},
    ])
    assert ecloud(tmp_path, "push", str(tasks)).returncode == 0
    before = time.time()
    assert ecloud(tmp_path, "cancel", "root", "--reason", "not needed").returncode == 0
    since = json.loads(ecloud(tmp_path, "tasks", "--since", str(before), "--json").stdout)
    assert sorted(r["id"] for r in since["tasks"]) == ["leaf", "root"]
    result = ecloud(tmp_path, "run", str(tasks), "--local", "1")
    assert result.returncode == 1
    assert "cancelled root: not needed" in result.stdout
    rows = {r["id"]: r for r in json.loads(ecloud(tmp_path, "tasks", "--json").stdout)["tasks"]}
    assert rows["quick"]["runtime"] is not None and rows["quick"]["runtime"] < 1.0
    assert rows["slow"]["runtime"] >= 1.0
    order = json.loads(ecloud(tmp_path, "tasks", "--sort", "runtime", "--json").stdout)
    assert order["tasks"][0]["id"] == "slow"
