"""``python3 -m onehook.hook``: tell the boss that a VM of its cluster
changed state, the moment OpenNebula knows.

oned's hook manager runs it on the front-end (as oneadmin) for each state
change a state hook names, with ``$TEMPLATE`` - the VM's XML, base64 - as
its argument (or on stdin with ``ARGUMENTS_STDIN = "yes"``). It keeps only
VMs whose name starts with the cluster's prefix (``ecloud-<cluster>-``),
and publishes one compact JSON message to ``ecloud/<cluster>/hook`` at the
boss's broker (QoS 1, with an account of its own that may publish there and
nowhere else), then exits: 0 when delivered or not ours, 1 when it could
not say it (oned logs the failure; the boss's poll of the pool still sees
the change - a callback is a hint, never the truth).

Standard library and paho-mqtt only (the worker's one dependency), so the
front-end needs no more than the worker VMs do. ``ecloud opennebula hook``
prints the ``onehook create`` templates that install it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import ssl
import sys
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

#: exit statuses (oned records a non-zero one as the hook's failure)
DELIVERED, NOT_DELIVERED, BAD_INPUT = 0, 1, 2


def hook_topic(cluster: str) -> str:
    """Where the hook publishes (the boss subscribes; the hook's account may
    publish there only)."""
    return f"ecloud/{cluster}/hook"


def parse_template(encoded: str) -> dict:
    """The VM's id, name, STATE and LCM_STATE from oned's ``$TEMPLATE``
    (base64 of the ``<VM>`` document). ValueError when it is not one."""
    try:
        document = base64.b64decode(encoded.strip(), validate=True)
        root = ET.fromstring(document)
    except (binascii.Error, ValueError, ET.ParseError) as exc:
        raise ValueError(f"$TEMPLATE is not a base64 VM document: {exc}") from None
    if root.tag != "VM":
        raise ValueError(f"$TEMPLATE is a <{root.tag}> document, not a <VM>")
    fields = {}
    for name in ("ID", "NAME", "STATE", "LCM_STATE"):
        node = root.find(name)
        if node is None or node.text is None:
            raise ValueError(f"$TEMPLATE has no {name}")
        fields[name] = node.text.strip()
    try:
        return {"vm_id": int(fields["ID"]), "name": fields["NAME"],
                "state": int(fields["STATE"]), "lcm_state": int(fields["LCM_STATE"])}
    except ValueError:
        raise ValueError("$TEMPLATE's ID, STATE or LCM_STATE is not a number") from None


def message(vm: dict, now: float) -> bytes:
    """What the boss receives: the VM's change and when the hook saw it."""
    return json.dumps({"v": 1, "kind": "callback", **vm, "at": round(now, 3)},
                      separators=(",", ":")).encode()


def publish(url: str, topic: str, payload: bytes, *, user: str | None, password: str | None,
            ca: str | None, timeout: float) -> bool:
    """Publish with QoS 1 and wait for the broker's PUBACK; False on any failure."""
    import paho.mqtt.client as mqtt

    parts = urlsplit(url)
    secure = parts.scheme == "mqtts"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ecloud-hook-{os.getpid()}",
                         clean_session=True)
    if user:
        client.username_pw_set(user, password)
    if secure:
        client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
    done = threading.Event()
    outcome = {"ok": False}

    def on_connect(c, userdata, flags, reason, properties=None):
        if reason.is_failure:
            done.set()
            return
        c.publish(topic, payload, qos=1)

    def on_publish(c, userdata, mid, reason=None, properties=None):
        outcome["ok"] = True
        done.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(parts.hostname or "127.0.0.1", parts.port or (8883 if secure else 1883),
                       keepalive=30)
    except (OSError, ValueError):
        return False
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome["ok"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m onehook.hook",
        description="Tell an ecloud boss that one of its VMs changed state (an OpenNebula "
                    "state hook). Reads $TEMPLATE from the argument, or from stdin.")
    parser.add_argument("template", nargs="?", help="$TEMPLATE (base64 VM XML); default: stdin")
    parser.add_argument("--broker", required=True, help="the boss's broker, mqtt(s)://host:port")
    parser.add_argument("--cluster", required=True, help="the cluster (its VMs' name prefix is "
                        "ecloud-<cluster>-, its topics ecloud/<cluster>/...)")
    parser.add_argument("--user", help="the hook's broker account")
    parser.add_argument("--password-file", help="a file holding that account's password")
    parser.add_argument("--ca", help="the CA certificate the broker's must chain to (mqtts)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the broker (default 10)")
    args = parser.parse_args(argv)
    encoded = args.template if args.template is not None else sys.stdin.read()
    try:
        vm = parse_template(encoded)
    except ValueError as exc:
        print(f"ecloud hook: {exc}", file=sys.stderr)
        return BAD_INPUT
    if not vm["name"].startswith(f"ecloud-{args.cluster}-"):
        return DELIVERED  # not this cluster's: nothing to say
    password = None
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.read().strip()
    ok = publish(args.broker, hook_topic(args.cluster), message(vm, time.time()), user=args.user,
                 password=password, ca=args.ca, timeout=args.timeout)
    if not ok:
        print(f"ecloud hook: could not tell {args.broker} about VM {vm['vm_id']}",
              file=sys.stderr)
        return NOT_DELIVERED
    return DELIVERED


if __name__ == "__main__":
    sys.exit(main())
