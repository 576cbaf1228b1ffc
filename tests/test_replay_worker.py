"""``ecloud-replay --worker``, and ``--json`` on every view of ecloud-replay.

One small log, written through the stores with fixed timestamps, holds a
worker's whole life: announced, two attempts run (one fails), heartbeats,
lost while holding a third attempt (whose late result is ignored), back as a
new incarnation, lost again when its heartbeats stop (a tick fires the
deadline: no event names the worker there), a malformed message from it, and
a second worker that leaves and a third whose announcement is refused.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ecloud.cli.replay import replay
from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.log.url import open_store

T0 = 1_800_000_000.0
LOST_WHY = "broker: connection dropped"

#: (seconds after T0, event); seq = position + 1
LIFE = [
    (0, ev.TasksSubmitted("b1", (TaskSpec("a", "true"), TaskSpec("b", "false"),
                                 TaskSpec("c", "sleep 9")))),
    (1, ev.WorkerAnnounced("w1", "host-1", 2, 1, incarnation="i1", vm_id=7)),  # 2
    (1, ev.WorkerAnnounced("w2", "host-2", 1, 1, incarnation="j1")),  # 3
    (2, ev.TaskDispatched("a", 1, "w1")),  # 4
    (3, ev.TaskStarted("a", 1, "w1")),  # 5
    (4, ev.WorkerHeartbeat("w1")),  # 6
    (5, ev.WorkerHeartbeat("w1")),  # 7
    (6, ev.WorkerHeartbeat("w1")),  # 8
    (6, ev.WorkerHeartbeat("w2")),  # 9
    (7, ev.TaskFinished("a", 1, "w1", 0, duration=4.0)),  # 10
    (8, ev.TaskDispatched("b", 1, "w1")),  # 11
    (8, ev.TaskStarted("b", 1, "w1")),  # 12
    (8.5, ev.WorkerHeartbeat("w1")),  # 13
    (9, ev.TaskFinished("b", 1, "w1", 1, duration=1.0, stderr_tail="boom\n")),  # 14
    (10, ev.TaskDispatched("c", 1, "w1")),  # 15
    (11, ev.WorkerLost("w1", LOST_WHY)),  # 16
    (12, ev.TaskFinished("c", 1, "w1", 0, duration=2.0)),  # 17: too late, ignored
    (12, ev.WorkerLeft("w2", "shutdown")),  # 18
    (13, ev.WorkerAnnounced("w1", "host-1", 2, 1, incarnation="i2", vm_id=7)),  # 19
    (100, ev.Tick()),  # 20: w1's heartbeat deadline passed
    (101, ev.WorkerAnnounced("w9", "host-9", 1, 99, incarnation="k1")),  # 21: refused
    (102, ev.InputRejected("mqtt ecloud/test/from/w1", "payload is not JSON")),  # 22
]
HEAD = len(LIFE)


def write_life(url: str) -> None:
    with open_store(url) as store:
        for offset, event in LIFE:
            store.append([event], ts=T0 + offset)


def run(*args: object):
    return CliRunner().invoke(replay, [str(a) for a in args], catch_exceptions=False)


def worker_json(url: str, *args: object) -> dict:
    result = run("--worker", *args, "--json", "--db", url)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def life(durable_url: str) -> str:
    write_life(durable_url)
    return durable_url


# ---------------------------------------------------------------- --worker, JSON


def test_worker_history_gives_every_transition_with_its_reason(life: str) -> None:
    data = worker_json(life, "w1")
    changes = [(r["seq"], r["from"], r["to"], r["why"]) for r in data["history"] if "why" in r]
    assert changes == [
        (2, None, "idle", "announced as incarnation i1 with 2 slot(s)"),
        (4, "idle", "busy", "took a#1; 1/2 slot(s) in use"),
        (10, "busy", "idle", "a#1 ended; 0/2 slot(s) in use"),
        (11, "idle", "busy", "took b#1; 1/2 slot(s) in use"),
        (14, "busy", "idle", "b#1 ended; 0/2 slot(s) in use"),
        (15, "idle", "busy", "took c#1; 1/2 slot(s) in use"),
        (16, "busy", "lost", LOST_WHY),
        (19, "lost", "idle", "announced as incarnation i2 with 2 slot(s), after being lost"),
        (20, "idle", "lost", "no heartbeat for 30s"),
    ]
    assert [r["type"] for r in data["history"] if r["seq"] == 20] == ["tick"]
    assert data["seq"] == HEAD
    record = data["record"]
    assert (record["status"], record["reason"], record["incarnation"], record["host"],
            record["vm_id"]) == ("lost", "no heartbeat for 30s", "i2", "host-1", 7)


def test_worker_history_lists_every_event_about_it_and_only_those(life: str) -> None:
    rows = worker_json(life, "w1")["history"]
    assert [(r["seq"], r["type"]) for r in rows] == [
        (2, "worker.announced"), (4, "task.dispatched"), (5, "task.started"),
        (6, "worker.heartbeat"), (10, "task.finished"), (11, "task.dispatched"),
        (12, "task.started"), (13, "worker.heartbeat"), (14, "task.finished"),
        (15, "task.dispatched"), (16, "worker.lost"), (17, "task.finished"),
        (19, "worker.announced"), (20, "tick"), (22, "input.rejected"),
    ]
    announced = rows[0]["body"]
    assert (announced["host"], announced["slots"], announced["incarnation"],
            announced["vm_id"]) == ("host-1", 2, "i1", 7)
    failed = next(r for r in rows if r["seq"] == 14)
    assert (failed["body"]["exit_code"], failed["body"]["task_id"]) == (1, "b")
    assert rows[-1]["rejected"] == "payload is not JSON"
    held = next(r for r in rows if r["seq"] == 15)
    assert held["running"] == [{"task": "c", "attempt": 1}] and held["used"] == 1


def test_heartbeats_are_summarised_as_runs(life: str) -> None:
    beats = [r for r in worker_json(life, "w1")["history"] if r["type"] == "worker.heartbeat"]
    assert [(r["count"], r["first_seq"], r["last_seq"], r["event"]) for r in beats] == [
        (3, 6, 8, "3 heartbeats between seq 6 and 8"),
        (1, 13, 13, "1 heartbeat at seq 13"),
    ]


def test_worker_attempts_say_what_became_of_each(life: str) -> None:
    ran = {(a["task"], a["attempt"]): a for a in worker_json(life, "w1")["attempts"]}
    assert list(ran) == [("a", 1), ("b", 1), ("c", 1)]
    assert (ran["a", 1]["dispatched"], ran["a", 1]["started"], ran["a", 1]["finished"],
            ran["a", 1]["exit_code"]) == (4, 5, 10, 0)
    assert (ran["b", 1]["finished"], ran["b", 1]["exit_code"]) == (14, 1)
    c = ran["c", 1]
    assert (c["started"], c["given_back"], c["given_back_why"], c["finished"]) == (
        None, 16, LOST_WHY, 17)


def test_worker_history_until_stops_there(life: str) -> None:
    data = worker_json(life, "w1", "--until", "10")
    assert data["seq"] == 10 and data["history"][-1]["seq"] == 10
    assert data["record"]["status"] == "idle"
    assert [a["task"] for a in data["attempts"]] == ["a"]


def test_refused_and_leaving_workers_have_histories(life: str) -> None:
    refused = worker_json(life, "w9")
    assert refused["record"] is None
    (row,) = refused["history"]
    assert row["seq"] == 21 and row["rejected"] == "protocol 99 not supported (boss speaks 1)"
    assert "why" not in row and row["to"] is None
    gone = worker_json(life, "w2")["history"]
    assert (gone[-1]["seq"], gone[-1]["from"], gone[-1]["to"], gone[-1]["why"]) == (
        18, "idle", "gone", "shutdown")


# ---------------------------------------------------------------- --worker, text


def test_worker_history_as_text(life: str) -> None:
    result = run("--worker", "w1", "--db", life)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.splitlines()[0] == (f"worker w1 at seq {HEAD}: lost on host-1, 0/2 slot(s) in use, "
                                    "incarnation i2 (no heartbeat for 30s)")
    assert f"busy -> lost  ({LOST_WHY})" in text
    assert "idle -> lost  (no heartbeat for 30s)" in text
    assert "3 heartbeats between seq 6 and 8" in text
    assert "b attempt 1 on w1: exit 1 in 1.0s stderr: boom" in text
    assert "refused: payload is not JSON" in text
    assert "Attempts given to w1 (3)" in text
    assert "given back at seq 16" in text


def test_worker_text_does_not_list_each_heartbeat(life: str) -> None:
    text = run("--worker", "w1", "--db", life).stdout
    assert sum("worker.heartbeat" in line for line in text.splitlines()) == 2


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--worker", "nobody"], "no worker 'nobody' in the log"),
    (["--worker", "w1", "--until", "1"], "no worker 'w1' in the log up to seq 1"),
    (["--worker", "w1", "--task", "a"], "not --task and --worker"),
    (["--worker", "w1", "--until", "99"], "past the end"),
])
def test_bad_worker_requests_are_one_line_errors(sqlite_url: str, args: list[str],
                                                 message: str) -> None:
    write_life(sqlite_url)
    for extra in ([], ["--json"]):
        result = run(*args, *extra, "--db", sqlite_url)
        assert result.exit_code == 2
        assert message in result.stderr
        assert result.stdout == "" and "Traceback" not in result.output


# ---------------------------------------------------------------- --json everywhere

#: every view of ecloud-replay, and a fact its JSON must state about LIFE
VIEWS = {
    "state": ([], lambda d: d["seq"] == HEAD and d["tasks"]["failed"] == 1),
    "until": (["--until", "10"], lambda d: d["seq"] == 10 and d["tasks"]["succeeded"] == 1),
    "at": (["--at", repr(T0 + 7)], lambda d: d["seq"] == 10),
    "task": (["--task", "c"], lambda d: d["status"] == "ready"
             and [(r["seq"], r["why"]) for r in d["history"] if r["seq"] == 16]
             == [(16, f"worker w1 lost: {LOST_WHY}")]),
    "worker": (["--worker", "w2"], lambda d: d["record"]["status"] == "gone"),
    "why": (["--why", "b"], lambda d: d["status"] == "failed"
            and d["lines"][0].startswith("b is failed at seq")),
    "diff": (["--diff", "1", "10"], lambda d: "  worker w1: new (idle)" in d["lines"]),
    "verify": (["--verify"], lambda d: d["ok"] and d["until"] == HEAD),
    "no-snapshot": (["--no-snapshot"], lambda d: d["seq"] == HEAD),
    "save-snapshot": (["--save-snapshot", "--until", "5"],
                      lambda d: d["snapshot"]["seq"] == 5 and d["seq"] == 5),
}


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_every_view_prints_one_json_document(view: str, sqlite_url: str) -> None:
    write_life(sqlite_url)
    args, holds = VIEWS[view]
    result = run(*args, "--json", "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # one document: json.loads refuses JSON lines
    assert holds(data), data


def test_every_option_of_ecloud_replay_has_a_json_view() -> None:
    """A new option must join VIEWS, so its --json is tested too."""
    covered = {opt for args, _ in VIEWS.values() for opt in args if opt.startswith("--")}
    options = {max(p.opts, key=len) for p in replay.params}
    assert options - covered == {"--json", "--db", "--config"}
