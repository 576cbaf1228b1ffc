"""The event codec: every registered event survives encode/decode; bad input
becomes a CodecError that says what and where."""

from __future__ import annotations

import types
import typing

import attrs
import orjson
import pytest
from attrs import frozen
from hypothesis import given, settings
from hypothesis import strategies as st

from ecloud.errors import CodecError
from ecloud.events import codec
from ecloud.events.codec import decode, encode, upcaster
from ecloud.events.types import (
    EVENT_TYPES,
    Command,
    Event,
    InputSpec,
    TaskCancelled,
    TaskFinished,
    TaskSpec,
    TasksSubmitted,
    event,
)

# ------------------------------------------------------------------ strategies by type

# JSON-safe scalars: orjson handles 64-bit integers, finite floats and valid UTF-8.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
COMMAND = st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=4).map(tuple))

SCALARS: dict[object, st.SearchStrategy] = {str: TEXT, int: INTS, float: FLOATS, bool: st.booleans()}


def strategy_for(tp: object) -> st.SearchStrategy:
    """A strategy for values of the (resolved) field type ``tp``.

    Raises TypeError for a type it does not know, so a new kind of field in an
    event makes the coverage test fail instead of being skipped.
    """
    if tp == Command:
        return COMMAND
    if tp == Command | None:  # a script of a node: a command, or none
        return st.one_of(st.none(), COMMAND)
    if tp in SCALARS:
        return SCALARS[tp]
    if tp is type(None):
        return st.none()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in args))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is tuple and args and Ellipsis not in args:  # a fixed-length tuple
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if isinstance(tp, type) and attrs.has(tp):
        return builds_for(tp)
    raise TypeError(f"no strategy for field type {tp!r}")


def builds_for(cls: type) -> st.SearchStrategy:
    """``st.builds(cls, field=strategy, ...)`` over every attrs field of ``cls``."""
    attrs.resolve_types(cls)
    return st.builds(cls, **{f.name: strategy_for(f.type) for f in attrs.fields(cls)})


TAGS = sorted(EVENT_TYPES)


def test_every_registered_type_has_a_strategy():
    """Iterates the live registry: an event added later is covered automatically,
    and one with a field type the strategies do not know fails here."""
    assert len(TAGS) >= 20
    for tag, cls in EVENT_TYPES.items():
        assert cls.TYPE == tag
        builds_for(cls)  # raises TypeError for an unknown field type


def test_nested_strategies_cover_taskspec_and_inputspec():
    # TasksSubmitted carries TaskSpec, which carries InputSpec, Command and a dict.
    builds_for(TaskSpec)
    builds_for(InputSpec)


@pytest.mark.parametrize("tag", TAGS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip(tag, data):
    cls = EVENT_TYPES[tag]
    ev = data.draw(builds_for(cls))
    stored_tag, version, body = encode(ev)
    assert (stored_tag, version) == (tag, cls.VERSION)
    assert isinstance(body, bytes)
    assert decode(stored_tag, version, body) == ev
    assert decode(stored_tag, version, body.decode()) == ev  # str bodies too
    assert decode(stored_tag, version, orjson.loads(body)) == ev  # and parsed dicts


def test_argv_command_comes_back_as_a_tuple():
    spec = TaskSpec(id="a", command=("ls", "-l"), env={"X": "1"},
                    inputs=(InputSpec(path="o", from_task="z"),))
    ev = TasksSubmitted(batch_id="b1", tasks=(spec,))
    tag, version, body = encode(ev)
    assert orjson.loads(body)["tasks"][0]["command"] == ["ls", "-l"]
    back = decode(tag, version, body)
    assert back == ev and back.tasks[0].command == ("ls", "-l")


# ------------------------------------------------------------------ errors


def test_unknown_tag_names_tag_and_seq():
    with pytest.raises(CodecError) as info:
        decode("task.exploded", 1, b"{}", seq=42)
    assert str(info.value) == "seq 42: unknown event type 'task.exploded'"


def test_encoding_an_unregistered_class_fails():
    @frozen
    class Stray(Event):
        x: int = 0

    with pytest.raises(CodecError, match="Stray is not a registered event type"):
        encode(Stray())


def test_malformed_json_body():
    with pytest.raises(CodecError) as info:
        decode("task.cancelled", 1, b'{"task_id": "a",', seq=7)
    assert str(info.value).startswith("seq 7: task.cancelled body is not valid JSON: ")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null"])
def test_body_that_is_not_an_object(body):
    with pytest.raises(CodecError, match=r"^seq 3: task.cancelled body must be a JSON object"):
        decode("task.cancelled", 1, body, seq=3)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",  # missing a required field
        b'{"task_id": "a", "attempt": "x", "worker_id": "w"}',  # wrong type
        b'{"task_id": "a", "attempt": 1, "worker_id": "w", "colour": "red"}',  # unknown key
    ],
)
def test_body_of_the_wrong_shape(body):
    with pytest.raises(CodecError, match=r"^seq 9: task.dispatched v1 body does not fit: "):
        decode("task.dispatched", 1, body, seq=9)


