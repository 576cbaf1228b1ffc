"""Staging at its edges, through ``ecloud run`` with real workers (issue 17,
items 8 and 9): a datastore root that goes away while a task runs
(unmounted, renamed) fails that attempt with a clear reason, and nothing is
made where the root was - its outputs are never "stored" on the disk
beneath; an output directory with a symbolic link loop fails at once with
the reason, leaving no temporary on the datastore; datastore paths that
climb out are refused at push."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ecloud.log.url import open_store
from tests.support.e2e import write_tasks

ROOT = Path(__file__).resolve().parent.parent


def ecloud(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CONFIG": "", "ECLOUD_DB": "",
           "ECLOUD_BROKER": ""}
    return subprocess.run([sys.executable, "-m", "ecloud.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def test_a_datastore_root_that_vanishes_mid_run_fails_the_attempt_and_nothing_is_made(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    moved = tmp_path / "store-unmounted"
    tasks = write_tasks(tmp_path / "t.json", [
        {"id": "before", "command": "echo one > out.txt", "outputs": ["out.txt"]},
        {"id": "vanish", "depends_on": ["before"], "outputs": ["out.txt"],
         "command": f"mv '{store}' '{moved}' && echo two > out.txt"}])
    result = ecloud(tmp_path, "run", str(tasks), "--local", "1", "--datastore", str(store))
    assert result.returncode == 1, result.stderr
    assert "datastore root gone" in result.stdout, result.stdout
    assert not store.exists()  # the push made nothing in its place
    assert (moved / "results" / "before" / "out.txt").read_text() == "one\n"
    assert not (moved / "results" / "vanish").exists()
    with open_store(f"sqlite:///{tmp_path}/ecloud.db", create=False) as log:
        finished = [r.event for r in log.read(1, types=["task.finished"])
                    if r.event.task_id == "vanish"]
    assert [f.exit_code == 0 for f in finished] == [False]
    assert "datastore root gone" in finished[0].reason and str(store) in finished[0].reason
    # the operator's check says the same; moved back (remounted), all is well again
    check = ecloud(tmp_path, "datastore", "check")
    assert check.returncode == 1 and "datastore root gone" in check.stdout, check.stdout
    moved.rename(store)
    assert ecloud(tmp_path, "datastore", "check").returncode == 0


def test_a_datastore_is_set_only_where_it_exists_and_is_marked(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps([{"id": "a", "command": "true",
                                                  "outputs": ["x"]}]))
    result = ecloud(tmp_path, "run", "t.json", "--local", "1", "--datastore", "nowhere")
    assert result.returncode == 2 and "no such directory" in result.stderr
    assert "never created" in result.stderr and not (tmp_path / "nowhere").exists()
    assert not (tmp_path / ".ecloud-workers").exists()  # refused before anything started


def test_an_output_with_a_symbolic_link_loop_fails_at_once_and_leaves_nothing(
        tmp_path: Path) -> None:
    """Seen: two links to their parent inside an output directory were walked
    (2^40 paths) until the task timed out, leaving a temporary directory on
    the datastore."""
    store = tmp_path / "store"
    store.mkdir()
    tasks = write_tasks(tmp_path / "t.json", [{
        "id": "loop", "outputs": ["out"], "timeout": 600,
        "command": "mkdir -p out/sub && echo x > out/sub/f && ln -s .. out/sub/a && ln -s .. out/sub/b"}])
    result = ecloud(tmp_path, "run", str(tasks), "--local", "1", "--datastore", str(store))
    assert result.returncode == 1, result.stderr
    assert "symbolic link loop" in result.stdout, result.stdout
    left = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    assert left == [".ecloud-datastore"], left  # no temporary, no half result


def test_datastore_paths_that_climb_out_are_refused_at_push(tmp_path: Path) -> None:
    for path in ("../../etc/hostname", "/etc/hostname", "raw/sub/x/..", "a//b", "./a"):
        tasks = write_tasks(tmp_path / "t.json", [{"id": "a", "command": "true",
                                                   "inputs": [path]}])
        result = ecloud(tmp_path, "push", str(tasks), "--dry-run")
        assert result.returncode == 2, (path, result.stdout, result.stderr)
        assert '(id "a"): inputs[0]' in result.stderr, (path, result.stderr)
        assert "Traceback" not in result.stderr
