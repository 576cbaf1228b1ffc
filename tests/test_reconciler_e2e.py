"""The cloud reconciler end to end (issue 18): a real ``ecloud-boss
--provider opennebula``, the unmodified pyone client against the fake oned
(whose VMs run real ``ecloud-worker`` processes), a real MariaDB log and a
Mosquitto of the test's own. Each test is a finding of a second,
independent fake oned, made to happen here:

1. a terminate that fails is asked again while the boss runs;
2. a VM put in POWEROFF (or STOPPED, SUSPENDED, UNDEPLOYED) from outside
   still holds quota: it is terminated, and its tasks run elsewhere;
3. an instantiate that acted but answered nonsense leaves a VM that is
   found by its name and terminated, not left running;
4. the boss polls the pool from its start, whatever its log holds;
5. a worker whose guest knows no VMID (no TOKEN=YES) is tied to its VM by
   the name the boss gave both, so its VM is not taken for unbooted.
"""

from __future__ import annotations

import pytest

from tests.support.brokers import wait_for
from tests.test_autoscale_e2e import CloudCluster, cloud  # noqa: F401 - the fixture

pytestmark = pytest.mark.mysql

DONE = 6


def idle_vms(cloud: CloudCluster, n: int) -> list[dict]:
    """Wait for ``n`` VMs whose workers are idle; on a timeout, say what
    ``workers list``, the fake oned and the log's VM events showed."""
    seen: list = []

    def check():
        seen[:] = cloud.vm_rows()
        return len(seen) == n and all(x["worker_status"] == "idle" for x in seen) and list(seen)

    try:
        return wait_for(check, 60, f"{n} VM(s) with an idle worker")
    except pytest.fail.Exception:
        vms = [(vm.id, vm.name, vm.state, vm.lcm_state) for vm in cloud.oned.vms()]
        events = [f"{r.seq} {r.event.TYPE} {r.event}" for r in cloud.log()
                  if r.event.TYPE.startswith(("vm.", "worker.", "input."))
                  and r.event.TYPE != "worker.heartbeat"][-40:]
        boss = (cloud.workdir / "boss.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"{n} VM(s) with an idle worker not seen in 60 s\nworkers list: {seen}\n"
                    f"oned: {vms}\nlog:\n" + "\n".join(events) + f"\nboss:\n{boss}",
                    pytrace=False)


def test_a_refused_terminate_is_asked_again_until_the_vm_is_gone(cloud: CloudCluster) -> None:
    cloud.ecloud("context", "set", "kill_retry", "1")
    cloud.start_boss()
    cloud.ecloud("workers", "spawn", "1")
    (row,) = idle_vms(cloud, 1)
    cloud.oned.refuse_next_terminates(3)  # locked, three times: 1 + 2 + 4 s of asking again
    cloud.ecloud("workers", "kill", str(row["vm_id"]))
    wait_for(lambda: "asked 2 times" in cloud.vm_rows()[0]["why"], 30,
             "`workers list` to say the kill is asked for again")
    wait_for(lambda: cloud.oned.vm(row["vm_id"]).state == DONE, 30,
             "the VM terminated once the cloud let it be")
    attempts = [c for c in cloud.oned.calls("one.vm.action") if c[1][1] == row["vm_id"]]
    assert len(attempts) >= 4, attempts  # refused three times, then done
    kills = [r.event for r in cloud.log() if r.event.TYPE == "vm.kill_requested"]
    assert [k.source for k in kills][:1] == ["operator"]
    assert any(k.source == "reconciler" and "still not gone" in k.reason for k in kills), kills
    wait_for(lambda: [x["status"] for x in cloud.vm_rows()] == ["gone"], 30, "the VM gone in the log")


