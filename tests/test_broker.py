"""The embedded broker (ecloud.effects.messaging.broker), both flavours: Mosquitto and
the pure-Python amqtt one. Every case runs against each; where amqtt needed
help (keepalive, persistence across restarts) the help lives in
ecloud.effects.messaging.pybroker and is tested here like the rest."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing

import pytest

from ecloud.effects.messaging.broker import Broker, choose_kind, mqtt_ping, mqtt_port_free, start_broker
from ecloud.errors import ConfigError, EcloudError
from tests.support.brokers import Client, unique, wait_for

FLAVOURS = ["mosquitto", "python"]


@pytest.fixture(params=FLAVOURS)
def any_broker(request: pytest.FixtureRequest) -> Broker:
    return request.getfixturevalue(f"{request.param}_broker")


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its new parent counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def routed(broker: Broker, publisher: Client, topic_prefix: str) -> None:
    """Return once everything ``publisher`` published before is routed inside
    the broker (queued for offline sessions; amqtt writes those to its store
    moments later, and a clean shutdown waits for that): a marker message
    from ``publisher`` must come back. Both brokers route a connection's
    messages in arrival order."""
    marker = f"{topic_prefix}/marker/{unique()}"
    with Client(broker.url, unique("marker"), (marker,), clean_session=True).start() as probe:
        publisher.publish(marker, b"m")
        wait_for(lambda: probe.payloads(marker), 10, "the marker message")


def stored_for(broker: Broker, client_id: str) -> list[bytes]:
    """amqtt only: the payloads its session store holds queued for ``client_id``."""
    from ecloud.effects.messaging.pybroker import DB_FILE

    try:
        with closing(sqlite3.connect(f"file:{broker.data_dir / DB_FILE}?mode=ro", uri=True,
                                     timeout=1)) as db:
            rows = db.execute("SELECT retained FROM stored_sessions WHERE client_id = ?",
                              (client_id,)).fetchall()
    except sqlite3.Error:  # not created yet, or busy
        return []
    return [m["data"].encode() for (text,) in rows for m in json.loads(text or "[]")]


# ------------------------------------------------------------------ basics


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* shows them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.rsplit(":", 1)
                if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                    found.add(addr)
    return found


def test_qos1_round_trip(any_broker: Broker) -> None:
    assert any_broker.url == f"mqtt://127.0.0.1:{any_broker.port}"
    assert listening_addresses(any_broker.port) == {"0100007F"}  # 127.0.0.1 only, no IPv6
    with Client(any_broker.url, unique("sub"), ("jobs/#",)).start() as sub, \
            Client(any_broker.url, unique("pub")).start() as pub:
        for i in range(20):
            pub.publish(f"jobs/{i % 3}", b"%d" % i)
        wait_for(lambda: len(sub.payloads()) >= 20, 10, "20 QoS 1 messages")
        assert sub.payloads() == [b"%d" % i for i in range(20)]
        # and back: the subscriber publishes, the publisher hears it
    with Client(any_broker.url, unique("back"), ("reply",)).start() as back, \
            Client(any_broker.url, unique("pub2")).start() as pub:
        pub.publish("reply", b"pong")
        assert wait_for(lambda: back.payloads("reply"), 10, "the reply") == [b"pong"]


WILL_CLIENT = textwrap.dedent("""
    import sys, time
    from ecloud.effects.messaging.mqtt import Connection
    url, client_id, topic, keepalive = sys.argv[1:5]
    Connection(url, client_id, on_message=lambda t, p: None, keepalive=int(keepalive),
               will=(topic, b"gone:" + client_id.encode())).start(wait=10)
    print("connected", flush=True)
    time.sleep(60)
