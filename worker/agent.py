"""The worker agent: its main loop and the ``ecloud-worker`` command.

One thread owns all the agent's state. Everything that happens elsewhere -
a boss message or a (re)connection on paho's network thread, a signal - is
posted to the :class:`Inbox`; an attempt's exit is seen on its pidfd, which
the inbox's selector watches too. The main loop sleeps on the inbox until
the next thing arrives or the next
deadline (heartbeat, resend, task timeout, SIGKILL escalation, the end of the
drain) comes round. Reports produced in one turn of the loop are sent
together in one payload.

An attempt's start is reported only once it has run for
:data:`START_REPORT_AFTER`: a shorter one reports just its end, which says
that it started. For no-op-sized tasks that is a third fewer events for the
boss to log and fold and half the reports to send and acknowledge (Celery
does not report starts at all by default, ``task_track_started``); a task
that runs longer is seen ``running`` 50 ms late, which nobody can tell.

Who it answers to: every payload carries the agent's ``incarnation`` and
the agent acts only on boss messages for it (acks excepted: their ids are
its own), so a second agent under the same worker id can neither take nor
disturb its work. A refused duplicate stays quiet and asks again after the
``retry_after`` the boss gives, three times, then exits 3. The boss beats
on a retained topic; with no beat for ``--boss-grace`` seconds the agent
stops its attempts and exits 4, so nothing runs on with no boss. On
SIGTERM it tells the boss it is draining (no new work), gives back what
it had queued, lets what runs finish, and says goodbye.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
import uuid
from typing import Any

import attrs
import click

from ecloud.cli.exits import WORKER_BROKER_REFUSED, WORKER_ORPHANED, WORKER_REFUSED
from ecloud.effects.messaging.mqtt import Connection
from ecloud.wire import (
    PROTOCOL,
    BossPayload,
    Bye,
    Draining,
    Finished,
    Heartbeat,
    Hello,
    LogsRequest,
    Lost,
    Started,
    WireError,
    WorkerPayload,
    boss_topic,
    check_logs_request,
    dumps,
    from_topic,
    logs_topic,
    parse_boss_beat,
    parse_boss_payload,
    to_topic,
)
from ecloud_worker import logserve
from ecloud_worker.inbox import Inbox
from ecloud_worker.journal import Journal
from ecloud_worker.outbox import Outbox, payloads
from ecloud_worker.reaper import become_subreaper
from ecloud_worker.runner import Launched, Runner
from ecloud_worker.settings import Settings, resolve

log = logging.getLogger("worker")

BYE_WAIT = 5.0  # seconds to wait for the boss to ack our goodbye
REAP_WAIT = 10.0  # seconds to wait for killed attempts to exit at shutdown
SEEN_CAP = 200_000  # tasks whose highest dispatched attempt is remembered
START_REPORT_AFTER = 0.05  # seconds an attempt runs before its start is reported
MAX_REFUSALS = 3  # a duplicate's announcements refused in a row before it gives up
#: seconds without a connection before the agent asks why (TLS, refusal)
DIAGNOSE_AFTER = 3.0


class Agent:
    def __init__(self, settings: Settings, clock=time.monotonic) -> None:
        self.s = settings
        self.clock = clock
        self.incarnation = uuid.uuid4().hex
        self.inbox = Inbox()
        journal = Journal(settings.journal, settings.worker_id) if settings.journal else None
        self.outbox = Outbox(self.incarnation, journal)
        self.started_at = clock()
        #: when the boss was last heard (its beat, or any message for us);
        #: the agent's start counts as heard, so a new agent waits a grace
        self.boss_seen = self.started_at
        self.refusals = 0  # announcements refused in a row (a duplicate id)
        self.refused_until: float | None = None  # quiet until then, then announce again
        self.connected_once = False
        self.diagnosed = False
        self.runner = Runner(settings.work_dir, settings.slots, self.inbox.put, clock,
                             datastore_key=settings.datastore_key, watcher=self.inbox,
                             run_as=settings.run_as)
        self.seen: dict[str, int] = {}  # task id -> highest attempt dispatched to us
        #: attempts launched whose start is not reported yet -> when it will be
        #: (in launch order, so the first is the next due)
        self.unreported: dict[tuple[str, int], float] = {}
        self.from_topic = from_topic(settings.cluster, settings.worker_id)
        self.to_topic = to_topic(settings.cluster, settings.worker_id)
        self.boss_topic = boss_topic(settings.cluster)
        lost = dumps(WorkerPayload(settings.worker_id, [Lost()], incarnation=self.incarnation))
        self.conn = Connection(
            settings.broker,
            # one client id per agent process: two agents under one worker
            # id (a duplicate, a restart beside a dying predecessor) must not
            # take each other's broker session over, or they would flap
            f"ecloud-{settings.cluster}-{settings.worker_id}-{self.incarnation[:8]}",
            on_message=lambda topic, payload: self.inbox.put(("message", topic, payload)),
            on_connect=self._connected,
            will=(self.from_topic, lost),
            clean_session=False,
            auth=settings.broker_auth,
        )
        self.phase = "run"  # -> drain -> kill -> bye
        self.phase_deadline: float | None = None
        self.bye_id = ""
        self.stop_reason = ""
        self.status: int | None = None  # the exit status, once decided
        self.next_heartbeat = 0.0
        self.greeted = False  # the hello of the current connection is queued

    # ------------------------------------------------------------- main loop

    def run(self) -> int:
        handlers = {sig: signal.signal(sig, self._signalled)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        # what an attempt orphans is re-parented to us (worker/reaper.py); a
        # child's exit wakes the loop, whose runner.tick reaps the adopted ones
        become_subreaper()
        handlers[signal.SIGCHLD] = signal.signal(
            signal.SIGCHLD, lambda signum, frame: self.runner.child_exited())
        old_fd = signal.set_wakeup_fd(self.inbox.wakeup_fd)
        log.debug("connecting to %s as %r (cluster %r, incarnation %s, %d slots)",
                  self.s.broker, self.s.worker_id, self.s.cluster, self.incarnation, self.s.slots)
        try:
            self.conn.start()
            self.next_heartbeat = self.clock() + self.s.heartbeat
            while self.status is None:
                wake = self._next_wake()
                timeout = None if wake is None else max(0.0, wake - self.clock())
                for item in self.inbox.wait(timeout):
                    self._handle(item)
                    if self.status is not None:
                        break
                if self.status is None:
                    self._on_time(self.clock())
                self._flush(self.clock())
        finally:
            if self.status is not None:
                self.runner.finish()  # kill and reap every process we leave
                self.conn.stop()  # cleanly: the broker keeps the will to itself
                log.debug("disconnected; exit status %s", self.status)
            # else a crash: the socket closes with the process and the will tells the boss
            signal.set_wakeup_fd(old_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return self.status

    def _next_wake(self) -> float | None:
        times = [self.next_heartbeat, self.runner.next_deadline(), self.phase_deadline,
                 self.refused_until, self.boss_seen + self.s.boss_grace]
        if not self.connected_once and not self.diagnosed:
            times.append(self.started_at + DIAGNOSE_AFTER)
        if self.unreported:
            times.append(next(iter(self.unreported.values())))
        if self._online():
            times.append(self.outbox.next_due())
        return min((t for t in times if t is not None), default=None)

    def _handle(self, item: tuple) -> None:
        what = item[0]
        if what == "message":
            if item[1] == self.boss_topic:
                self._on_beat(item[2])
                return
            try:
                msg = parse_boss_payload(item[2])
            except WireError as exc:
                log.error("ignored a bad message from the boss: %s", exc)
                return
            self._on_boss(msg)
        elif what == "exit":
            attempt, ended = item[1], item[2]
            _log_exit(attempt, ended)
            self._outcomes(self.runner.exited(attempt, ended))
        elif what == "ready":
            outcomes = self.runner.reap(item[1])
            if outcomes is not None:
                _log_exit(item[1], self.clock())
                self._outcomes(outcomes)
        elif what == "connected":
            log.debug("subscribed to %s and %s", self.to_topic, self.boss_topic)
            self.connected_once = True
            if self.refused_until is None:
                self._hello()
            self.outbox.all_due(self.clock())
            self.greeted = True
        elif what == "signal":
            self._stop(item[1])

    def _on_time(self, now: float) -> None:
        self._outcomes(self.runner.tick(now))
        self._report_starts(now)
        self._check_connection(now)
        if self.status is not None:
            return
        if self.refused_until is not None and now >= self.refused_until:
            self.refused_until = None
            log.warning("announcing again after a refusal")
            self._hello()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.s.heartbeat
            if self._online() and self.refused_until is None:
                running = self.runner.running()
                log.debug("out: heartbeat running=%s", running)
                self.conn.publish(self.from_topic, dumps(WorkerPayload(
                    self.s.worker_id, [Heartbeat("", running)], incarnation=self.incarnation)))
        if self.phase in ("run", "drain") and now - self.boss_seen >= self.s.boss_grace:
            self._orphaned(now)
        if self.phase == "drain":
            if not (self.runner.busy() or len(self.outbox)) or now >= self.phase_deadline:
                if self.runner.busy():
                    log.debug("drain over: killing %s", self.runner.running())
                    self.runner.give_up()
                    self.phase, self.phase_deadline = "kill", now + REAP_WAIT
                else:
                    self._bye(now)
        elif self.phase == "kill":
            if not self.runner.busy() or now >= self.phase_deadline:
                self._bye(now)
        elif self.phase == "bye" and (not self.outbox.unacked(self.bye_id)
                                      or now >= self.phase_deadline):
            self.status = 0
        elif self.phase == "orphaned" and (not self.runner.busy() or now >= self.phase_deadline):
            self.status = WORKER_ORPHANED

    def _orphaned(self, now: float) -> None:
        """No boss for the whole grace: stop every attempt (unreported: the
        next boss runs them again) and exit - nothing runs on with no boss."""
        log.error("no boss heard for %.0fs (--boss-grace): stopping %d attempt(s) and exiting",
                  now - self.boss_seen, len(self.runner.running()))
        self.runner.give_up()
        self.phase, self.phase_deadline = "orphaned", now + REAP_WAIT

    def _check_connection(self, now: float) -> None:
        """A broker that refuses this agent (bad credentials, not authorised,
        a failed TLS handshake) will not change its mind: say why and exit,
        rather than retry in silence. One that does not answer yet may."""
        if self.connected_once or self.diagnosed or now - self.started_at < DIAGNOSE_AFTER:
            return
        if self.conn.connected.is_set():
            return
        self.diagnosed = True
        problem = self.conn.refused or self.conn.tls_problem()
        if problem:
            log.error("the MQTT broker at %s refused this worker: %s", self.s.broker, problem)
            self.runner.give_up(now=True)
            self.status = WORKER_BROKER_REFUSED

    def _online(self) -> bool:
        """Connected, and the hello for this connection goes first."""
        if not self.conn.connected.is_set():
            self.greeted = False
        return self.greeted

    def _flush(self, now: float) -> None:
        if not self._online():
            return
        fresh, resent = self.outbox.take(now)
        if resent:
            log.debug("resend %s", " ".join(_describe(r) for r in resent))
        for report in fresh:
            log.debug("out: %s", _describe(report))
        for payload in payloads(self.s.worker_id, fresh + resent, self.incarnation):
            self.conn.publish(self.from_topic, payload)

    # ------------------------------------------------------------- callbacks

    def _connected(self) -> None:
        """On paho's thread, after every (re)connection."""
        self.conn.subscribe(self.to_topic)
        self.conn.subscribe(self.boss_topic)
        self.inbox.put(("connected",))

    def _signalled(self, signum: int, frame: Any) -> None:
        self.inbox.put(("signal", signum))

    # ------------------------------------------------------------ boss input

    def _on_beat(self, payload: bytes) -> None:
        try:
            beat = parse_boss_beat(payload)
        except WireError as exc:
            log.error("ignored a bad beat from the boss: %s", exc)
            return
        if beat.up:
            self.boss_seen = self.clock()

    def _on_boss(self, msg: BossPayload) -> None:
        log.debug(
            "in: to=%s acks=%s dispatch=%s cancel=%s%s%s", msg.to[:8] or "any", msg.acks,
            [f"{d.task_id}/{d.attempt}" for d in msg.dispatch],
            [f"{c.task_id}/{c.attempt}" for c in msg.cancel],
            f" refuse={msg.refuse!r}" if msg.refuse is not None else "",
            " reannounce" if msg.reannounce else "",
        )
        self.outbox.ack(msg.acks)  # ids are ours alone, whoever the message was for
        if msg.to and msg.to != self.incarnation:
            return  # for another agent under our worker id
        now = self.clock()
        self.boss_seen = now
        if msg.refuse is not None:
            self._refused(msg, now)
            return
        if msg.to:
            self.refusals = 0  # a message for us that is no refusal: we are in
        if msg.reannounce:
            self._hello()
        for dispatch in msg.dispatch:
            key = (dispatch.task_id, dispatch.attempt)
            if self.runner.has(key) or self.seen.get(dispatch.task_id, -1) >= dispatch.attempt:
                log.debug("ignored dispatch %s/%s: already had it", *key)
                continue
            self._remember(*key)
            if self.phase != "run":
                log.debug("gave back dispatch %s/%s: shutting down", *key)
                self._outcomes([_given_back(dispatch, "the worker is shutting down")])
            else:
                self._outcomes(self.runner.submit(dispatch))
        for request in msg.logs:
            self._serve_logs(request)
        for cancel in msg.cancel:
            outcomes = self.runner.cancel((cancel.task_id, cancel.attempt))
            if outcomes is None:
                log.debug("ignored cancel %s/%s: not ours", cancel.task_id, cancel.attempt)
            else:
                log.debug("cancelling %s/%s", cancel.task_id, cancel.attempt)
                self._outcomes(outcomes)

    def _refused(self, msg: BossPayload, now: float) -> None:
        """The boss refused this agent: for good (another protocol), or for
        now (another agent holds the id: ask again after ``retry_after``)."""
        if msg.retry_after is None or self.refusals + 1 >= MAX_REFUSALS:
            tries = f" ({self.refusals + 1} of {MAX_REFUSALS})" if msg.retry_after is not None else ""
            log.error("the boss refused this worker%s: %s; exiting", tries, msg.refuse)
            self.runner.give_up(now=True)
            self.status = WORKER_REFUSED
            return
        self.refusals += 1
        self.refused_until = now + max(1.0, msg.retry_after)
        log.error("the boss refused this worker (%d of %d): %s", self.refusals, MAX_REFUSALS,
                  msg.refuse)

    def _serve_logs(self, request: LogsRequest) -> None:
        """Answer ``ecloud logs`` with a piece of an attempt's output (see
        :mod:`ecloud_worker.logserve`); read even while shutting down."""
        running = self.runner.has((request.task_id, request.attempt))
        reply = logserve.answer(str(self.s.work_dir), request, running)
        log.debug("logs %s %s/%s %s from %d: %s", request.request_id, request.task_id,
                  request.attempt, request.stream, request.offset,
                  reply.error or f"{reply.size} bytes in the file")
        if self.conn.connected.is_set() and check_logs_request(request) is None:
            self.conn.publish(logs_topic(self.s.cluster, self.s.worker_id, request.request_id),
                              dumps(reply))

    def _remember(self, task_id: str, attempt: int) -> None:
        """A bounded memory: attempts running or queued are also known to the
        runner, so forgetting the oldest finished tasks only matters for a
        duplicate delivered after SEEN_CAP newer tasks."""
        self.seen.pop(task_id, None)
        self.seen[task_id] = attempt
        if len(self.seen) > SEEN_CAP:
            del self.seen[next(iter(self.seen))]

    # --------------------------------------------------------------- reports

    def _outcomes(self, outcomes: list[Launched | Finished]) -> None:
        now = self.clock()
        for o in outcomes:
            if isinstance(o, Launched):
                log.debug("spawned %s/%s: pid %d in %s", o.task_id, o.attempt, o.pid, o.cwd)
                self.unreported[(o.task_id, o.attempt)] = now + START_REPORT_AFTER
            else:
                # an end reported before the start: the end says it started
                self.unreported.pop((o.task_id, o.attempt), None)
                self.outbox.add(lambda m, o=o: attrs.evolve(o, msg_id=m), now)

    def _report_starts(self, now: float) -> None:
        """Report the starts of the attempts that have run long enough."""
        while self.unreported:
            key, due = next(iter(self.unreported.items()))
            if due > now:
                return
            del self.unreported[key]
            self.outbox.add(lambda m, k=key: Started(m, k[0], k[1]), now)

    def _hello(self) -> None:
        self.outbox.forget("hello")
        held = self.runner.held()
        self.outbox.add(lambda m: Hello(m, socket.gethostname(), self.s.slots, PROTOCOL,
                                        self.incarnation, self.s.vm_id, held), self.clock(),
                        first=True)

    def _stop(self, signum: int) -> None:
        now = self.clock()
        name = signal.Signals(signum).name
        if self.phase == "run":
            self.stop_reason = f"stopped by {name}"
            self.outbox.add(lambda m: Draining(m, self.stop_reason), now)
            dropped = self.runner.close()
            log.debug("%s: draining for up to %gs (%d queued dispatches given back)",
                      name, self.s.drain_timeout, len(dropped))
            self._outcomes([_given_back(d, "the worker is shutting down") for d in dropped])
            self.phase, self.phase_deadline = "drain", now + self.s.drain_timeout
        elif self.phase == "drain":
            log.debug("%s again: ending the drain now", name)
            self.phase_deadline = now

    def _bye(self, now: float) -> None:
        bye = self.outbox.add(lambda m: Bye(m, self.stop_reason), now)
        self.bye_id = bye.msg_id
        self.phase, self.phase_deadline = "bye", now + BYE_WAIT


