"""The status page's API and metrics against real logs: what it serves at
the head and at any past seq must be what a replay of the log says."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store
from ecloud.projections.state import TASK_STATUSES, WORKER_STATUSES
from ecloud.views import summary
from ecloud.web.server import WebServer, bind
from tests.support.brokers import wait_for
from tests.support.web_helpers import (
    VARIED,
    Web,
    gated_dag,
    start_run,
    stop_run,
    varied_log,
    wait_for_tasks,
    wait_until_held,
)
from tests.test_recorded_logs import LOGS, read_jsonl
from tests.test_run import ecloud


def scrape(web: Web) -> dict[str, dict[tuple, float]]:
    """``/metrics`` as {sample name: {labels as sorted tuples: value}}."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(web.get("/metrics").decode()):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def check_against_log(metrics: dict, db: str) -> int:
    """The scrape's counts are the log's at the seq the scrape names."""
    seq = int(metrics["ecloud_folded_seq"][()])
    with open_store(db, create=False) as store:
        state = load_state(store, seq)
        types = [rec.event.TYPE for rec in store.read(1, seq)]
    for status in TASK_STATUSES:
        assert metrics["ecloud_tasks"][(("state", status),)] == state.counts[status], status
    for status in WORKER_STATUSES:
        expected = sum(1 for w in state.workers.values() if w.status == status)
        assert metrics["ecloud_workers"][(("state", status),)] == expected, status
    for tag in set(types):
        assert metrics["ecloud_events_total"][(("type", tag),)] == types.count(tag), tag
    assert metrics["ecloud_log_head_seq"][()] >= seq
    assert metrics["ecloud_replay_lag_events"][()] == metrics["ecloud_log_head_seq"][()] - seq
    durations = sum(v for k, v in metrics["ecloud_task_duration_seconds_count"].items())
    assert durations == sum(1 for t in types if t == "task.finished")
    assert metrics["ecloud_dispatch_latency_seconds_count"][()] == types.count("task.started")
    assert metrics["ecloud_append_batch_size_sum"][()] <= seq
    return seq


def test_metrics_scraped_during_a_run_match_the_log(tmp_path: Path) -> None:
    task_file, gate = gated_dag(tmp_path)
    db = f"sqlite:///{tmp_path}/ecloud.db"
    run = start_run(tmp_path, task_file, "--local", "3", "--slots", "2")
    web = None
    try:
        wait_for_tasks(db)
        web = Web(tmp_path, db)
        wait_until_held(web)
        held = scrape(web)
        held_seq = check_against_log(held, db)
        assert held["ecloud_tasks"][(("state", "running"),)] > 0
        assert held["ecloud_worker_slots"][(("kind", "used"),)] == 6  # 3 workers x 2 slots
        gate.touch()
        run.wait(120)
        end = wait_for(lambda: (m := scrape(web))["ecloud_replay_lag_events"][()] == 0
                       and m["ecloud_log_head_seq"][()] > held_seq and m, 30,
                       "the page's follower to reach the end of the log")
        check_against_log(end, db)
        assert end["ecloud_tasks"][(("state", "running"),)] == 0
    finally:
        gate.touch()
        stop_run(run)
        if web is not None:
            web.stop()


