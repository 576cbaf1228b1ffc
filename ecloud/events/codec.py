"""The one converter between events and their stored form.

Stored form: a type tag, a schema version and a JSON body (UTF-8 bytes).
:func:`encode` and :func:`decode` are the only way in and out; everything else
(stores, CLI, MQTT edge) goes through them.

Evolution: when an event's body changes shape, bump its ``version`` in
:mod:`ecloud.events.types` and register an upcaster from the old version with
:func:`upcaster`. :func:`decode` applies upcasters one version at a time until
the body has the current shape, so a log written years ago still replays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from cattrs.errors import BaseValidationError
from cattrs.gen import make_dict_unstructure_fn, override
from cattrs.preconf.orjson import make_converter

from ecloud.errors import CodecError
from ecloud.events.types import (
    EVENT_TYPES,
    BossStarted,
    Command,
    InputRejected,
    NodeSpec,
    TaskFinished,
    TaskSpec,
    TasksSubmitted,
    WorkerAnnounced,
    WorkerHeartbeat,
    WorkerLeft,
    WorkerLost,
)

converter = make_converter(forbid_extra_keys=True)
"""The converter all of ecloud uses for events, effects and snapshots."""


def _structure_command(value: Any, _type: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError("command must be a string or a non-empty list of strings")


converter.register_structure_hook_func(lambda t: t == Command, _structure_command)
converter.register_unstructure_hook_func(
    lambda t: t == Command, lambda v: v if isinstance(v, str) else list(v)
)
_OPTIONAL_COMMAND = Command | None
converter.register_structure_hook_func(
    lambda t: t == _OPTIONAL_COMMAND,
    lambda v, t: None if v is None else _structure_command(v, t))
converter.register_unstructure_hook_func(
    lambda t: t == _OPTIONAL_COMMAND,
    lambda v: v if v is None or isinstance(v, str) else list(v))

def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _type: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: Any, _type: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


# cattrs would turn 5 into "5" and 1.7 into 1: a body of the wrong type must be
# an error, not a silent conversion.
converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)


def _strict_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


converter.register_structure_hook(bool, _strict_bool)  # else bool (an int) takes the int hook

# Fields added to an event later are stored only when they differ from their
# default: bodies that do not need them stay as they were before the fields
# existed, so older readers still read them (and the log does not grow).
# (Inner classes first: a hook is built with the hooks of its fields as
# they are at that moment.)
_LATER_FIELDS = {
    NodeSpec: tuple(a.name for a in NodeSpec.__attrs_attrs__),  # type: ignore[attr-defined]
    TaskSpec: ("node",),
    TasksSubmitted: ("limits",),
    TaskFinished: ("returned", "stage"),
    WorkerHeartbeat: ("incarnation",),
    WorkerLeft: ("incarnation",),
    WorkerLost: ("incarnation", "silent_since", "will"),
    BossStarted: ("rules",),
    InputRejected: ("sender", "msg_id"),
    WorkerAnnounced: ("running",),
}
for _cls, _names in _LATER_FIELDS.items():
    converter.register_unstructure_hook(_cls, make_dict_unstructure_fn(
        _cls, converter, **{name: override(omit_if_default=True) for name in _names}))

Upcaster = Callable[[dict], dict]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(tag: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``fn(body) -> body`` turning version ``from_version`` of ``tag``
    into version ``from_version + 1``."""

    def register(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(tag, from_version)] = fn
        return fn

    return register


def encode(event: Any) -> tuple[str, int, bytes]:
    """Return ``(type tag, version, JSON body)`` for an event instance."""
    cls = type(event)
    tag = getattr(cls, "TYPE", None)
    if tag is None or EVENT_TYPES.get(tag) is not cls:
        raise CodecError(f"{cls.__name__} is not a registered event type")
    return tag, cls.VERSION, orjson.dumps(converter.unstructure(event, cls))


_hooks: dict[type, Callable[[Any, type], Any]] = {}


def _hook(cls: type) -> Callable[[Any, type], Any]:
    hook = _hooks.get(cls)
    if hook is None:
        hook = _hooks[cls] = converter.get_structure_hook(cls)
    return hook


def decode(tag: str, version: int, body: bytes | str | dict, seq: int | None = None) -> Any:
    """Turn a stored ``(tag, version, body)`` back into an event instance.

    Raises :class:`CodecError` naming the seq (when known), the tag and what is
    wrong, for an unknown tag, a version from the future, a body that is not
    JSON or one that does not fit the event's shape.
    """
    where = f"seq {seq}: " if seq is not None else ""
    cls = EVENT_TYPES.get(tag)
    if cls is None:
        raise CodecError(f"{where}unknown event type {tag!r}")
    if isinstance(body, dict):
        data = body
    else:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise CodecError(f"{where}{tag} body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CodecError(f"{where}{tag} body must be a JSON object, got {type(data).__name__}")
    if version != cls.VERSION:
        data = _upcast(tag, version, cls.VERSION, data, where)
    try:
        return _hook(cls)(data, cls)
    except (BaseValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CodecError(f"{where}{tag} v{cls.VERSION} body does not fit: {describe(exc)}") from None


def _upcast(tag: str, version: int, current: int, data: dict, where: str) -> dict:
    if version > current:
        raise CodecError(
            f"{where}{tag} v{version} was written by a newer ecloud (this one reads up to v{current})"
        )
    while version < current:
        step = _UPCASTERS.get((tag, version))
        if step is None:
            raise CodecError(f"{where}no upcaster for {tag} v{version} -> v{version + 1}")
        data = step(dict(data))
        version += 1
    return data


def describe(exc: BaseException) -> str:
    """A one-line account of a (possibly grouped) cattrs structuring error."""
    if isinstance(exc, BaseValidationError):
        try:
            from cattrs import transform_error

            return "; ".join(transform_error(exc))
        except Exception:  # pragma: no cover - transform_error is best effort
            pass
    return str(exc) or type(exc).__name__

