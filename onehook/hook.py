"""``python3 -m onehook.hook``: tell the boss that a VM of its cluster
changed state, the moment OpenNebula knows.

oned's hook manager runs it on the front-end (as oneadmin) for each state
change a state hook names. The hooks ``ecloud opennebula hook`` writes run
a small script of the cluster's (``COMMAND``) with ``ARGUMENTS = "$TEMPLATE"``
and ``ARGUMENTS_STDIN = "yes"``: the VM's XML, base64, comes on stdin, never
on a command line that every user of the front-end can read (it holds the
VM's context, passwords included). It keeps only VMs whose name starts with
the cluster's prefix (``ecloud-<cluster>-``) and, with ``--owner``, that
belong to that OpenNebula user; publishes one compact JSON message to
``ecloud/<cluster>/hook`` at the boss's broker (QoS 1, MQTT 5, with an
account of its own that may publish there and nowhere else), and exits:
0 when the broker took it, or when the VM is not ours; 1 when it could not
say it (unreachable, refused, or the broker's ACL turned the message down:
MQTT 5 says so in its acknowledgement) - oned logs the failure, and the
boss's poll of the pool still sees the change (a callback is a hint, never
the truth); 2 for bad input or options.

Standard library and paho-mqtt only (the worker's one dependency), so the
front-end needs no more than the worker VMs do.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import ssl
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

#: exit statuses (oned records a non-zero one as the hook's failure)
DELIVERED, NOT_DELIVERED, BAD_INPUT = 0, 1, 2
#: a cluster's name as ecloud takes it (it is in topics: no MQTT wildcard, no level)
CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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


def owner_of(encoded: str) -> str | None:
    """The VM's owner (``UNAME``) in ``$TEMPLATE``, if it says."""
    root = ET.fromstring(base64.b64decode(encoded.strip(), validate=True))
    node = root.find("UNAME")
    return node.text.strip() if node is not None and node.text else None


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, TLS) of ``mqtt://host:port``, ``mqtts://host:port`` or a
    bare ``host:port`` (plain MQTT, as ecloud reads it). ValueError for any
    other scheme, or no host: never a silent default."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"--broker {url!r}: the scheme must be mqtt:// or mqtts://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--broker {url!r}: the port is not a number") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"--broker {url!r}: give mqtt(s)://host:port and nothing else")
    secure = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if secure else 1883), secure


def message(vm: dict, now: float) -> bytes:
    """What the boss receives: the VM's change and when the hook saw it."""
    return json.dumps({"v": 1, "kind": "callback", **vm, "at": round(now, 3)},
                      separators=(",", ":")).encode()


def publish(url: str, topic: str, payload: bytes, *, user: str | None, password: str | None,
            ca: str | None, timeout: float) -> str | None:
    """Publish with QoS 1 over MQTT 5 and wait for the broker's PUBACK.
    None when the broker took it; else why not (refused, unreachable, or
    the acknowledgement's reason code: the ACL turned the message down)."""
    import paho.mqtt.client as mqtt

    host, port, secure = broker_address(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"ecloud-hook-{uuid.uuid4().hex[:16]}")
    if user:
        client.username_pw_set(user, password)
    if secure:
        client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
    done = threading.Event()
    outcome = {"why": f"no answer from {url} within {timeout:g} s"}

    def on_connect(c, userdata, flags, reason, properties=None):
        if reason.is_failure:
            outcome["why"] = f"{url} refused the connection: {reason}"
            done.set()
            return
        c.publish(topic, payload, qos=1)

    def on_publish(c, userdata, mid, reason=None, properties=None):
        failed = reason is not None and reason.is_failure
        outcome["why"] = f"{url} turned the message down: {reason}" if failed else None
        done.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        return f"cannot reach {url}: {exc}"
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome["why"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m onehook.hook",
        description="Tell an ecloud boss that one of its VMs changed state (an OpenNebula "
                    "state hook). Reads $TEMPLATE from stdin (ARGUMENTS_STDIN), or from the "
                    "argument.")
    parser.add_argument("template", nargs="?", help="$TEMPLATE (base64 VM XML); default: stdin")
    parser.add_argument("--broker", required=True, help="the boss's broker, mqtt(s)://host:port")
    parser.add_argument("--cluster", required=True, help="the cluster (its VMs' name prefix is "
                        "ecloud-<cluster>-, its topics ecloud/<cluster>/...)")
    parser.add_argument("--owner", help="keep only VMs of this OpenNebula user (UNAME): the "
                        "boss's own account")
    parser.add_argument("--user", help="the hook's broker account")
    parser.add_argument("--password-file", help="a file holding that account's password")
    parser.add_argument("--ca", help="the CA certificate the broker's must chain to (mqtts)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the broker (default 10)")
    args = parser.parse_args(argv)
    try:
        if not CLUSTER.fullmatch(args.cluster):
            raise ValueError(f"--cluster {args.cluster!r}: letters, digits, '.', '_', '-' only")
        broker_address(args.broker)
        password = None
        if args.password_file:
            try:
                with open(args.password_file, encoding="utf-8") as f:
                    password = f.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"--password-file: {exc}") from None
        encoded = args.template if args.template is not None else sys.stdin.read()
        vm = parse_template(encoded)
        owner = owner_of(encoded) if args.owner else None
    except ValueError as exc:
        print(f"ecloud hook: {exc}", file=sys.stderr)
        return BAD_INPUT
    if not vm["name"].startswith(f"ecloud-{args.cluster}-"):
        return DELIVERED  # not this cluster's: nothing to say
    if args.owner and owner != args.owner:
        return DELIVERED  # another user's VM that shares our prefix: not ours either
    why = publish(args.broker, hook_topic(args.cluster), message(vm, time.time()),
                  user=args.user, password=password, ca=args.ca, timeout=args.timeout)
    if why is not None:
        print(f"ecloud hook: could not tell the boss about VM {vm['vm_id']}: {why}",
              file=sys.stderr)
        return NOT_DELIVERED
    return DELIVERED


if __name__ == "__main__":
    sys.exit(main())