""")


def test_will_published_when_client_dies(any_broker: Broker) -> None:
    """SIGKILL: the kernel closes the socket, the broker sees it at once.
    SIGSTOP: the socket stays open and silent (a machine that lost power or
    its network) - only the keepalive (2 s here; 1.5 x that) can tell.
    A clean disconnect publishes no will."""
    topic = f"ecloud/test/from/{unique('w')}"
    ids = {how: unique(how.lower()) for how in ("SIGKILL", "SIGSTOP")}
    with Client(any_broker.url, unique("watch"), (topic,)).start() as watcher:
        procs = {how: subprocess.Popen([sys.executable, "-c", WILL_CLIENT, any_broker.url, cid, topic, "2"],
                                       stdout=subprocess.PIPE, text=True)
                 for how, cid in ids.items()}
        try:
            Client(any_broker.url, unique("leaving"), will=(topic, b"clean")).start().stop()
            routed(any_broker, watcher, "ecloud/test")  # its will would have come before this
            for proc in procs.values():
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "connected"
            assert watcher.payloads(topic) == []  # nothing while they live
            for how, proc in procs.items():
                proc.send_signal(getattr(signal, how))
            for how, cid in ids.items():
                will = b"gone:" + cid.encode()
                wait_for(lambda will=will: will in watcher.payloads(topic), 12,
                         f"the will of the client stopped by {how}")
            assert sorted(watcher.payloads(topic)) == sorted(b"gone:" + c.encode() for c in ids.values())
        finally:
            for proc in procs.values():
                proc.kill()
                proc.wait()


def test_many_concurrent_clients(any_broker: Broker) -> None:
    n = 50
    clients = [Client(any_broker.url, unique(f"c{i}"), (f"many/{i}",), clean_session=True)
               for i in range(n)]
    try:
        for c in clients:
            c.conn.start()
        for c in clients:
            wait_for(c.subscribed.is_set, 20, "all clients subscribed")
        for i, c in enumerate(clients):  # each sends one to its neighbour
            c.conn.publish(f"many/{(i + 1) % n}", b"from %d" % i)
        for i, c in enumerate(clients):
            assert wait_for(lambda c=c: c.payloads(), 20, f"client {i}'s message") == [
                b"from %d" % ((i - 1) % n)]
    finally:
        for c in clients:
            c.stop()


# ------------------------------------------------- persistence and restarts


def test_persistent_session_survives_restart(any_broker: Broker) -> None:
    topic = f"ecloud/test/to/{unique('worker')}"
    worker_id = unique("worker")
    Client(any_broker.url, worker_id, (topic,)).start().stop()  # subscribed, then offline
    with Client(any_broker.url, unique("boss")).start() as boss:
        boss.publish(topic, b"dispatch 1")  # queued for the offline worker
        routed(any_broker, boss, "ecloud/test")
    any_broker.restart()
    assert mqtt_ping("127.0.0.1", any_broker.port)

    with Client(any_broker.url, worker_id) as worker:  # no SUBSCRIBE: the session has it
        worker.start()
        assert wait_for(lambda: worker.payloads(topic), 10, "the queued message") == [b"dispatch 1"]
    # delivered once: another restart must not deliver it again (stock amqtt
    # persistence did), and the subscription is still there
    any_broker.restart()
    with Client(any_broker.url, worker_id) as worker, Client(any_broker.url, unique("boss")) as boss:
        worker.start()
        boss.start()
        boss.publish(topic, b"dispatch 2")
        wait_for(lambda: worker.payloads(topic), 10, "a message after the second restart")
        assert worker.payloads(topic) == [b"dispatch 2"]


def test_no_queue_limit_for_offline_clients(any_broker: Broker) -> None:
    """Mosquitto's default max_queued_messages (1000) would silently drop the
    rest; ours has no limit. And they come in order."""
    n = 1500
    topic = f"ecloud/test/to/{unique('worker')}"
    worker_id = unique("worker")
    Client(any_broker.url, worker_id, (topic,)).start().stop()
    with Client(any_broker.url, unique("boss")).start() as boss:
        infos = [boss.conn.client.publish(topic, b"%d" % i, qos=1) for i in range(n)]
        wait_for(lambda: all(i.is_published() for i in infos), 30, f"PUBACKs for {n} messages")
    with Client(any_broker.url, worker_id).start() as worker:
        wait_for(lambda: len(worker.payloads()) >= n, 30, f"{n} queued messages")
        assert worker.payloads() == [b"%d" % i for i in range(n)]


def test_queued_message_survives_broker_crash(any_broker: Broker) -> None:
    """After a SIGKILL the broker has what it had saved: Mosquitto autosaves
    every second, amqtt writes a queued message to its store milliseconds
    after routing it (both after the publisher's PUBACK)."""
    topic = f"ecloud/test/to/{unique('worker')}"
    worker_id = unique("worker")
    Client(any_broker.url, worker_id, (topic,)).start().stop()
    with Client(any_broker.url, unique("boss")).start() as boss:
        boss.publish(topic, b"dispatch")
        routed(any_broker, boss, "ecloud/test")
    if any_broker.kind == "mosquitto":  # wait for an autosave that includes it
        db = any_broker.data_dir / "mosquitto.db"
        after = time.time_ns()
        wait_for(lambda: db.exists() and db.stat().st_mtime_ns > after, 10, "an autosave")
    else:  # amqtt writes it just after routing it
        wait_for(lambda: stored_for(any_broker, worker_id) == [b"dispatch"], 10,
                 "the message in amqtt's session store")
    any_broker.kill()
    any_broker.start()
    with Client(any_broker.url, worker_id).start() as worker:
        assert wait_for(lambda: worker.payloads(topic), 10, "the queued message") == [b"dispatch"]


def test_kill_then_start_on_same_port(any_broker: Broker, tmp_path) -> None:
    port, pid = any_broker.port, any_broker.pid
    topic = unique("topic")
    # a client that stays up across the crash reconnects by itself
    with Client(any_broker.url, unique("stays"), (topic,)) as stays:
        stays.start()
        any_broker.kill()
        assert pid is not None and gone(pid)
        assert not any_broker.running()
        wait_for(lambda: not stays.conn.connected.is_set(), 10, "the client to notice")
        any_broker.start()
        assert (any_broker.port, any_broker.url) == (port, f"mqtt://127.0.0.1:{port}")
        wait_for(lambda: stays.subacks >= 2, 15, "the client to reconnect and resubscribe")
        with Client(any_broker.url, unique("pub")).start() as pub:
            pub.publish(topic, b"after the crash")
        assert wait_for(lambda: stays.payloads(), 10, "a message") == [b"after the crash"]
    # and a new Broker on the port a killed one held
    any_broker.kill()
    with start_broker(any_broker.kind, port=port, data_dir=tmp_path / "other") as again:
        assert again.port == port and again.kind == any_broker.kind
        assert mqtt_ping("127.0.0.1", port)


def test_two_brokers_at_once(any_broker: Broker) -> None:
    with start_broker(any_broker.kind) as second:
        assert second.port != any_broker.port
        assert second.data_dir != any_broker.data_dir
        assert mqtt_ping("127.0.0.1", any_broker.port) and mqtt_ping("127.0.0.1", second.port)
    # a port that is taken is an error, not a silent second choice
    with pytest.raises(EcloudError, match="already listens"):
        start_broker(any_broker.kind, port=any_broker.port)


def test_stop_leaves_nothing_behind(any_broker: Broker) -> None:
    pid, port, data_dir = any_broker.pid, any_broker.port, any_broker.data_dir
    assert pid is not None and not gone(pid)
    started = time.monotonic()
    any_broker.stop()
    assert time.monotonic() - started < 6  # SIGTERM, then SIGKILL after 5 s at worst
    assert gone(pid) and not any_broker.running() and any_broker.pid is None
    assert mqtt_port_free(port) and not mqtt_ping("127.0.0.1", port, timeout=0.2)
    any_broker.stop()  # idempotent
    any_broker.kill()
    assert data_dir.exists()  # kept for a restart ...
    any_broker.close()
    assert not data_dir.exists()  # ... until closed
    with pytest.raises(EcloudError, match="was closed"):
        any_broker.start()


ORPHAN = textwrap.dedent("""
    import sys, time
    from ecloud.effects.messaging.broker import start_broker
    broker = start_broker(sys.argv[1], data_dir=sys.argv[2])
    print(broker.pid, flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("kind", FLAVOURS)
def test_broker_dies_with_the_process_that_started_it(kind: str, tmp_path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN, kind, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent said {line!r}"
        broker_pid = int(line)
        assert not gone(broker_pid)
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: gone(broker_pid), 10, "the orphaned broker to exit")


# ---------------------------------------------------------------- choosing


def test_startup_failure_quotes_the_log(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ecloud.effects.messaging.broker as broker_mod

    real = broker_mod.mosquitto_config
    monkeypatch.setattr(broker_mod, "mosquitto_config",
                        lambda port, d: real(port, d) + "no_such_option 1\n")
    with pytest.raises(EcloudError, match="(?s)exited with status.*no_such_option"):
        start_broker("mosquitto", data_dir=tmp_path)


def test_default_broker_fixture(broker: Broker) -> None:
    assert broker.kind == choose_kind("auto")  # ECLOUD_EMBEDDED_BROKER decides, if set
    topic = unique("t")
    with Client(broker.url, unique("sub"), (topic,), clean_session=True).start() as sub, \
            Client(broker.url, unique("pub"), clean_session=True).start() as pub:
        pub.publish(topic, b"x")
        assert wait_for(lambda: sub.payloads(topic), 10, "a message") == [b"x"]


def test_choose_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECLOUD_EMBEDDED_BROKER", "python")
    assert choose_kind("auto") == "python"
    assert choose_kind("mosquitto") == "mosquitto"  # only "auto" is overridden
    monkeypatch.setenv("ECLOUD_EMBEDDED_BROKER", "mosquitto")
    assert choose_kind("auto") == "mosquitto"
    monkeypatch.setenv("ECLOUD_EMBEDDED_BROKER", "rabbit")
    with pytest.raises(ConfigError, match="ECLOUD_EMBEDDED_BROKER"):
        choose_kind("auto")
    monkeypatch.delenv("ECLOUD_EMBEDDED_BROKER")
    assert choose_kind("auto") == ("mosquitto" if shutil.which("mosquitto") else "python")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert choose_kind("auto") == "python"
    with pytest.raises(EcloudError, match="mosquitto is not on PATH"):
        choose_kind("mosquitto")


def test_shared_broker_is_reachable(shared_mqtt_url: str) -> None:
    topic = f"ecloud/test/{unique('shared')}"
    with Client(shared_mqtt_url, unique("sub"), (topic,), clean_session=True).start() as sub, \
            Client(shared_mqtt_url, unique("pub"), clean_session=True).start() as pub:
        pub.publish(topic, b"hi")
        assert wait_for(lambda: sub.payloads(topic), 10, "a message via the shared broker") == [b"hi"]
