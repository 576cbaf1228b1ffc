"""MQTT broker fixtures and helpers for the tests.

Fixtures (register with ``pytest_plugins = ["tests.support.brokers"]`` in the root
``conftest.py``, or import them into a test module):

- ``broker``: a private broker of the default flavour (``start_broker()``:
  Mosquitto when on PATH, else amqtt; ``ECLOUD_EMBEDDED_BROKER`` overrides),
  on a free port of 127.0.0.1, stopped and its directory removed afterwards;
- ``mosquitto_broker`` / ``python_broker``: the same, of that flavour. When
  the flavour cannot run here (no ``mosquitto`` on PATH, ``amqtt`` not
  installed), the test FAILS saying so - it never skips;
- ``shared_mqtt_url`` (session): the machine's Mosquitto,
  ``ECLOUD_TEST_MQTT`` (default ``mqtt://127.0.0.1:1883``), checked once with
  an MQTT CONNECT; unreachable makes the test fail, never skip. Tests using it
  share it with everything else on the machine: use unique client ids and
  topics (:func:`unique`).

Helpers: :func:`wait_for` (poll a condition until a deadline - tests use it
instead of sleeping), :class:`Client` (a started
:class:`ecloud.effects.messaging.mqtt.Connection` that records what it receives and
knows when its subscriptions are acknowledged), :func:`unique`.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from ecloud.effects.messaging.broker import Broker, mqtt_ping, start_broker
from ecloud.effects.messaging.mqtt import Connection, MqttAuth, parse_broker_url
from ecloud.errors import EcloudError

T = TypeVar("T")

SHARED_MQTT = os.environ.get("ECLOUD_TEST_MQTT", "mqtt://127.0.0.1:1883")


# ---------------------------------------------------------------- helpers


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "the condition",
             interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy and return that;
    fail the test after ``timeout`` seconds, naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        time.sleep(interval)


def unique(prefix: str = "t") -> str:
    """A name no other test (or test run) uses: for client ids and topics."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


class Client:
    """A :class:`Connection` that records every message it receives, in
    order, and (re)subscribes to ``topics`` on every connection.

    ``subscribed`` is set once the broker has acknowledged the subscriptions
    (SUBACK) of the current connection: publish to them only after that.
    ``subacks`` counts the connections whose subscriptions were acknowledged
    (wait for it to grow to know a reconnection is complete)."""

    def __init__(self, url: str, client_id: str, topics: tuple[str, ...] = (), *,
                 clean_session: bool = False, will: tuple[str, bytes] | None = None,
                 auth: MqttAuth | None = None) -> None:
        self.topics = topics
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.subacks = 0
        self._pending: set[int] = set()
        self.conn = Connection(url, client_id, on_message=self._on_message, on_connect=self._on_connect,
                               clean_session=clean_session, will=will, auth=auth)
        self.conn.client.on_subscribe = self._on_subscribe

    def start(self, wait: float = 10.0) -> Client:
        self.conn.start(wait=wait)
        if self.topics:
            wait_for(self.subscribed.is_set, wait, f"SUBACK for {self.topics}")
        return self

    def stop(self) -> None:
        self.conn.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 10.0) -> None:
        """Publish and wait until the broker has acknowledged it (QoS 1)."""
        info = self.conn.client.publish(topic, payload, qos=qos)
        if qos > 0:
            wait_for(info.is_published, timeout, f"PUBACK for {topic}")

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if topic is None or t == topic]

    # paho callbacks (network thread)

    def _on_connect(self) -> None:
        self.subscribed.clear()
        if self.topics:
            _, mid = self.conn.client.subscribe([(t, 1) for t in self.topics])
            with self._lock:
                self._pending.add(mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._lock:
            self._pending.discard(mid)
            done = not self._pending
        if done:
            self.subacks += 1
            self.subscribed.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))


# --------------------------------------------------------------- fixtures


def _private_broker(prefer: str) -> Iterator[Broker]:
    try:
        broker = start_broker(prefer)  # type: ignore[arg-type]
    except EcloudError as exc:
        what = "an MQTT broker" if prefer == "auto" else f"a {prefer} MQTT broker"
        pytest.fail(f"cannot start {what} for this test: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A private broker of the default flavour (see the module docstring)."""
    yield from _private_broker("auto")


@pytest.fixture
def mosquitto_broker() -> Iterator[Broker]:
    """A private Mosquitto; fails (never skips) if mosquitto is not on PATH."""
    yield from _private_broker("mosquitto")


@pytest.fixture
def python_broker() -> Iterator[Broker]:
    """A private amqtt broker; fails (never skips) if amqtt is not installed."""
    yield from _private_broker("python")


@pytest.fixture(scope="session")
def shared_mqtt_url() -> str:
    """The machine's MQTT broker, checked once; fails (never skips) if down."""
    try:
        host, port = parse_broker_url(SHARED_MQTT)
    except EcloudError as exc:
        pytest.fail(f"ECLOUD_TEST_MQTT={SHARED_MQTT!r} is not usable: {exc}", pytrace=False)
    if not mqtt_ping(host, port, timeout=3.0):
        pytest.fail(
            f"no MQTT broker answered a CONNECT at {SHARED_MQTT} (ECLOUD_TEST_MQTT). Start it"
            " (mosquitto -d -c /etc/mosquitto/mosquitto.conf) or point ECLOUD_TEST_MQTT at one;"
            " these tests fail rather than skip.",
            pytrace=False,
        )
    return f"mqtt://{host}:{port}"
