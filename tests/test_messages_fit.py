"""Every boss message fits what a worker accepts: dispatches that would not
fit in one are split over several (a task at its limits always fits)."""

from __future__ import annotations

from ecloud import limits, wire
from ecloud.effects.messaging.outbox import Outbox
from ecloud.events.types import TaskSpec
from ecloud.projections.effects import Ack, Dispatch


def test_dispatches_too_big_for_one_message_go_in_several_that_each_parse() -> None:
    sent: list[tuple[str, bytes]] = []
    outbox = Outbox(lambda topic, payload: sent.append((topic, payload)), "c")
    big = "x" * (limits.COMMAND_BYTES - 10)
    env = {f"V{i}": "v" * 100_000 for i in range(7)}  # ~0.8 MB: a task near its 1 MiB limit
    effects = [Ack(1, "w", "m1")] + [
        Dispatch(1, f"t{i}", 1, "w", TaskSpec(f"t{i}", big, env=env)) for i in range(12)]
    outbox.perform(effects)
    outbox.flush()
    assert len(sent) > 1
    dispatched, acks = [], []
    for topic, payload in sent:
        assert topic == "ecloud/c/to/w" and len(payload) <= limits.BOSS_MESSAGE_BYTES
        message = wire.parse_boss_payload(payload)  # the worker's own check
        dispatched += [d.task_id for d in message.dispatch]
        acks += message.acks
    assert dispatched == [f"t{i}" for i in range(12)] and acks == ["m1"]
