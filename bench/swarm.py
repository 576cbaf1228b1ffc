"""A swarm of simulated ecloud workers: thousands of real MQTT connections
speaking the worker protocol, to see how one boss holds up under them.

    python -m bench.swarm --broker mqtt://127.0.0.1:1883 --cluster C --workers 1000 --seconds 60
    python -m bench.swarm --measure --workers 10000 --tasks 20000 --seconds 120   # broker+boss too
    python -m bench.swarm --measure --mysql mysql://root@127.0.0.1:3306 --workers 1000

Each simulated worker is what :mod:`ecloud_worker.agent` looks like from the broker
and the boss (the boss cannot tell them apart):

- a persistent MQTT 3.1.1 session (``clean_session=False``) with client id
  ``ecloud-<cluster>-<worker id>``, keepalive 30 s, ``TCP_NODELAY`` on its
  socket, and a last will - a ``lost`` report on its ``from`` topic, QoS 1;
- after every (re)connection: SUBSCRIBE to ``ecloud/<cluster>/to/<worker>``
  (QoS 1), then a ``hello`` (slots, protocol, host, a random incarnation)
  ahead of every report still unacknowledged;
- a heartbeat (``msg_id`` "", the attempts running - none between no-op
  tasks) every ``heartbeat`` seconds (10 by default), the first one at a
  random moment of the first period so that N heartbeats spread evenly;
- on a dispatch it has not seen (a (task, attempt) runs at most once per
  incarnation), a ``started`` report, then a ``finished`` one with exit code
  0: a no-op task, in two messages as the real agent sends them (the start
  at the spawn, the result at the exit);
- every report but a heartbeat carries ``<incarnation[:8]>-<n>`` as its
  ``msg_id`` and is resent until the boss acks it: after 2 s, 4 s, 8 s, then
  every 10 s, reports due within half a second going along (the rules of
  :mod:`ecloud_worker.outbox`); after a reconnect every unacked report is due;
- ``reannounce`` from the boss sends a fresh hello; ``refuse`` ends that
  worker (as the agent exits with status 3); cancels are counted (a no-op
  task has always finished already).

Payloads are built with orjson exactly as :func:`ecloud.wire.dumps` would
(same keys, same order); :func:`check_protocol` runs every kind through the
boss's own parser, :func:`ecloud.wire.parse_worker_payload`, before a swarm
starts, so a change of the wire format fails loudly instead of turning into
``input.rejected`` events.

The MQTT client, and why: paho-mqtt (already a dependency of ecloud) driven by
an asyncio loop through its external-loop API - ``on_socket_open`` /
``on_socket_close`` register ``loop_read`` with ``loop.add_reader``,
``on_socket_register_write`` / ``..._unregister_write`` register
``loop_write`` with ``loop.add_writer``, and a timer calls ``loop_misc``
every second for the keepalives. The TCP connection itself is made with
``loop.sock_connect`` and handed to paho (:class:`_SimClient` overrides
``_create_socket``), because paho's own ``connect`` blocks the whole loop in
``socket.create_connection``; a semaphore keeps the handshakes in flight per
process at ``CONNECT_WINDOW`` so that Mosquitto's listen backlog never
overflows (a dropped SYN costs a 1 s retransmit).

Measured on this 2-core machine, 2,500 connections in one process, QoS 1
heartbeat-sized publishes (a throwaway script, the same client setup):

=====================  ================  ==================  ====================
client                 RSS / connection  CPU / connect       CPU / publish+PUBACK
=====================  ================  ==================  ====================
paho 2.2 on asyncio    10.4 KB           0.15 ms             ~56 us
gmqtt 0.8.0            19.8 KB           0.19 ms             ~39 us
=====================  ================  ==================  ====================

In the swarm itself (4 processes): 10,000 workers peak at 310 MB RSS in
all (148 MB for 1,000: ~18 KB per simulated worker, its outbox included),
and cost 0.22-0.27 of a core with heartbeats only (1,000/s), 0.43-0.48
while tasks run. paho takes half the memory per connection; gmqtt's
cheaper publish (~17 us less) would save about 0.02 of a core at 1,000
heartbeats/s, noise next to the boss and Mosquitto. paho is also already a
dependency, and the client
the real worker uses (same CONNECT, will, QoS and session flags). aiomqtt
wraps this very paho client in futures and an async iterator (more memory
per connection, one more dependency); gmqtt is another dependency, MQTT 5
first, with its own resend machinery. Nothing here needs what they add.

``processes`` asyncio processes (``spawn``) share the workers; each keeps its
counts in shared memory (:class:`Swarm` sums them at any time).

:func:`measure_boss_with_swarm` puts it all together: a tuned Mosquitto
(:mod:`bench.tuned_broker`), the real boss as a subprocess (``python -m
ecloud.cli.boss``), the swarm, a task file pushed with ``ecloud push``, and
the boss's CPU time and peak RSS sampled from ``/proc`` throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Self

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.logs import fresh_log
from bench.tuned_broker import raise_fd_limit, tuned_mosquitto
from ecloud import wire
from ecloud.effects.messaging.mqtt import parse_broker_url

HEARTBEAT = 10.0  # seconds between heartbeats
KEEPALIVE = 30  # MQTT keepalive, as ecloud.effects.messaging.mqtt.Connection
FIRST_RESEND = 2.0  # ecloud_worker.outbox
MAX_RESEND = 10.0
COALESCE = 0.5
CONNECT_WINDOW = 32  # MQTT handshakes in flight per process
CONNECT_TIMEOUT = 30.0  # seconds for a CONNACK
TICK = 0.25  # seconds between resend checks / counter publications
REPORTS_PER_PAYLOAD = 200  # far below wire.MAX_PAYLOAD for these small reports

# counters each simulator process keeps (shared memory, one array per process)
COUNTERS = (
    "workers", "connected", "connects", "disconnects", "announced", "heartbeats",
    "dispatches", "duplicate_dispatches", "cancels", "started", "finished", "acked",
    "finished_acked", "resent_reports", "reannounces", "refused", "bad_messages", "errors",
    "published", "received", "cpu_ms", "maxrss_kb", "done",
) + tuple(f"ack_lt_{b}" for b in ("10ms", "100ms", "500ms", "2s", "5s", "10s", "inf"))
#: upper bounds of the ack-latency buckets (seconds from a report's first send to its ack)
ACK_BUCKETS = ((0.01, "ack_lt_10ms"), (0.1, "ack_lt_100ms"), (0.5, "ack_lt_500ms"),
               (2.0, "ack_lt_2s"), (5.0, "ack_lt_5s"), (10.0, "ack_lt_10s"),
               (float("inf"), "ack_lt_inf"))
IDX = {name: i for i, name in enumerate(COUNTERS)}


# ----------------------------------------------------------------- payloads


def _payload(worker: str, reports: list[dict]) -> bytes:
    return orjson.dumps({"worker": worker, "reports": reports, "v": wire.PROTOCOL})


def _hello(msg_id: str, host: str, slots: int, incarnation: str) -> dict:
    return {"msg_id": msg_id, "host": host, "slots": slots, "protocol": wire.PROTOCOL,
            "incarnation": incarnation, "vm_id": None, "kind": "hello"}


def _started(msg_id: str, task_id: str, attempt: int) -> dict:
    return {"msg_id": msg_id, "task_id": task_id, "attempt": attempt, "kind": "started"}


def _finished(msg_id: str, task_id: str, attempt: int, duration: float) -> dict:
    return {"msg_id": msg_id, "task_id": task_id, "attempt": attempt, "exit_code": 0,
            "duration": duration, "signal": None, "reason": "", "stdout_tail": "",
            "stderr_tail": "", "staged": [], "kind": "finished"}


def _heartbeat(running: list) -> dict:
    return {"msg_id": "", "running": running, "kind": "heartbeat"}


def _lost() -> dict:
    return {"msg_id": "", "kind": "lost"}


def check_protocol() -> None:
    """Every payload the swarm sends, through the boss's own parser and
    compared with what :func:`ecloud.wire.dumps` makes of the same reports;
    raise if anything differs."""
    w = "sim-check"
    ours = [
        (_payload(w, [_hello("i-1", "h", 2, "inc")]), [wire.Hello("i-1", "h", 2, wire.PROTOCOL, "inc")]),
        (_payload(w, [_heartbeat([])]), [wire.Heartbeat("", [])]),
        (_payload(w, [_started("i-2", "t", 1)]), [wire.Started("i-2", "t", 1)]),
        (_payload(w, [_finished("i-3", "t", 1, 0.5)]), [wire.Finished("i-3", "t", 1, 0, 0.5)]),
        (_payload(w, [_lost()]), [wire.Lost()]),
    ]
    for payload, reports in ours:
        parsed = wire.parse_worker_payload(payload, w)  # raises WireError
        if list(parsed.reports) != reports:
            raise AssertionError(f"the boss reads {payload!r} as {parsed.reports}, not {reports}")
        theirs = wire.dumps(wire.WorkerPayload(w, reports))
        if orjson.loads(theirs) != orjson.loads(payload):
            raise AssertionError(f"wire.dumps makes {theirs!r}, the swarm {payload!r}")


# ------------------------------------------------------------------- client


class _SimClient(paho.Client):
    """paho with the TCP connection made beforehand (asynchronously)."""

    _premade: socket.socket | None = None

    def _create_socket(self):  # type: ignore[override]
        sock, self._premade = self._premade, None
        if sock is None:
            raise OSError("no connected socket to hand to paho")
        return sock


class SimWorker:
    __slots__ = (
        "backoff",
        "client",
        "counter",
        "fresh",
        "from_topic",
        "hb_payload",
        "hello_acked",
        "incarnation",
        "online",
        "prefix",
        "proc",
        "seen",
        "stopped",
        "to_topic",
        "unacked",
        "waiter",
        "wid",
    )

    def __init__(self, proc: SwarmProcess, wid: str) -> None:
        self.proc = proc
        self.wid = wid
        self.from_topic = wire.from_topic(proc.cluster, wid)
        self.to_topic = wire.to_topic(proc.cluster, wid)
        self.incarnation = uuid.uuid4().hex
        self.prefix = self.incarnation[:8]
        self.counter = 0
        self.unacked: dict[str, list] = {}  # msg_id -> [report, due, interval]
        self.fresh: list[dict] = []
        self.seen: dict[str, int] = {}
        self.online = False
        self.hb_payload = _payload(wid, [_heartbeat([])])
        self.waiter: asyncio.Future | None = None
        self.backoff = 1.0
        self.stopped = False
        self.hello_acked = False
        client = _SimClient(CallbackAPIVersion.VERSION2, client_id=f"ecloud-{proc.cluster}-{wid}",
                            clean_session=False, protocol=paho.MQTTv311, userdata=self)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.will_set(self.from_topic, _payload(wid, [_lost()]), qos=1)
        client.on_connect = _on_connect
        client.on_disconnect = _on_disconnect
        client.on_message = _on_message
        client.on_socket_open = proc.socket_open
        client.on_socket_close = proc.socket_close
        client.on_socket_register_write = proc.register_write
        client.on_socket_unregister_write = proc.unregister_write
        client.connect_async(proc.host, proc.port, keepalive=KEEPALIVE)
        self.client = client

    # ------------------------------------------------------------ outbox

    def add(self, report: dict, now: float, first: bool = False) -> None:
        self.unacked[report["msg_id"]] = [report, now + FIRST_RESEND, FIRST_RESEND, now]
        if first:
            self.fresh.insert(0, report)
        else:
            self.fresh.append(report)
        self.proc.pending.add(self)

    def next_id(self) -> str:
        self.counter += 1
        return f"{self.prefix}-{self.counter}"

    def hello(self, now: float) -> None:
        for msg_id in [m for m, e in self.unacked.items() if e[0]["kind"] == "hello"]:
            del self.unacked[msg_id]
        self.fresh = [r for r in self.fresh if r["kind"] != "hello"]
        self.add(_hello(self.next_id(), self.proc.hostname, self.proc.slots, self.incarnation),
                 now, first=True)

    def flush(self, now: float) -> None:
        """Send the fresh reports and those due (``ecloud_worker.outbox.Outbox.take``)."""
        if not self.online:
            return
        fresh, self.fresh = self.fresh, []
        for report in fresh:
            entry = self.unacked[report["msg_id"]]
            entry[1] = now + FIRST_RESEND
            entry[3] = now
        resent = []
        for entry in self.unacked.values():
            if entry[1] <= now:
                break
        else:
            entry = None
        if entry is not None:
            for entry in self.unacked.values():
                if entry[1] > now + COALESCE:
                    continue
                resent.append(entry[0])
                entry[2] = min(entry[2] * 2, MAX_RESEND)
                entry[1] = now + entry[2]
        reports = fresh + resent
        if resent:
            self.proc.count("resent_reports", len(resent))
        for i in range(0, len(reports), REPORTS_PER_PAYLOAD):
            self.publish(_payload(self.wid, reports[i:i + REPORTS_PER_PAYLOAD]))

    def publish(self, payload: bytes) -> None:
        self.client.publish(self.from_topic, payload, qos=1)
        self.proc.c[IDX["published"]] += 1

    # -------------------------------------------------------- boss input

    def on_boss(self, payload: bytes) -> None:
        proc = self.proc
        c = proc.c
        c[IDX["received"]] += 1
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            c[IDX["bad_messages"]] += 1
            return
        if not isinstance(data, dict) or data.get("v") != wire.PROTOCOL:
            c[IDX["bad_messages"]] += 1
            return
        for msg_id in data.get("acks") or ():
            entry = self.unacked.pop(msg_id, None)
            if entry is None:
                continue
            c[IDX["acked"]] += 1
            waited = proc.loop.time() - entry[3]
            for bound, name in ACK_BUCKETS:
                if waited < bound:
                    c[IDX[name]] += 1
                    break
            kind = entry[0]["kind"]
            if kind == "finished":
                c[IDX["finished_acked"]] += 1
            elif kind == "hello" and not self.hello_acked:
                self.hello_acked = True
                c[IDX["announced"]] += 1
        now = proc.loop.time()
        if data.get("refuse") is not None:
            c[IDX["refused"]] += 1
            self.stop()
            return
        if data.get("reannounce"):
            c[IDX["reannounces"]] += 1
            self.hello(now)
        done = []
        for d in data.get("dispatch") or ():
            try:
                task_id, attempt = d["task_id"], d["attempt"]
            except (TypeError, KeyError):
                c[IDX["bad_messages"]] += 1
                continue
            if self.seen.get(task_id, -1) >= attempt:
                c[IDX["duplicate_dispatches"]] += 1
                continue
            self.seen[task_id] = attempt
            c[IDX["dispatches"]] += 1
            c[IDX["started"]] += 1
            self.add(_started(self.next_id(), task_id, attempt), now)
            done.append((task_id, attempt))
        for _cancel in data.get("cancel") or ():
            c[IDX["cancels"]] += 1
        if done:
            self.flush(now)  # the starts, in one message (the agent's turn)
            for task_id, attempt in done:  # then the exits
                c[IDX["finished"]] += 1
                self.add(_finished(self.next_id(), task_id, attempt,
                                   round(proc.loop.time() - now, 6)), now)
        if self.fresh:
            self.flush(now)

    # ---------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Leave for good (refused, or the end of the run): a clean
        DISCONNECT, so the broker does not publish the will."""
        self.stopped = True
        self.proc.pending.discard(self)
        if self.client.socket() is not None:
            self.client.disconnect()