def _given_back(dispatch: Any, why: str) -> Finished:
    """The report that gives a dispatch back unstarted (not a failure: the
    boss offers the task again elsewhere)."""
    return Finished("", dispatch.task_id, dispatch.attempt, None, 0.0, returned=True,
                    reason=f"given back unstarted: {why}")


def _log_exit(attempt: Any, ended: float) -> None:
    log.debug("exit %s/%s: pid %d status %s after %.3fs", *attempt.key, attempt.proc.pid,
              attempt.proc.returncode, ended - attempt.started)


def _describe(report: Any) -> str:
    text = f"{report.kind} {report.msg_id}"
    if hasattr(report, "task_id"):
        text += f" {report.task_id}/{report.attempt}"
    if isinstance(report, Finished):
        text += f" exit={report.exit_code} signal={report.signal}"
        if report.reason:
            text += f" reason={report.reason!r}"
        if report.returned:
            text += " returned"
    return text


# ------------------------------------------------------------------- command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", metavar="URL", envvar="ECLOUD_BROKER",
              help="MQTT broker, mqtt://host:port. Default: $ECLOUD_BROKER, else BOSS_ADDRESS "
              "from --context-file (port 1883 unless given).")
@click.option("--cluster", metavar="NAME", envvar="ECLOUD_CLUSTER",
              help="Cluster name (part of every topic). Default: $ECLOUD_CLUSTER, the context "
              "file, else 'ecloud'.")
