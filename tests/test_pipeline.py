"""Data staging end to end: the 50-task, 3-stage pipeline of
examples/pipeline/ through a real boss, real workers and a real datastore -
a local directory on the embedded default, and a real sshd (rsync over ssh)
with MariaDB and Mosquitto."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ecloud.log.url import open_store
from tests.support.datastores import datastore_events
from tests.support.e2e import ROOT, Cluster

PIPELINE = ROOT / "examples" / "pipeline"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_datastore(into: Path) -> Path:
    shutil.copytree(PIPELINE / "datastore" / "data", into / "data")
    return into


def set_datastore(db: str, address: str, root: str | Path | None = None) -> None:
    with open_store(db) as store:
        store.append(datastore_events(address, root))


def check_pipeline(cluster: Cluster, datastore: Path) -> int:
    """Every task succeeded and every result is in the datastore, with the
    checksum the log holds; returns how many results were checked."""
    tasks = json.loads((PIPELINE / "tasks.json").read_text())["tasks"]
    cluster.push(tasks)
    state = cluster.wait_all(timeout=240)
    assert len(state.tasks) == 50
    checked = 0
    folders = {t["id"]: t.get("results", f"results/{t['id']}") for t in tasks}
    assert "simulations/7" in folders.values()  # the example uses a task's own folder
    for rec in cluster.log():
        e = rec.event
        if e.TYPE != "task.finished" or e.exit_code != 0:
            continue
        outs = {f.name: f for f in e.staged if f.direction == "out"}
        assert {"stdout", "stderr"} <= set(outs), e
        for f in e.staged:
            if f.direction == "in" and f.path.startswith("simulations/"):
                assert e.task_id.startswith("summarize-")  # read from the custom folder
        for f in outs.values():
            assert f.path == f"{folders[e.task_id]}/{f.name}"
            assert sha256(datastore / f.path) == f.sha256
            assert (datastore / f.path).stat().st_size == f.bytes
            checked += 1
    # the numbers are right: summarize-0 adds simulate-0..2 of prepare-0..2
    seed = [int(x) for x in (datastore / "data" / "seed.txt").read_text().split()]
    expected = sum(sum(v for n, v in enumerate(seed, 1) if n % 10 == j % 10) * (j + 1)
                   for j in range(3))
    assert int((datastore / "results/summarize-0/summary.txt").read_text()) == expected
    return checked


@pytest.fixture
def local(sqlite_url, broker, tmp_path: Path):
    """The embedded default: an SQLite log, a broker of the test's own and a
    local-directory datastore seeded with examples/pipeline's data."""
    datastore = copy_datastore(tmp_path / "datastore")
    set_datastore(sqlite_url, str(datastore))
    cluster = Cluster(sqlite_url, broker.url, tmp_path, f"p{uuid.uuid4().hex[:6]}")
    try:
        yield cluster, datastore
    finally:
        cluster.close()


def test_the_pipeline_on_the_embedded_default_with_a_local_datastore(local) -> None:
    cluster, datastore = local
    cluster.start_boss(workers=3, slots=2)
    assert check_pipeline(cluster, datastore) == 50 * 2 + 50  # stdout, stderr, one output each


@pytest.mark.mysql
def test_the_pipeline_over_ssh_with_mariadb_and_mosquitto(mysql_url, mosquitto_broker, sshd,
                                                          tmp_path: Path) -> None:
    copy_datastore(sshd.datastore)
    set_datastore(mysql_url, sshd.address, sshd.datastore)
    cluster = Cluster(mysql_url, mosquitto_broker.url, tmp_path, f"p{uuid.uuid4().hex[:6]}")
    cluster.env["ECLOUD_DATASTORE_KEY"] = str(sshd.key_file)
    try:
        cluster.start_boss(workers=3, slots=2)
        assert check_pipeline(cluster, Path(sshd.datastore)) == 150
        replay = cluster.ecloud("datastore", "check")
        assert "reachable and writable" in replay.stdout
    finally:
        cluster.close()


def test_a_corrupted_input_fails_the_attempt_with_that_reason(local) -> None:
    cluster, datastore = local
    cluster.push([{"id": "reader", "command": "cat seed.txt > copy.txt",
                   "inputs": [{"path": "data/seed.txt", "sha256": "0" * 64}],
                   "outputs": ["copy.txt"]}])
    cluster.start_boss(workers=1)
    state = cluster.wait_all("failed", timeout=60)
    reason = state.tasks["reader"].reason
    assert reason.startswith("staging (checksum):") and "0" * 16 in reason
    assert not (cluster.workdir / ".ecloud-workers" / "local-1" / "reader" / "1" / "seed.txt").exists()
    assert not (datastore / "results" / "reader").exists()  # nothing ran, nothing pushed


def test_replay_shows_where_a_result_came_from(local) -> None:
    cluster, datastore = local
    cluster.push([
        {"id": "a", "command": "head -3 seed.txt > a.txt",
         "inputs": [{"path": "data/seed.txt"}], "outputs": ["a.txt"]},
        {"id": "b", "command": "wc -l < in.txt > b.txt", "depends_on": ["a"],
         "inputs": [{"from": "a", "path": "a.txt", "name": "in.txt"}], "outputs": ["b.txt"]},
    ])
    cluster.start_boss(workers=1)
    cluster.wait_all(timeout=60)
    result = subprocess.run([sys.executable, "-m", "ecloud.cli.replay", "--task", "b", "--json",
                             "--db", cluster.db], capture_output=True, text=True, env=cluster.env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    (b_txt,) = [n for n in json.loads(result.stdout)["lineage"] if n["name"] == "b.txt"]
    (inp,) = b_txt["inputs"]
    assert inp["path"] == "results/a/a.txt" and inp["matches"] is True
    assert inp["produced_by"]["task"] == "a"
    assert inp["produced_by"]["inputs"][0]["path"] == "data/seed.txt"
    assert inp["produced_by"]["inputs"][0]["sha256"] == sha256(datastore / "data" / "seed.txt")