# paho callbacks (on the asyncio loop's thread: paho runs inside loop_read/loop_write)

def _on_connect(client, worker: SimWorker, flags, reason_code, properties) -> None:
    proc = worker.proc
    if reason_code.is_failure:
        proc.count("errors")
        if worker.waiter is not None and not worker.waiter.done():
            worker.waiter.set_result(False)
        return
    client.subscribe(worker.to_topic, qos=1)
    worker.online = True
    worker.backoff = 1.0
    proc.count("connected")
    proc.count("connects")
    now = proc.loop.time()
    worker.hello(now)
    for entry in worker.unacked.values():
        entry[1] = min(entry[1], now)
    worker.flush(now)
    if worker.waiter is not None and not worker.waiter.done():
        worker.waiter.set_result(True)


def _on_disconnect(client, worker: SimWorker, flags, reason_code, properties) -> None:
    proc = worker.proc
    if worker.online:
        worker.online = False
        proc.count("connected", -1)
    if worker.waiter is not None and not worker.waiter.done():
        worker.waiter.set_result(False)
    if not worker.stopped and not proc.stopping:
        proc.count("disconnects")
        delay, worker.backoff = worker.backoff, min(worker.backoff * 2, 30.0)
        proc.loop.call_later(delay, proc.reconnect, worker)