@click.option("--worker-id", metavar="ID", envvar="ECLOUD_WORKER_ID",
              help="This worker's id. Default: $ECLOUD_WORKER_ID, the context file, else the "
              "host name.")
@click.option("--slots", metavar="N", type=click.IntRange(min=1), envvar="ECLOUD_SLOTS",
              help="Slots to offer (a task may take several). Default: $ECLOUD_SLOTS, the "
              "context file, else the number of CPUs.")
@click.option("--work-dir", metavar="PATH", type=click.Path(file_okay=False),
              envvar="ECLOUD_WORK_DIR",
              help="Where attempts run, each in <work dir>/<task id>/<attempt>/. Default: "
              "$ECLOUD_WORK_DIR, else /tmp/ecloud-worker-<worker id>.")
@click.option("--heartbeat", metavar="SECONDS", type=click.FloatRange(min=0, min_open=True),
              default=5.0, show_default=True, help="Seconds between heartbeats.")
@click.option("--vm-id", metavar="N", type=int, envvar="ECLOUD_VM_ID",
              help="OpenNebula VM id to announce. Default: $ECLOUD_VM_ID, else VMID from the "
              "context file.")
@click.option("--context-file", metavar="PATH",
              help="OpenNebula context file (KEY='VALUE' lines) that may give BOSS_ADDRESS, "
              "ECLOUD_CLUSTER, ECLOUD_WORKER_ID, ECLOUD_SLOTS and VMID. Flags and environment "
              "win over it.")