@pytest.mark.parametrize("phase", ["POWEROFF", "SUSPENDED"])
def test_a_vm_put_out_of_service_from_outside_is_terminated_and_its_task_runs_elsewhere(
        cloud: CloudCluster, phase: str) -> None:
    cloud.ecloud("context", "set", "kill_retry", "1")
    cloud.start_boss()
    cloud.ecloud("workers", "spawn", "2")
    rows = idle_vms(cloud, 2)
    cloud.push([{"id": "long", "command": "setsid sleep 300 & sleep 3"}])
    holder = wait_for(lambda: next((w for w in cloud.state().workers.values()
                                    if ("long", 1) in w.running), None), 30, "the task to start")
    vm_id = next(r["vm_id"] for r in rows if r["name"] == holder.worker_id)
    # the worker, the task, its escapee (the task is "running" once its shell
    # is: the shell's children come a moment later)
    wait_for(lambda: len(cloud.oned.guest_processes(vm_id)) >= 3, 10, "the task's escapee")
    cloud.oned.set_phase(vm_id, phase)
    wait_for(lambda: cloud.oned.vm(vm_id).state == DONE, 30, f"the {phase} VM terminated")
    assert cloud.oned.guest_processes(vm_id) == []  # a VM's death is the death of all in it
    state = cloud.wait_all(timeout=60)
    assert state.tasks["long"].status == "succeeded" and state.tasks["long"].attempt == 2
    reasons = [r.event.reason for r in cloud.log() if r.event.TYPE == "vm.kill_requested"]
    assert any(f"STATE {phase}" in why for why in reasons), reasons
    lost = [r.event for r in cloud.log() if r.event.TYPE == "task.finished"
            and r.event.task_id == "long" and r.event.attempt == 1]
    assert lost == []  # the first attempt ended with its VM, without a word: only the log says


def test_an_instantiate_that_acted_but_answered_nonsense_leaves_no_vm_running(
        cloud: CloudCluster) -> None:
    cloud.ecloud("context", "set", "kill_retry", "1")
    cloud.oned.answer_next_instantiates_badly(1)
    cloud.start_boss()
    cloud.ecloud("workers", "spawn", "1")
    made = wait_for(lambda: cloud.oned.vms(), 30, "the VM made in spite of the answer")
    wait_for(lambda: all(vm.state == DONE for vm in cloud.oned.vms()), 30,
             "the VM found by its name and terminated")
    log = cloud.log()
    failed = [r.event for r in log if r.event.TYPE == "vm.failed"]
    assert failed and "not a VM id" in failed[0].reason
    found = [r.event for r in log if r.event.TYPE == "vm.allocated"]
    assert [(e.vm_name, e.vm_id) for e in found] == [(made[0].name, made[0].id)]


def test_the_boss_polls_the_pool_from_its_start(cloud: CloudCluster) -> None:
    cloud.start_boss()
    wait_for(lambda: cloud.oned.calls("one.vmpool.info"), 15,
             "a look at the VM pool although the log holds no VM")


def test_a_worker_whose_guest_knows_no_vmid_is_tied_to_its_vm_by_name(cloud: CloudCluster) -> None:
    cloud.oned.token = False  # the template has no TOKEN=YES
    cloud.ecloud("scale", "--min", "1", "--max", "1", "--boot-timeout", "4", "--idle-timeout", "600")
    cloud.push([{"id": "t", "command": "sleep 6"}])
    cloud.start_boss()
    state = cloud.wait_all(timeout=90)
    assert state.tasks["t"].status == "succeeded" and state.tasks["t"].attempt == 1
    (vm,) = state.vms.values()
    (worker,) = state.workers.values()
    assert worker.worker_id == vm.vm_name and worker.vm_id == vm.vm_id
    kills = [r.event for r in cloud.log() if r.event.TYPE == "vm.kill_requested"]
    assert kills == [], kills  # never taken for a VM whose worker did not come


def test_a_vm_of_our_prefix_the_log_never_asked_for_is_taken_in_then_terminated(
        cloud: CloudCluster) -> None:
    """Seen: VMs left with the cluster's prefix (by a boss of a log since
    wiped) were never counted nor terminated. Now they are taken into the
    log; with no worker of theirs within boot_timeout, terminated. A VM
    without the prefix, or another user's, is never touched."""
    prefix = f"ecloud-{cloud.cluster}-"
    stray = cloud.oned.add_vm(prefix + "900")
    foreign = cloud.oned.add_vm("someone-else-1")
    theirs = cloud.oned.add_vm(prefix + "901", uid=9)
    cloud.ecloud("context", "set", "boot_timeout", "3")
    cloud.start_boss()
    rows = wait_for(lambda: (r := cloud.vm_rows()) and r, 30, "the stray VM taken into the log")
    assert [(r["vm_id"], r["name"]) for r in rows] == [(stray, prefix + "900")]
    wait_for(lambda: cloud.oned.vm(stray).state == DONE, 30, "the stray VM terminated")
    kills = [r.event for r in cloud.log() if r.event.TYPE == "vm.kill_requested"]
    assert [(k.vm_id, k.source) for k in kills] == [(stray, "reconciler")]
    assert "never asked for" in kills[0].reason
    assert cloud.oned.vm(foreign).state != DONE and cloud.oned.vm(theirs).state != DONE
    touched = {c[1][1] for c in cloud.oned.calls("one.vm.action")}
    assert touched == {stray}
