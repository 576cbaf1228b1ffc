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
- a VM name the log holds under another id (names need not be unique
  across OpenNebula's users);
- a name that is no VM name of ecloud's (letters, digits, '.', '_', '-');
- replayed or out of order: not later than the last callback heard for that
  VM (in the log, or earlier in the batch being appended);
- stale: ``at`` more than :data:`MAX_AGE` seconds before the boss's clock
  (the poll has seen that change long since); or early: more than
  :data:`MAX_AHEAD` seconds after it (a clock that far ahead would make
  every genuine callback after it look out of order).

The broker decides who may publish there (``ecloud broker config`` gives
the hook an account of its own, and no worker account may write the hook
topic): a worker's forgery never reaches the boss, and one sent on the
worker's own topic is refused there as not a worker's message.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ecloud import strictjson
from ecloud.boss.edge import rejected
from ecloud.events import types as ev
from ecloud.projections.state import State
from onehook.hook import hook_topic

#: the most a callback message may weigh (the hook's are about 120 bytes)
MAX_BYTES = 1024
#: the oldest a callback may be, by the boss's clock, in seconds
MAX_AGE = 600.0
#: the farthest ahead of the boss's clock the hook's may be, in seconds
MAX_AHEAD = 30.0
#: a VM name as ecloud makes them (and as a terminal shows them safely)
VM_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: OpenNebula's VM STATE and LCM_STATE codes are small numbers; anything far
#: outside is no VM's
MAX_CODE = 255
FIELDS = {"v", "kind", "vm_id", "name", "state", "lcm_state", "at"}

__all__ = ["MAX_AGE", "MAX_AHEAD", "MAX_BYTES", "callback_events", "hook_topic"]


def _rejected(reason: str, payload: bytes, topic: str) -> ev.InputRejected:
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
    if not isinstance(name, str) or not VM_NAME.fullmatch(name):
        raise ValueError("name must be a VM name (1 to 128 letters, digits, '.', '_' or '-')")
    at = raw["at"]
    if type(at) not in (int, float) or not math.isfinite(at) or at < 0:
        raise ValueError("at must be a moment (seconds since 1970)")
    return ev.VMCallback(_int(raw, "vm_id", 2**31 - 1), name, _int(raw, "state", MAX_CODE),
                         _int(raw, "lcm_state", MAX_CODE), float(at))


def callback_events(payload: bytes, cluster: str, prefix: str, state: State, now: float,
                    heard: dict[str, float] | None = None) -> list:
    """``[vm.callback]`` for a hook message that passes every check above
    against the log's ``state`` and the boss's clock ``now``, else
    ``[input.rejected]`` saying which failed. ``heard`` (VM name -> the
    hook's time of the last callback accepted) covers what is not folded
    yet: it is updated with each one accepted."""
    topic = hook_topic(cluster)
    try:
        event = parse(payload)
    except ValueError as exc:
        return [_rejected(str(exc), payload, topic)]
    if not event.vm_name.startswith(prefix):
        return [_rejected(f"VM {event.vm_id} {event.vm_name!r} is not this cluster's (its VMs are "
                          f"named {prefix}*)", payload, topic)]
    if not -MAX_AGE <= event.at - now <= MAX_AHEAD:
        return [_rejected(f"the hook's time is {event.at - now:+.3g} s from the boss's: a callback "
                          f"this stale or early is no news (at most {MAX_AGE:g} s old, "
                          f"{MAX_AHEAD:g} s ahead)", payload, topic)]
    named = state.vm_ids.get(event.vm_id)
    if named is not None and named != event.vm_name:
        return [_rejected(f"VM {event.vm_id} is {named!r} in the log, not {event.vm_name!r}",
                          payload, topic)]
    vm = state.vms.get(event.vm_name)
    if vm is not None and vm.vm_id is not None and vm.vm_id != event.vm_id:
        return [_rejected(f"{event.vm_name!r} is VM {vm.vm_id} in the log, not VM {event.vm_id} "
                          "(another user's VM of the same name?)", payload, topic)]
    last = max((t for t in ((vm.callback_at if vm is not None else None),
                            (heard or {}).get(event.vm_name)) if t is not None), default=None)
    if last is not None and event.at <= last:
        return [_rejected(f"replayed or out of order: a callback about {event.vm_name} from the "
                          f"hook's time {last:.3f} was heard, not before this one's {event.at:.3f}",
                          payload, topic)]
    if heard is not None:
        heard[event.vm_name] = event.at
    return [event]