def test_number_in_a_string_field_is_rejected():
    with pytest.raises(CodecError,
                       match=r"seq 9: task.cancelled v1 body does not fit: .*expected str @ \$.task_id"):
        decode("task.cancelled", 1, b'{"task_id": 5}', seq=9)


@pytest.mark.parametrize("attempt", ["1.7", "true", '"1"'])
def test_integer_fields_take_only_integers(attempt):
    body = b'{"task_id": "a", "attempt": %s, "worker_id": "w"}' % attempt.encode()
    with pytest.raises(CodecError, match=r"expected int @ \$.attempt"):
        decode("task.started", 1, body)


def test_a_float_field_takes_an_integer():
    body = b'{"task_id": "a", "attempt": 1, "worker_id": "w", "exit_code": 0, "duration": 3}'
    assert decode("task.finished", 1, body).duration == 3.0


def test_wrong_shape_deep_inside_a_batch():
    good = orjson.loads(encode(TasksSubmitted(batch_id="b", tasks=(TaskSpec("a", "true"),)))[2])
    good["tasks"][0]["command"] = []
    with pytest.raises(CodecError, match="tasks.submitted v1 body does not fit"):
        decode("tasks.submitted", 1, orjson.dumps(good))


def test_body_from_a_future_version():
    with pytest.raises(CodecError) as info:
        decode("task.cancelled", TaskCancelled.VERSION + 1, b'{"task_id": "a"}', seq=11)
    assert str(info.value) == (
        f"seq 11: task.cancelled v{TaskCancelled.VERSION + 1} was written by a newer ecloud "
        f"(this one reads up to v{TaskCancelled.VERSION})"
    )


def test_decoding_does_not_need_a_seq():
    with pytest.raises(CodecError) as info:
        decode("nope", 1, b"{}")
    assert str(info.value) == "unknown event type 'nope'"


# ------------------------------------------------------------------ upcasting

UPCAST_TAG = "test.upcast"


@frozen
class _Renamed(Event):
    """v2 of a test-only event: v1 called ``who`` ``name`` and had no ``count``."""

    who: str
    count: int


def _v1_to_v2(body: dict) -> dict:
    body["who"] = body.pop("name")
    body["count"] = 0
    return body


@pytest.fixture
def upcast_event():
    """Register the test event (at v2) and its v1 -> v2 upcaster, then remove both,
    so the registry other tests iterate is left as it was."""
    assert UPCAST_TAG not in EVENT_TYPES
    cls = event(UPCAST_TAG, version=2)(_Renamed)
    upcaster(UPCAST_TAG, 1)(_v1_to_v2)
    try:
        yield cls
    finally:
        del EVENT_TYPES[UPCAST_TAG]
        codec._UPCASTERS.pop((UPCAST_TAG, 1), None)


def test_old_body_is_upcast_on_load(upcast_event):
    assert decode(UPCAST_TAG, 1, b'{"name": "w1"}', seq=5) == upcast_event(who="w1", count=0)
    # the current version loads as is, and round-trips
    current = upcast_event(who="w2", count=3)
    assert encode(current) == (UPCAST_TAG, 2, b'{"who":"w2","count":3}')
    assert decode(*encode(current)) == current


def test_missing_upcaster_step_is_a_codec_error(upcast_event):
    with pytest.raises(CodecError) as info:
        decode(UPCAST_TAG, 0, b"{}", seq=6)
    assert str(info.value) == f"seq 6: no upcaster for {UPCAST_TAG} v0 -> v1"


def test_future_body_of_upcast_event(upcast_event):
    with pytest.raises(CodecError, match=r"^seq 8: test.upcast v3 was written by a newer ecloud"):
        decode(UPCAST_TAG, 3, b'{"who": "w", "count": 1}', seq=8)


def test_finished_event_with_nullable_fields():
    ev = TaskFinished(task_id="t", attempt=1, worker_id="w", exit_code=None, signal=9, reason="timeout")
    assert decode(*encode(ev)) == ev


@settings(max_examples=200, deadline=None)
@given(spec=builds_for(TaskSpec))
def test_the_snapshots_hand_written_spec_codec_agrees_with_the_converter(spec):
    """Snapshots write and read task specs by hand, for speed; through JSON,
    that must be exactly what the converter writes, and read back equal."""
    from ecloud.events.codec import converter
    from ecloud.projections.snapshot import _spec_in, _spec_out

    by_hand = orjson.loads(orjson.dumps(_spec_out(spec)))
    assert by_hand == orjson.loads(orjson.dumps(converter.unstructure(spec)))
    assert _spec_in(by_hand) == spec
