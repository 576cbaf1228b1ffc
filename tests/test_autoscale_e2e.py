"""Autoscaling end to end: a real ``ecloud-boss --provider opennebula``
process, the unmodified pyone client against the fake oned (whose VMs run
real ``ecloud-worker`` processes), a real MariaDB log and a Mosquitto of the
test's own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.brokers import wait_for
from tests.support.e2e import Cluster, random_dag
from tests.support.fake_oned import FakeOned, ecloud_worker_command

pytestmark = pytest.mark.mysql

MAX = 4


class CloudCluster(Cluster):
    """A :class:`Cluster` whose boss takes its VMs from the fake oned."""

    def __init__(self, db: str, broker_url: str, workdir: Path, oned: FakeOned) -> None:
        super().__init__(db, broker_url, workdir, f"as{uuid.uuid4().hex[:6]}")
        self.oned = oned
        port = broker_url.rsplit(":", 1)[1]
        self.env.update(ECLOUD_ONE_URL=oned.url, ECLOUD_ONE_SESSION=oned.session,
                        ECLOUD_ONE_TEMPLATE=str(oned.template_id), ECLOUD_ONE_DEADLINE="5",
                        # the private broker listens on loopback only
                        ECLOUD_BOSS_ADDRESS=f"127.0.0.1:{port}", COLUMNS="200")

    def start_boss(self, workers: int = 0, slots: int = 1) -> subprocess.Popen:
        log = open(self.workdir / "boss.log", "ab")  # noqa: SIM115 - the child owns it
        self.boss = subprocess.Popen(
            [sys.executable, "-m", "ecloud.cli.boss", "--db", self.db, "--broker", self.broker,
             "--provider", "opennebula"],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.boss

    def vm_rows(self) -> list[dict]:
        return json.loads(self.ecloud("workers", "list", "--json").stdout)


@pytest.fixture
def cloud(request, tmp_path: Path):
    db = request.getfixturevalue("mysql_url")
    broker = request.getfixturevalue("mosquitto_broker")
    oned = FakeOned(tmp_path / "oned", worker_command=ecloud_worker_command(heartbeat=0.5),
                    delays={"PENDING": 0.2, "PROLOG": 0.2, "BOOT": 0.3}).start()
    cluster = CloudCluster(db, broker.url, tmp_path, oned)
    try:
        yield cluster
    finally:
        cluster.close()
        oned.close()


def vm_timeline(log) -> tuple[int, float, dict[str, tuple[float, float | None]]]:
    """Most VMs up at once (requested and not yet seen gone or failed), and
    each VM's (requested, ended) times, from the log."""
    up: set[str] = set()
    names_by_id: dict[int, str] = {}
    spans: dict[str, list] = {}
    most = 0
    for rec in log:
        e = rec.event
        if e.TYPE == "vm.requested":
            up.add(e.vm_name)
            spans[e.vm_name] = [rec.ts, None]
        elif e.TYPE == "vm.allocated":
            names_by_id[e.vm_id] = e.vm_name
        elif e.TYPE in ("vm.failed", "vm.state_observed"):
            name = getattr(e, "vm_name", None) or names_by_id.get(e.vm_id)
            ended = e.TYPE == "vm.failed" or e.state == 6
            if ended and name in up:
                up.discard(name)
                spans[name][1] = rec.ts
        most = max(most, len(up))
    last = log[-1].ts
    vm_seconds = sum((end or last) - start for start, end in spans.values())
    return most, vm_seconds, {n: tuple(s) for n, s in spans.items()}


def task_seconds(log) -> float:
    return sum(r.event.duration or 0.0 for r in log
               if r.event.TYPE == "task.finished" and r.event.exit_code == 0)


def test_workers_spawn_list_and_kill_against_the_fake_oned(cloud: CloudCluster) -> None:
    cloud.start_boss()
    cloud.ecloud("workers", "spawn", "3")
    rows = wait_for(lambda: (r := cloud.vm_rows()) and len(r) == 3
                    and all(x["ip"] and x["worker_status"] == "idle" for x in r) and r,
                    60, "three VMs with IPs and workers")
    assert sorted(r["ip"] for r in rows) == sorted(f"10.0.0.{r['vm_id']}" for r in rows)
    listing = cloud.ecloud("workers", "list").stdout
    assert all(r["name"] in listing for r in rows) and "RUNNING" in listing
    victim = rows[0]["vm_id"]
    cloud.ecloud("workers", "kill", str(victim))
    wait_for(lambda: cloud.oned.vm(victim).state == 6, 30, "the VM terminated in OpenNebula")
    rows = wait_for(lambda: (r := cloud.vm_rows()) and
                    [x["status"] for x in r if x["vm_id"] == victim] == ["gone"] and r,
                    30, "the VM gone in the log")
    assert sorted(r["status"] for r in rows if r["vm_id"] != victim) == ["observed", "observed"]
    again = cloud.ecloud("workers", "kill", str(victim), check=False)
    assert again.returncode == 2 and f"VM {victim} is already gone" in again.stderr


