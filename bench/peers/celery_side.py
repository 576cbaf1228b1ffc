"""The Celery side of :mod:`bench.peers.celery_peer`: runs INSIDE the peers' venv.

    <peers-venv>/bin/python -I celery_side.py worker --pool threads --concurrency 2
    <peers-venv>/bin/python -I celery_side.py produce --tasks 5000 --warmup 50
    <peers-venv>/bin/python -I celery_side.py cleanup

Never imported by the project (celery is not installed there); configured by
the environment variables ``ECLOUD_BENCH_*`` that celery_peer sets:

- ``..._BROKER_URL``: ``redis://...`` or ``amqp://...`` (kombu's pyamqp);
- ``..._BACKEND``: a result backend URL (``redis://...``, ``rpc://``), or
  empty for none (``ignore_result``: the default, see ``completion``);
- ``..._REDIS_URL``: the Redis server holding the completion counter;
- ``..._QUEUE``: the queue (and exchange, and routing key) of this run;
- ``..._PREFIX``: the prefix of every Redis key of this run (the counter,
  the result backend's keys, and, over Redis, all of kombu's keys through
  its ``global_keyprefix``), so that cleanup is one ``SCAN``/``DEL``;
- ``..._WORK``: ``noop`` (return at once) or ``subprocess``
  (``subprocess.run(["true"])``, what an ecloud task ``true`` costs);
- ``..._COUNT``: ``1`` when each task increments the counter.

``produce`` prints one JSON line: the seconds from the first
``apply_async`` of the measured batch until every task of it is known done.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from typing import ClassVar

import celery
import kombu
import redis
from celery import Celery, bootsteps
from celery.exceptions import SecurityWarning
from celery.result import ResultSet

# "running the worker with superuser privileges": the benchmark runs as root
# here; the warning would only crowd the log tails shown on errors
warnings.simplefilter("ignore", SecurityWarning)

E = "ECLOUD_BENCH_"
BROKER_URL = os.environ[E + "BROKER_URL"]
BACKEND = os.environ.get(E + "BACKEND", "")
REDIS_URL = os.environ[E + "REDIS_URL"]
QUEUE = os.environ[E + "QUEUE"]
PREFIX = os.environ[E + "PREFIX"]
WORK = os.environ.get(E + "WORK", "noop")
COUNT = os.environ.get(E + "COUNT", "1") == "1"
COUNTER = PREFIX + "done"

app = Celery("ecloud_bench", broker=BROKER_URL, backend=BACKEND or None)
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_ignore_result=not BACKEND,
    result_expires=600,  # whatever cleanup misses goes away by itself
    worker_enable_remote_control=False,  # no pidbox queue per worker
    worker_send_task_events=False,
    worker_disable_rate_limits=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if BROKER_URL.startswith(("redis://", "rediss://")):
    app.conf.broker_transport_options = {"global_keyprefix": PREFIX}
if BACKEND.startswith(("redis://", "rediss://")):
    app.conf.result_backend_transport_options = {"global_keyprefix": PREFIX}



class _Tick(bootsteps.StartStopStep):
    """A no-op timer every half second on the worker's event loop.

    Celery's SIGTERM handler only sets a flag, read when the loop's poll
    returns; over RabbitMQ, idle, that poll waits up to 10 s (the next timer),
    so a warm shutdown took 10 s. With this tick it takes well under a second."""

    requires: ClassVar = {"celery.worker.components:Hub"}

    def start(self, worker) -> None:
        if worker.hub is not None:
            worker.hub.call_repeatedly(0.5, _nothing)


def _nothing() -> None:
    pass


app.steps["worker"].add(_Tick)

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client  # made lazily: in a prefork child, after the fork
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


@app.task(name="ecloud_bench.task")
def task() -> int:
    code = subprocess.run(["true"], check=False).returncode if WORK == "subprocess" else 0
    if COUNT:
        _redis().incr(COUNTER)
    return code


def _wait_counter(target: int, deadline: float, what: str) -> None:
    r = _redis()
    while True:
        done = int(r.get(COUNTER) or 0)
        if done >= target:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {done} of {target} tasks done at the deadline")
        time.sleep(0.002)


def _wait_results(results: list, deadline: float, what: str) -> None:
    try:
        ResultSet(results).get(timeout=max(1.0, deadline - time.monotonic()), propagate=True)
    except celery.exceptions.TimeoutError as exc:
        done = sum(1 for r in results if r.ready())
        raise TimeoutError(f"{what}: {done} of {len(results)} tasks done at the deadline") from exc


def produce(tasks: int, warmup: int, warmup_timeout: float, timeout: float) -> dict:
    if COUNT:
        _redis().delete(COUNTER)
    with app.producer_or_acquire() as producer:
        # warm-up: waits for the worker to be up and every process of its pool
        # to have run tasks; the counter then stands at ``warmup``
        warm = [task.apply_async(producer=producer) for _ in range(warmup)]
        deadline = time.monotonic() + warmup_timeout
        if COUNT:
            _wait_counter(warmup, deadline, "warm-up (is the worker up?)")
        else:
            _wait_results(warm, deadline, "warm-up (is the worker up?)")
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        results = [task.apply_async(producer=producer) for _ in range(tasks)]
        sent = time.perf_counter() - t0
        if COUNT:
            _wait_counter(warmup + tasks, deadline, "measured batch")
        else:
            _wait_results(results, deadline, "measured batch")
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "send_seconds": sent, "celery_version": celery.__version__,
            "kombu_version": kombu.__version__, "redis_py_version": redis.__version__}


def cleanup() -> dict:
    deleted = {"queue": False, "exchange": False, "redis_keys": 0}
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for what, call in (("queue", channel.queue_delete), ("exchange", channel.exchange_delete)):
                with contextlib.suppress(Exception):  # absent already: fine
                    call(QUEUE)
                    deleted[what] = True
    except Exception as exc:  # noqa: BLE001 - report, go on with Redis
        deleted["broker_error"] = repr(exc)
    r = _redis()
    keys = list(r.scan_iter(match=PREFIX.replace("*", r"\*") + "*", count=1000))
    for i in range(0, len(keys), 500):
        deleted["redis_keys"] += r.delete(*keys[i:i + 500])
    return deleted


def _die_with_parent() -> None:
    """SIGTERM to this process when the one that started it dies (Linux), so
    that a worker never outlives a harness killed without cleaning up."""
    parent = int(os.environ.get(E + "PARENT_PID", "0") or 0)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--pool", required=True)
    w.add_argument("--concurrency", type=int, required=True)
    w.add_argument("--prefetch-multiplier", type=int, default=4)
    p = sub.add_parser("produce")
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--warmup-timeout", type=float, default=60.0)
    p.add_argument("--timeout", type=float, required=True)
    sub.add_parser("cleanup")
    args = parser.parse_args(argv)
    if args.mode != "cleanup":
        _die_with_parent()
    if args.mode == "worker":
        app.worker_main(["worker", "--pool", args.pool, "--concurrency", str(args.concurrency),
                         "--queues", QUEUE, "--prefetch-multiplier", str(args.prefetch_multiplier),
                         "--without-gossip", "--without-mingle", "--without-heartbeat",
                         "--loglevel", "WARNING"])
        return 0
    try:
        out = (produce(args.tasks, args.warmup, args.warmup_timeout, args.timeout)
               if args.mode == "produce" else cleanup())
    except Exception as exc:  # noqa: BLE001 - one JSON line either way
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
