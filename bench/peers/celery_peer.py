"""Celery's end-to-end task throughput on this machine, beside ecloud's.

    python -m bench.peers.celery_peer --broker rabbitmq --tasks 5000 --processes 2 --work subprocess
    python -m bench.peers.celery_peer --broker redis --pool auto --work noop

    from bench.peers import celery_peer
    celery_peer.measure("redis", tasks=5000, processes=2, work="subprocess")  # -> dict

Celery 5.7 and its clients live in the peers' own venv (:mod:`bench.peers.env`,
made on first use); this module, run by the project's Python, only starts
and stops processes there: one Celery worker (``celery_side.py worker``, a
pool of ``processes``) and one producer (``celery_side.py produce``), each in
a session (process group) of its own.

What is measured, end to end: from the first ``apply_async`` of ``tasks``
tasks until the producer knows that all of them have run. Before that the
producer sends a warm-up of ``warmup`` tasks (``max(20, 10 * processes)``)
and waits for them, so that the worker's start-up (about 1-2 s), the first
connections and every pool process's first task are not counted.

How completions are known (``completion``):

- ``"counter"`` (default): the tasks ignore their results (no result
  backend) and each increments one Redis counter (``INCR``, ~50 us on
  loopback) after its work; the producer polls the counter every 2 ms.
  This is Celery's cheapest way of knowing that everything has run, so the
  figure is Celery at its best - the fair figure to set against ecloud,
  whose boss learns every task's exit code (and logs it durably).
- ``"backend"``: a result backend as a Celery user would configure one (the
  Redis backend over Redis, ``rpc://`` over RabbitMQ) and ``ResultSet.get``
  on all the results: what it costs to know each task's outcome in Celery.

Measured here (5,000 tasks, 2 processes, counter completion, quiet
machine, tasks/s): RabbitMQ + threads 930-1,140 with ``subprocess`` work,
1,890-2,320 with ``noop``; Redis + prefork 800-870 and 1,390-1,450. With a
result backend: ~910 (``rpc://``) and ~610 (Redis) with ``subprocess``
work. The figures in ``docs/services.md`` (890 and 400 for no-op tasks)
are lower than either, so they were most likely taken with results fetched
one by one; compare within one run of the harness, not with that table.

Work per task (``work``): ``"subprocess"`` runs ``subprocess.run(["true"])``,
as an ecloud task whose command is the list ``["true"]`` (a string command
runs as ``/bin/sh -c true``, a little dearer: see :mod:`bench.spawn_limit`);
``"noop"`` returns at once (Celery's own overhead alone). The producer runs
on the same 2 cores as the worker and the broker, as ecloud's boss does.

The pool (``pool``): ``"threads"`` with ``--concurrency processes`` over
RabbitMQ (fastest there: ~890 vs ~750 tasks/s for prefork in
``docs/services.md``, and 1,100 vs 950 with ``subprocess`` work here);
``"prefork"`` with ``--concurrency processes`` over Redis (910-940 vs
770-860 tasks/s for threads with ``subprocess`` work here, see
:data:`DEFAULT_POOL`); or ``pool="auto"``, which runs a short trial of both
(:data:`AUTO_TRIAL_TASKS` tasks each) and measures with the faster one (the
trials are in the result, under ``pool_trials``).

Each run uses a queue (and exchange) of its own, ``ecloud-bench-<id>``, and
a Redis key prefix of its own, ``ecloud-bench:<id>:`` (the counter, the
result backend's keys, and - over Redis - every key kombu makes, through
its ``global_keyprefix``). Afterwards, error or KeyboardInterrupt included,
the producer's and the worker's process groups are sent SIGTERM, then
SIGKILL after :data:`STOP_GRACE` seconds, and ``celery_side.py cleanup``
deletes the queue, the exchange and the run's Redis keys. Should this
process die without cleaning up (SIGKILL), the worker and the producer are
sent SIGTERM by the kernel (each sets ``PR_SET_PDEATHSIG`` on itself when it
starts), and the producer has a deadline of its own.

Worker settings besides the pool: Celery's defaults (prefetch multiplier 4,
early acks, JSON), without gossip, mingle, event heartbeats, remote
control or task events (none of which a benchmark needs, and each of which
costs broker traffic), rate limits disabled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.peers import env
from bench.spawn_limit import cpu_busy

SIDE = Path(__file__).with_name("celery_side.py")
BROKERS = ("redis", "rabbitmq")
WORKS = ("subprocess", "noop")
POOLS = ("threads", "prefork")
COMPLETIONS = ("counter", "backend")
# Measured here (2 cores, 5,000 tasks, counter completion, 3 runs each, tasks/s):
#   RabbitMQ  noop: threads 1850-2910, prefork 2060-2380
#             subprocess: threads 1100-1130, prefork 910-990   -> threads
#   Redis     noop: threads 1150-1330, prefork 1350-1430
#             subprocess: threads 770-860, prefork 910-940     -> prefork
# (with a result backend the two pools are within the noise of each other).
DEFAULT_POOL = {"rabbitmq": "threads", "redis": "prefork"}
AUTO_TRIAL_TASKS = 1000
WORKER_START_DEADLINE = 60.0  # seconds for the warm-up to come back (worker start-up)
STOP_GRACE = 5.0  # seconds between SIGTERM (warm shutdown) and SIGKILL
CLEANUP_DEADLINE = 30.0


class CeleryPeerError(RuntimeError):
    """The measurement could not be made; the message says why."""


def default_redis_url() -> str:
    return os.environ.get("ECLOUD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def default_amqp_url() -> str:
    return os.environ.get("ECLOUD_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _masked(url: str) -> str:
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def _start(cmd: list[str], environ: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=environ, start_new_session=True)


def _stop(proc: subprocess.Popen | None, grace: float = STOP_GRACE) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace``; reaped either way."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)  # the group: prefork children too
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            try:  # the leader is gone; make sure no pool child outlives it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _last_json(path: Path) -> dict | None:
    for line in reversed(_tail(path, 50).splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _run_once(python: Path, broker: str, tasks: int, processes: int, work: str, pool: str,
              completion: str, warmup: int, prefetch_multiplier: int, redis_url: str,
              amqp_url: str, timeout: float) -> dict:
    run_id = uuid.uuid4().hex[:12]
    broker_url = redis_url if broker == "redis" else amqp_url
    backend = "" if completion == "counter" else (redis_url if broker == "redis" else "rpc://")
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    environ.update({
        "ECLOUD_BENCH_BROKER_URL": broker_url,
        "ECLOUD_BENCH_BACKEND": backend,
        "ECLOUD_BENCH_REDIS_URL": redis_url,
        "ECLOUD_BENCH_QUEUE": f"ecloud-bench-{run_id}",
        "ECLOUD_BENCH_PREFIX": f"ecloud-bench:{run_id}:",
        "ECLOUD_BENCH_WORK": work,
        "ECLOUD_BENCH_COUNT": "1" if completion == "counter" else "0",
        "ECLOUD_BENCH_PARENT_PID": str(os.getpid()),
    })
    tmp = Path(tempfile.mkdtemp(prefix=f"ecloud-bench-celery-{run_id}-"))
    worker = producer = None
    try:
        worker = _start([str(python), "-I", str(SIDE), "worker", "--pool", pool,
                         "--concurrency", str(processes),
                         "--prefetch-multiplier", str(prefetch_multiplier)],
                        environ, tmp / "worker.log")
        producer = _start([str(python), "-I", str(SIDE), "produce", "--tasks", str(tasks),
                           "--warmup", str(warmup), "--warmup-timeout", str(WORKER_START_DEADLINE),
                           "--timeout", str(timeout)],
                          environ, tmp / "producer.log")
        deadline = time.monotonic() + WORKER_START_DEADLINE + timeout + 30.0
        while producer.poll() is None:
            if worker.poll() is not None:
                raise CeleryPeerError(f"the Celery worker exited ({worker.returncode}) during the "
                                      f"run; its log:\n{_tail(tmp / 'worker.log')}")
            if time.monotonic() > deadline:
                raise CeleryPeerError("the Celery producer did not finish in time; its log:\n"
                                      + _tail(tmp / "producer.log"))
            time.sleep(0.05)
        out = _last_json(tmp / "producer.log")
        if producer.returncode != 0 or not out or "seconds" not in out:
            raise CeleryPeerError(
                f"the Celery producer failed ({producer.returncode}): "
                f"{(out or {}).get('error') or _tail(tmp / 'producer.log')}\n"
                f"(broker {_masked(broker_url)}, counter and results on {_masked(redis_url)}: "
                f"are they running?)\nworker log:\n{_tail(tmp / 'worker.log')}")
        return {**out, "broker_url": _masked(broker_url), "result_backend": _masked(backend) or None}
    finally:
        _stop(producer)
        _stop(worker)
        try:
            subprocess.run([str(python), "-I", str(SIDE), "cleanup"], check=False, env=environ,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=CLEANUP_DEADLINE)
        except (OSError, subprocess.TimeoutExpired):
            pass  # the queue is unused and result keys expire; nothing else to do
        shutil.rmtree(tmp, ignore_errors=True)


def measure(broker: str, tasks: int, processes: int, work: str, *, pool: str | None = None,
            completion: str = "counter", warmup: int | None = None, prefetch_multiplier: int = 4,
            redis_url: str | None = None, amqp_url: str | None = None,
            timeout: float | None = None) -> dict:
    """Celery's end-to-end throughput for ``tasks`` tasks on ``processes``
    worker processes (or threads), over ``broker`` ("redis" or "rabbitmq").

    ``work``: "subprocess" or "noop"; ``pool``: "threads", "prefork",
    "auto" or None (the default for the broker, :data:`DEFAULT_POOL`);
    ``completion``: "counter" or "backend" (see the module's docstring).
    ``timeout`` bounds the measured batch (default 60 s + 10 ms per task).
    Returns a JSON-serialisable dict; raises :class:`CeleryPeerError` (or
    :class:`bench.peers.env.PeersEnvError`) when it cannot measure."""
    if broker not in BROKERS:
        raise ValueError(f"broker must be one of {BROKERS}, not {broker!r}")
    if work not in WORKS:
        raise ValueError(f"work must be one of {WORKS}, not {work!r}")
    if completion not in COMPLETIONS:
        raise ValueError(f"completion must be one of {COMPLETIONS}, not {completion!r}")
    if pool not in (None, "auto", *POOLS):
        raise ValueError(f"pool must be one of {POOLS}, 'auto' or None, not {pool!r}")
    if tasks < 1 or processes < 1:
        raise ValueError("tasks and processes must be at least 1")
    python = env.ensure()
    busy_before = cpu_busy()
    redis_url = redis_url or default_redis_url()
    amqp_url = amqp_url or default_amqp_url()
    warmup = max(20, 10 * processes) if warmup is None else warmup
    common = {"processes": processes, "work": work, "completion": completion, "warmup": warmup,
              "prefetch_multiplier": prefetch_multiplier, "redis_url": redis_url,
              "amqp_url": amqp_url}
    trials: dict[str, float] | None = None
    if pool == "auto":
        trials = {}
        n = min(tasks, AUTO_TRIAL_TASKS)
        for candidate in POOLS:
            trial = _run_once(python, broker, n, pool=candidate, timeout=60.0 + n / 100, **common)
            trials[candidate] = round(n / trial["seconds"], 1)
        pool = max(trials, key=trials.__getitem__)
    elif pool is None:
        pool = DEFAULT_POOL[broker]
    out = _run_once(python, broker, tasks, pool=pool,
                    timeout=timeout if timeout is not None else 60.0 + tasks / 100, **common)
    result = {
        "system": f"celery+{broker}",
        "work": work,
        "pool": pool,
        "processes": processes,
        "tasks": tasks,
        "seconds": round(out["seconds"], 4),
        "tasks_per_s": round(tasks / out["seconds"], 1),
        "celery_version": out["celery_version"],
        "kombu_version": out["kombu_version"],
        "completion": completion,
        "result_backend": out["result_backend"],
        "broker_url": out["broker_url"],
        "warmup_tasks": warmup,
        "prefetch_multiplier": prefetch_multiplier,
        "send_seconds": round(out["send_seconds"], 4),
        "cpu_busy_before": busy_before,  # other work on the machine skews the figure
    }
    if trials is not None:
        result["pool_trials"] = {"tasks": min(tasks, AUTO_TRIAL_TASKS), "tasks_per_s": trials}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=BROKERS, default="rabbitmq")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--work", choices=WORKS, default="subprocess")
    parser.add_argument("--pool", choices=(*POOLS, "auto"), default=None,
                        help="default: threads over RabbitMQ, prefork over Redis")
    parser.add_argument("--completion", choices=COMPLETIONS, default="counter")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--prefetch-multiplier", type=int, default=4)
    parser.add_argument("--redis-url", default=None, help=f"default: {default_redis_url()}")
    parser.add_argument("--amqp-url", default=None, help=f"default: {_masked(default_amqp_url())}")
    args = parser.parse_args(argv)
    try:
        result = measure(args.broker, args.tasks, args.processes, args.work, pool=args.pool,
                         completion=args.completion, warmup=args.warmup,
                         prefetch_multiplier=args.prefetch_multiplier,
                         redis_url=args.redis_url, amqp_url=args.amqp_url)
    except (CeleryPeerError, env.PeersEnvError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