def test_200_tasks_scale_up_to_max_and_back_down_to_min(cloud: CloudCluster, capsys) -> None:
    cloud.ecloud("scale", "--min", "0", "--max", str(MAX), "--slots-per-worker", "2",
                 "--max-booting", "2", "--idle-timeout", "3", "--boot-timeout", "60")
    cloud.oned.fail_next_boots(1)  # the first VM fails to boot: it must be replaced
    tasks = random_dag(200, 5, lambda rng: f"sleep {rng.uniform(0.05, 0.3):.2f}")
    cloud.push(tasks)
    cloud.start_boss()
    cloud.wait_all(timeout=240)
    state = cloud.wait_tasks(
        lambda s: s.vms and all(vm.status in ("gone", "failed") for vm in s.vms.values()),
        60, "every VM scaled down (min 0) after the idle timeout")
    log = cloud.log()
    most, vm_seconds, spans = vm_timeline(log)
    assert most <= MAX
    failed = [r.event.vm_id for r in log
              if r.event.TYPE == "vm.state_observed" and r.event.lcm_state == 36]
    assert len(failed) == 1  # the boot failure was seen...
    kills = [r.event for r in log if r.event.TYPE == "vm.kill_requested"]
    assert any(k.vm_id == failed[0] and "terminate failed VM" in k.reason for k in kills)  # ...killed
    assert sum(1 for r in log if r.event.TYPE == "vm.allocated") >= 2  # ...and replaced
    assert all(vm.status == "gone" for vm in state.vms.values())
    alive_in_cloud = [vm for vm in cloud.oned.vms() if vm.state != 6]
    assert not alive_in_cloud, alive_in_cloud
    busy = task_seconds(log)
    with capsys.disabled():
        print(f"\n200 tasks: {len(spans)} VMs, at most {most} at once; {vm_seconds:.1f} VM-seconds "
              f"(request to gone) for {busy:.1f} task-seconds: {busy / vm_seconds:.0%} of VM time, "
              f"{busy / (2 * vm_seconds):.0%} of slot time (2 slots per VM)")


def test_a_quota_error_backs_off_and_the_run_completes_within_the_quota(cloud: CloudCluster) -> None:
    cloud.oned.quota = 2
    cloud.ecloud("scale", "--max", str(MAX), "--slots-per-worker", "2", "--max-booting", "4",
                 "--idle-timeout", "2", "--spawn-backoff", "1")
    tasks = random_dag(40, 6, lambda rng: "sleep 0.2")
    cloud.push(tasks)
    cloud.start_boss()
    cloud.wait_all(timeout=180)
    log = cloud.log()
    quota = [r for r in log if r.event.TYPE == "vm.failed" and r.event.kind == "quota"]
    assert quota and "quota" in quota[0].event.reason
    # backed off: after a refusal, no request before the backoff (1 s, then doubling)
    requested = [r.ts for r in log if r.event.TYPE == "vm.requested"]
    for refusal in quota:
        later = [ts for ts in requested if ts > refusal.ts]
        assert not later or later[0] - refusal.ts >= 0.95, (refusal.ts, later[:1])
    names = [vm.name for vm in cloud.oned.vms()]
    assert len(set(names)) == len(names)  # a refused request never left a VM behind
    assert sum(1 for r in log if r.event.TYPE == "vm.allocated") >= 2


def test_a_boss_killed_right_after_asking_for_a_vm_does_not_make_a_second(cloud: CloudCluster) -> None:
    """The VM is created but the answer comes late; the boss dies in between.
    Its successor re-issues the spawn, finds the VM by name, adopts it."""
    cloud.oned.answer_delays["one.template.instantiate"] = 3.0
    cloud.ecloud("scale", "--max", "1", "--idle-timeout", "60")
    cloud.push([{"id": "only", "command": "true"}])
    boss = cloud.start_boss()
    wait_for(lambda: cloud.oned.instantiate_calls == 1, 60, "the boss to ask OpenNebula for a VM")
    boss.send_signal(signal.SIGKILL)
    boss.wait(30)
    assert not any(r.event.TYPE == "vm.allocated" for r in cloud.log())  # the crash window
    cloud.oned.answer_delays.clear()
    cloud.start_boss()
    cloud.wait_all(timeout=120)
    vms = cloud.oned.vms()
    assert len(vms) == 1 and cloud.oned.instantiate_calls == 1, vms
    allocated = [r.event for r in cloud.log() if r.event.TYPE == "vm.allocated"]
    assert [(e.vm_name, e.vm_id) for e in allocated] == [(vms[0].name, vms[0].id)]
