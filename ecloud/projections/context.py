"""Context: the cluster-wide settings the operator (or the boss) sets.

The seed kept a ``Context`` table with the boss and datastore addresses; here
it is folded from ``context.set`` / ``context.dropped`` events. Values are
stored as the strings the operator gave; :data:`KEYS` says how each key is
checked and read, and what it defaults to when unset.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from attrs import frozen

from ecloud.events.types import ContextDropped, ContextSet
from ecloud.projections.state import LIVE, T_HEARTBEAT, State

# ---------------------------------------------------- numbers the state can hold

#: The integers a log or a snapshot can hold: both are JSON written and read
#: by orjson, which knows -2**63 .. 2**64-1. A bigger number can only come
#: from a body built by hand; the reducers refuse an event that would put one
#: into the state, since no snapshot could be written of it afterwards.
LOWEST_INT = -(2**63)
HIGHEST_INT = 2**64 - 1
#: The latest moment the state can name: a deadline computed past it (a
#: clock near the largest float plus a delay overflows to infinity, which
#: JSON cannot hold) is this one instead - "never", as far as any clock goes.
LATEST = sys.float_info.max


def storable(number: int | None) -> bool:
    """Whether an integer (or None) fits in a log or a snapshot."""
    return number is None or LOWEST_INT <= number <= HIGHEST_INT


def number_text(number: object) -> str:
    """``str(number)`` for the messages of rejections and failures. CPython
    refuses to turn an int of more than 4,300 digits into a string (it
    raises ValueError), and a message must never be what makes the fold raise."""
    if isinstance(number, int) and number.bit_length() > 12_000:  # about 3,600 digits
        return f"{'-' if number < 0 else ''}<an integer of {number.bit_length()} bits>"
    return str(number)


def bounded_time(when: float) -> float:
    """A moment computed as the clock plus a delay, as the state keeps it:
    never infinite (nor nan), so that it survives a snapshot."""
    if when <= LATEST:
        return when if when >= -LATEST else -LATEST
    return LATEST  # inf, or nan (an infinite clock minus an infinite delay)


def ahead_of(per_slot: int, slots: int) -> int:
    """The dispatches a quick worker with ``slots`` slots may hold queued:
    ``per_slot`` per slot, but never so many that its slots and its queue
    together pass :data:`HIGHEST_INT` (``queue_ahead`` may be any whole
    number), so that what it holds can always be written down."""
    return max(0, min(per_slot * slots, HIGHEST_INT - slots))


# --------------------------------------------------------------------- the keys


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


#: the longest duration a context key may name (a year): longer is no
#: setting anyone means, and far-off moments have no calendar date
MAX_SECONDS = 365 * 86_400.0


def _seconds(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or not 0 < number <= MAX_SECONDS:
        raise ValueError(f"must be a number of seconds > 0, at most {MAX_SECONDS:,.0f}")
    return number


def _seconds_or_zero(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= MAX_SECONDS:
        raise ValueError(f"must be a number of seconds from 0 to {MAX_SECONDS:,.0f}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be a whole number >= 0") from None
    if number < 0:
        raise ValueError("must be a whole number >= 0")
    return number


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be a whole number >= 1") from None
    if number < 1:
        raise ValueError("must be a whole number >= 1")
    return number


@frozen
class Key:
    description: str
    parse: Callable[[str], object]
    default: str | None = None


KEYS: dict[str, Key] = {
    "boss_address": Key("address (host or host:port) workers use to reach the boss's broker", _text),
    "datastore_address": Key("datastore workers pull inputs from and push results to", _text),
    "datastore_id": Key("the id in the datastore root's .ecloud-datastore marker (ecloud datastore "
                        "set writes both): a worker pushes nothing to a root without it", _text),
    "heartbeat_timeout": Key("seconds of silence after which a worker is lost", _seconds, "30"),
    "timeout_grace": Key(
        "seconds the boss waits past a task's timeout before failing the attempt itself",
        _seconds,
        "30",
    ),
    "max_backoff": Key("upper bound in seconds on a retry's or a VM request's backoff", _seconds,
                       "3600"),
    "kill_retry": Key("seconds before a kill of a VM the cloud still has is asked for again "
                      "(doubling each time, at most max_backoff)", _seconds, "30"),
    "queue_ahead": Key("dispatches per slot a worker may hold queued while its tasks are short "
                       "(its last one ended within 1 s); it gives back any that waits 2 s; "
                       "0 turns queueing off", _count, "2"),
    # the autoscaling policy (ecloud/projections/autoscale.py; `ecloud scale`)
    "max_workers": Key("most worker VMs, live plus booting; 0 turns autoscaling off", _count, "0"),
    "min_workers": Key("worker VMs always kept, live plus booting", _count, "0"),
    "slots_per_worker": Key("slots a new worker VM offers (sizes the demand)", _positive, "1"),
    "max_booting": Key("most worker VMs booting at once (requested, worker not announced)",
                       _positive, "4"),
    "idle_timeout": Key("seconds a worker stays idle before its VM is killed (above min_workers)",
                        _seconds, "300"),
    "boot_timeout": Key("seconds a new VM has for its worker to announce before it is replaced",
                        _seconds, "600"),
    "spawn_backoff": Key("seconds before the next VM request after the cloud refused one; "
                         "doubles with each refusal in a row, up to max_backoff",
                         _seconds_or_zero, "30"),
}

#: the context keys of the autoscaling policy, in the order `ecloud scale` shows them
SCALING_KEYS = ("max_workers", "min_workers", "slots_per_worker", "max_booting", "idle_timeout",
                "boot_timeout", "spawn_backoff")


def check(key: str, value: str) -> str | None:
    """Why ``key = value`` cannot be set, or None when it can."""
    spec = KEYS.get(key)
    if spec is None:
        return f"unknown context key {key!r} (known: {', '.join(sorted(KEYS))})"
    try:
        spec.parse(value)
    except ValueError as exc:
        return f"{key}: {value!r} {exc}" if str(exc) else f"{key}: bad value {value!r}"
    return None


_parsed: dict[tuple[str, str], object] = {}


def get(state: State, key: str) -> object:
    """The parsed value of ``key``, or its default (None when it has none)."""
    raw = state.context.get(key, KEYS[key].default)
    if raw is None:
        return None
    value = _parsed.get((key, raw))
    if value is None:  # parsing is pure, so remembering it is too
        value = _parsed[(key, raw)] = KEYS[key].parse(raw)
    return value


def policy_problem(values: dict[str, str]) -> str | None:
    """Why a set of values for the policy keys (unset keys: their defaults)
    does not make sense together, or None."""
    parsed = {key: KEYS[key].parse(values.get(key) or KEYS[key].default)  # type: ignore[arg-type]
              for key in ("min_workers", "max_workers")}
    if parsed["min_workers"] > parsed["max_workers"]:  # type: ignore[operator]
        return (f"min_workers {parsed['min_workers']} is more than max_workers "
                f"{parsed['max_workers']}")
    return None


def heartbeat_timeout(state: State) -> float:
    return float(get(state, "heartbeat_timeout"))  # type: ignore[arg-type]


def on_context_set(state: State, event: ContextSet, seq: int, out: list) -> None:
    problem = check(event.key, event.value)
    if problem is not None:
        state.reject(seq, "context", problem)
        return
    state.context[event.key] = event.value
    if event.key == "heartbeat_timeout":
        _rearm_heartbeats(state)
    elif event.key == "queue_ahead":
        _resize_queues(state)


def on_context_dropped(state: State, event: ContextDropped, seq: int, out: list) -> None:
    state.context.pop(event.key, None)
    if event.key == "heartbeat_timeout":
        _rearm_heartbeats(state)
    elif event.key == "queue_ahead":
        _resize_queues(state)


def queue_ahead(state: State) -> int:
    return int(get(state, "queue_ahead"))  # type: ignore[arg-type]


def _resize_queues(state: State) -> None:
    """Every quick worker's queue ahead follows a new ``queue_ahead``."""
    per_slot = queue_ahead(state)
    for wid in sorted(state.workers):
        worker = state.workers[wid]
        listed = state.is_listed_free(worker)
        worker.ahead = ahead_of(per_slot, worker.slots) if worker.quick else 0
        state.refresh_free(worker, listed)


def _rearm_heartbeats(state: State) -> None:
    """A shorter heartbeat timeout makes the armed timers late: arm each live
    worker's at its new deadline (a snapshot rebuilds them from the new
    timeout, so a fold through one must see the same deadlines). Under rules
    2 a deadline already past makes the worker overdue at once, and one in
    the future takes it off the overdue list (:mod:`.liveness`); under rules
    1 a past deadline fires with the next event, as it always did."""
    timeout = heartbeat_timeout(state)
    for wid in sorted(state.workers):
        worker = state.workers[wid]
        if worker.status not in LIVE:
            continue
        deadline = worker.last_seen + timeout
        if worker.will_at is not None:
            deadline = min(deadline, worker.will_at + timeout / 3)  # liveness.deadline
        if state.rules >= 2 and deadline <= state.clock:
            state.overdue[wid] = None
        else:
            state.overdue.pop(wid, None)
            state.arm(deadline, T_HEARTBEAT, wid, worker.incarnation)
