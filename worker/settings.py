"""The agent's settings: flag > environment > OpenNebula context file > default.

Click already merges a flag with its environment variable (an option left
unset arrives as None); :func:`resolve` fills what is still missing from the
context file, then from the defaults, and checks the result.
"""

from __future__ import annotations

import base64
import os
import shlex
import socket
from pathlib import Path
from typing import Any

from attrs import frozen

from ecloud.effects.mqtt import parse_broker_url
from ecloud.errors import UserError

#: context-file variable -> setting (BOSS_ADDRESS is turned into a broker URL)
CONTEXT_KEYS = {
    "BOSS_ADDRESS": "broker",
    "ECLOUD_CLUSTER": "cluster",
    "ECLOUD_WORKER_ID": "worker_id",
    "ECLOUD_SLOTS": "slots",
    "VMID": "vm_id",
    "ECLOUD_DATASTORE_KEY": "datastore_key",
}


@frozen
class Settings:
    broker: str
    cluster: str
    worker_id: str
    slots: int
    work_dir: Path
    heartbeat: float
    vm_id: int | None
    drain_timeout: float
    journal: str | None = None
    datastore_key: str | None = None


def read_context(path: str) -> dict[str, str]:
    """``KEY=VALUE`` / ``KEY='VALUE'`` lines as OpenNebula's context.sh writes
    them (shell quoting, ``export`` and comments allowed)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read the context file {path}: {exc.strerror or exc}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, raw = line.partition("=")
        if not sep or line.startswith("#") or not key.isidentifier():
            continue
        try:
            values[key] = " ".join(shlex.split(raw))
        except ValueError:  # unbalanced quotes: take it as written
            values[key] = raw.strip().strip("'\"")
    return _decoded(values)


def _decoded(values: dict[str, str]) -> dict[str, str]:
    """``KEY_B64`` variables (how the boss passes values through OpenNebula's
    context, where nothing escapes quotes) also give ``KEY``, decoded; a
    plain ``KEY`` given beside it wins."""
    out = dict(values)
    for key, value in values.items():
        if key.endswith("_B64") and key[:-4] not in values:
            try:
                out[key[:-4]] = base64.b64decode(value, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"context variable {key} is not valid base64") from None
    return out


def _broker_from_boss_address(address: str) -> str:
    return address if "://" in address else f"mqtt://{address}"


def _int(value: Any, what: str, minimum: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise UserError(f"{what} must be at least {minimum}, got {number}")
    return number


def _name(value: str, what: str) -> str:
    if not value or any(c in value for c in "/+#\0"):
        raise UserError(f"{what} {value!r} must be non-empty without '/', '+', '#'")
    return value


def resolve(options: dict[str, Any]) -> Settings:
    """Settings from the click options (flag or environment, else None)."""
    given = dict(options)
    context_file = given.pop("context_file", None)
    if context_file:
        context = read_context(context_file)
        for key, name in CONTEXT_KEYS.items():
            if given.get(name) is None and context.get(key):
                value = context[key]
                given[name] = _broker_from_boss_address(value) if name == "broker" else value
    if not given.get("broker"):
        raise UserError(
            "no broker address: give --broker mqtt://host:port, set ECLOUD_BROKER, "
            "or BOSS_ADDRESS in the --context-file"
        )
    parse_broker_url(given["broker"])  # a bad URL is the operator's error, now
    worker_id = _name(given.get("worker_id") or socket.gethostname(), "worker id")
    vm_id = given.get("vm_id")
    return Settings(
        broker=given["broker"],
        cluster=_name(given.get("cluster") or "ecloud", "cluster name"),
        worker_id=worker_id,
        slots=_int(given.get("slots") or os.cpu_count() or 1, "slots", minimum=1),
        work_dir=Path(given.get("work_dir") or f"/tmp/ecloud-worker-{worker_id}"),
        heartbeat=float(given["heartbeat"]),
        vm_id=None if vm_id is None else _int(vm_id, "VM id"),
        drain_timeout=float(given["drain_timeout"]),
        journal=given.get("journal") or None,
        datastore_key=given.get("datastore_key") or None,
    )
