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
from click.testing import CliRunner

from ecloud.cli.main import cli
from onehook.hook import hook_topic, parse_template
from tests.support.brokers import wait_for
from tests.support.fake_oned import _VM, vm_xml

ROOT = Path(__file__).resolve().parent.parent


def template_of(vm_id: int, name: str, phase: str = "RUNNING") -> str:
    vm = _VM(vm_id, name, 5, 7, {}, False, False)
    vm.phase = phase
    return base64.b64encode(vm_xml(vm, "ecloud").encode()).decode()


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
    result = CliRunner().invoke(cli, ["opennebula", "hook", "--broker", "mqtt://boss:1883"],
                                env={"ECLOUD_CLUSTER": "prod", "ECLOUD_CONFIG": ""})
    assert result.exit_code == 0, result.output
    blocks = [b for b in result.output.split("# ")[1:]]
    assert len(blocks) == 10
    text = result.output
    assert 'ON = "CUSTOM"\nSTATE = "8"\nLCM_STATE = "0"' in text  # POWEROFF
    assert text.count('TYPE = "state"') == 10 and text.count("$TEMPLATE") == 10
    assert "--cluster prod" in text and "-m onehook.hook --broker mqtt://boss:1883" in text
    missing = CliRunner().invoke(cli, ["opennebula", "hook"], env={"ECLOUD_BROKER": "",
                                                                     "ECLOUD_CONFIG": ""})
    assert missing.exit_code == 2 and "--broker" in missing.output
