"""OpenNebula's state hooks, heard by the boss: a message on
``ecloud/<cluster>/hook`` (published by :mod:`onehook.hook` on the
front-end) becomes a ``vm.callback`` event - or ``input.rejected``.

A callback is a hint, never the truth: folded, it changes no VM's status;
it asks for a look at the cloud's pool now (the ``ObserveCloud`` effect),
and that observation decides, as every poll does. So a lost callback costs
only latency, and a forged, replayed or misdirected one costs one look at
the pool at most - and none of these gets that far:

- not one message of the hook's format (``v`` 1, ``kind`` callback, the
  VM's id, name, STATE, LCM_STATE and the hook's time ``at``; nothing else,
  a few hundred bytes at most);
- a VM outside this cluster's prefix (``ecloud-<cluster>-``);
- a VM id the log knows under another name;
- replayed or out of order: not later than the last callback the log holds
  for that VM;
- stale or from the future: ``at`` more than :data:`MAX_SKEW` seconds from
  the boss's clock (the poll has seen that change long since).

The broker decides who may publish there (``ecloud broker config`` gives
the hook an account of its own, and no worker account may write the hook
topic): a worker's forgery never reaches the boss, and one sent on the
worker's own topic is refused there as not a worker's message.
"""

from __future__ import annotations

import math
from typing import Any

from ecloud import strictjson
from ecloud.events import types as ev
from ecloud.projections.state import State
from onehook.hook import hook_topic

#: the most a callback message may weigh (the hook's are about 120 bytes)
MAX_BYTES = 1024
#: the farthest the hook's clock may be from the boss's, either way, in seconds
MAX_SKEW = 600.0
#: OpenNebula's VM STATE and LCM_STATE codes are small numbers; anything far
#: outside is no VM's
MAX_CODE = 255
FIELDS = {"v", "kind", "vm_id", "name", "state", "lcm_state", "at"}

__all__ = ["MAX_BYTES", "MAX_SKEW", "callback_events", "hook_topic"]


def _rejected(reason: str, payload: bytes, topic: str) -> ev.InputRejected:
    from ecloud.boss.edge import rejected

    return rejected(topic, f"callback: {reason}", payload)


def _int(raw: dict, key: str, top: int) -> int:
    value = raw.get(key)
    if type(value) is not int or not 0 <= value <= top:
        raise ValueError(f"{key} must be a whole number from 0 to {top}")
    return value


def parse(payload: bytes) -> ev.VMCallback:
    """The event a hook message stands for; ValueError says why it is none."""
    if len(payload) > MAX_BYTES:
        raise ValueError(f"{len(payload)} bytes; a callback is at most {MAX_BYTES}")
    try:
        raw: Any = strictjson.loads(payload)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    if raw.get("v") != 1 or raw.get("kind") != "callback":
        raise ValueError("not a version-1 callback (v, kind)")
    unknown = sorted(set(raw) - FIELDS)
    missing = sorted(FIELDS - set(raw))
    if unknown or missing:
        raise ValueError("; ".join(filter(None, [
            unknown and f"unknown field(s) {', '.join(unknown)}",
            missing and f"missing field(s) {', '.join(missing)}"])))
    name = raw["name"]
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise ValueError("name must be a VM name (1 to 128 characters)")
    at = raw["at"]
    if type(at) not in (int, float) or not math.isfinite(at) or at < 0:
        raise ValueError("at must be a moment (seconds since 1970)")
    return ev.VMCallback(_int(raw, "vm_id", 2**31 - 1), name, _int(raw, "state", MAX_CODE),
                         _int(raw, "lcm_state", MAX_CODE), float(at))


def callback_events(payload: bytes, cluster: str, prefix: str, state: State,
                    now: float) -> list:
    """``[vm.callback]`` for a hook message that passes every check above
    against the log's ``state`` and the boss's clock ``now``, else
    ``[input.rejected]`` saying which failed."""
    topic = hook_topic(cluster)
    try:
        event = parse(payload)
    except ValueError as exc:
        return [_rejected(str(exc), payload, topic)]
    if not event.vm_name.startswith(prefix):
        return [_rejected(f"VM {event.vm_id} {event.vm_name!r} is not this cluster's (its VMs are "
                          f"named {prefix}*)", payload, topic)]
    if abs(event.at - now) > MAX_SKEW:
        return [_rejected(f"the hook's time is {event.at - now:+.0f} s from the boss's: a callback "
                          f"this stale or early is no news (at most {MAX_SKEW:g} s)", payload, topic)]
    named = state.vm_ids.get(event.vm_id)
    if named is not None and named != event.vm_name:
        return [_rejected(f"VM {event.vm_id} is {named!r} in the log, not {event.vm_name!r}",
                          payload, topic)]
    vm = state.vms.get(event.vm_name)
    if vm is not None and vm.callback_at is not None and event.at <= vm.callback_at:
        return [_rejected(f"replayed or out of order: the log holds a callback about "
                          f"{event.vm_name} from the hook's time {vm.callback_at:.3f}, not before "
                          f"this one's {event.at:.3f}", payload, topic)]
    return [event]