def _on_message(client, worker: SimWorker, message) -> None:
    try:
        worker.on_boss(message.payload)
    except Exception:  # noqa: BLE001 - a bug here must not kill the other workers
        worker.proc.count("errors")
        import traceback
        traceback.print_exc()


# ------------------------------------------------------------ one process


class SwarmProcess:
    """The workers of one simulator process, on one asyncio loop."""

    def __init__(self, index: int, host: str, port: int, cluster: str, worker_ids: list[str],
                 slots: int, heartbeat: float, counters: Any, stop: Any) -> None:
        self.index = index
        self.host, self.port, self.cluster = host, port, cluster
        self.worker_ids = worker_ids
        self.slots = slots
        self.heartbeat = heartbeat
        self.shared = counters
        self.stop_event = stop
        self.hostname = f"swarm-{socket.gethostname()}-{index}"
        self.c = [0] * len(COUNTERS)
        self.pending: set[SimWorker] = set()
        self.workers: list[SimWorker] = []
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.window: asyncio.Semaphore = None  # type: ignore[assignment]

    def count(self, name: str, n: int = 1) -> None:
        self.c[IDX[name]] += n

    # paho socket callbacks
    def socket_open(self, client, worker, sock) -> None:
        self.loop.add_reader(sock, client.loop_read)

    def socket_close(self, client, worker, sock) -> None:
        self.loop.remove_reader(sock)

    def register_write(self, client, worker, sock) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def unregister_write(self, client, worker, sock) -> None:
        self.loop.remove_writer(sock)

    async def connect(self, worker: SimWorker) -> bool:
        async with self.window:
            if worker.stopped or self.stopping:
                return False
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(self.loop.sock_connect(sock, (self.host, self.port)),
                                       CONNECT_TIMEOUT)
            except (TimeoutError, OSError):
                sock.close()
                self.count("errors")
                _on_disconnect(worker.client, worker, None, None, None)
                return False
            worker.waiter = self.loop.create_future()
            worker.client._premade = sock
            try:
                worker.client.reconnect()  # paho takes the socket and sends CONNECT
            except OSError:
                self.count("errors")
                _on_disconnect(worker.client, worker, None, None, None)
                return False
            try:
                return await asyncio.wait_for(worker.waiter, CONNECT_TIMEOUT)
            except TimeoutError:
                self.count("errors")
                worker.client._sock_close()
                _on_disconnect(worker.client, worker, None, None, None)
                return False

    def reconnect(self, worker: SimWorker) -> None:
        if not worker.stopped and not self.stopping:
            self.loop.create_task(self.connect(worker))

    def beat(self, worker: SimWorker, when: float) -> None:
        if self.stopping or worker.stopped:
            return
        if worker.online:
            worker.publish(worker.hb_payload)
            self.c[IDX["heartbeats"]] += 1
        self.loop.call_at(when + self.heartbeat, self.beat, worker, when + self.heartbeat)

    def publish_counters(self) -> None:
        for i, v in enumerate(self.c):
            self.shared[i] = v

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.window = asyncio.Semaphore(CONNECT_WINDOW)
        self.workers = [SimWorker(self, wid) for wid in self.worker_ids]
        self.c[IDX["workers"]] = len(self.workers)
        start = self.loop.time()
        rng = random.Random(self.index)
        for w in self.workers:
            first = start + rng.uniform(0, self.heartbeat)
            self.loop.call_at(first, self.beat, w, first)
        connecting = [self.loop.create_task(self.connect(w)) for w in self.workers]
        last_misc = start
        while not self.stop_event.is_set():
            await asyncio.sleep(TICK)
            now = self.loop.time()
            for w in list(self.pending):
                if not w.unacked:
                    self.pending.discard(w)
                elif w.online:
                    w.flush(now)
            if now - last_misc >= 1.0:
                last_misc = now
                for w in self.workers:
                    if w.online:
                        w.client.loop_misc()
            self.c[IDX["cpu_ms"]] = int(time.process_time() * 1000)
            self.publish_counters()
        # the end: clean DISCONNECTs (no wills), a moment to write them, then close
        self.stopping = True
        for task in connecting:
            task.cancel()
        for w in self.workers:
            w.stopped = True
            if w.online:
                w.client.disconnect()
        until = self.loop.time() + 3.0
        while self.loop.time() < until and any(w.client.socket() is not None for w in self.workers):
            await asyncio.sleep(0.05)
        for w in self.workers:
            if w.client.socket() is not None:
                w.client._sock_close()
        self.c[IDX["cpu_ms"]] = int(time.process_time() * 1000)
        self.c[IDX["maxrss_kb"]] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.c[IDX["done"]] = 1
        self.publish_counters()


