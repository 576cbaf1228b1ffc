"""Context: the cluster-wide settings the operator (or the boss) sets.

The seed kept a ``Context`` table with the boss and datastore addresses; here
it is folded from ``context.set`` / ``context.dropped`` events. Values are
stored as the strings the operator gave; :data:`KEYS` says how each key is
checked and read, and what it defaults to when unset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attrs import frozen

from ecloud.events.types import ContextDropped, ContextSet
from ecloud.projections.state import State


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _seconds(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a positive number of seconds")
    return number


@frozen
class Key:
    description: str
    parse: Callable[[str], object]
    default: str | None = None


KEYS: dict[str, Key] = {
    "boss_address": Key("address (host or host:port) workers use to reach the boss's broker", _text),
    "datastore_address": Key("datastore workers pull inputs from and push results to", _text),
    "heartbeat_timeout": Key("seconds of silence after which a worker is lost", _seconds, "30"),
    "timeout_grace": Key(
        "seconds the boss waits past a task's timeout before failing the attempt itself",
        _seconds,
        "30",
    ),
    "max_backoff": Key("upper bound in seconds on a retry's backoff", _seconds, "3600"),
}


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


def heartbeat_timeout(state: State) -> float:
    return float(get(state, "heartbeat_timeout"))  # type: ignore[arg-type]


def on_context_set(state: State, event: ContextSet, seq: int, out: list) -> None:
    problem = check(event.key, event.value)
    if problem is not None:
        state.reject(seq, "context", problem)
        return
    state.context[event.key] = event.value


def on_context_dropped(state: State, event: ContextDropped, seq: int, out: list) -> None:
    state.context.pop(event.key, None)
