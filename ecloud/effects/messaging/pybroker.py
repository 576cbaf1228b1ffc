"""A pure-Python MQTT broker (amqtt) in a process of its own.

    python -m ecloud.effects.messaging.pybroker --port N [--data-dir D] [--host 127.0.0.1]

This is the fallback that :func:`ecloud.effects.messaging.broker.start_broker` uses when
Mosquitto is not installed (or when ``ECLOUD_EMBEDDED_BROKER=python``). It is
meant for trying ecloud out and for tests, not for production: amqtt 0.12 is
far slower than Mosquitto (see ``broker.py``'s docstring for measurements).

What it sets up, and why:

- one TCP listener on ``host:port`` (127.0.0.1 by default);
- :class:`OpenAuthPlugin` instead of amqtt's ``AnonymousAuthPlugin``: both let
  any client in without a password, but amqtt marks sessions authenticated by
  the latter "anonymous", and it never queues messages for an anonymous
  session while it is offline - ``clean_session=False`` would silently mean
  nothing, and ecloud's workers rely on it;
- a keepalive that runs out counts as an abrupt disconnect (the will is
  published), after 1.5 times the client's keepalive as MQTT 3.1.1 says.
  amqtt 0.12 notices the silence but does nothing about it
  (``BrokerProtocolHandler.handle_read_timeout`` is empty), so a client whose
  machine died without closing its socket would stay "connected" forever and
  its will would never come; :func:`enforce_keepalive` patches that in;
- with ``--data-dir``, amqtt's own ``SessionDBPlugin`` (SQLite through
  SQLAlchemy + aiosqlite) with ``clear_on_shutdown`` off, so persistent
  sessions, their subscriptions and the QoS 1/2 messages queued for them
  while offline survive a restart of the broker. It needs the packages
  ``sqlalchemy[asyncio]`` and ``aiosqlite`` (part of amqtt's ``contrib``
  extra); without them the broker refuses to start rather than run without
  the persistence it was asked for.

amqtt 0.12.1's plugin, as shipped, (1) never removes a queued message from
its database once delivered, so every restart delivers *everything* ever
queued for a session again; (2) appends a subscription at every
re-subscribe; (3) can store two rows for one client (its event handlers run
concurrently), after which what is stored depends on which row a query
meets first; (4) restores sessions only after the listener has opened, so a
client that reconnects at once gets a fresh session and the messages
restored for it are never delivered; (5) rewrites a session's whole stored
queue (one JSON list) for every message added to it, so queueing is
quadratic - 2,000 messages for an offline client took 50 s to store.
:class:`SessionStorePlugin` is that plugin with these fixed: a session's
stored queue is emptied when the client connects (the broker then delivers
it from memory), a subscription is stored once, the handlers are
serialised, sessions are restored before the listener opens, and messages
queued meanwhile are written together (storing then keeps pace with the
publisher: 2,000 queued in 2.6 s, 10,000 in 15 s, publishing included).
What remains (amqtt's design, not fixed here):

- a queued message is written to the database just *after* the publisher
  got its PUBACK (within milliseconds; Mosquitto's window is its
  ``autosave_interval``): a crash in between loses it;
- messages in flight (sent, not yet acknowledged) live only in memory: a
  broker crash or restart at that moment loses them - ecloud's
  application-level acks and resends cover this;
- only messages queued while the client was *offline* are stored; payloads
  are stored as text, so they must be UTF-8 (ecloud's are JSON);
- messages queued for an offline session are delivered with the RETAIN flag
  set (amqtt reuses its retained-message path for them).

SIGTERM or SIGINT shuts the broker down cleanly; exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import math
import signal
import sys
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.authentication import BaseAuthPlugin
from amqtt.session import Session

log = logging.getLogger("ecloud.pybroker")

DB_FILE = "amqtt-sessions.db"


class OpenAuthPlugin(BaseAuthPlugin):
    """Lets every client in, without marking its session anonymous (so that
    ``clean_session=False`` sessions keep their queued messages).

    It also stretches the session's keepalive to 1.5 times what the client
    asked for: amqtt uses ``session.keep_alive`` only as the read timeout on
    the client's connection, which MQTT sets at 1.5 x keepalive (paho pings
    up to a second late; at 1 x, idle clients would be cut off)."""

    async def authenticate(self, *, session: Session) -> bool | None:
        if session.keep_alive and session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
        return True


def _keepalive_expired(self: BrokerProtocolHandler) -> None:
    # nothing came from the client for 1.5 x keepalive: end the connection as
    # an abnormal disconnect (the broker then publishes the will)
    waiter = self._disconnect_waiter
    if waiter is not None and not waiter.done():
        log.info("keepalive of %s ran out", self.session.client_id if self.session else "?")
        waiter.set_result(None)


def enforce_keepalive() -> None:
    """Make amqtt disconnect a client whose keepalive ran out (see above)."""
    BrokerProtocolHandler.handle_read_timeout = _keepalive_expired  # type: ignore[method-assign]


try:  # amqtt's persistence plugin needs sqlalchemy[asyncio] and aiosqlite
    from amqtt.contrib.persistence import RetainedMessage, SessionDBPlugin, StoredSession, Subscription
    from sqlalchemy import select
except ImportError:  # pragma: no cover - checked by persistence_available()
    SessionDBPlugin = None  # type: ignore[assignment,misc]

if SessionDBPlugin is not None:

    class SessionStorePlugin(SessionDBPlugin):  # type: ignore[misc,valid-type]
        """amqtt's ``SessionDBPlugin`` without its leaks and races (see the
        module docstring): sessions restored before the listener opens, one
        row per client, the stored queue emptied when the client connects,
        each subscription stored once."""

        def __init__(self, context: Any) -> None:
            super().__init__(context)
            # amqtt fires these events as concurrent tasks; unserialised, a
            # connect and a subscribe each insert a row for the same client
            self._lock = asyncio.Lock()
            self._pending: dict[str, list[RetainedMessage]] = {}

        async def on_broker_pre_start(self) -> None:
            await super().on_broker_pre_start()  # creates the tables
            # restore before the listener opens: amqtt restores after it, and
            # a client that connects in between gets a fresh session while
            # its queued messages land in a queue nobody reads
            await super().on_broker_post_start()

        async def on_broker_post_start(self) -> None:
            pass

        async def _rows(self, db_session: Any, client_id: str) -> list[Any]:
            rows = list(await db_session.scalars(
                select(StoredSession).filter(StoredSession.client_id == client_id)
                .order_by(StoredSession.id)))
            if not rows:
                rows = [await self._get_or_create_session(db_session, client_id)]
            return rows

        async def on_broker_client_connected(self, client_id: str, client_session: Session) -> None:
            async with self._lock:
                await super().on_broker_client_connected(client_id=client_id, client_session=client_session)
                if client_session.clean_session in (None, True) or client_session.is_anonymous:
                    return
                # the broker delivers the queue from memory right after this
                # event. Messages queued before the connection were written
                # before this (the lock is FIFO and their handlers asked first);
                # those in self._pending came later and stay
                async with self._db_session_maker() as db_session, db_session.begin():
                    for row in await self._rows(db_session, client_id):
                        if row.retained:
                            row.retained = []
                    await db_session.flush()

        async def on_broker_client_subscribed(self, client_id: str, topic: str, qos: int) -> None:
            session = self.context.get_session(client_id)
            if not session or session.clean_session:
                return
            async with self._lock, self._db_session_maker() as db_session, db_session.begin():
                rows = await self._rows(db_session, client_id)
                if Subscription(topic, qos) not in rows[0].subscriptions:
                    rows[0].subscriptions = [
                        *(s for s in rows[0].subscriptions if s.topic != topic), Subscription(topic, qos)]
                await db_session.flush()

        async def on_broker_retained_message(self, *, client_id: str | None,
                                             retained_message: Any) -> None:
            if client_id is None:  # a retained message proper (topic-wide): rare
                async with self._lock:
                    await super().on_broker_retained_message(client_id=client_id,
                                                             retained_message=retained_message)
                return
            # a message queued for an offline session. amqtt stores a session's
            # queue as one JSON list and rewrote all of it per message
            # (2,000 queued messages took 50 s); here every message waiting
            # for the lock goes in with the next write (group commit), and
            # each handler returns once its message is written - the broker
            # waits for these handlers on shutdown
            try:
                data = retained_message.data.decode()
            except UnicodeDecodeError:
                log.warning("a message queued for %s on %s is not UTF-8: not stored (it is lost"
                            " if the broker restarts before delivering it)", client_id,
                            retained_message.topic)
                return
            self._pending.setdefault(client_id, []).append(
                RetainedMessage(retained_message.topic, data, retained_message.qos or 0))
            async with self._lock:
                pending, self._pending = self._pending, {}
                if not pending:  # written by an earlier handler's batch
                    return
                async with self._db_session_maker() as db_session, db_session.begin():
                    for cid, messages in pending.items():
                        rows = await self._rows(db_session, cid)
                        rows[0].retained = [*rows[0].retained, *messages]
                    await db_session.flush()


def persistence_available() -> bool:
    """Whether amqtt's ``SessionDBPlugin`` can be loaded here."""
    return SessionDBPlugin is not None and all(
        importlib.util.find_spec(m) is not None for m in ("aiosqlite", "greenlet"))