@pytest.fixture
def recorded(durable_url: str):
    """The longest recorded log, in SQLite and in MariaDB, served in this process."""
    path = max(LOGS, key=lambda p: p.stat().st_size)
    records = read_jsonl(path)
    db = durable_url
    with open_store(db) as store:
        for rec in records:
            store.append([rec.event], ts=rec.ts)
    server = WebServer(db, bind("127.0.0.1:0")).start()
    wait_for(lambda: server.follower.state.seq == len(records), 30, "the follower to catch up")
    yield server, db, len(records)
    server.stop()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_any_past_seq_shows_what_a_replay_to_it_says(recorded) -> None:
    server, db, head = recorded
    with open_store(db, create=False) as store:
        for seq in sorted({0, 1, head // 3, head // 2, head - 1, head}):
            status, page = _get(f"{server.url}api/page?seq={seq}")
            assert status == 200 and page["seq"] == seq and page["live"] is False
            state = load_state(store, seq)
            assert page["progress"]["counts"] == {s: state.counts[s] for s in TASK_STATUSES}
            assert [w["id"] for w in page["workers"]] == sorted(
                state.workers, key=lambda w: (state.workers[w].status not in
                                              ("idle", "busy", "draining"), w))
            assert [f["seq"] for f in page["retrying"]] == \
                [f.seq for f in reversed(state.recent_failures) if not f.final]
            assert {f["task"] for f in page["final_failures"]} <= \
                {t for t, r in state.tasks.items() if r.status == "failed"}
            assert len(page["final_failures"]) == min(summary.MAX_FINAL, state.counts["failed"])
            assert page["decisions"] == summary.recent_decisions(  # kept, not read again
                store.read(1, seq, types=summary.DECISION_TYPES), state)
            status, graph = _get(f"{server.url}api/graph?seq={seq}")
            assert status == 200 and sum(n["tasks"] for n in graph["nodes"]) == len(state.tasks)
    status, live = _get(f"{server.url}api/page")
    assert status == 200 and live["live"] is True and live["seq"] == head


def test_bad_requests_get_a_reason_not_a_traceback(recorded) -> None:
    server, _, head = recorded
    for query, words in ((f"api/page?seq={head + 1}", "not in the log"),
                         ("api/page?seq=abc", "whole number"),
                         ("api/page?seq=-3", "negative"),
                         ("api/graph?mode=colour", "mode must be one of")):
        status, body = _get(server.url + query)
        assert status == 400 and words in body["error"], (query, body)


def test_nothing_secret_is_served(tmp_path: Path) -> None:
    """No context value and no environment value on any route; a task's
    command only on its own page (the operator's, see the README)."""
    db = f"sqlite:///{tmp_path}/e.db"
    with open_store(db) as store:
        store.append([ev.ContextSet("datastore_address", "me@data.example:/srv/s3cret-path"),
                      ev.TasksSubmitted("b", (TaskSpec("a", "echo the-command",
                                                       env={"TOKEN": "s3cret-env"}),))])
    server = WebServer(db, bind("127.0.0.1:0")).start()
    try:
        wait_for(lambda: server.follower.state.seq == 2, 30, "the follower to catch up")
        for path in ("api/page", "api/page?seq=2", "api/graph", "api/tasks", "api/task/a",
                     "api/task/a?seq=2", "metrics", ""):
            with urllib.request.urlopen(server.url + path, timeout=10) as response:
                body = response.read().decode()
            assert "s3cret" not in body, path
            assert ("the-command" in body) == path.startswith("api/task/"), path
        assert _get(server.url + "api/task/a")[1]["spec"]["env"] == ["TOKEN"]  # the name only
    finally:
        server.stop()


def test_ecloud_web_refuses_bad_addresses_and_missing_logs(tmp_path: Path) -> None:
    missing = ecloud(tmp_path, "web", "--db", f"sqlite:///{tmp_path}/none.db")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    ecloud(tmp_path, "context", "set", "heartbeat_timeout", "30")
    for address, words in (("nonsense", "give host:port"), ("127.0.0.1:http", "not a number"),
                           ("127.0.0.1:70000", "0-65535"), ("203.0.113.9:8470", "cannot listen")):
        done = ecloud(tmp_path, "web", "--address", address, timeout=30)
        assert done.returncode == 2 and words in done.stderr, (address, done.stderr)
        assert "Traceback" not in done.stderr
    taken = bind("127.0.0.1:0")
    try:
        port = taken.getsockname()[1]
        done = ecloud(tmp_path, "web", "--address", f"127.0.0.1:{port}", timeout=30)
        assert done.returncode == 2 and "cannot listen there" in done.stderr
    finally:
        taken.close()


def test_progress_rate_and_eta_come_from_the_log_s_clock() -> None:
    from ecloud.views.summary import progress
    from tests.support.folding import Driver

    d = Driver(start=0.0)
    d.apply(ev.WorkerAnnounced("w1", "host", 8, 1, "inc", msg_id="m0"))
    d.apply(ev.TasksSubmitted("b", tuple(TaskSpec(f"t{i}", "true") for i in range(5))))
    assert progress(d.state)["eta_seconds"] is None  # nothing finished: no estimate
    for i, when in enumerate((10.0, 30.0, 50.0)):
        d.apply(ev.WorkerHeartbeat("w1", msg_id=f"h{i}"), dt=when - 2 - d.now)
        d.apply(ev.TaskDispatched(f"t{i}", 1, "w1"), dt=1.0)
        d.apply(ev.TaskFinished(f"t{i}", 1, "w1", 0, 1.0, msg_id=f"m{i + 1}"), dt=1.0)
    d.apply(ev.WorkerHeartbeat("w1", msg_id="m9"), dt=20.0)  # the clock: 70
    p = progress(d.state)
    assert (p["done"], p["pending"], p["percent"]) == (3, 2, 60.0)
    # 2 intervals between the first finish (10) and now (70): over the
    # minute the rate is measured over at least
    assert p["rate"] == 2 / 60 and p["eta_seconds"] == 2 / p["rate"]
    for i in range(3):  # time passes and nothing finishes: the rate falls, the ETA grows
        d.apply(ev.WorkerHeartbeat("w1", msg_id=f"k{i}"), dt=19.0)
    d.apply(ev.WorkerHeartbeat("w1", msg_id="m10"), dt=3.0)  # the clock: 130
    p = progress(d.state)
    assert p["rate"] == 2 / 120 and p["eta_seconds"] == 120.0


def test_ecloud_run_serves_the_page_while_it_runs(tmp_path: Path) -> None:
    import re

    task_file, gate = gated_dag(tmp_path)
    run = start_run(tmp_path, task_file, "--local", "2", "--web", "127.0.0.1:0")
    try:
        def url() -> str | None:
            line = run.stderr.readline()
            found = re.search(r"status page at (http://127\.0\.0\.1:\d+/)", line)
            return found.group(1) if found else None

        base = wait_for(url, 60, "ecloud run to say where its page is")

        def held() -> dict | None:
            with urllib.request.urlopen(base + "api/page", timeout=10) as response:
                page = json.loads(response.read())
            return page if page["progress"]["counts"]["running"] > 0 else None

        page = wait_for(held, 120, "the run's own page to show running tasks", 0.1)
        with open_store(f"sqlite:///{tmp_path}/ecloud.db", create=False) as store:
            state = load_state(store, page["seq"])
        assert page["progress"]["counts"] == {s: state.counts[s] for s in TASK_STATUSES}
    finally:
        gate.touch()
        stop_run(run)
    with pytest.raises(OSError):  # the page goes with the run
        urllib.request.urlopen(base + "healthz", timeout=5)


def test_the_boss_serves_the_page_when_told_to(tmp_path: Path, shared_mqtt_url: str) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys

    from tests.support.e2e import ROOT

    db = f"sqlite:///{tmp_path}/boss.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CLUSTER": f"w{os.getpid()}",
           "ECLOUD_CONFIG": "", "ECLOUD_DB": ""}
    bad = subprocess.run([sys.executable, "-m", "ecloud.cli.boss", "--broker", shared_mqtt_url,
                          "--db", db, "--web", "127.0.0.1:99999"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "0-65535" in bad.stderr and "Traceback" not in bad.stderr
    boss = subprocess.Popen([sys.executable, "-m", "ecloud.cli.boss", "--broker", shared_mqtt_url,
                             "--db", db, "--web", "127.0.0.1:0"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def url() -> str | None:
            found = re.search(r"status page at (http://127\.0\.0\.1:\d+/)", boss.stderr.readline())
            return found.group(1) if found else None

        base = wait_for(url, 60, "the boss to say where its page is")
        # the boss writes boss.started and boss_address; the page follows
        health = wait_for(lambda: (h := _get(base + "healthz")[1])["seq"] >= 2 and h, 30,
                          "the boss's page to follow its log")
        assert health["ok"] is True
        families = urllib.request.urlopen(base + "metrics", timeout=10).read().decode()
        assert 'ecloud_events_total{type="boss.started"} 1.0' in families
    finally:
        boss.send_signal(signal.SIGTERM)
        assert boss.wait(60) == 0


# ------------------------------------------------------------ tasks and seeks


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory):
    """:func:`varied_log` served in this process (its events are one second apart)."""
    db = f"sqlite:///{tmp_path_factory.mktemp('varied')}/v.db"
    varied_log(db)
    server = WebServer(db, bind("127.0.0.1:0")).start()
    wait_for(lambda: server.follower.state.seq == 18, 30, "the follower to catch up")
    yield server
    server.stop()


def _ids(server, query: str) -> list[str]:
    status, body = _get(f"{server.url}api/tasks?{query}")
    assert status == 200, body
    return [row["id"] for row in body["rows"]]


def test_the_task_list_filters_by_state_name_block_and_dag_group(varied) -> None:
    everything = _get(varied.url + "api/tasks")[1]
    assert [r["id"] for r in everything["rows"]] == list(VARIED)  # submission order
    assert [r["status"] for r in everything["rows"]] == list(VARIED.values())
    assert everything["counts"] == {s: list(VARIED.values()).count(s) for s in TASK_STATUSES}
    assert (everything["matched"], everything["total"], everything["live"]) == (8, 8, True)
    assert _ids(varied, "state=failed") == ["sim-01"]
    assert _ids(varied, "state=blocked,running") == ["post-1", "post-2", "moved"]
    assert _ids(varied, "q=SIM") == ["sim-01", "sim-02"]  # a part of the id, in any case
    assert _ids(varied, "q=*-0[2-9]") == ["sim-02"]       # a glob: the whole id
    assert _ids(varied, "q=post*&state=succeeded") == []
    assert _ids(varied, "blocked_by=sim-01") == ["post-1", "post-2"]
    assert _ids(varied, "group=sim-%23&mode=pattern") == ["sim-01", "sim-02"]  # sim-#
    assert _ids(varied, "group=level%201&mode=level&state=succeeded") == ["sim-02"]
    # the counts say what each state would show under the other filters
    assert _get(varied.url + "api/tasks?q=sim&state=failed")[1]["counts"]["succeeded"] == 1
    # pages: the server sends at most `limit` rows
    page = _get(varied.url + "api/tasks?offset=2&limit=3")[1]
    assert [r["id"] for r in page["rows"]] == ["sim-02", "post-1", "post-2"]
    assert (page["matched"], page["offset"], page["limit"]) == (8, 2, 3)
    # and at a past seq: the list as it was (seq 3: submitted, nothing run)
    past = _get(varied.url + "api/tasks?seq=3&state=waiting")[1]
    assert past["live"] is False
    assert [r["id"] for r in past["rows"]] == ["sim-01", "sim-02", "post-1", "post-2", "later"]


def test_the_task_list_refuses_bad_filters_with_a_reason(varied) -> None:
    for query, words in (("state=finished", "state must be among"),
                         ("limit=0", "limit must be from 1"), ("limit=5000", "limit must be"),
                         ("offset=-1", "offset must be from 0"), ("offset=x", "whole number"),
                         ("group=sim-%23", "a group needs its mode"),
                         ("group=sim-%23&mode=auto", "a group needs its mode"),
                         ("seq=99", "not in the log")):
        status, body = _get(f"{varied.url}api/tasks?{query}")
        assert status == 400 and words in body["error"], (query, body)


def test_a_task_page_has_its_spec_attempts_tails_and_lineage(varied) -> None:
    status, task = _get(varied.url + "api/task/sim-01")
    assert status == 200 and task["live"] is True
    assert (task["status"], task["attempt"], task["failures"]) == ("failed", 2, 2)
    assert task["spec"]["command"] == "simulate --mesh m1"
    assert task["spec"]["depends_on"] == ["prep"] and task["spec"]["env"] == ["MESH_TOKEN"]
    first, second = task["attempts"]
    assert (first["worker"], first["outcome"], first["exit_code"], first["final"]) == \
        ("w1", "failed", 3, False)
    assert first["stderr_tail"] == "boom: mesh m1 missing\n"
    assert first["dispatched_at"] < first["started_at"] < first["finished_at"]
    assert (second["exit_code"], second["final"]) == (4, True)
    assert second["stderr_tail"] == "boom again: mesh m1 missing\n"
    assert task["parents"] == {"total": 1, "rows": [{"id": "prep", "status": "succeeded"}]}
    assert task["children"] == {"total": 1, "rows": [{"id": "post-1", "status": "blocked"}]}
    assert [r["id"] for r in task["blocks"]["rows"]] == ["post-1", "post-2"]
    assert "not-for-the-page" not in json.dumps(task)

    blocked = _get(varied.url + "api/task/post-2")[1]
    assert blocked["blocked_by"] == {"id": "sim-01", "status": "failed"}
    assert blocked["attempts"] == []

    # an attempt whose worker was lost has no report: the page says what ended it
    moved = _get(varied.url + "api/task/moved")[1]
    assert [(a["worker"], a["outcome"]) for a in moved["attempts"]] == \
        [("w2", "worker lost"), ("w1", "running")]
    assert "connection lost" in moved["attempts"][0]["reason"]
    dropped = _get(varied.url + "api/task/dropped")[1]
    assert dropped["status"] == "cancelled" and "not needed" in dropped["notes"][0]["what"]

    # at a past seq: the first attempt had failed, the second not begun
    past = _get(varied.url + "api/task/sim-01?seq=9")[1]
    assert past["live"] is False and past["status"] == "ready"
    assert [a["stderr_tail"] for a in past["attempts"]] == ["boom: mesh m1 missing\n"]


def test_an_unknown_task_is_a_404_with_a_reason_not_a_traceback(varied) -> None:
    for path, words in (("api/task/no-such-task", "no task 'no-such-task' in the log"),
                        ("api/task/sim-01/extra", "no task 'sim-01/extra'"),
                        ("api/task/post-2?seq=2", "no task 'post-2' in the log up to seq 2")):
        status, body = _get(varied.url + path)
        assert status == 404 and words in body["error"], (path, body)
    for path, words in (("api/task/sim-01?seq=abc", "whole number"),
                        ("api/task/sim-01?seq=999", "not in the log")):
        status, body = _get(varied.url + path)
        assert status == 400 and words in body["error"], (path, body)


def test_the_slider_seeks_failures_and_times_the_log_has(varied) -> None:
    start = 1_800_000_000.0  # seq n was appended at start + n - 1
    seek = lambda query: _get(f"{varied.url}api/seek?{query}")  # noqa: E731
    assert seek("failure=next&from=0") == (200, {"seq": 8})   # sim-01's first failure
    assert seek("failure=next&from=8") == (200, {"seq": 12})  # and its last
    assert seek("failure=prev&from=12") == (200, {"seq": 8})
    assert seek("failure=next&from=12") == (200, {"seq": None})
    assert seek("failure=prev&from=8") == (200, {"seq": None})
    assert seek(f"time={start + 6.5}") == (200, {"seq": 7})
    assert seek(f"time={start + 7}") == (200, {"seq": 8})
    assert seek(f"time={start - 1}") == (200, {"seq": 0})
    assert seek(f"time={start + 3600}") == (200, {"seq": 18})
    for query, words in (("", "give time"), ("time=soon", "seconds since the epoch"),
                         ("time=nan", "a number"), ("failure=up&from=1", "give time"),
                         ("failure=next&from=-2", "from must be")):
        status, body = seek(query)
        assert status == 400 and words in body["error"], (query, body)


def test_the_page_splits_final_failures_from_retries_and_names_what_they_block(varied) -> None:
    page = _get(varied.url + "api/page")[1]
    assert [(f["task"], f["attempt"], f["seq"], f["blocked_total"], f["blocked"])
            for f in page["final_failures"]] == [("sim-01", 2, 12, 2, ["post-1", "post-2"])]
    assert page["final_failures"][0]["stderr_tail"] == "boom again: mesh m1 missing\n"
    assert [(f["task"], f["attempt"], f["status"]) for f in page["retrying"]] == \
        [("sim-01", 1, "failed")]
    assert page["retrying"][0]["stderr_tail"] == "boom: mesh m1 missing\n"
    # right after the first failure: it will retry, nothing has failed for good
    then = _get(varied.url + "api/page?seq=8")[1]
    assert then["final_failures"] == [] and then["retrying"][0]["status"] == "ready"
    assert then["retrying"][0]["stderr_tail"] == "boom: mesh m1 missing\n"


def test_throughput_counts_tasks_finished_per_round_interval() -> None:
    from tests.support.folding import Driver

    assert [summary.bar_width(s) for s in (0, 30, 60, 61, 3600, 86400 * 100)] == \
        [1, 1, 1, 2, 60, 86400 * 2]
    d = Driver(start=1000.0)
    d.apply(ev.WorkerAnnounced("w1", "host", 8, 1, "inc", msg_id="m0"))
    d.apply(ev.TasksSubmitted("b", tuple(TaskSpec(f"t{i}", "true") for i in range(4))))
    for i, (when, code) in enumerate(((1010.0, 0), (1010.5, 0), (1035.0, 1))):
        d.apply(ev.TaskDispatched(f"t{i}", 1, "w1"), dt=when - 1 - d.now)
        d.apply(ev.TaskFinished(f"t{i}", 1, "w1", code, 1.0, msg_id=f"m{i + 1}"), dt=1.0)
    d.apply(ev.WorkerHeartbeat("w1", msg_id="h"), dt=50.0)  # the clock: 1085
    t = summary.throughput(d.state)
    assert (t["start"], t["interval"], t["end"]) == (1000, 2, 1085.0)  # 85 s in bars of 2 s
    assert len(t["succeeded"]) == len(t["failed"]) == 43
    assert (t["succeeded"][5], t["failed"][17]) == (2, 1)  # 1010 and 1010.5; 1035
    assert sum(t["succeeded"]) == 2 and sum(t["failed"]) == 1


@pytest.mark.parametrize(("reason", "by"), [
    ("ecloud run --local", "ecloud run"),
    ("ecloud-boss --local", "ecloud-boss --local"),
    ("ecloud-boss --local 4", "ecloud-boss --local"),
    ("ecloud workers spawn", "operator"),
    ("scale up: ready tasks want more slots", "autoscaler"),
    ("", "autoscaler"),
    ("ecloudish", "autoscaler"),
])
def test_a_vm_request_is_attributed_to_who_asked(reason: str, by: str) -> None:
    from ecloud.projections.state import State, VMRecord
    from ecloud.views.vm_story import story

    assert summary.requested_by(reason) == by
    rec = ev.Recorded(7, 1.0, ev.VMRequested("vm-1", reason))
    assert summary.decision_row(rec, State())["by"] == by
    assert story([rec], VMRecord("vm-1", 1.0))[0]["who"] == by
