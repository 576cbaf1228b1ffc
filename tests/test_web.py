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
    Web,
    gated_dag,
    start_run,
    stop_run,
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
            assert [f["seq"] for f in page["failures"]] == \
                [f.seq for f in reversed(state.recent_failures)]
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
    db = f"sqlite:///{tmp_path}/e.db"
    with open_store(db) as store:
        store.append([ev.ContextSet("datastore_address", "me@data.example:/srv/s3cret-path"),
                      ev.TasksSubmitted("b", (TaskSpec("a", "echo s3cret-command",
                                                       env={"TOKEN": "s3cret-env"}),))])
    server = WebServer(db, bind("127.0.0.1:0")).start()
    try:
        wait_for(lambda: server.follower.state.seq == 2, 30, "the follower to catch up")
        for path in ("api/page", "api/page?seq=2", "api/graph", "metrics", ""):
            with urllib.request.urlopen(server.url + path, timeout=10) as response:
                body = response.read().decode()
            assert "s3cret" not in body, path
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