@click.option("--drain-timeout", metavar="SECONDS", type=click.FloatRange(min=0), default=30.0,
              show_default=True,
              help="On SIGTERM/SIGINT, how long to let running tasks finish before killing them.")
@click.option("--boss-grace", metavar="SECONDS", type=click.FloatRange(min=1), default=900.0,
              show_default=True, envvar="ECLOUD_BOSS_GRACE",
              help="With no word from a boss for this long (its beat every few seconds, or any "
              "message), stop every attempt and exit 4: nothing runs on with no boss. A boss "
              "back within it finds the attempts running. Default: $ECLOUD_BOSS_GRACE, else 900.")
@click.option("--datastore-key", metavar="PATH", envvar="ECLOUD_DATASTORE_KEY",
              help="SSH private key for an ssh datastore (user@host:/path). Default: "
              "$ECLOUD_DATASTORE_KEY, ECLOUD_DATASTORE_KEY (a path) in the context file, "
              "ECLOUD_DATASTORE_SSH_KEY_B64 (the key itself, as the boss's OpenNebula provider "
              "hands it out; written to <work dir>/.ecloud/datastore_key, mode 0600), else "
              "ssh's own defaults.")
@click.option("--broker-ca", metavar="PATH", envvar="ECLOUD_BROKER_CA",
              help="CA certificate the broker's must chain to (for mqtts:// brokers). Default: "
              "$ECLOUD_BROKER_CA, else ECLOUD_BROKER_CA (a path) or ECLOUD_BROKER_CA_PEM_B64 "
              "(the certificate, as the boss hands it out) in the context file.")
