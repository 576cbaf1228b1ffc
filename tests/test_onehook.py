"""The OpenNebula state hook (issue 24, first part): the real hook program,
run as oned's hook manager runs it - a process with ``$TEMPLATE`` (the VM's
XML, base64, as the fake oned writes it) as its argument - against a real
Mosquitto; and the templates ``ecloud opennebula hook`` prints."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from ecloud.cli.main import cli
from onehook.hook import hook_topic, parse_template
from tests.support.brokers import wait_for
from tests.support.fake_oned import _VM, parse_hook, vm_xml

ROOT = Path(__file__).resolve().parent.parent


def template_of(vm_id: int, name: str, phase: str = "RUNNING", uname: str = "ecloud") -> str:
    vm = _VM(vm_id, name, 5, 7, {}, False, False)
    vm.phase = phase
    return base64.b64encode(vm_xml(vm, uname).encode()).decode()


def run_hook(broker: str, cluster: str, template: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onehook.hook", "--broker", broker, "--cluster",
                           cluster, *extra, template], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


class Listener:
    def __init__(self, url: str, topic: str) -> None:
        self.got: list[dict] = []
        self.ready = threading.Event()
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"l{uuid.uuid4().hex}")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.got.append(json.loads(m.payload))
        self.client.connect(host, int(port))
        self.client.loop_start()
        wait_for(self.ready.is_set, 10, "the listener to subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_template_oned_passes_is_read() -> None:
    assert parse_template(template_of(104, "ecloud-c-3", "POWEROFF")) == {
        "vm_id": 104, "name": "ecloud-c-3", "state": 8, "lcm_state": 0}


def test_a_state_change_of_a_vm_of_ours_reaches_the_broker_and_others_are_ignored(
        mosquitto_broker) -> None:
    cluster = f"h{uuid.uuid4().hex[:6]}"
    listener = Listener(mosquitto_broker.url, hook_topic(cluster))
    try:
        done = run_hook(mosquitto_broker.url, cluster, template_of(7, f"ecloud-{cluster}-1",
                                                                   "POWEROFF"))
        assert done.returncode == 0, done.stderr
        (got,) = wait_for(lambda: listener.got, 10, "the callback at the broker")
        assert {k: got[k] for k in ("kind", "vm_id", "name", "state", "lcm_state")} == {
            "kind": "callback", "vm_id": 7, "name": f"ecloud-{cluster}-1", "state": 8,
            "lcm_state": 0}
        # another cluster's VM, or none of ecloud's: nothing is said, and that is no failure
        for name in (f"ecloud-{cluster}x-1", "someone-else"):
            assert run_hook(mosquitto_broker.url, cluster, template_of(8, name)).returncode == 0
        # stdin, as with ARGUMENTS_STDIN
        piped = subprocess.run([sys.executable, "-m", "onehook.hook", "--broker",
                                mosquitto_broker.url, "--cluster", cluster],
                               input=template_of(9, f"ecloud-{cluster}-2"), capture_output=True,
                               text=True, timeout=60, cwd=ROOT)
        assert piped.returncode == 0, piped.stderr
        wait_for(lambda: len(listener.got) == 2, 10, "the second callback")
        assert [g["vm_id"] for g in listener.got] == [7, 9]
    finally:
        listener.close()


def test_a_bad_template_or_an_unreachable_broker_is_a_failure_oned_records(
        mosquitto_broker) -> None:
    bad = run_hook(mosquitto_broker.url, "c", "not base64 at all!")
    assert bad.returncode == 2 and "not a base64 VM document" in bad.stderr
    pool = base64.b64encode(b"<VM_POOL></VM_POOL>").decode()
    assert run_hook(mosquitto_broker.url, "c", pool).returncode == 2
    gone = run_hook("mqtt://127.0.0.1:9", "c", template_of(1, "ecloud-c-1"), "--timeout", "2")
    assert gone.returncode == 1 and "could not tell" in gone.stderr


def test_ecloud_prints_a_state_hook_per_change_that_matters() -> None:
    result = CliRunner().invoke(cli, ["opennebula", "hook", "--broker", "mqtt://boss:1883",
                                      "--owner", "ecloud"],
                                env={"ECLOUD_CLUSTER": "prod", "ECLOUD_CONFIG": ""})
    assert result.exit_code == 0, result.output
    blocks = result.output.split("==> ")[1:]  # each file: a header line, then the text
    assert len(blocks) == 11  # the script, and ten templates
    templates = [parse_hook(b.split("\n", 1)[1]) for b in blocks[1:]]  # as oned reads them
    assert {t["ON"] for t in templates} == {"RUNNING", "STOP", "DONE", "UNKNOWN", "CUSTOM"}
    poweroff = next(t for t in templates if t["NAME"] == "ecloud-prod-poweroff")
    assert (poweroff["STATE"], poweroff["LCM_STATE"]) == ("POWEROFF", "LCM_INIT")  # names, not codes
    for t in templates:  # the template on stdin, never on a command line others can read
        assert (t["ARGUMENTS"], t["ARGUMENTS_STDIN"]) == ("$TEMPLATE", "yes")
        assert t["COMMAND"] == "/var/lib/one/remotes/hooks/ecloud-prod-hook"
    script = blocks[0].split("\n", 1)[1]
    assert script.startswith("#!/bin/sh\n") and ("exec /usr/bin/python3 -m onehook.hook --broker "
                                                 "mqtt://boss:1883 --cluster prod") in script
    assert "--owner ecloud" in script
    missing = CliRunner().invoke(cli, ["opennebula", "hook"], env={"ECLOUD_BROKER": "",
                                                                     "ECLOUD_CONFIG": ""})
    assert missing.exit_code == 2 and "--broker" in missing.output


def test_a_number_where_oned_wants_a_state_name_is_refused_as_oned_does() -> None:
    numeric = ('NAME = "x"\nTYPE = "state"\nRESOURCE = "VM"\nON = "CUSTOM"\nSTATE = "8"\n'
               'LCM_STATE = "0"\nCOMMAND = "/bin/true"\n')
    with pytest.raises(ValueError, match="Wrong STATE: 8"):
        parse_hook(numeric)


@pytest.mark.parametrize(("args", "why"), [
    (["--broker", 'mqtt://h"x:1'], "no blanks, quotes or shell characters"),
    (["--broker", "mqtt://h:1 --cluster evil"], "no blanks"),
    (["--broker", "mqtt://h:1;rm"], "no blanks, quotes or shell characters"),
    (["--broker", "ws://h:1"], "the scheme must be mqtt:// or mqtts://"),
    (["--broker", "mqtt://h:1", "--python", "python3"], "must be an absolute path"),
    (["--broker", "mqtt://h:1", "--password-file", "/var/lib/one/my hook.pw"], "no blanks"),
])
def test_options_that_would_break_a_template_or_a_script_are_refused(args, why) -> None:
    result = CliRunner().invoke(cli, ["opennebula", "hook", *args],
                                env={"ECLOUD_CLUSTER": "prod", "ECLOUD_CONFIG": ""})
    assert result.exit_code == 2 and why in result.output, result.output


def test_the_hook_refuses_bad_options_without_a_traceback(mosquitto_broker, tmp_path) -> None:
    template = template_of(1, "ecloud-c-1")
    missing = run_hook(mosquitto_broker.url, "c", template, "--password-file",
                       str(tmp_path / "none"))
    assert missing.returncode == 2 and "--password-file" in missing.stderr
    assert "Traceback" not in missing.stderr
    wild = run_hook(mosquitto_broker.url, "c/#", template)
    assert wild.returncode == 2 and "--cluster" in wild.stderr
    bare = run_hook("broker.invalid:1883", "c", template, "--timeout", "2")
    assert bare.returncode == 1 and "broker.invalid" in bare.stderr  # no silent localhost
    odd = run_hook("ws://127.0.0.1:1883", "c", template)
    assert odd.returncode == 2 and "scheme" in odd.stderr


def test_another_users_vm_of_our_prefix_is_not_ours(mosquitto_broker) -> None:
    cluster = f"h{uuid.uuid4().hex[:6]}"
    listener = Listener(mosquitto_broker.url, hook_topic(cluster))
    try:
        theirs = template_of(7, f"ecloud-{cluster}-1", uname="mallory")
        assert run_hook(mosquitto_broker.url, cluster, theirs, "--owner", "ecloud").returncode == 0
        ours = template_of(8, f"ecloud-{cluster}-2")
        assert run_hook(mosquitto_broker.url, cluster, ours, "--owner", "ecloud").returncode == 0
        wait_for(lambda: listener.got, 10, "our VM's callback")
        assert [g["vm_id"] for g in listener.got] == [8]
    finally:
        listener.close()


def test_a_callback_the_broker_s_acl_turns_down_is_a_failure(secure_broker) -> None:
    """MQTT 5 says in its acknowledgement that the ACL dropped the message
    (3.1.1 acknowledges it all the same): hooks set up for the wrong cluster
    fail in oned's log instead of looking healthy."""
    password = secure_broker.folder / "hook-password"
    common = ["--user", "ecloud-hook", "--password-file", str(password), "--ca", secure_broker.ca]
    good = run_hook(secure_broker.url, "sec", template_of(1, "ecloud-sec-1"), *common)
    assert good.returncode == 0, good.stderr
    wrong = run_hook(secure_broker.url, "other", template_of(1, "ecloud-other-1"), *common)
    assert wrong.returncode == 1 and "turned the message down" in wrong.stderr, wrong.stderr
