"""The OpenNebula provider, and the fake oned it is tested against.

Everything goes through the unmodified pyone client over HTTP to
:mod:`tests.support.fake_oned`, which speaks oned's XML-RPC (docs/opennebula.md). The last
test boots a "VM" whose guest is a real ``ecloud-worker`` joining a real MQTT
broker. No test sleeps: every expectation is waited for with a deadline.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pyone
import pytest
import requests

from ecloud import wire
from ecloud.boss.loop import Boss
from ecloud.cli.boss import make_provider
from ecloud.config import load_config
from ecloud.effects.providers.opennebula import (
    DatastoreKeyError,
    OpenNebulaError,
    OpenNebulaProvider,
    Orphan,
    classify,
    ip_of,
)
from ecloud.errors import ConfigError
from ecloud.events import types as ev
from ecloud.events.types import InputRejected, VMAllocated, VMDiscovered, VMFailed, VMStateObserved
from ecloud.log.url import open_store
from ecloud.projections.effects import KillVM, SpawnVM
from ecloud.taskfiles.taskfile import parse_tasks
from tests.support import fake_oned as oned
from tests.support.brokers import Client, wait_for
from tests.support.datastores import datastore_events
from tests.support.fake_oned import FakeOned, ecloud_worker_command

fake_oned = oned.fake_oned  # the fixture: a started fake oned per test

PREFIX = "ecloud-c-"
CONTEXT = {"ECLOUD_BROKER": "mqtt://127.0.0.1:1883", "ECLOUD_CLUSTER": "c"}
PENDING, PROLOG, BOOT, RUNNING = (1, 0), (3, 1), (3, 2), (3, 3)


def provider(fake: FakeOned, *, url: str | None = None, session: str | None = None,
             prefix: str = PREFIX, context: dict | None = None,
             deadline: float = 3.0) -> OpenNebulaProvider:
    return OpenNebulaProvider(url or fake.url, session or fake.session, fake.template_id,
                              prefix, CONTEXT if context is None else context, deadline=deadline)


def spawn(prov: OpenNebulaProvider, name: str, cause: int = 1) -> list:
    return prov.spawn(SpawnVM(cause, name))


def observe_until(prov: OpenNebulaProvider, alive: list, done, what: str,
                  timeout: float = 10.0) -> list:
    """Observe again and again, collecting events, until ``done(events)``."""
    seen: list = []

    def step() -> bool:
        seen.extend(prov.observe(alive))
        return done(seen)

    wait_for(step, timeout, what)
    return seen


def states(events: list) -> list[tuple[int, int]]:
    return [(e.state, e.lcm_state) for e in events if type(e) is VMStateObserved]


def hold_every_step(fake: FakeOned) -> None:
    """VMs stay in each step until the test calls ``fake.advance``."""
    fake.delays.update(PENDING=None, PROLOG=None, BOOT=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------- the fake itself


def test_the_fake_answers_pyone_like_oned(fake_oned):
    hold_every_step(fake_oned)
    one = pyone.OneServer(fake_oned.url, session=fake_oned.session)
    extra = 'ECLOUD_WORKER_ID="w1"\nSECRET_B64="c2VjcmV0"\n'
    vm_id = one.template.instantiate(7, "w1", False, extra, False)
    assert vm_id == 100

    vm = one.vm.info(vm_id)
    assert (vm.ID, vm.NAME, vm.STATE, vm.LCM_STATE, vm.UID) == (100, "w1", 1, 0, 5)
    assert vm.TEMPLATE["NIC"]["IP"] == "10.0.0.100"
    assert vm.TEMPLATE["CONTEXT"]["ECLOUD_WORKER_ID"] == "w1"
    assert vm.TEMPLATE["CONTEXT"]["SECRET_B64"] == "c2VjcmV0"
    assert (vm.TEMPLATE["CONTEXT"]["VMID"], vm.TEMPLATE["CONTEXT"]["ETH0_IP"]) == ("100", "10.0.0.100")
    assert vm.USER_TEMPLATE == {"ECLOUD_WORKER_ID": "w1", "SECRET_B64": "c2VjcmV0"}

    fake_oned.advance(vm_id)
    fake_oned.advance(vm_id)
    assert fake_oned.vm(vm_id).phase == "BOOT"
    with pytest.raises(pyone.OneActionException, match=r"\[one.vm.action\] .*state BOOT"):
        one.vm.action("terminate", vm_id)
    fake_oned.advance(vm_id)

    other = fake_oned.add_vm("someone-else", uid=9)
    pool = one.vmpool.info(-3, -1, -1, -1)  # mine only: the short body, no CONTEXT
    assert [(v.ID, v.NAME, v.STATE, v.LCM_STATE) for v in pool.VM] == [(100, "w1", 3, 3)]
    assert "CONTEXT" not in pool.VM[0].TEMPLATE and pool.VM[0].TEMPLATE["NIC"]["IP"] == "10.0.0.100"
    assert [v.ID for v in one.vmpool.info(-2, -1, -1, -1).VM] == [100, other]

    assert one.vm.action("terminate", vm_id) == vm_id  # RUNNING: accepted
    assert one.vm.info(vm_id).STATE == 6
    assert one.vm.action("terminate", vm_id) == vm_id  # DONE: a no-op
    assert one.vmpool.info(-3, -1, -1, -1).VM == []  # -1: all but DONE
    assert [v.ID for v in one.vmpool.info(-3, -1, -1, -2).VM] == [100]

    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting virtual machine \[4242\]"):
        one.vm.info(4242)
    with pytest.raises(pyone.OneNoExistsException):
        one.vm.action("terminate-hard", 4242)
    with pytest.raises(pyone.OneAuthorizationException,
                       match=rf"User \[5\] : Not authorized to perform MANAGE VM \[{other}\]"):
        one.vm.action("terminate-hard", other)
    with pytest.raises(pyone.OneApiException, match="parameter 1 must be int, got boolean"):
        one.vm.info(True)
    with pytest.raises(pyone.OneApiException, match="parameter 1 must be string, got int"):
        one.vm.action(vm_id, "terminate")  # arguments swapped
    with pytest.raises(pyone.OneApiException, match="parameter 3 must be boolean, got int"):
        one.template.instantiate(7, "w2", 0, "", False)
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting template \[8\]"):
        one.template.instantiate(8, "w2", False, "", False)
    with pytest.raises(pyone.OneAuthenticationException,
                       match=r"\[one.vm.info\] User couldn't be authenticated, aborting call."):
        pyone.OneServer(fake_oned.url, session="ecloud:wrong").vm.info(vm_id)
    assert fake_oned.instantiate_calls == 3  # including the refused two


def test_the_fake_enforces_the_quota_and_frees_pending_vms_at_once(fake_oned):
    hold_every_step(fake_oned)
    fake_oned.quota = 2
    one = pyone.OneServer(fake_oned.url, session=fake_oned.session)
    first = one.template.instantiate(7, "a", False, "", False)
    one.template.instantiate(7, "b", False, "", False)
    with pytest.raises(pyone.OneAuthorizationException,
                       match=r"User \[5\] : limit of 2 reached for VMS quota defined for user"):
        one.template.instantiate(7, "c", False, "", False)
    one.vm.action("terminate", first)  # PENDING: freed at once
    assert fake_oned.vm(first).phase == "DONE"
    assert one.template.instantiate(7, "c", False, "", False) == 102


# ------------------------------------------------------------- spawn and observe


def test_spawn_then_observe_each_step_to_running(fake_oned):
    hold_every_step(fake_oned)
    prov = provider(fake_oned)
    name = PREFIX + "1"
    assert spawn(prov, name) == [VMAllocated(name, 100)]
    (_, args), = fake_oned.calls("one.template.instantiate")
    assert args[:3] == (7, name, False) and args[4] is False
    b64 = base64.b64encode
    assert args[3] == (f'ECLOUD_WORKER_ID="{name}"\n'
                       f'ECLOUD_BROKER_B64="{b64(b"mqtt://127.0.0.1:1883").decode()}"\n'
                       f'ECLOUD_CLUSTER_B64="{b64(b"c").decode()}"\n')

    alive = [(name, 100)]
    ip = "10.0.0.100"
    assert prov.observe(alive) == [VMStateObserved(100, 1, 0, ip, name)]
    assert prov.observe(alive) == []  # nothing changed
    for state in (PROLOG, BOOT, RUNNING):
        fake_oned.advance(100)
        assert prov.observe(alive) == [VMStateObserved(100, *state, ip, name)]
    assert prov.observe(alive) == []
    assert len(fake_oned.calls("one.vmpool.info")) == 1 + 6  # spawn's look-up, one per observe


def test_states_progress_by_themselves_to_running_with_an_ip(fake_oned):
    fake_oned.delays.update(PENDING=0.05, PROLOG=0.05, BOOT=0.05)
    prov = provider(fake_oned)
    name = PREFIX + "1"
    (allocated,) = spawn(prov, name)
    alive = [(name, allocated.vm_id)]
    seen = observe_until(prov, alive, lambda evs: RUNNING in states(evs), "the VM to run")
    order = [PENDING, PROLOG, BOOT, RUNNING]
    assert states(seen)[0] == PENDING  # the first sight always reports
    assert states(seen) == sorted(states(seen), key=order.index)  # in order, none twice
    assert {(e.vm_id, e.ip, e.vm_name) for e in seen} == {(100, "10.0.0.100", name)}


def test_a_vm_gone_from_the_pool_is_reported_done_once(fake_oned):
    prov = provider(fake_oned)
    alive = [(PREFIX + "9", 555)]  # the log knows it; oned does not (any more)
    assert prov.observe(alive) == [VMStateObserved(555, 6, 0, None, PREFIX + "9")]
    assert prov.observe(alive) == []


def test_spawn_is_idempotent_by_name(fake_oned):
    prov = provider(fake_oned)
    name = PREFIX + "1"
    assert spawn(prov, name) == [VMAllocated(name, 100)]
    assert spawn(prov, name, cause=2) == [VMAllocated(name, 100)]
    # a new provider (a restarted boss) replaying the spawn finds it too
    assert spawn(provider(fake_oned), name) == [VMAllocated(name, 100)]
    assert fake_oned.instantiate_calls == 1
    assert [vm.name for vm in fake_oned.vms()] == [name]


def test_concurrent_spawns_of_one_name_make_one_vm(fake_oned):
    prov = provider(fake_oned)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(spawn(prov, PREFIX + "1")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [[VMAllocated(PREFIX + "1", 100)]] * 4
    assert fake_oned.instantiate_calls == 1


def test_a_done_vm_of_that_name_is_not_reused(fake_oned):
    prov = provider(fake_oned)
    old = fake_oned.add_vm(PREFIX + "1", phase="DONE")
    assert spawn(prov, PREFIX + "1") == [VMAllocated(PREFIX + "1", old + 1)]


def test_a_name_without_the_prefix_is_refused_without_a_call(fake_oned):
    prov = provider(fake_oned)
    (failed,) = spawn(prov, "local-1")
    assert (type(failed), failed.kind, failed.vm_id) == (VMFailed, "invalid", None)
    assert "must start with 'ecloud-c-'" in failed.reason
    (failed,) = spawn(prov, PREFIX + 'x"\nEVIL="1')
    assert failed.kind == "invalid"
    assert fake_oned.calls() == []


# ------------------------------------------------------------- kill


def test_kill_during_boot_is_terminate_hard(fake_oned):
    hold_every_step(fake_oned)
    prov = provider(fake_oned)
    name = PREFIX + "1"
    spawn(prov, name)
    fake_oned.advance(100)
    fake_oned.advance(100)
    assert fake_oned.vm(100).phase == "BOOT"
    with pytest.raises(pyone.OneActionException):  # why the provider never uses plain terminate
        pyone.OneServer(fake_oned.url, session=fake_oned.session).vm.action("terminate", 100)

    assert prov.kill(KillVM(5, 100, "idle")) == [VMStateObserved(100, 6, 0, None, name)]
    assert fake_oned.vm(100).phase == "DONE"
    assert [c[1][0] for c in fake_oned.calls("one.vm.action")] == ["terminate", "terminate-hard"]
    # idempotent: again, and for a VM oned never had
    assert prov.kill(KillVM(6, 100, "idle")) == [VMStateObserved(100, 6, 0, None, name)]
    assert prov.kill(KillVM(7, 4242, "idle")) == [VMStateObserved(4242, 6, 0, None, "")]
    # observe has nothing new to say about it
    assert prov.observe([(name, 100)]) == []


def test_a_vm_still_tearing_down_is_left_to_observe(fake_oned):
    fake_oned.delays.update(PENDING=0.0, PROLOG=0.0, BOOT=0.0, EPILOG=None)
    prov = provider(fake_oned)
    name = PREFIX + "1"
    spawn(prov, name)
    alive = [(name, 100)]
    assert prov.observe(alive) == [VMStateObserved(100, 3, 3, "10.0.0.100", name)]
    assert prov.kill(KillVM(5, 100, "idle")) == []  # accepted; the VM is in EPILOG
    assert prov.observe(alive) == [VMStateObserved(100, 3, 11, "10.0.0.100", name)]
    fake_oned.advance(100)
    assert prov.observe(alive) == [VMStateObserved(100, 6, 0, None, name)]


# ------------------------------------------------------------- failures


def test_quota_exceeded_is_kind_quota_with_onedS_message(fake_oned):
    fake_oned.quota = 1
    prov = provider(fake_oned)
    assert spawn(prov, PREFIX + "1") == [VMAllocated(PREFIX + "1", 100)]
    assert spawn(prov, PREFIX + "2") == [VMFailed(
        PREFIX + "2",
        "[one.template.instantiate] User [5] : limit of 1 reached for VMS quota defined for user.",
        "quota", None)]


def test_wrong_session_is_kind_authentication(fake_oned):
    prov = provider(fake_oned, session="ecloud:wrong")
    message = "[one.vmpool.info] User couldn't be authenticated, aborting call."
    assert spawn(prov, PREFIX + "1") == [VMFailed(PREFIX + "1", message, "authentication")]
    assert prov.kill(KillVM(1, 100, "idle")) == [InputRejected(
        "opennebula", "terminate-hard of VM 100 failed (authentication): "
        "[one.vm.action] User couldn't be authenticated, aborting call.")]
    # observe reports a failure once, not on every poll, and again when it changes
    first = prov.observe([(PREFIX + "1", 100)])
    assert first == [InputRejected("opennebula", f"vmpool.info failed (authentication): {message}")]
    assert prov.observe([(PREFIX + "1", 100)]) == []
    assert fake_oned.instantiate_calls == 0


def test_other_oned_errors_keep_their_kind(fake_oned):
    prov = OpenNebulaProvider(fake_oned.url, fake_oned.session, 8, PREFIX, CONTEXT)
    (failed,) = spawn(prov, PREFIX + "1")
    assert (failed.kind, failed.reason) == (
        "not_found", "[one.template.instantiate] Error getting template [8].")
    # an HTTP server that is not oned's XML-RPC endpoint
    prov = provider(fake_oned, url=fake_oned.url.replace("/RPC2", "/nowhere"))
    (failed,) = spawn(prov, PREFIX + "1")
    assert (failed.kind, failed.reason) == (
        "connection", f"{fake_oned.url.replace('/RPC2', '/nowhere')} answered HTTP 404 Not Found")


def test_every_pyone_failure_has_its_kind():
    cases = [
        (pyone.OneAuthenticationException("[one.vm.info] User couldn't be authenticated"),
         "authentication"),
        (pyone.OneAuthorizationException("[one.vm.action] Not authorized to perform MANAGE VM"),
         "authorization"),
        (pyone.OneAuthorizationException("User [5] : limit of 1 reached for VMS quota"), "quota"),
        (pyone.OneException("[one.template.instantiate] Error allocating a new virtual machine"),
         "allocation"),
        (pyone.OneNoExistsException("Error getting virtual machine [1]."), "not_found"),
        (pyone.OneActionException("This action is not available for state BOOT"), "wrong_state"),
        (pyone.OneApiException("Type mismatch"), "error"),
        (pyone.OneInternalException("Internal error"), "error"),
        (pyone.OneException("[one.vm.action] Object is locked"), "error"),
        (requests.ConnectionError("refused"), "connection"),
        (requests.ReadTimeout("read timed out"), "connection"),
        (ValueError("not XML"), "error"),
    ]
    assert [classify(exc)[0] for exc, _ in cases] == [kind for _, kind in cases]
    assert classify(pyone.OneActionException("wrong state BOOT")) == ("wrong_state", "wrong state BOOT")


def test_an_unreachable_endpoint_is_kind_connection_within_the_deadline(fake_oned):
    prov = provider(fake_oned, url=f"http://127.0.0.1:{free_port()}/RPC2", deadline=2.0)
    start = time.monotonic()
    (failed,) = spawn(prov, PREFIX + "1")
    assert time.monotonic() - start < 2.0
    assert (type(failed), failed.kind) == (VMFailed, "connection")
    assert failed.reason.startswith("cannot reach http://127.0.0.1:") and "refused" in failed.reason
    (rejected,) = prov.observe([(PREFIX + "1", 100)])
    assert rejected.reason.startswith("vmpool.info failed (connection): cannot reach")


def test_a_hanging_oned_is_kind_connection_at_the_deadline_not_a_hang(fake_oned):
    prov = provider(fake_oned, deadline=0.5)
    before = set(threading.enumerate())
    fake_oned.hang_next_call()
    start = time.monotonic()
    (failed,) = spawn(prov, PREFIX + "1")
    took = time.monotonic() - start
    # not before the deadline; and it came back although oned never answers
    # (the upper bound only tells a return from a hang: a loaded machine is slow)
    assert 0.5 <= took < 20
    assert failed == VMFailed(PREFIX + "1", f"no answer from {fake_oned.url} to one.vmpool.info "
                              "within 0.5s", "connection")
    # the abandoned call ends by itself (requests' timeout), no thread piles up
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t not in before and t.name.startswith("opennebula-call")],
             5, "the abandoned call's thread to end")
    # the next spawn of that name works, and makes one VM
    assert spawn(prov, PREFIX + "1") == [VMAllocated(PREFIX + "1", 100)]
    fake_oned.hang_next_call()
    (rejected,) = prov.observe([(PREFIX + "1", 100)])
    assert rejected.reason == (f"vmpool.info failed (connection): no answer from {fake_oned.url} "
                               "to one.vmpool.info within 0.5s")
    assert fake_oned.instantiate_calls == 1


def test_a_boot_failure_is_observed_as_lcm_36(fake_oned):
    fake_oned.fail_next_boots(1)
    prov = provider(fake_oned)
    spawn(prov, PREFIX + "1")
    spawn(prov, PREFIX + "2")
    alive = [(PREFIX + "1", 100), (PREFIX + "2", 101)]
    seen = observe_until(prov, alive, lambda evs: {(3, 36), RUNNING} <= set(states(evs)),
                         "a boot failure and a run")
    assert VMStateObserved(100, 3, 36, "10.0.0.100", PREFIX + "1") in seen
    assert VMStateObserved(101, 3, 3, "10.0.0.101", PREFIX + "2") in seen
    assert (3, 3) not in [(e.state, e.lcm_state) for e in seen if e.vm_id == 100]


# ------------------------------------------------------------- orphans


def test_orphans_are_ours_by_prefix_and_unknown_to_the_log(fake_oned):
    orphan = fake_oned.add_vm(PREFIX + "7")  # e.g. spawned before a crash, id never logged
    fake_oned.add_vm("unrelated-1")  # ours, but not this cluster's
    fake_oned.add_vm(PREFIX + "8", uid=9)  # another user's
    fake_oned.add_vm(PREFIX + "6", phase="DONE")
    prov = provider(fake_oned)
    (allocated,) = spawn(prov, PREFIX + "1")  # allocated, not yet in the log: not an orphan

    events = prov.observe([])  # first: the log is told, and takes it in
    assert events == [VMDiscovered(orphan, PREFIX + "7", 3, 3, fake_oned.vm(orphan).ip)]
    events = prov.observe([])  # still not held alive: an orphan, reported once
    assert events == [InputRejected(
        "opennebula", f"orphan VM {orphan} '{PREFIX}7' (STATE 3, LCM_STATE 3): named like this "
        f"cluster's VMs ({PREFIX}*) but not among the VMs the log holds alive; unless something "
        f"claims it, `onevm terminate --hard {orphan}`")]
    assert prov.observe([]) == []  # once
    assert prov.orphans([allocated.vm_id]) == [Orphan(orphan, PREFIX + "7", 3, 3)]
    assert prov.orphans([orphan, allocated.vm_id]) == []
    # once the log has had it alive, a VM the log then drops is an orphan too
    prov.observe([(PREFIX + "1", allocated.vm_id)])
    assert [o.vm_id for o in prov.orphans([])] == [orphan, allocated.vm_id]
    # a restarted boss's provider knows nothing of its predecessor's spawns
    assert [o.vm_id for o in provider(fake_oned).orphans([])] == [orphan, allocated.vm_id]
    with pytest.raises(OpenNebulaError) as failure:
        provider(fake_oned, session="x:y").orphans([])
    assert failure.value.kind == "authentication"


def test_by_policy_an_orphan_that_stays_one_is_terminated(fake_oned):
    orphan = fake_oned.add_vm(PREFIX + "7")
    now = [100.0]
    prov = OpenNebulaProvider(fake_oned.url, fake_oned.session, fake_oned.template_id, PREFIX,
                              CONTEXT, deadline=3, kill_orphans_after=60, clock=lambda: now[0])
    assert [type(e).__name__ for e in prov.observe([])] == ["VMDiscovered"]
    assert [e.reason[:20] for e in prov.observe([])] == [f"orphan VM {orphan} '{PREFIX}7"[:20]]
    now[0] += 59
    assert prov.observe([]) == [] and fake_oned.vm(orphan).state != 6  # not yet: it may be claimed
    now[0] += 1
    assert [e.reason for e in prov.observe([])] == [
        f"orphan VM {orphan} terminated: still nobody's 60s after it was first seen"]
    assert fake_oned.vm(orphan).state == 6
    # an orphan the log claims in time (its id logged) is left alone
    claimed = fake_oned.add_vm(PREFIX + "9")
    prov.observe([])
    now[0] += 30
    prov.observe([(PREFIX + "9", claimed)])
    now[0] += 60
    prov.observe([(PREFIX + "9", claimed)])
    assert fake_oned.vm(claimed).state != 6


# ------------------------------------------------------------- configuration


def test_the_endpoint_must_be_xml_rpc_and_the_context_sane(fake_oned):
    for url in ("127.0.0.1:2633", "grpc://h:2634", ""):
        with pytest.raises(ConfigError, match="http:// or https://"):
            provider(fake_oned, url=url or " ")
    with pytest.raises(ConfigError, match="context variable 'broker'"):
        provider(fake_oned, context={"broker": "x"})
    with pytest.raises(ConfigError, match="context variable 'ECLOUD_WORKER_ID'"):
        provider(fake_oned, context={"ECLOUD_WORKER_ID": "x"})
    with pytest.raises(ConfigError, match="prefix"):
        provider(fake_oned, prefix="bad prefix")


def test_ip_of_takes_the_first_nic_or_the_context():
    two = pyone.bindings.parseString(
        b"<VM><ID>1</ID><STATE>3</STATE><LCM_STATE>3</LCM_STATE><TEMPLATE>"
        b"<NIC><IP><![CDATA[10.1.0.1]]></IP><NIC_ID>0</NIC_ID></NIC>"
        b"<NIC><IP><![CDATA[10.2.0.1]]></IP><NIC_ID>1</NIC_ID></NIC></TEMPLATE></VM>")
    assert ip_of(two) == "10.1.0.1"
    context_only = pyone.bindings.parseString(
        b"<VM><ID>1</ID><TEMPLATE><CONTEXT><ETH0_IP><![CDATA[10.3.0.1]]></ETH0_IP></CONTEXT>"
        b"</TEMPLATE></VM>")
    assert ip_of(context_only) == "10.3.0.1"
    assert ip_of(pyone.bindings.parseString(b"<VM><ID>1</ID></VM>")) is None


# ------------------------------------------------------------- a real worker


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_running_vm_boots_a_real_worker_that_joins_and_dies_with_the_vm(fake_oned, broker):
    cluster = f"on{uuid.uuid4().hex[:8]}"
    prefix = f"ecloud-{cluster}-"
    fake_oned.worker_command = ecloud_worker_command(heartbeat=0.5)
    prov = provider(fake_oned, prefix=prefix,
                    context={"ECLOUD_BROKER": broker.url, "ECLOUD_CLUSTER": cluster})
    acked: set[str] = set()

    def reports() -> list[tuple[str, object]]:
        """(worker, report) for everything the workers said, acking it like a boss."""
        heard = []
        for topic, payload in list(boss.messages):
            worker = wire.worker_of(topic, cluster)
            heard += [(worker, r) for r in wire.parse_worker_payload(payload, worker).reports]
        for worker in sorted({w for w, r in heard if r.msg_id and r.msg_id not in acked}):
            ids = [r.msg_id for w, r in heard if w == worker and r.msg_id and r.msg_id not in acked]
            acked.update(ids)
            boss.publish(wire.to_topic(cluster, worker), wire.dumps(wire.BossPayload(acks=ids)))
        return heard

    def hellos() -> dict[str, int | None]:
        return {w: r.vm_id for w, r in reports() if r.kind == "hello"}

    def said_bye(worker: str) -> bool:
        return any(w == worker and r.kind == "bye" for w, r in reports())

    with Client(broker.url, f"{cluster}-boss", (wire.from_all(cluster),), clean_session=True) as boss:
        boss.start()
        names = [prefix + "1", prefix + "2"]
        ids = [spawn(prov, name)[0].vm_id for name in names]
        alive = list(zip(names, ids, strict=True))
        observe_until(prov, alive, lambda evs: states(evs).count(RUNNING) == 2, "both VMs to run")
        wait_for(lambda: hellos() == dict(zip(names, ids, strict=True)), 20,
                 "both workers to say hello with their VM ids")
        pids = [fake_oned.worker_pid(vm_id) for vm_id in ids]
        assert all(pid and _alive(pid) for pid in pids)
        assert all(os.getpgid(pid) == pid for pid in pids)  # a session of its own

        # terminate-hard: the guest dies at once, without a goodbye
        assert prov.kill(KillVM(9, ids[0], "idle")) == [VMStateObserved(ids[0], 6, 0, None, names[0])]
        assert not _alive(pids[0]) and not said_bye(names[0])
        assert fake_oned.worker_returncode(ids[0]) == -signal.SIGKILL
        assert fake_oned.vm(ids[1]).phase == "RUNNING" and _alive(pids[1])

        # terminate (ACPI): the worker drains, says goodbye, exits, and the VM is DONE
        pyone.OneServer(fake_oned.url, session=fake_oned.session).vm.action("terminate", ids[1])
        wait_for(lambda: said_bye(names[1]) and fake_oned.vm(ids[1]).phase == "DONE", 20,
                 "the second worker's goodbye and its VM to be DONE")
        assert fake_oned.worker_returncode(ids[1]) == 0 and not _alive(pids[1])
        assert prov.observe(alive) == [VMStateObserved(ids[1], 6, 0, None, names[1])]

    assert fake_oned.worker_log(ids[0]).exists()
    assert "Traceback" not in fake_oned.worker_log(ids[1]).read_text()


def test_a_spawn_carries_the_context_the_state_gives_it(fake_oned) -> None:
    """The boss address, slots and datastore come with the effect (from the
    state) and win over the provider's own defaults."""
    prov = OpenNebulaProvider(fake_oned.url, fake_oned.session, fake_oned.template_id, "ecloud-t-",
                              {"BOSS_ADDRESS": "fallback:1883", "ECLOUD_CLUSTER": "t"}, deadline=5)
    (allocated,) = prov.spawn(SpawnVM(1, "ecloud-t-1", (("BOSS_ADDRESS", "10.9.9.9:1883"),
                                                        ("ECLOUD_SLOTS", "4"))))
    raw = fake_oned.vm(allocated.vm_id).context
    context = {k[:-4]: base64.b64decode(v).decode() for k, v in raw.items() if k.endswith("_B64")}
    assert (context["BOSS_ADDRESS"], context["ECLOUD_SLOTS"], context["ECLOUD_CLUSTER"]) == (
        "10.9.9.9:1883", "4", "t")