@click.option("--broker-user", metavar="NAME", envvar="ECLOUD_BROKER_USER",
              help="Username at the broker. Default: $ECLOUD_BROKER_USER, else the worker id "
              "when a password is given. The password is never a flag: $ECLOUD_BROKER_PASSWORD, "
              "or ECLOUD_BROKER_PASSWORD_B64 in the context file; it is removed from the "
              "environment tasks inherit.")
@click.option("--run-as", metavar="USER", envvar="ECLOUD_RUN_AS",
              help="When the agent runs as root, run every task as USER (its uid, groups and "
              "HOME; attempt directories are given to it). Default: $ECLOUD_RUN_AS, "
              "ECLOUD_RUN_AS in the context file, else the agent's own user.")
@click.option("--journal", metavar="PATH", envvar="ECLOUD_WORKER_JOURNAL",
              help="Append every report made (started, finished, hello, bye) as a JSON line to "
              "PATH (a directory: PATH/<worker id>.jsonl), for audits. Default: "
              "$ECLOUD_WORKER_JOURNAL, else none.")
@click.option("--debug", is_flag=True,
              help="Print every step (connections, messages in and out, processes, resends) "
              "to stderr with timestamps.")
def cli(debug: bool, **options: Any) -> None:
    """Run tasks for an ecloud boss: announce this machine over MQTT, run what
    the boss dispatches, report every start and result until the boss has
    acknowledged it. SIGTERM or SIGINT drains and says goodbye."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    settings = resolve(options)
    sys.exit(Agent(settings).run())


def main() -> None:
    from ecloud.cli.exits import handle_errors

    handle_errors(cli)(prog_name="ecloud-worker")


if __name__ == "__main__":
    main()
