"""One way to make a paho-mqtt client, for the boss and the workers alike.

What it takes care of (docs/services.md has the measurements behind each):

- ``TCP_NODELAY`` on every socket, set from the socket-open callback so that
  it survives reconnects (Nagle costs 40-90 ms per request/response);
- QoS 1, persistent sessions (``clean_session=False``) with a stable client
  id, so a short broker restart loses nothing queued for us;
- reconnecting by itself with exponential backoff (1 s doubling to 30 s);
- no client-side cap on queued messages, and a generous in-flight window.

- TLS and credentials (:class:`MqttAuth`) for a secured broker
  (``ecloud broker config``): ``mqtts://`` URLs, the cluster's CA, a username
  and password, optionally a client certificate.

Broker addresses are URLs: ``mqtt://host:port`` (port default 1883) or
``mqtts://host:port`` (TLS, port default 8883).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from attrs import field, frozen
from paho.mqtt.enums import CallbackAPIVersion

from ecloud.config import hidden
from ecloud.errors import UserError

log = logging.getLogger(__name__)

OnMessage = Callable[[str, bytes], None]
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_broker_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``mqtt://host:port`` or ``mqtts://host:port``
    URL (a bare ``host:port`` is accepted too, as ``mqtt://``)."""
    host, port, _tls = parse_broker(url)
    return host, port


def parse_broker(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of a broker URL."""
    text = url if "://" in url else f"mqtt://{url}"
    try:
        parts = urlsplit(text)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 1883)
    except ValueError as exc:
        raise UserError(f"bad broker URL {url!r}: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise UserError(f"bad broker URL {url!r}: expected mqtt://host:port or mqtts://host:port")
    return parts.hostname, port, parts.scheme == "mqtts"


@frozen
class MqttAuth:
    """How to prove who we are to a secured broker, and check who it is.

    ``ca_file`` is the CA the broker's certificate must chain to (None: the
    system's CAs); ``cert_file``/``key_file`` a client certificate, for a
    broker that asks for one. The password never shows in a repr."""

    username: str | None = None
    password: str | None = field(default=None, repr=hidden)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def _nodelay(client: paho.Client, userdata: object, sock: object) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # not a TCP socket (e.g. unix transport)
        pass


class Connection:
    """A started client: ``publish`` from any thread, messages delivered to
    ``on_message(topic, payload)`` on paho's network thread, ``on_connect()``
    after every (re)connection - subscribe there."""

    def __init__(
        self,
        broker: str,
        client_id: str,
        *,
        on_message: OnMessage,
        on_connect: Callable[[], None] | None = None,
        will: tuple[str, bytes] | None = None,
        will_retain: bool = False,
        clean_session: bool = False,
        keepalive: int = 30,
        auth: MqttAuth | None = None,
    ) -> None:
        self.host, self.port, tls = parse_broker(broker)
        self.connected = threading.Event()
        #: why the broker last refused us (bad credentials, not authorised), if it did
        self.refused: str | None = None
        self._answered = threading.Event()  # a CONNACK came, accepting or refusing
        self._on_message = on_message
        self._on_connect = on_connect
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
        )
        client.on_socket_open = _nodelay
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        # No window on QoS 1 messages in flight: with one, paho rescans the
        # whole window on every PUBACK (Client._update_inflight), which with
        # thousands of workers kept a full window of 1,000 and cost the boss's
        # network thread more than the messages themselves. Our own acks and
        # resends bound what is outstanding; the broker PUBACKs in microseconds.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=will_retain)
        auth = auth or MqttAuth()
        self._tls, self._auth = tls, auth
        if tls:
            # certificate and host name checked; TLS 1.2 at least (Python's default)
            try:
                client.tls_set(ca_certs=auth.ca_file, certfile=auth.cert_file,
                               keyfile=auth.key_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise UserError(f"cannot set up TLS for {broker}: {exc}") from None
        elif auth.ca_file or auth.cert_file:
            raise UserError(f"a CA or client certificate is set, but {broker} is not an "
                            "mqtts:// URL: the connection would not be encrypted")
        if auth.username is not None:
            client.username_pw_set(auth.username, auth.password)
        self.client = client
        self.keepalive = keepalive

    # --------------------------------------------------------------- control

    def start(self, wait: float | None = None) -> Connection:
        """Connect in the background (retrying until it works); with
        ``wait``, block up to that many seconds for the first connection."""
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        if wait is not None and not (self._answered.wait(wait) and self.connected.is_set()):
            self.stop()
            if self.refused:
                raise ConnectionError(f"the MQTT broker at {self.host}:{self.port} refused us: "
                                      f"{self.refused}")
            problem = self.tls_problem()
            if problem:
                raise ConnectionError(f"TLS with the MQTT broker at {self.host}:{self.port} "
                                      f"failed: {problem}")
            raise ConnectionError(f"no MQTT broker answered at {self.host}:{self.port} within {wait:g}s")
        return self

    def tls_problem(self, timeout: float = 3.0) -> str | None:
        """Why a TLS handshake with the broker fails, if it does: paho retries
        such failures quietly in its thread, and the operator needs the
        reason (an unknown CA, a host name the certificate does not name)."""
        if not self._tls:
            return None
        context = ssl.create_default_context(cafile=self._auth.ca_file)
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as raw, \
                    context.wrap_socket(raw, server_hostname=self.host):
                return None
        except ssl.SSLError as exc:
            return getattr(exc, "verify_message", None) or exc.reason or str(exc)
        except OSError as exc:
            return exc.strerror or str(exc)

    def stop(self) -> None:
        """Disconnect cleanly (no will is published) and stop the thread."""
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; paho sends it now or after the next reconnect."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    # ------------------------------------------------------------- callbacks

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        self._answered.set()
        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.warning("broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        self.refused = None
        log.debug("connected to %s:%s (session present: %s)", self.host, self.port,
                  flags.session_present)
        self.connected.set()
        if self._on_connect is not None:
            self._on_connect()

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        log.debug("disconnected from %s:%s: %s", self.host, self.port, reason_code)

    def _message(self, client, userdata, message) -> None:
        try:
            self._on_message(message.topic, message.payload)
        except Exception:  # noqa: BLE001 - never let a handler kill paho's thread
            log.exception("error handling a message on %s", message.topic)