def broker_config(host: str, port: int, data_dir: Path | None) -> dict[str, Any]:
    """The amqtt (0.12) configuration dict for one plain TCP listener."""
    # by its importable name: run with -m, this module is also "__main__"
    plugins: dict[str, Any] = {"ecloud.effects.messaging.pybroker.OpenAuthPlugin": {}}
    if data_dir is not None:
        db = (data_dir / DB_FILE).resolve()
        plugins["ecloud.effects.messaging.pybroker.SessionStorePlugin"] = {
            "connection": f"sqlite+aiosqlite:///{db}",
            "clear_on_shutdown": False,
        }
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": plugins,
    }


async def serve(host: str, port: int, data_dir: Path | None) -> None:
    enforce_keepalive()
    broker = Broker(broker_config(host, port, data_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    log.warning("amqtt broker listening on %s:%d (persistence: %s)", host, port,
                data_dir / DB_FILE if data_dir else "none")
    await stop.wait()
    log.warning("shutting down")
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecloud.effects.messaging.pybroker",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep persistent sessions and queued messages here across restarts")
    parser.add_argument("--verbose", "-v", action="count", default=0)
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s")
    if args.data_dir is not None:
        if not persistence_available():
            print("pybroker: --data-dir needs the packages sqlalchemy[asyncio] and aiosqlite"
                  " (amqtt's persistence plugin); install them or leave out --data-dir",
                  file=sys.stderr)
            return 2
        args.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(serve(args.host, args.port, args.data_dir))
    except Exception as exc:  # noqa: BLE001 - one line for the log, the parent shows it
        log.exception("broker failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
