"""Two worker agents with one worker id (a copied VM image, two hosts with
one name): the second is refused with a reason in the log and never takes
work; the first is not disturbed. A real boss, real agents, a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store
from tests.support.brokers import wait_for
from tests.support.e2e import Cluster


def agent(cluster: Cluster, name: str) -> subprocess.Popen:
    """An ``ecloud-worker`` called ``dup``, with a journal and a work dir of its own."""
    log = open(cluster.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecloud_worker.agent", "--broker", cluster.broker, "--cluster",
         cluster.cluster, "--worker-id", "dup", "--slots", "2", "--heartbeat", "0.5",
         "--work-dir", str(cluster.workdir / name), "--journal",
         str(cluster.workdir / f"{name}.jsonl")],
        cwd=cluster.workdir, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def kinds(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line["kind"] for line in lines if "kind" in line]  # not the withdrawals


def test_a_second_agent_with_a_live_workers_id_is_refused_and_never_takes_work(
        tmp_path: Path, sqlite_url: str, mosquitto_broker) -> None:
    cluster = Cluster(sqlite_url, mosquitto_broker.url, tmp_path, f"dup{uuid.uuid4().hex[:8]}")
    first = second = None
    try:
        cluster.ecloud("context", "set", "heartbeat_timeout", "3")
        cluster.start_boss(workers=0)
        first = agent(cluster, "first")
        wait_for(lambda: "dup" in cluster.state().workers, 30, "the first agent's announcement")
        incarnation = cluster.state().workers["dup"].incarnation
        second = agent(cluster, "second")
        wait_for(lambda: any("duplicate worker id" in r.reason for r in cluster.state().rejected),
                 30, "the second agent's refusal")
        cluster.push([{"id": f"x{i}", "command": "true"} for i in range(8)])
        state = cluster.wait_all(timeout=60)
        assert state.workers["dup"].incarnation == incarnation  # still the first agent's
        refusal = next(r for r in state.rejected if "duplicate worker id" in r.reason)
        assert refusal.source == "worker dup"
        assert "is held by a live agent" in refusal.reason and "is refused" in refusal.reason
        # it asks again after heartbeat_timeout, is refused each time, and gives up
        assert second.wait(60) == 3
        text = (tmp_path / "second.log").read_text()
        assert "the boss refused this worker" in text and "duplicate worker id" in text
        assert set(kinds(tmp_path / "second.jsonl")) == {"hello"}  # never started or ended a task
        assert "finished" in kinds(tmp_path / "first.jsonl")
        assert not list((tmp_path / "second").glob("x*"))  # no attempt directory either
        assert first.poll() is None  # undisturbed
        with open_store(sqlite_url, create=False) as store:
            refusals = [r for r in load_state(store).rejected if "duplicate" in r.reason]
        assert len(refusals) == 3
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        cluster.close()
