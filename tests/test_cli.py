"""The operator CLI against real logs (SQLite file and MariaDB database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ecloud.cli.main import cli
from ecloud.cli.replay import replay
from ecloud.log.rebuild import load_state
from ecloud.log.store import Snapshot
from ecloud.log.url import open_store
from ecloud.projections import snapshot as snapshots
from ecloud.projections.fold import REDUCER_VERSION
from ecloud.projections.snapshot import canonical
from ecloud.taskfiles.taskfile import parse_task_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
INVALID = {
    "cycle.json": "dependency cycle: a -> c -> b -> a",
    "dangling.json": 'unknown task "zz"',
    "duplicate.json": 'duplicate id "a"',
    "wrong-type.json": 'retries: expected an integer from 0 to 10,000, got string "three"',
    "unknown-key.json": 'unknown key "depend_on" (did you mean "depends_on"?)',
}


def run(*args: str, command=cli):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    return result


def log_rows(url: str) -> list[tuple]:
    with open_store(url, create=False) as store:
        return list(store.read_raw(1))


def status_json(url: str) -> dict:
    result = run("status", "--db", url, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_push_diamond_then_status_shows_one_ready_three_waiting(durable_url: str) -> None:
    result = run("push", EXAMPLES / "diamond.json", "--db", durable_url)
    assert result.exit_code == 0, result.output
    assert "pushed 4 new task(s)" in result.stdout
    data = status_json(durable_url)
    assert data["tasks"]["total"] == 4
    assert (data["tasks"]["ready"], data["tasks"]["waiting"]) == (1, 3)
    human = run("status", "--db", durable_url)
    assert human.exit_code == 0
    assert "ready" in human.stdout and "waiting" in human.stdout and "Workers" in human.stdout


@pytest.mark.parametrize("name", sorted(INVALID))
def test_each_invalid_example_is_refused_with_its_problem_and_the_log_unchanged(
    name: str, durable_url: str
) -> None:
    """Refused, and recorded as refused: one ``input.rejected``, no task."""
    run("push", EXAMPLES / "diamond.json", "--db", durable_url)
    before = log_rows(durable_url)
    result = run("push", EXAMPLES / "invalid" / name, "--db", durable_url)
    assert result.exit_code == 2
    assert INVALID[name] in result.stderr
    assert "Traceback" not in result.output
    after = log_rows(durable_url)
    assert after[:len(before)] == before
    ((_, _, tag, _, body),) = after[len(before):]
    assert tag == "input.rejected" and INVALID[name] in json.loads(body)["reason"]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_example_on_an_empty_log_names_only_its_problem(name: str, sqlite_url: str) -> None:
    result = run("push", EXAMPLES / "invalid" / name, "--db", sqlite_url)
    assert result.exit_code == 2
    assert INVALID[name] in result.stderr
    assert "1 problem found" in result.stderr
    assert log_rows(sqlite_url) == []


def test_pushing_the_same_file_twice_adds_nothing_and_says_so(sqlite_url: str) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    result = run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    assert "no new task, 4 unchanged" in result.stdout
    assert [tag for _, _, tag, _, _ in log_rows(sqlite_url)] == ["tasks.submitted"]


def test_a_task_defined_in_another_file_is_no_duplicate_of_the_log_it_is_compared(
        sqlite_url: str, tmp_path: Path) -> None:
    """A file that defines a task the log has from elsewhere: the same spec is
    fine (nothing to do), another is a change (refused without --replace)."""
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"id": "a", "command": "echo a-but-different"}]))
    result = run("push", other, "--db", sqlite_url)
    assert result.exit_code == 2
    assert "task 'a': command: " in result.stderr and "--replace" in result.stderr


def test_dry_run_writes_nothing(sqlite_url: str, tmp_path: Path) -> None:
    result = run("push", EXAMPLES / "dag50.json", "--db", sqlite_url, "--dry-run")
    assert result.exit_code == 0 and "valid" in result.stdout
    assert not (tmp_path / "events.db").exists()


def test_dry_run_shows_the_plan_of_an_edited_file_and_a_refusal_is_listed(
        sqlite_url: str, tmp_path: Path) -> None:
    """An edited file: --dry-run says what is new, unchanged and changed,
    with a line per changed field, and writes nothing; the real push is
    refused and `ecloud log --type input.rejected` shows why."""
    tasks = [{"id": "a", "command": "echo a"}, {"id": "b", "command": "echo b",
                                               "depends_on": ["a"]}]
    first = tmp_path / "f.json"
    first.write_text(json.dumps(tasks))
    assert run("push", first, "--db", sqlite_url).exit_code == 0
    tasks[1]["command"] = "echo B"
    tasks.append({"id": "c", "command": "echo c"})
    first.write_text(json.dumps(tasks))
    head = len(log_rows(sqlite_url))
    plan = run("push", first, "--db", sqlite_url, "--dry-run")
    assert plan.exit_code == 2, plan.output  # as the push would be: refused
    assert "would add 1 new task(s), 1 unchanged, 1 changed" in plan.stdout, plan.stdout
    assert "task 'b': command: 'echo b' -> 'echo B'" in plan.stdout
    assert "the push would be refused" in plan.stderr and "--replace" in plan.stderr
    plan = run("push", first, "--db", sqlite_url, "--dry-run", "--replace")
    assert plan.exit_code == 0, plan.output
    assert "1 would be replaced, to run again with what depends on them" in plan.stdout
    assert len(log_rows(sqlite_url)) == head  # a dry run writes nothing
    refused = run("push", first, "--db", sqlite_url)
    assert refused.exit_code == 2 and "--replace" in refused.stderr
    listed = run("log", "--type", "input.rejected", "--db", sqlite_url)
    assert listed.exit_code == 0
    assert "input.rejected" in listed.stdout and "task 'b': command:" in listed.stdout
    assert "source=operator" in listed.stdout and "push file=" in listed.stdout
    (row,) = [json.loads(x) for x in run("log", "--type", "input.rejected", "--json", "--db",
                                         sqlite_url).stdout.splitlines()]
    assert row["seq"] == head + 1
    assert status_json(sqlite_url)["tasks"]["ready"] == 1  # b kept its old spec, c not added


def test_a_later_file_may_depend_on_tasks_already_pushed(sqlite_url: str, tmp_path: Path) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    later = tmp_path / "later.json"
    later.write_text(json.dumps([{"id": "e", "command": "true", "depends_on": ["d"]}]))
    assert run("push", later, "--db", sqlite_url).exit_code == 0
    assert status_json(sqlite_url)["tasks"]["waiting"] == 4


def test_concurrent_pushes_of_one_file_add_it_exactly_once(durable_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ecloud.cli.main", "push", str(EXAMPLES / "dag50.json"),
           "--db", durable_url]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    with open_store(durable_url, create=False) as store:
        state = load_state(store)
        submitted = list(store.read(1, types=["tasks.submitted"]))
    assert len(state.tasks) == len(parse_task_file(EXAMPLES / "dag50.json"))
    assert len(submitted) == 1 and not state.rejected  # one push added it; the others saw it there
    assert sum("pushed 56 new task(s)" in o for o in outputs) == 1
    assert sum("no new task, 56 unchanged" in o for o in outputs) == 3


def test_missing_log_and_bad_url_are_one_line_errors(tmp_path: Path) -> None:
    result = run("status", "--db", f"sqlite:///{tmp_path}/nope.db")
    assert result.exit_code == 2 and "no event log" in result.stderr
    result = run("status", "--db", "postgres://x")
    assert result.exit_code == 2 and "accepted event log URLs" in result.stderr
    result = run("push", tmp_path / "missing.json", "--db", f"sqlite:///{tmp_path}/x.db")
    assert result.exit_code == 2 and "missing.json" in result.stderr


def test_log_filters_and_json_lines(sqlite_url: str, tmp_path: Path) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    run("datastore", "set", str(tmp_path), "--db", sqlite_url)
    run("cancel", "b", "--db", sqlite_url)
    lines = run("log", "--db", sqlite_url, "--json").stdout.splitlines()
    types = [json.loads(line)["type"] for line in lines]
    assert types == ["tasks.submitted", "context.set", "context.set", "task.cancelled"]
    only = run("log", "--db", sqlite_url, "--type", "task.cancelled", "--json").stdout.splitlines()
    assert [json.loads(x)["body"]["task_id"] for x in only] == ["b"]
    about_b = run("log", "--db", sqlite_url, "--task", "b").stdout
    assert "tasks.submitted" in about_b and "task.cancelled" in about_b and "context.set" not in about_b
    ranged = run("log", "--db", sqlite_url, "--from", "2", "--to", "2", "--json").stdout.splitlines()
    assert [json.loads(x)["seq"] for x in ranged] == [2]
    bad = run("log", "--db", sqlite_url, "--type", "task.exploded")
    assert bad.exit_code == 2 and "unknown event type" in bad.stderr


def test_log_follow_prints_events_appended_later(sqlite_url: str) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ecloud.cli.main", "log", "--follow", "--json",
                             "--db", sqlite_url], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["seq"] == 1
        run("cancel", "a", "--db", sqlite_url)
        assert json.loads(proc.stdout.readline())["type"] == "task.cancelled"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cancel_and_retry(sqlite_url: str) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", sqlite_url)
    bad = run("cancel", "nope", "--db", sqlite_url)
    assert bad.exit_code == 2 and "unknown task 'nope'" in bad.stderr
    assert run("cancel", "a", "--db", sqlite_url, "--reason", "wrong input").exit_code == 0
    data = status_json(sqlite_url)
    assert (data["tasks"]["cancelled"], data["tasks"]["blocked"]) == (1, 3)
    again = run("cancel", "a", "--db", sqlite_url)
    assert again.exit_code == 2 and "already cancelled" in again.stderr
    blocked = run("retry", "b", "--db", sqlite_url)
    assert blocked.exit_code == 2 and "blocked by a: retry that" in blocked.stderr
    assert run("retry", "--failed", "--db", sqlite_url).stdout.strip() == "no failed tasks to retry"
    assert run("retry", "a", "--db", sqlite_url).exit_code == 0
    data = status_json(sqlite_url)
    assert (data["tasks"]["ready"], data["tasks"]["waiting"]) == (1, 3)
    assert run("retry", "--db", sqlite_url).exit_code == 2


def test_context_and_datastore(sqlite_url: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    gone = run("datastore", "set", str(root), "--db", sqlite_url)
    assert gone.exit_code == 2 and "no such directory" in gone.stderr and not root.exists()
    root.mkdir()
    assert run("datastore", "set", str(root), "--db", sqlite_url).exit_code == 0
    marker = (root / ".ecloud-datastore").read_text().strip()
    assert run("datastore", "set", str(root), "--db", sqlite_url).exit_code == 0  # kept
    assert (root / ".ecloud-datastore").read_text().strip() == marker
    by_hand = run("context", "set", "datastore_address", "/elsewhere", "--db", sqlite_url)
    assert by_hand.exit_code == 2 and "ecloud datastore set" in by_hand.stderr
    assert run("context", "set", "boss_address", "10.0.0.2:1883", "--db", sqlite_url).exit_code == 0
    bad = run("context", "set", "heartbeat_timeout", "soon", "--db", sqlite_url)
    assert bad.exit_code == 2 and "heartbeat_timeout" in bad.stderr
    bad = run("context", "set", "colour", "blue", "--db", sqlite_url)
    assert bad.exit_code == 2 and "unknown context key 'colour'" in bad.stderr
    shown = json.loads(run("context", "show", "--json", "--db", sqlite_url).stdout)
    assert shown["datastore_address"] == str(root) and shown["datastore_id"] == marker
    assert shown["boss_address"] == "10.0.0.2:1883"
    assert shown["heartbeat_timeout"] == 30.0  # the default, as a number
    assert run("context", "drop", "boss_address", "--db", sqlite_url).exit_code == 0
    shown = json.loads(run("context", "show", "--json", "--db", sqlite_url).stdout)
    assert shown["boss_address"] is None and shown["datastore_address"]
    assert run("context", "drop", "--db", sqlite_url).stdout.strip() == \
        "dropped datastore_address, datastore_id"
    assert "datastore_address" in run("context", "show", "--db", sqlite_url).stdout


COMMANDS = [["push"], ["status"], ["log"], ["cancel"], ["retry"], ["context", "show"],
            ["context", "set"], ["context", "drop"], ["datastore", "set"], ["config", "show"],
            ["opennebula"], ["opennebula", "hook"], []]


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "ecloud")
def test_every_command_has_help(words: list[str]) -> None:
    result = run(*words, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 3


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for name in ("ecloud", "ecloud-replay"):
        result = subprocess.run([bindir / name, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "Usage:" in result.stdout


# ------------------------------------------------------------------ ecloud-replay


def _diamond_history(url: str) -> None:
    run("push", EXAMPLES / "diamond.json", "--db", url)
    run("cancel", "c", "--db", url)
    run("retry", "c", "--db", url)
    run("context", "set", "queue_ahead", "3", "--db", url)


def test_replay_until_shows_the_state_at_that_seq(durable_url: str) -> None:
    _diamond_history(durable_url)
    at2 = json.loads(run("--until", "2", "--json", "--db", durable_url, command=replay).stdout)
    assert (at2["seq"], at2["tasks"]["cancelled"], at2["tasks"]["blocked"]) == (2, 1, 1)
    now = json.loads(run("--json", "--db", durable_url, command=replay).stdout)
    assert (now["seq"], now["tasks"]["cancelled"], now["context"]) == (4, 0, {"queue_ahead": "3"})
    past = run("--until", "99", "--db", durable_url, command=replay)
    assert past.exit_code == 2 and "past the end" in past.stderr


def test_replay_task_history_gives_every_transition_with_its_reason(sqlite_url: str) -> None:
    _diamond_history(sqlite_url)
    doc = json.loads(run("--task", "d", "--json", "--db", sqlite_url, command=replay).stdout)
    assert (doc["task"], doc["status"], doc["seq"]) == ("d", "waiting", 4)
    rows = doc["history"]
    assert [(r["seq"], r["from"], r["to"]) for r in rows] == [
        (1, None, "waiting"), (2, "waiting", "blocked"), (3, "blocked", "waiting")]
    assert rows[1]["why"] == "blocked by c"
    missing = run("--task", "zz", "--db", sqlite_url, command=replay)
    assert missing.exit_code == 2 and "no task 'zz'" in missing.stderr


def test_replay_verify_passes_and_a_snapshot_round_trips(durable_url: str) -> None:
    _diamond_history(durable_url)
    saved = run("--until", "3", "--save-snapshot", "--db", durable_url, command=replay)
    assert saved.exit_code == 0 and "saved a snapshot at seq 3" in saved.stdout
    result = run("--verify", "--json", "--db", durable_url, command=replay)
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["ok"]
    assert any("snapshot at seq 3 plus suffix equals full replay" in c["detail"] for c in report["checks"])


def test_replay_verify_names_the_seq_of_a_snapshot_that_lies(durable_url: str) -> None:
    _diamond_history(durable_url)
    with open_store(durable_url, create=False) as store:
        state = load_state(store, 2)
        state.tasks["a"].status = "succeeded"  # not what the log says
        state.counts["ready"] -= 1
        state.counts["succeeded"] += 1
        store.save_snapshot(Snapshot(2, REDUCER_VERSION, snapshots.dump(state), 0.0))
    result = run("--verify", "--db", durable_url, command=replay)
    assert result.exit_code == 1
    assert "first divergent seq: 2" in result.stdout and "FAIL" in result.stdout


def test_replay_ignores_a_snapshot_of_another_reducer_version(sqlite_url: str) -> None:
    _diamond_history(sqlite_url)
    with open_store(sqlite_url, create=False) as store:
        store.save_snapshot(Snapshot(2, "0-old", b"garbage", 0.0))
        assert canonical(load_state(store)) == canonical(load_state(store, use_snapshot=False))
    assert run("--verify", "--db", sqlite_url, command=replay).exit_code == 0


def test_replay_why_explains_a_blocked_and_a_waiting_task(sqlite_url: str) -> None:
    _diamond_history(sqlite_url)  # c cancelled at seq 2, retried at seq 3
    at2 = run("--why", "d", "--until", "2", "--db", sqlite_url, command=replay)
    assert at2.exit_code == 0
    assert "d is blocked at seq 2" in at2.stdout
    assert "blocked by c (cancelled: cancelled by operator)" in at2.stdout
    assert "`ecloud retry c` would unblock it" in at2.stdout
    now = run("--why", "b", "--db", sqlite_url, command=replay).stdout
    assert "b is waiting at seq 4" in now and "waits for a, which is ready" in now
    ready = run("--why", "a", "--db", sqlite_url, command=replay).stdout
    assert "no live worker has them" in ready
    missing = run("--why", "zz", "--db", sqlite_url, command=replay)
    assert missing.exit_code == 2 and "no task or VM 'zz'" in missing.stderr


def test_replay_diff_lists_what_changed_between_two_seqs(sqlite_url: str) -> None:
    _diamond_history(sqlite_url)
    lines = json.loads(run("--diff", "1", "2", "--json", "--db", sqlite_url, command=replay).stdout)["lines"]
    assert "  task c: waiting -> cancelled" in lines and "  task d: waiting -> blocked" in lines
    assert "  cancelled: 0 -> 1 (+1)" in lines
    ctx = run("--diff", "3", "4", "--db", sqlite_url, command=replay).stdout
    assert "context queue_ahead: None -> 3" in ctx
    bad = run("--diff", "3", "1", "--db", sqlite_url, command=replay)
    assert bad.exit_code == 2 and "A <= B" in bad.stderr


def test_replay_at_a_time_is_the_state_after_the_last_event_before_it(sqlite_url: str) -> None:
    _diamond_history(sqlite_url)
    with open_store(sqlite_url, create=False) as store:
        stamps = [rec.ts for rec in store.read(1)]
    at = run("--at", repr(stamps[1]), "--json", "--db", sqlite_url, command=replay)
    assert json.loads(at.stdout)["seq"] == 2
    before = run("--at", "2000-01-01T00:00:00", "--json", "--db", sqlite_url, command=replay)
    assert json.loads(before.stdout)["seq"] == 0
    both = run("--at", "1", "--until", "1", "--db", sqlite_url, command=replay)
    assert both.exit_code == 2 and "not both" in both.stderr


def test_a_refused_operator_command_is_logged_as_rejected_and_changes_nothing(
        durable_url: str) -> None:
    """Every command the log's state refuses leaves one ``input.rejected``
    event (reason, and the command without its --db), and nothing else."""
    assert run("context", "set", "heartbeat_timeout", "30", "--db", durable_url).exit_code == 0
    before = canonical(load_state_of(durable_url))
    refused = [
        (("context", "set", "heartbeat_timeout", "--", "-5"), "must be a number of seconds > 0"),
        (("context", "set", "bogus", "1"), "unknown context key 'bogus'"),
        (("cancel", "nope"), "unknown task 'nope'"),
        (("retry", "nope"), "unknown task 'nope'"),
        (("workers", "kill", "9"), "no VM 9 in the log"),
        (("scale", "--max=-1"), "must be a whole number >= 0"),
        (("push", str(EXAMPLES / "invalid" / "dangling.json")), 'unknown task "zz"'),
    ]
    for args, reason in refused:
        result = run(*args[:2], "--db", durable_url, *args[2:])
        assert result.exit_code == 2 and reason in result.output, (args, result.output)
    rows = log_rows(durable_url)[1:]
    assert [tag for _, _, tag, _, _ in rows] == ["input.rejected"] * len(refused)
    for (args, reason), (*_, body) in zip(refused, rows, strict=True):
        event = json.loads(body)
        assert event["source"] == "operator" and reason in event["reason"]
        # the command (its path, as click names it), never the --db URL
        assert event["excerpt"].split()[1] == args[0] and durable_url not in event["excerpt"]
    after = canonical(load_state_of(durable_url))
    for key in ("tasks", "workers", "vms", "context"):
        assert after[key] == before[key]


def load_state_of(url: str):
    with open_store(url, create=False) as store:
        return load_state(store)