# ------------------------------------------------------------- the datastore key

KEY_VAR = "ECLOUD_DATASTORE_SSH_KEY_B64"


def key_pieces(key: bytes) -> list[bytes]:
    """What of a key must not show up anywhere: the key, its base64, each
    line of its body, and the name of the variable that carries it."""
    lines = [line for line in key.splitlines() if line and not line.startswith(b"-----")]
    return [key, base64.b64encode(key), *lines, KEY_VAR[:-4].encode()]


def test_only_the_provider_puts_the_datastore_key_in_a_vm_context(fake_oned, tmp_path) -> None:
    key = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.encodebytes(os.urandom(120)) + \
        b"-----END OPENSSH PRIVATE KEY-----\n"
    key_file = tmp_path / "id_datastore"
    key_file.write_bytes(key)
    prov = OpenNebulaProvider(fake_oned.url, fake_oned.session, fake_oned.template_id, PREFIX,
                              CONTEXT, deadline=5, datastore_key_file=key_file)
    # a spawn's context (from the logged state) cannot set or replace it
    forged = base64.b64encode(b"forged").decode()
    (allocated,) = prov.spawn(SpawnVM(1, PREFIX + "1", (("ECLOUD_DATASTORE_SSH_KEY", "forged"),
                                                        ("ECLOUD_SLOTS", "2"))))
    raw = fake_oned.vm(allocated.vm_id).context
    assert base64.b64decode(raw[KEY_VAR], validate=True) == key
    assert forged not in raw.values()
    assert "ECLOUD_DATASTORE_KEY_B64" not in raw  # that one is a path on the VM: not ours
    assert base64.b64decode(raw["ECLOUD_SLOTS_B64"]) == b"2"
    # nor can the provider's own
    with pytest.raises(ConfigError, match="context variable 'ECLOUD_DATASTORE_SSH_KEY'"):
        provider(fake_oned, context={"ECLOUD_DATASTORE_SSH_KEY": "x"})
    # without the setting, no key
    (other,) = spawn(provider(fake_oned), PREFIX + "2")
    assert KEY_VAR not in fake_oned.vm(other.vm_id).context

    # read once, at construction: an unusable file fails there, naming the file only
    for bad, why in ((tmp_path / "missing", "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(DatastoreKeyError) as info:
            OpenNebulaProvider(fake_oned.url, fake_oned.session, 7, PREFIX, CONTEXT,
                               datastore_key_file=bad)
        assert str(info.value) == f"cannot read the datastore key file {bad}: {why}"
    (tmp_path / "empty").write_bytes(b" \n")
    with pytest.raises(ConfigError, match="is empty"):
        OpenNebulaProvider(fake_oned.url, fake_oned.session, 7, PREFIX, CONTEXT,
                           datastore_key_file=tmp_path / "empty")


def test_an_oned_error_quoting_the_template_is_logged_without_the_key(fake_oned, tmp_path) -> None:
    key = base64.encodebytes(os.urandom(200))
    (tmp_path / "key").write_bytes(key)
    prov = OpenNebulaProvider(fake_oned.url, fake_oned.session, 7, PREFIX, CONTEXT,
                              datastore_key_file=tmp_path / "key")

    def instantiate(template_id, name, hold, extra, persistent):
        line = next(x for x in extra.splitlines() if x.startswith(KEY_VAR))
        # all of it, and a piece of it as a parser would quote it
        raise pyone.OneInternalException(f"Error parsing user template: {extra} near "
                                         f"'{line[40:90]}'")

    prov._one = SimpleNamespace(vmpool=SimpleNamespace(info=lambda *a: SimpleNamespace(VM=[])),
                                template=SimpleNamespace(instantiate=instantiate))
    (failed,) = spawn(prov, PREFIX + "1")
    assert type(failed) is VMFailed and "Error parsing user template" in failed.reason
    assert "ECLOUD_CLUSTER_B64" in failed.reason  # the rest is kept
    b64 = base64.b64encode(key).decode()
    assert b64 not in failed.reason and b64[40:80] not in failed.reason
    assert not any(piece in failed.reason for piece in (b64[i:i + 12] for i in range(0, 200, 7)))


def test_the_datastore_key_reaches_the_worker_through_the_context_and_never_the_log(
        fake_oned, broker, sshd, tmp_path, monkeypatch) -> None:
    """``ecloud-boss --provider opennebula`` with ``datastore_key_file``, in
    process: the VM's worker fetches a task's input over ssh with the key it
    got from the context, and nothing of the key is in the log."""
    home = tmp_path / "home"
    monkeypatch.chdir(tmp_path)  # no ./ecloud.toml of anyone's
    monkeypatch.setenv("HOME", str(home))  # the guest's ~/.ecloud/known_hosts
    key = Path(sshd.key_file).read_bytes()
    (sshd.datastore / "seed.txt").write_text("seed from the datastore\n")
    cluster = f"dk{uuid.uuid4().hex[:8]}"
    db = tmp_path / "events.db"
    config = load_config({}, {
        "HOME": str(home), "ECLOUD_DB": f"sqlite:///{db}", "ECLOUD_CLUSTER": cluster,
        "ECLOUD_ONE_URL": fake_oned.url, "ECLOUD_ONE_SESSION": fake_oned.session,
        "ECLOUD_ONE_TEMPLATE": str(fake_oned.template_id), "ECLOUD_ONE_DEADLINE": "5",
        "ECLOUD_DATASTORE_KEY_FILE": sshd.key_file})
    prov = make_provider("opennebula", config, broker.url, 1)
    fake_oned.worker_command = ecloud_worker_command(heartbeat=0.5)
    boss = Boss(config.db, broker.url, provider=prov, cluster=cluster, poll=0.05,
                observe_every=0.2)
    thread = threading.Thread(target=boss.run, daemon=True)
    thread.start()

    def logged(tag: str) -> list:
        with open_store(config.db, create=False) as store:
            return [r.event for r in store.read(1) if r.event.TYPE == tag]

    try:
        wait_for(boss.ready.is_set, 20, "the boss to start")
        # `env`: the task shows what it inherited, and its output tail is logged
        (task,) = parse_tasks([{"id": "t", "command": "cat seed.txt && env",
                                "inputs": [{"path": "seed.txt"}]}])
        boss.submit([*datastore_events(sshd.address, sshd.datastore),
                     ev.TasksSubmitted("b1", (task,), "test"),
                     ev.VMRequested(f"ecloud-{cluster}-1", "test")])
        (done,) = wait_for(lambda: logged("task.finished"), 60,
                           "the task to finish on the VM's worker")
        assert done.exit_code == 0, (done.reason, done.stderr_tail)
        assert done.stdout_tail.startswith("seed from the datastore\n")
    finally:
        boss.stop()
        thread.join(30)
    assert not thread.is_alive() and boss.error is None

    (allocated,) = logged("vm.allocated")
    context = fake_oned.vm(allocated.vm_id).context
    assert base64.b64decode(context[KEY_VAR], validate=True) == key
    on_the_vm = fake_oned.dir / f"vm-{allocated.vm_id}" / "work" / ".ecloud" / "datastore_key"
    assert on_the_vm.read_bytes() == key
    assert stat.S_IMODE(on_the_vm.stat().st_mode) == 0o600

    # nothing of the key anywhere in the log (nor in the database's files),
    # the task's full output on the datastore, or the worker's log
    with open_store(config.db, create=False) as store:
        rows = list(store.read_raw(1))
    assert len(rows) > 5
    places = {f"event {seq} {tag}": body for seq, _, tag, _, body in rows}
    places.update({str(f): f.read_bytes() for f in tmp_path.glob("events.db*")})
    places["the task's stdout"] = (sshd.datastore / "results" / "t" / "stdout").read_bytes()
    places["the worker's log"] = fake_oned.worker_log(allocated.vm_id).read_bytes()
    assert b"seed from the datastore" in places["the task's stdout"]
    leaks = [(where, piece[:20]) for where, data in places.items() for piece in key_pieces(key)
             if piece in data]
    assert leaks == []


def test_a_vm_the_log_asked_for_is_found_by_name_or_said_absent(fake_oned):
    """After an instantiate with no usable answer the log holds the name
    without an id: the poll finds the VM by its name (vm.allocated), or says
    once that the pool has none (vm.failed, kind absent)."""
    made = fake_oned.add_vm(PREFIX + "1")  # the instantiate acted; its answer was lost
    prov = provider(fake_oned)
    events = prov.observe([], [PREFIX + "1", PREFIX + "2"])
    assert events == [VMAllocated(PREFIX + "1", made),
                      VMFailed(PREFIX + "2", "not in the cloud's pool: its instantiate made no VM",
                               "absent")]
    assert prov.observe([], [PREFIX + "1", PREFIX + "2"]) == []  # once each


def test_a_spawn_that_ends_while_the_pool_is_read_is_not_said_absent(fake_oned):
    """Seen in CI: the boss's poll read the pool just before a spawn's
    instantiate made the VM; the spawn answered (vm.allocated) before the
    poll's answer came back, and the poll then said the name was absent - the
    log failed the new VM and the reconciler terminated it. A name this
    provider allocated is never absent."""
    import threading

    prov = provider(fake_oned, deadline=5.0)
    fake_oned.answer_delays["one.vmpool.info"] = 1.0  # the spawn's look at the pool: 1 s late
    spawned: list = []
    spawner = threading.Thread(target=lambda: spawned.extend(spawn(prov, PREFIX + "1")))
    spawner.start()
    wait_for(lambda: fake_oned.calls("one.vmpool.info"), 5, "the spawn's look at the pool")
    # the poll reads the pool before the instantiate (which follows the spawn's
    # late look) and hears back 1 s after the spawn has answered
    fake_oned.answer_delays["one.vmpool.info"] = 2.0
    seen = prov.observe([], [PREFIX + "1"])
    spawner.join(10)
    assert [type(e) for e in spawned] == [VMAllocated]
    assert fake_oned.calls("one.template.instantiate")
    assert not [e for e in seen if isinstance(e, VMFailed)], seen
