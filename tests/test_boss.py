"""The boss at its edge, in process: a real broker and a real log, with the
test playing the workers - refusals, rejected input, resends, and no ack
before the commit."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from ecloud import wire
from ecloud.boss.loop import Boss
from ecloud.errors import StoreError
from ecloud.log.url import open_store
from tests.support.brokers import Client, wait_for


class FlakyStore:
    """A real store whose appends fail while ``down`` is set (the database
    went away)."""

    def __init__(self, store) -> None:
        self._store = store
        self.down = threading.Event()
        self.refused = 0

    def append(self, events, **kw):
        if self.down.is_set():
            self.refused += 1
            raise StoreError("database unreachable (test)")
        return self._store.append(events, **kw)

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.fixture
def rig(broker, tmp_path: Path):
    """A boss on its own thread, a log, and a fake worker ``w1`` connected."""
    cluster = f"b{uuid.uuid4().hex[:8]}"
    made: list[FlakyStore] = []

    def make_store() -> FlakyStore:  # called in the boss's thread (SQLite)
        made.append(FlakyStore(open_store(f"sqlite:///{tmp_path}/boss.db")))
        return made[0]

    boss = Boss(make_store, broker.url, cluster=cluster, poll=0.05, resend_after=0.5)
    thread = threading.Thread(target=boss.run, daemon=True)
    thread.start()
    wait_for(boss.ready.is_set, 20, "the boss to start")
    worker = Client(broker.url, f"{cluster}-w1", (wire.to_topic(cluster, "w1"),),
                    clean_session=True).start()
    assert worker.subscribed.wait(10)
    made[0].url_for_tests = f"sqlite:///{tmp_path}/boss.db"
    yield boss, made[0], worker, cluster
    worker.stop()
    boss.stop()
    thread.join(20)


def logged(store: FlakyStore, type_tag: str) -> list:
    """Events of one type, read through a connection of this thread's own."""
    with open_store(store.url_for_tests, create=False) as mine:
        return [r for r in mine.read(1) if r.event.TYPE == type_tag]


def send(worker: Client, cluster: str, *reports, worker_id: str = "w1", version: int = 1) -> None:
    payload = wire.dumps(wire.WorkerPayload(worker_id, list(reports), version))
    worker.publish(wire.from_topic(cluster, worker_id), payload)


def boss_messages(worker: Client) -> list[wire.BossPayload]:
    return [wire.parse_boss_payload(p) for _, p in list(worker.messages)]


def acked(worker: Client, msg_id: str) -> int:
    return sum(m.acks.count(msg_id) for m in boss_messages(worker))


def test_a_worker_of_another_protocol_is_refused_with_a_reason(rig) -> None:
    boss, store, worker, cluster = rig
    send(worker, cluster, wire.Hello("h1", "host", 2, 99, "inc"), version=99)
    refusal = wait_for(lambda: [m.refuse for m in boss_messages(worker) if m.refuse], 10, "a refusal")
    assert refusal == ["protocol 99 not supported (boss speaks 1)"]
    assert "w1" not in boss.view["workers"]


def test_malformed_input_is_logged_as_rejected_and_changes_nothing(rig) -> None:
    boss, store, worker, cluster = rig
    topic = wire.from_topic(cluster, "w1")
    worker.publish(topic, b"{not json")
    worker.publish(topic, wire.dumps(wire.WorkerPayload("w2", [wire.Bye("x")])))  # speaks for w2
    worker.publish(topic, b'{"v": 1, "worker": "w1", "reports": [{"kind": "launch"}]}')
    worker.publish(topic, b"x" * (wire.MAX_PAYLOAD + 1))
    rejected = wait_for(lambda: r if len(r := logged(store, "input.rejected")) >= 4 else None,
                        10, "four rejections")
    reasons = [r.event.reason for r in rejected]
    assert reasons[0].startswith("not JSON")
    assert reasons[1] == "worker 'w2' speaking on the topic of 'w1'"
    assert reasons[2] == "unknown report kind 'launch'"
    assert reasons[3].startswith(f"payload of {wire.MAX_PAYLOAD + 1} bytes exceeds")
    assert all(len(r.event.excerpt) <= 201 for r in rejected)
    assert not boss.view["workers"] and not boss.view["total"]


def test_a_resent_report_is_logged_once_and_acked_every_time(rig) -> None:
    boss, store, worker, cluster = rig
    hello = wire.Hello("h1", "host", 1, 1, "inc")
    send(worker, cluster, hello)
    wait_for(lambda: acked(worker, "h1") == 1, 10, "the first ack")
    send(worker, cluster, hello)
    wait_for(lambda: acked(worker, "h1") == 2, 10, "the second ack")
    announced = logged(store, "worker.announced")
    assert len(announced) == 1


def test_nothing_is_acked_before_it_is_committed(rig) -> None:
    boss, store, worker, cluster = rig
    store.down.set()
    send(worker, cluster, wire.Hello("h1", "host", 1, 1, "inc"))
    wait_for(lambda: store.refused >= 2, 10, "the boss to try and fail to append")
    assert acked(worker, "h1") == 0 and "w1" not in boss.view["workers"]
    store.down.clear()
    wait_for(lambda: acked(worker, "h1") == 1, 10, "the ack once the database is back")
    assert boss.view["workers"]["w1"][0] == "idle"


def test_a_heartbeat_from_an_unknown_worker_asks_it_to_announce(rig) -> None:
    boss, store, worker, cluster = rig
    send(worker, cluster, wire.Heartbeat(""))
    wait_for(lambda: any(m.reannounce for m in boss_messages(worker)), 10, "a reannounce request")
    assert not logged(store, "worker.heartbeat")


def test_a_report_resent_to_the_next_boss_is_acked_not_logged_again(rig, broker) -> None:
    boss, store, worker, cluster = rig
    # (reports about tasks would be refused: this log has none; a second
    # hello of the same incarnation is a reconnect, logged like any report)
    send(worker, cluster, wire.Hello("h1", "host", 1, 1, "inc"))
    wait_for(lambda: acked(worker, "h1") == 1, 10, "the first boss's acks")
    boss.stop()
    wait_for(boss.finished.is_set, 20, "the first boss to stop")
    # the next boss has no memory of its own: only the log
    second = Boss(store.url_for_tests, broker.url, cluster=cluster, poll=0.05)
    thread = threading.Thread(target=second.run, daemon=True)
    thread.start()
    try:
        wait_for(second.ready.is_set, 20, "the second boss to start")
        send(worker, cluster, wire.Hello("h1", "host", 1, 1, "inc"),
             wire.Hello("h2", "host", 1, 1, "inc"))
        wait_for(lambda: acked(worker, "h1") == 2 and acked(worker, "h2") == 1, 10,
                 "acks from the second boss")
        assert [r.event.msg_id for r in logged(store, "worker.announced")] == ["h1", "h2"]
    finally:
        second.stop()
        thread.join(20)


def test_resends_that_piled_up_at_the_broker_are_logged_once(rig) -> None:
    """While no boss was up, a report and its resends queued at the broker;
    they arrive together: one event, and an ack only after its commit."""
    boss, store, worker, cluster = rig
    hello = wire.Hello("h1", "host", 1, 1, "inc")
    store.down.set()
    send(worker, cluster, hello, hello)
    send(worker, cluster, hello)
    wait_for(lambda: store.refused >= 2, 10, "the boss to try and fail to append")
    assert acked(worker, "h1") == 0
    store.down.clear()
    wait_for(lambda: acked(worker, "h1") >= 1, 10, "the ack once the database is back")
    assert len(logged(store, "worker.announced")) == 1
