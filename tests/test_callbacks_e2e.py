"""OpenNebula's state hooks end to end (issue 24): the templates `ecloud
opennebula hook` prints, created in the fake oned, whose hook manager runs
the real hook program (``python -m onehook.hook``, with ``$TEMPLATE`` as
oned encodes it) on each state change; a real ``ecloud-boss --provider
opennebula`` hears the callbacks over a real Mosquitto, and the unmodified
pyone client does its looks at the pool.

The boss here looks at the pool once at its start and then once an hour
(``one_poll``), unless a callback asks it to: whatever it learns of a VM in
between, it learns from a callback. With the callbacks lost, it polls
often, and still converges.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.brokers import wait_for
from tests.test_autoscale_e2e import CloudCluster, cloud  # noqa: F401 - the fixture
from tests.test_reconciler_e2e import idle_vms

pytestmark = pytest.mark.mysql

DONE, POWEROFF = 6, 8
HOUR = "3600"


def install_hooks(cloud: CloudCluster, *extra: str) -> list[str]:
    """Do what the README tells an OpenNebula admin: the script `ecloud
    opennebula hook --dir` writes goes into oned's hooks folder, and each
    template it writes is created (onehook create)."""
    password = cloud.workdir / "hook.password"
    password.write_text("unused: the test's broker takes anyone\n")
    written = cloud.workdir / "hooks"
    subprocess.run(
        [sys.executable, "-m", "ecloud.cli.main", "opennebula", "hook", "--broker", cloud.broker,
         "--python", sys.executable, "--password-file", str(password), "--owner",
         cloud.oned.uname, "--hooks-dir", str(cloud.oned.hooks_dir), "--dir", str(written),
         *extra], cwd=cloud.workdir, env=cloud.env, capture_output=True, text=True, timeout=60,
        check=True)
    cloud.oned.install_hooks(written)
    return [t.read_text() for t in sorted(written.glob("*.hook"))]


def events(cloud: CloudCluster, kind: str) -> list:
    return [r for r in cloud.log() if r.event.TYPE == kind]


def test_a_callback_makes_the_boss_act_long_before_its_next_poll(cloud: CloudCluster) -> None:
    assert len(install_hooks(cloud)) == 10
    cloud.env["ECLOUD_ONE_POLL"] = HOUR
    cloud.ecloud("context", "set", "kill_retry", "600")
    cloud.start_boss()
    cloud.ecloud("workers", "spawn", "1")
    (row,) = idle_vms(cloud, 1)
    vm_id = row["vm_id"]
    cloud.oned.set_phase(vm_id, "POWEROFF")
    wait_for(lambda: cloud.oned.vm(vm_id).state == DONE, 30,
             "the powered-off VM terminated (the next poll is an hour away)")
    log = cloud.log()
    told = [r for r in log if r.event.TYPE == "vm.callback" and r.event.state == POWEROFF]
    seen = [r for r in log if r.event.TYPE == "vm.state_observed" and r.event.state == POWEROFF]
    kills = [r for r in log if r.event.TYPE == "vm.kill_requested"]
    assert told and seen and kills, [r.event for r in log if r.event.TYPE.startswith("vm.")]
    # the hook told, a look at the pool saw, the reconciler acted on the sight
    assert told[0].seq < seen[0].seq < kills[0].seq
    assert "STATE POWEROFF" in kills[0].event.reason
    runs = [r for r in cloud.oned.hook_runs if r.vm_id == vm_id]
    assert runs and all(r.returncode == 0 for r in runs), runs
    assert {r.hook for r in runs} >= {f"ecloud-{cloud.cluster}-running",
                                      f"ecloud-{cloud.cluster}-poweroff"}
    # and everyone can see which told first: ecloud log, ecloud why VM
    shown = cloud.ecloud("log", "--type", "vm.callback").stdout
    assert "POWEROFF" in shown and row["name"] in shown
    why = cloud.ecloud("why", row["name"]).stdout
    assert "callback" in why and "hook" in why and "poll" in why, why
    assert "callback: POWEROFF (8/0) - hook first" in why, why
    # the live page's VM table (and workers list --json): what each source told last
    (listed,) = cloud.vm_rows()
    assert "hook: DONE" in listed["told"] and "poll: DONE" in listed["told"], listed


def test_lost_callbacks_cost_latency_only_polling_converges(cloud: CloudCluster) -> None:
    install_hooks(cloud)
    cloud.oned.lose_next_callbacks(10_000)
    cloud.env["ECLOUD_ONE_POLL"] = "1"
    cloud.ecloud("context", "set", "kill_retry", "600")
    cloud.start_boss()
    cloud.ecloud("workers", "spawn", "1")
    (row,) = idle_vms(cloud, 1)
    cloud.oned.set_phase(row["vm_id"], "POWEROFF")
    wait_for(lambda: cloud.oned.vm(row["vm_id"]).state == DONE, 30, "the VM terminated by polling")
    assert events(cloud, "vm.callback") == [] and cloud.oned.hook_runs == []
    assert [r.event.vm_id for r in events(cloud, "vm.kill_requested")] == [row["vm_id"]]


def test_late_and_duplicated_callbacks_change_nothing(cloud: CloudCluster) -> None:
    install_hooks(cloud)
    cloud.env["ECLOUD_ONE_POLL"] = HOUR
    cloud.ecloud("context", "set", "kill_retry", "600")
    cloud.start_boss()
    cloud.ecloud("workers", "spawn", "1")
    (row,) = idle_vms(cloud, 1)
    cloud.oned.hook_delay = 1.0
    cloud.oned.duplicate_next_callbacks(10)
    cloud.oned.set_phase(row["vm_id"], "POWEROFF")
    wait_for(lambda: cloud.oned.vm(row["vm_id"]).state == DONE, 30, "the VM terminated")
    wait_for(lambda: len([r for r in cloud.oned.hook_runs if r.vm_id == row["vm_id"]
                          and r.phase == "DONE"]) >= 2, 30, "both runs of the DONE hook")
    kills = [r.event for r in events(cloud, "vm.kill_requested")]
    assert [k.vm_id for k in kills] == [row["vm_id"]], kills  # one kill, whatever was told twice
    state = cloud.state()
    (vm,) = state.vms.values()
    assert vm.status == "gone" and vm.callback_state in (POWEROFF, DONE)


def test_a_vm_outside_the_prefix_is_none_of_the_boss_s_business(cloud: CloudCluster) -> None:
    install_hooks(cloud)
    cloud.env["ECLOUD_ONE_POLL"] = HOUR
    foreign = cloud.oned.add_vm("someone-else-1")
    cloud.ecloud("context", "set", "kill_retry", "600")  # makes the log
    cloud.start_boss()
    wait_for(lambda: events(cloud, "boss.started"), 30, "the boss to start")
    cloud.oned.set_phase(foreign, "POWEROFF")
    wait_for(lambda: [r for r in cloud.oned.hook_runs if r.vm_id == foreign], 30,
             "the hook to run for the foreign VM")
    (run,) = [r for r in cloud.oned.hook_runs if r.vm_id == foreign]
    assert run.returncode == 0 and run.output == ""  # not ours: the hook says nothing
    assert events(cloud, "vm.callback") == []
    assert cloud.oned.vm(foreign).state == POWEROFF
    assert not [c for c in cloud.oned.calls("one.vm.action") if c[1][1] == foreign]


def test_a_callback_sent_while_no_boss_listens_is_made_up_for_by_the_look_at_start(
        cloud: CloudCluster) -> None:
    """Seen: a boss looked at the pool at start only if one_poll was shorter
    than the machine's uptime (the last look was taken to be at 0 of
    time.monotonic()); a callback sent while it was down is lost (its
    session is clean), so a VM powered off meanwhile stayed so for a poll."""
    install_hooks(cloud)
    cloud.env["ECLOUD_ONE_POLL"] = str(10**9)  # far beyond any machine's uptime
    cloud.ecloud("context", "set", "kill_retry", "600")
    cloud.start_boss()
    cloud.ecloud("workers", "spawn", "1")
    (row,) = idle_vms(cloud, 1)
    cloud.stop_boss()
    cloud.oned.set_phase(row["vm_id"], "POWEROFF")
    wait_for(lambda: [r for r in cloud.oned.hook_runs if r.phase == "POWEROFF"], 30,
             "the hook to tell nobody")
    cloud.start_boss()
    wait_for(lambda: cloud.oned.vm(row["vm_id"]).state == DONE, 30,
             "the VM terminated after the restarted boss's first look")