def _process_main(index: int, host: str, port: int, cluster: str, worker_ids: list[str],
                  slots: int, heartbeat: float, counters: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    raise_fd_limit(len(worker_ids) + 1024)
    proc = SwarmProcess(index, host, port, cluster, worker_ids, slots, heartbeat, counters, stop)
    asyncio.run(proc.main())


# ------------------------------------------------------------------- swarm


class Swarm:
    """``processes`` simulator processes holding ``n_workers`` between them.

    ``start()`` returns at once; :meth:`counts` sums the processes' counters
    at any time (refreshed every 0.25 s); :meth:`stop` ends them (clean
    disconnects) and returns the final counts."""

    def __init__(self, broker_url: str, cluster: str, n_workers: int, processes: int = 4, *,
                 slots: int = 1, heartbeat: float = HEARTBEAT, prefix: str = "sim") -> None:
        self.host, self.port = parse_broker_url(broker_url)
        self.cluster = cluster
        self.n_workers = n_workers
        self.processes = max(1, min(processes, n_workers))
        self.slots = slots
        self.heartbeat = heartbeat
        self.prefix = prefix
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._arrays: list[Any] = []
        self._procs: list[Any] = []
        self.started_at: float | None = None

    def worker_ids(self, index: int) -> list[str]:
        return [f"{self.prefix}-{index:02d}-{k:05d}"
                for k in range(index, self.n_workers, self.processes)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def start(self) -> Swarm:
        check_protocol()
        self.started_at = time.monotonic()
        for i in range(self.processes):
            counters = self._ctx.Array("q", len(COUNTERS), lock=False)
            proc = self._ctx.Process(
                target=_process_main, name=f"swarm-{i}", daemon=True,
                args=(i, self.host, self.port, self.cluster, self.worker_ids(i), self.slots,
                      self.heartbeat, counters, self._stop))
            proc.start()
            self._arrays.append(counters)
            self._procs.append(proc)
        return self

    def counts(self) -> dict[str, int]:
        totals = dict.fromkeys(COUNTERS, 0)
        for arr in self._arrays:
            for i, name in enumerate(COUNTERS):
                totals[name] += arr[i]
        return totals

    def wait_connected(self, timeout: float, announced: bool = True) -> dict[str, int]:
        """Wait until every worker is connected (and its hello acked, i.e.
        logged by the boss, with ``announced``); raise on timeout."""
        key = "announced" if announced else "connected"
        until = time.monotonic() + timeout
        while True:
            counts = self.counts()
            if counts[key] >= self.n_workers:
                return counts
            dead = [p.name for p in self._procs if not p.is_alive()]
            if dead:
                raise RuntimeError(f"simulator process(es) {dead} died; counts {counts}")
            if time.monotonic() > until:
                raise TimeoutError(f"after {timeout:g}s only {counts[key]} of {self.n_workers} "
                                   f"workers {key}; counts {counts}")
            time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        self._stop.set()
        until = time.monotonic() + timeout
        for p in self._procs:
            p.join(max(0.1, until - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        counts: dict[str, Any] = self.counts()
        counts["cpu_seconds"] = counts.pop("cpu_ms") / 1000
        counts["maxrss_kb_sum"] = counts.pop("maxrss_kb")
        counts["processes_done"] = counts.pop("done")
        counts["processes"] = self.processes
        return counts

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()


def run_swarm(broker_url: str, cluster: str, n_workers: int, processes: int = 4,
              duration: float = 60.0, slots: int = 1, heartbeat: float = HEARTBEAT,
              connect_timeout: float | None = None) -> dict[str, Any]:
    """Hold ``n_workers`` simulated workers on ``broker_url`` for ``duration``
    seconds once they are all connected, then disconnect them cleanly; return
    the counts (see :data:`COUNTERS`), the seconds connecting took, and the
    simulator's own CPU seconds and peak RSS."""
    swarm = Swarm(broker_url, cluster, n_workers, processes, slots=slots, heartbeat=heartbeat)
    swarm.start()
    try:
        t0 = time.monotonic()
        swarm.wait_connected(connect_timeout or max(60.0, n_workers / 100), announced=False)
        connect_s = time.monotonic() - t0
        time.sleep(duration)
    finally:
        result = swarm.stop()
    result["connect_seconds"] = round(connect_s, 2)
    result["steady_seconds"] = duration
    return result


# ----------------------------------------------------------- measurement

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` so far, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    """Samples CPU seconds and memory of named processes every ``every`` s."""

    def __init__(self, pids: dict[str, list[int]], every: float = 0.5) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pids = pids
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.marks: dict[str, float] = {}

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": time.monotonic()}
        for name, pids in self.pids.items():
            cpus = [proc_cpu(p) for p in pids]
            row[f"{name}_cpu"] = sum(c for c in cpus if c is not None)
            if name == "boss" and pids:
                mem = proc_mem(pids[0])
                row["boss_rss_kb"] = mem.get("VmRSS", 0)
                row["boss_hwm_kb"] = mem.get("VmHWM", 0)
        return row

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append(self.sample())
            self.halt.wait(self.every)

    def mark(self, name: str) -> dict[str, Any]:
        row = self.sample()
        row["mark"] = name
        self.samples.append(row)
        self.marks[name] = row["t"]
        return row


def _share(a: dict, b: dict, name: str) -> float:
    wall = b["t"] - a["t"]
    return round((b[f"{name}_cpu"] - a[f"{name}_cpu"]) / wall, 3) if wall > 0 else 0.0


def count_events(db_url: str) -> tuple[Counter, dict[str, Any]]:
    """Events in the log by type tag (read raw: no decoding), and the
    boss's commits: one ``ts`` per appended batch."""
    from ecloud.log.url import open_store

    store = open_store(db_url, create=False)
    types: Counter = Counter()
    batches: Counter = Counter()
    try:
        for _seq, ts, type_, _version, _body in store.read_raw(1):
            types[type_] += 1
            batches[ts] += 1
    finally:
        store.close()
    sizes = sorted(batches.values())
    span = (max(batches) - min(batches)) if batches else 0.0
    commits = {"commits": len(sizes),
               "events_per_commit_mean": round(sum(sizes) / len(sizes), 1) if sizes else 0,
               "events_per_commit_median": sizes[len(sizes) // 2] if sizes else 0,
               "commits_per_s": round(len(sizes) / span, 1) if span > 0 else 0}
    return types, commits


def _kill(proc: subprocess.Popen, grace: float = 15.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def _wait_boss_ready(boss: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    until = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if "state at seq" in text:
            return
        if boss.poll() is not None:
            raise RuntimeError(f"the boss exited with status {boss.returncode}:\n{text[-3000:]}")
        if time.monotonic() > until:
            raise TimeoutError(f"the boss did not start within {timeout:g}s:\n{text[-3000:]}")
        time.sleep(0.1)


def _push(tasks: int, chunk: int | None, work: Path, db_url: str, env: dict, say: Any,
          attempts: int = 3, fallback: bool = True) -> dict[str, Any]:
    """``ecloud push`` the no-op tasks, ``chunk`` per file, each file tried
    ``attempts`` times. ``ecloud push`` appends with optimistic concurrency
    (``expected_head``) and gives up after 5 tries when the log keeps moving,
    which a boss logging 1,000 heartbeats/s makes it do; then, with
    ``fallback``, the file's tasks are appended directly, as the same
    ``tasks.submitted`` events without the head check (counted as ``direct``)."""
    chunk = chunk or tasks
    out: dict[str, Any] = {"calls": 0, "failures": 0, "direct": 0, "errors": []}
    for first in range(0, tasks, chunk):
        task_file = work / f"tasks-{first}.json"
        task_file.write_bytes(orjson.dumps(
            [{"id": f"noop-{k:06d}", "command": "true"} for k in range(first, min(tasks, first + chunk))]))
        for _ in range(attempts):
            out["calls"] += 1
            push = subprocess.run([sys.executable, "-m", "ecloud.cli.main", "push",
                                   str(task_file), "--db", db_url], check=False,
                                  env=env, cwd=work, capture_output=True, text=True, timeout=300)
            if push.returncode == 0:
                break
            out["failures"] += 1
            out["errors"].append(push.stderr.strip()[-300:])
            say(f"  ecloud push failed: {push.stderr.strip()[-200:]}")
        else:
            if not fallback:
                raise RuntimeError(f"ecloud push failed {attempts} times: {out['errors'][-1]}")
            out["direct"] += _append_tasks(task_file, db_url)
            say(f"  appended {task_file.name} directly (no head check)")
    return out


def _append_tasks(task_file: Path, db_url: str) -> int:
    """The ``tasks.submitted`` events ``ecloud push`` would append for
    ``task_file``, appended without ``expected_head``."""
    from ecloud.events.types import TasksSubmitted
    from ecloud.log.url import open_store
    from ecloud.taskfiles.submit import CHUNK, dependency_first
    from ecloud.taskfiles.taskfile import parse_task_file

    specs = dependency_first(parse_task_file(task_file))
    batch = uuid.uuid4().hex[:12]
    chunks = [specs[i:i + CHUNK] for i in range(0, len(specs), CHUNK)]
    events = [TasksSubmitted(batch if len(chunks) == 1 else f"{batch}.{n}", tuple(c), str(task_file))
              for n, c in enumerate(chunks)]
    store = open_store(db_url, create=False)
    try:
        store.append(events)
    finally:
        store.close()
    return len(specs)


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    from shutil import which
    return which("py-spy")


def measure_boss_with_swarm(db_url: str, n_workers: int, tasks: int, duration: float, *,
                            processes: int = 4, slots: int = 1, heartbeat: float = HEARTBEAT,
                            idle_seconds: float = 20.0, cluster: str = "swarm",
                            profile: str | None = None, workdir: str | None = None,
                            push_chunk: int | None = None, push_attempts: int = 3,
                            progress: Any = None) -> dict[str, Any]:
    """The real boss under ``n_workers`` simulated workers.

    Starts a tuned Mosquitto, the boss (``python -m ecloud.cli.boss --db
    db_url``, cluster ``cluster``) and the swarm; once every worker's hello
    is acked, samples ``idle_seconds`` of heartbeats only, then pushes
    ``tasks`` no-op tasks with ``ecloud push`` and runs until they have all
    finished (their ``finished`` reports acked) or ``duration`` seconds have
    passed. ``profile``: a path where py-spy writes the boss's collapsed
    stacks (all threads, on-CPU samples) over the task phase. ``push_chunk``:
    push the tasks in files of that many (default: one file); a push that
    fails (``ecloud push`` gives up when the log keeps moving under it) is
    tried again, up to ``push_attempts`` times per file, and counted; then
    its tasks are appended directly (see :func:`_push`).

    Returns the boss's CPU share (CPU seconds / wall seconds) for the
    heartbeat-only phase and the task phase, its peak RSS, the tasks/s, the
    swarm's counts, the CPU shares of Mosquitto and the simulator, and the
    events in the log by type. Every process is stopped at the end."""
    say = progress or (lambda *a: None)
    tmp = tempfile.TemporaryDirectory(prefix="ecloud-bench-swarm-")
    work = Path(workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    boss_log = work / "boss.log"
    env = dict(os.environ, ECLOUD_CLUSTER=cluster, ECLOUD_DB=db_url)
    env.pop("ECLOUD_CONFIG", None)
    result: dict[str, Any] = {"db": db_url, "workers": n_workers, "tasks": tasks,
                              "processes": processes, "slots": slots, "heartbeat": heartbeat}
    holder: list = []
    boss = swarm = spy = None
    sampler: Sampler | None = None
    try:
        with tuned_mosquitto(broker=holder) as url:
            mosq = holder[0]
            result["broker_fd_limit"] = mosq.fd_limit()
            with open(boss_log, "wb") as log:
                boss = subprocess.Popen(
                    [sys.executable, "-m", "ecloud.cli.boss", "--db", db_url, "--broker", url],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=work,
                    start_new_session=True)
            _wait_boss_ready(boss, boss_log)
            say(f"boss pid {boss.pid} ready; broker {url} (fd limit {result['broker_fd_limit']})")
            swarm = Swarm(url, cluster, n_workers, processes, slots=slots, heartbeat=heartbeat)
            swarm.start()
            sampler = Sampler({"boss": [boss.pid], "broker": [mosq.pid], "swarm": swarm.pids})
            sampler.start()
            t0 = sampler.mark("swarm started")
            counts = swarm.wait_connected(max(120.0, n_workers / 50))
            t1 = sampler.mark("all announced")
            result["announce_seconds"] = round(t1["t"] - t0["t"], 2)
            result["announce_boss_cpu_share"] = _share(t0, t1, "boss")
            say(f"{counts['announced']} workers announced in {result['announce_seconds']}s")
            # heartbeats only
            time.sleep(idle_seconds)
            t2 = sampler.mark("idle end")
            result["idle_seconds"] = round(t2["t"] - t1["t"], 2)
            for name in ("boss", "broker", "swarm"):
                result[f"idle_{name}_cpu_share"] = _share(t1, t2, name)
            hb0 = swarm.counts()["heartbeats"]
            say(f"heartbeats only: boss CPU {result['idle_boss_cpu_share']:.2f}")
            # tasks: pushed with `ecloud push`, in files of push_chunk tasks
            before = swarm.counts()
            t3 = sampler.mark("push")
            pushes = _push(tasks, push_chunk, work, db_url, env, say, push_attempts)
            t4 = sampler.mark("pushed")
            result.update(push_calls=pushes["calls"], push_failures=pushes["failures"],
                          pushed_directly=pushes["direct"], push_errors=pushes["errors"][:3])
            result["push_seconds"] = round(t4["t"] - t3["t"], 2)
            if profile and _py_spy():
                spy = subprocess.Popen(
                    [_py_spy(), "record", "--pid", str(boss.pid), "--format", "raw", "--rate", "50",
                     "--output", profile, "--nonblocking", "--threads"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            until = t3["t"] + duration
            first_done = None
            timeline = []
            last_say = 0.0
            while time.monotonic() < until:
                time.sleep(0.2)
                now = swarm.counts()
                done = now["finished_acked"] - before["finished_acked"]
                if not timeline or time.monotonic() - t3["t"] - timeline[-1][0] >= 1.0 or done >= tasks:
                    timeline.append((round(time.monotonic() - t3["t"], 1), done,
                                     now["dispatches"] - before["dispatches"], now["connected"]))
                if first_done is None and done > 0:
                    first_done = time.monotonic() - t4["t"]
                if time.monotonic() - last_say >= 5.0:
                    last_say = time.monotonic()
                    say(f"  t+{timeline[-1][0]:.0f}s: {done}/{tasks} finished, "
                        f"{now['connected']} connected")
                if done >= tasks:
                    break
            t5 = sampler.mark("tasks end")
            after = swarm.counts()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                spy = None
            finished = after["finished_acked"] - before["finished_acked"]
            wall = t5["t"] - t4["t"]  # from the commit of the tasks to the last ack
            result.update(
                tasks_finished=finished,
                task_phase_seconds=round(wall, 2),
                tasks_per_s=round(finished / wall, 1) if wall > 0 else 0.0,
                first_finish_seconds=None if first_done is None else round(first_done, 2),
                timeline=timeline,
            )
            for name in ("boss", "broker", "swarm"):
                result[f"task_{name}_cpu_share"] = _share(t4, t5, name)
            result["heartbeats_sent_during_tasks"] = after["heartbeats"] - hb0
            result["task_ack_latency"] = {name[7:]: after[name] - before[name]
                                          for _, name in ACK_BUCKETS}
            result["task_resent_reports"] = after["resent_reports"] - before["resent_reports"]
            result["task_duplicate_dispatches"] = (after["duplicate_dispatches"]
                                                   - before["duplicate_dispatches"])
            result["boss_peak_rss_mb"] = round(max(s.get("boss_hwm_kb", 0) for s in sampler.samples)
                                               / 1024, 1)
            result["boss_rss_end_mb"] = round(t5.get("boss_rss_kb", 0) / 1024, 1)
            result["boss_cpu_share"] = result["task_boss_cpu_share"]
            sampler.halt.set()
            result["swarm"] = swarm.stop()
            swarm = None
            result["workers_connected"] = after["connected"]
            result["boss_exit"] = _kill(boss)
            boss = None
    finally:
        if spy is not None:
            spy.kill()
        if sampler is not None:
            sampler.halt.set()
        if swarm is not None:
            swarm.stop()
        if boss is not None:
            _kill(boss)
        if holder and holder[0].proc is not None:
            holder[0].stop()
        result["boss_log_tail"] = boss_log.read_text(errors="replace")[-1500:] if boss_log.exists() else ""
        tmp.cleanup()
    events, commits = count_events(db_url)
    result["events"] = dict(events)
    result["log_commits"] = commits
    result["heartbeat_events"] = events.get("worker.heartbeat", 0)
    return result


# --------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", metavar="URL", help="swarm only: an MQTT broker to connect to")
    parser.add_argument("--cluster", default="swarm")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT)
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="swarm only: steady seconds; --measure: the task phase's limit")
    parser.add_argument("--measure", action="store_true",
                        help="start a tuned Mosquitto and the boss too, push no-op tasks")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--push-chunk", type=int, help="--measure: tasks per pushed file")
    parser.add_argument("--idle", type=float, default=20.0, help="heartbeat-only seconds")
    parser.add_argument("--db", help="--measure: the log (default: a fresh SQLite file)")
    parser.add_argument("--mysql", metavar="SERVER",
                        help="--measure: use database ecloud_bench_swarm on this server "
                             "(mysql://user@host:port), created and dropped")
    parser.add_argument("--profile", metavar="PATH", help="--measure: py-spy raw stacks of the boss")
    parser.add_argument("--json", metavar="PATH", help="also write the result here")
    args = parser.parse_args(argv)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.measure:
        with fresh_log(args.mysql or "sqlite", "ecloud_bench_swarm") as url:
            result = measure_boss_with_swarm(
                args.db or url, args.workers, args.tasks, args.seconds, processes=args.processes,
                slots=args.slots, heartbeat=args.heartbeat, idle_seconds=args.idle,
                cluster=args.cluster, profile=args.profile, push_chunk=args.push_chunk,
                progress=say)
    else:
        if not args.broker:
            parser.error("give --broker URL (swarm only) or --measure")
        result = run_swarm(args.broker, args.cluster, args.workers, args.processes, args.seconds,
                           args.slots, args.heartbeat)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
