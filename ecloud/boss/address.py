"""The address workers use to reach the boss's broker (context key
``boss_address``), found by the boss itself when the context has none - as
the seed's boss did after ``drop_context``.

In order: the configuration (``boss_address`` setting); the broker URL's
host when it is not a loopback address (workers reach the same broker); this
machine's own OpenNebula context (``ETH0_IP`` when the boss runs in a VM);
else the address of the interface that routes toward the broker (for a
broker on loopback: toward the outside world), so that workers on other
machines can connect. The port is the broker's.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from ecloud.effects.messaging.mqtt import parse_broker_url
from ecloud_worker.settings import read_context

#: where OpenNebula's context package leaves the VM's context variables
CONTEXT_FILES = ("/var/run/one-context/one_env", "/mnt/context/context.sh")
OUTSIDE = "192.0.2.1"  # TEST-NET-1: a route lookup needs an address, nothing is sent


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _context_ip(files: tuple[str, ...]) -> str | None:
    for path in files:
        if Path(path).is_file():
            try:
                ip = read_context(path).get("ETH0_IP")
            except Exception:  # noqa: BLE001 - an unreadable context is no address
                continue
            if ip:
                return ip
    return None


def routed_address(toward: str) -> str | None:
    """The local address the kernel would send from toward ``toward`` (a UDP
    connect sends no packet)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((toward, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


def own_address(configured: str | None, broker_url: str,
                context_files: tuple[str, ...] = CONTEXT_FILES) -> tuple[str, str]:
    """``(address, where it came from)`` for the ``boss_address`` context key."""
    host, port = parse_broker_url(broker_url)
    if configured:
        return configured, "the configuration"
    if not _is_loopback(host):
        return f"{host}:{port}", "the broker URL"
    ip = _context_ip(context_files)
    if ip:
        return f"{ip}:{port}", "this VM's OpenNebula context (ETH0_IP)"
    ip = routed_address(OUTSIDE)
    if ip and not _is_loopback(ip):
        return f"{ip}:{port}", "the interface of the default route"
    return f"{host}:{port}", "the broker URL (no other interface)"
