"""The boss: the loop of docs/architecture.md.

::

    MQTT messages, provider outcomes, operator events (other processes
    append those to the log directly), timer ticks
        -> inbox -> batch -> append (one transaction)
        -> fold everything new in the log, in seq order -> effects
        -> perform them (messages to workers, VM calls)
        -> schedule: decisions appended, folded, dispatched

Only this thread touches the state. paho's network thread and the provider's
thread pool only put things in the inbox. Nothing is acknowledged to a worker
before its event is committed: acks are effects of the fold, and the fold
only sees committed events.

On start the boss folds the log (newest snapshot + suffix), appends
``boss.started`` (which restarts worker deadlines) and re-issues every
effect the state says is outstanding. On stop it finishes the batch in hand.

Liveness is judged on what the boss could hear. A worker silent past its
deadline is only *overdue* in the state; the boss logs its loss as a
decision (:func:`ecloud.projections.liveness.losses`) at the end of its
next batch, after every report that reached it meanwhile, and makes no
decision at all while its appends fail. When the boss could not listen or
log for a while - the database down or locked, the process stopped or
starved - its next batch starts with ``boss.resumed``, which restarts every
deadline from that moment: the boss's silence is never taken for its
workers'.

The boss beats on a retained topic (:func:`ecloud.wire.boss_topic`) every
:data:`BEAT_EVERY` seconds, with a will that says it is gone: workers that
hear no boss for their grace period stop their attempts and exit.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ecloud import wire
from ecloud.boss.callbacks import callback_events, hook_topic
from ecloud.boss.cloud import CloudSide
from ecloud.boss.edge import to_events
from ecloud.boss.heard import HeardReports
from ecloud.boss.lease import Lease, lease_for
from ecloud.boss.recent_reports import committed_reports
from ecloud.effects.messaging.mqtt import Connection, MqttAuth
from ecloud.effects.messaging.outbox import Outbox
from ecloud.errors import ConfigError, EcloudError, FencedError, StoreError
from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.log.rebuild import load_state, save_snapshot
from ecloud.log.store import LogStore
from ecloud.log.url import open_store
from ecloud.projections import context
from ecloud.projections.autoscale import autoscale
from ecloud.projections.effects import Ack
from ecloud.projections.fold import step
from ecloud.projections.liveness import losses
from ecloud.projections.outstanding import outstanding
from ecloud.projections.reconcile import reconcile
from ecloud.projections.scheduler import schedule, stuck
from ecloud.projections.state import CURRENT_RULES, State
from ecloud.projections.timers import next_deadline
from ecloud.security.accounts import BrokerAccounts

log = logging.getLogger("ecloud.boss")

MAX_BATCH = 5000  # inbox items per transaction
ROSTER_EVERY = 0.25  # seconds: the view's workers and VMs are at most this old
BEAT_EVERY = 5.0  # seconds between the boss's beats to the workers
#: a turn that comes this long after the previous one (at least; a fifth of
#: heartbeat_timeout when that is longer) means the boss could not listen
STALL_AFTER = 2.0
#: seconds: a beat older than this (by its own clock) is a retained one, not news
STALE_BEAT = 30.0
#: seconds a starting boss listens for the retained beat of another boss
BEAT_LISTEN = 0.5
#: the event types that change who is in the roster or their status
ROSTER_EVENTS = frozenset(tag for tag in ev.EVENT_TYPES
                          if tag.startswith(("worker.", "vm.")) and tag != "worker.heartbeat")


class Boss:
    def __init__(
        self,
        store: LogStore | str | Callable[[], LogStore],
        broker: str,
        *,
        provider: Any = None,
        cluster: str = "ecloud",
        snapshot_every: int = 10_000,
        snapshot_interval: float = 300.0,
        takeover_after: float = 10.0,
        poll: float = 0.2,
        resend_after: float = 5.0,
        observe_every: float = 2.0,
        boss_id: str | None = None,
        until: Callable[[State], bool] | None = None,
        on_start: Callable[[State], list] | None = None,
        vm_prefix: str | None = None,
        auth: MqttAuth | None = None,
        accounts: BrokerAccounts | None = None,
        standby: bool = True,
        label: str = "",
        connect_wait: float | None = None,
        upkeep: Callable[[State], list] | None = None,
        lease: Lease | None = None,
        beat_every: float = BEAT_EVERY,
    ) -> None:
        # A URL (or a factory) is opened in the boss's own thread: SQLite
        # connections belong to the thread that made them.
        self._store_arg = store
        self._owns_store = not isinstance(store, LogStore)
        self.store: LogStore = store if isinstance(store, LogStore) else None  # type: ignore[assignment]
        self.broker = broker
        self.provider = provider
        self.cluster = cluster
        self.auth = auth
        #: the broker's worker accounts, kept to the open VMs (None: no accounts)
        self.accounts = accounts
        self.vm_prefix = vm_prefix if vm_prefix is not None else f"ecloud-{cluster}-"
        self.snapshot_every = snapshot_every
        self.snapshot_interval = snapshot_interval
        self.takeover_after = takeover_after
        self.poll = poll
        self.resend_after = resend_after
        self.boss_id = boss_id or uuid.uuid4().hex[:12]
        self.until = until
        self.on_start = on_start
        #: wait as a standby while another boss holds the log (else refuse:
        #: :class:`~ecloud.boss.lease.LogHeldError`)
        self.standby = standby
        self.label = label  # what this boss is, for whoever finds the log held
        #: seconds to wait for the broker at start (None: connect in the background)
        self.connect_wait = connect_wait
        #: decisions of the boss's owner, made every turn after the autoscaler's
        #: (keeping N local workers); None: none
        self.upkeep = upkeep
        self._given_lease = lease  # taken already by whoever runs this boss
        #: seconds between beats: well inside the shortest grace of its workers
        self.beat_every = beat_every
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.state = State()
        self.view: dict[str, Any] = {}  # a copy of a few numbers for other threads
        self._roster_at = 0.0  # when the view's workers and VMs were last copied
        self._roster_changed = False  # a worker or VM came, went or changed since
        self._vms_changed = True  # a vm.* event was folded since the accounts were synced
        self._pending: list = []  # events not yet committed (the database was down)
        #: loss decisions of the last turn: they go after what arrives meanwhile
        self._losses: list = []
        #: (since when, why) the boss could not listen or log, until it logs again
        self._stalled: tuple[float, str] | None = None
        self._turn_started = 0.0  # monotonic start of the last turn
        self._beat_stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._started_at = 0.0
        self._beat_heard = threading.Event()  # a beat (the retained one) came
        self._log_id = ""
        self._conflict: str | None = None  # another log's boss on this cluster (_heard_beat)
        #: (first seq, ts, events) of the batch this boss appended last, not yet folded
        self._appended: tuple[int, float, list] | None = None
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._last_read = 0.0  # when the log was last read for other writers' events
        self.fenced = False
        self._lease: Lease | None = None
        self._lease_checked = 0.0
        #: the hook's time of the last callback accepted per VM name, not yet folded
        #: (a duplicate in the same batch is refused too)
        self._heard_callbacks: dict[str, float] = {}
        self._hook_topic = hook_topic(cluster)
        #: provider calls and looks at the cloud's pool (boss/cloud.py)
        self.cloud = CloudSide(provider, self.inbox, observe_every)
        self.conn: Connection | None = None
        self.outbox: Outbox | None = None
        #: the reports heard: committed, on their way, and from strangers (boss/heard.py)
        self.heard = HeardReports()
        self.error: BaseException | None = None
        self.finished = threading.Event()

    # ----------------------------------------------------------- for others

    def submit(self, events: list) -> None:
        """Queue events to be appended by the boss (thread-safe)."""
        self.inbox.put(("events", list(events)))

    def stop(self) -> None:
        self.stopping.set()

    # ------------------------------------------------------------- the loop

    def run(self) -> None:
        try:
            if isinstance(self._store_arg, str):
                self.store = open_store(self._store_arg, create=True)
            elif self._owns_store:
                self.store = self._store_arg()  # type: ignore[operator]
            if self._given_lease is not None:
                self._lease = self._given_lease
            else:
                self._lease = lease = lease_for(self.store, self.boss_id, self.takeover_after,
                                                self.label)
                if not lease.acquire(self.stopping, wait=self.standby):
                    return  # stopped while on standby
            self._start()
            while not self.stopping.is_set():
                self._iteration()
                if self.until is not None and self.until(self.state):
                    break
            self._iteration(wait=False)  # what is already in hand
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            try:
                self._close()
                # a lease given is its giver's to release: ecloud run keeps
                # it until its broker and workers are gone too, so that a
                # run waiting for the log finds nothing of this one's
                if self._lease is not None and self._given_lease is None:
                    self._lease.release()
            finally:
                if self._owns_store and self.store is not None:
                    self.store.close()
                self.finished.set()

    def _start(self) -> None:
        self.state = load_state(self.store)
        gc.freeze()  # the state lives as long as the boss: later collections need not walk it
        log.info("boss %s: state at seq %d, cluster %s", self.boss_id, self.state.seq, self.cluster)
        # A client id of this start's own, and a clean session: nobody can
        # take the boss's session over (its id is not to be guessed) or plant
        # a subscription in it for a later boss to inherit. Reports sent
        # while no boss listens are not lost: their workers send them again.
        self._started_at = time.time()
        beat_topic = wire.boss_topic(self.cluster)
        self.conn = Connection(
            self.broker, f"ecloud-{self.cluster}-boss-{self.boss_id}", clean_session=True,
            on_message=lambda topic, payload: (self._heard_beat(payload) if topic == beat_topic
                                               else self.inbox.put(("mqtt", topic, payload))),
            on_connect=self._connected,
            will=(wire.boss_topic(self.cluster), wire.dumps(wire.BossBeat(self.boss_id, False))),
            will_retain=True,
            auth=self.auth,
        )
        self.outbox = Outbox(self.conn.publish, self.cluster, self.resend_after)
        for worker_id, msg_id in committed_reports(self.store):
            self.heard.remember(worker_id, msg_id)  # their resends get an ack, not a new event
        self._log_id = self.store.log_id()
        self.conn.start(wait=self.connect_wait)
        # the retained beat (if any) comes right after the subscription: a boss
        # of another log on this cluster is found before this one does anything
        self._beat_heard.wait(BEAT_LISTEN)
        if self._conflict is not None:
            raise EcloudError(self._conflict)
        self._commit([ev.BossStarted(self.boss_id, CURRENT_RULES)])
        effects = self._fold_new()
        # on_start sees the state before any effect is re-issued (it may set
        # up the provider), and its events are logged with the first batch
        extra = self.on_start(self.state) if self.on_start is not None else []
        self._sync_accounts()
        self._perform(effects + outstanding(self.state))
        self.submit(extra)
        self._turn_started = time.monotonic()
        self._beater = threading.Thread(target=self._beating, name="boss-beat", daemon=True)
        self._beater.start()
        self.ready.set()

    def _connected(self) -> None:
        """On paho's thread, after every (re)connection."""
        assert self.conn is not None
        self.conn.subscribe(wire.from_all(self.cluster))
        self.conn.subscribe(wire.boss_topic(self.cluster))
        if self.provider is not None:  # OpenNebula's state hook (onehook.hook)
            self.conn.subscribe(self._hook_topic)
        self._beat()

    def _beating(self) -> None:
        """A thread of its own beats, so that workers hear the boss also
        while its loop waits on the database (a table lock can hold it for
        minutes: its workers must not give up on it meanwhile)."""
        while not self._beat_stop.wait(self.beat_every):
            if self.fenced:
                return
            self._beat()

    def _beat(self, up: bool = True) -> None:
        """Tell every worker (retained) that this boss is there, or gone."""
        if self.conn is not None:
            self.conn.publish(wire.boss_topic(self.cluster),
                              wire.dumps(wire.BossBeat(self.boss_id, up, started=self._started_at,
                                                       at=time.time(), log=self._log_id)),
                              retain=True)

    def _heard_beat(self, payload: bytes) -> None:
        """On paho's thread: a beat on this cluster's boss topic. A fresh beat
        of a boss of *another log* that became active before this one means
        two logs' bosses share this cluster name on this broker: each would
        take the other's workers for its own or for strangers. This one (the
        younger) stops, saying so - before it does anything, when the beat is
        the retained one it hears as it starts (a standby of the same log
        taking over is no conflict)."""
        try:
            beat = wire.parse_boss_beat(payload)
        except wire.WireError:
            return
        finally:
            self._beat_heard.set()
        now = time.time()
        if beat.boss == self.boss_id or not beat.up or abs(now - beat.at) > STALE_BEAT:
            return
        if beat.log == self._log_id or not beat.log:
            return
        if (beat.started, beat.boss) > (self._started_at, self.boss_id):
            return  # the younger of the two: it is the one to stop
        if self._conflict is None:
            self._conflict = (f"another boss ({beat.boss}, active since "
                              f"{time.strftime('%H:%M:%S', time.gmtime(beat.started))} UTC) runs "
                              f"cluster {self.cluster!r} on the broker {self.broker}: two logs' "
                              "bosses cannot share a cluster name on one broker; give this log "
                              "another (setting cluster, ECLOUD_CLUSTER)")

    def _iteration(self, wait: bool = True) -> None:
        """One turn of the loop: one transaction, one fold, one round of
        effects. The scheduler's decisions are not committed on their own:
        they lead the next turn's batch (which then does not wait for the
        inbox), so a busy boss pays one commit per turn, not two. They were
        made on the state as it is after this turn's fold, and nothing is
        appended by this boss before them, so they are judged as made."""
        self._check_lease()
        if self._conflict is not None:
            raise EcloudError(self._conflict)
        self._note_stall()
        events = self._pending
        self._pending = []
        events += self._drain(self._timeout() if wait and not events else 0.0)
        # the last turn's loss decisions after every report that arrived since:
        # a worker heard meanwhile is not lost (the fold judges ``silent_since``)
        events += self._losses
        self._losses = []
        deadline = next_deadline(self.state)
        if deadline is not None and time.time() >= deadline:
            events.append(ev.Tick())
        committed = self._commit(events) if events else True
        effects = self._fold_new()
        self._sync_accounts()  # before a spawn: the new VM's account must exist when it connects
        self._perform(effects)
        if committed:  # no decisions on a state that cannot move: they would pile up
            decisions = schedule(self.state)
            # after: a kill of a worker just given work is refused
            decisions += autoscale(self.state, self.vm_prefix)
            decisions += reconcile(self.state)
            upkeep = self.upkeep
            if upkeep is not None:
                decisions += upkeep(self.state)
            self._pending = decisions + self._pending
            self._losses = losses(self.state)
        self._publish_view()  # before anything goes out: whoever sees an ack sees its state
        assert self.outbox is not None
        self.outbox.resend_due(self.state)
        self.outbox.flush()
        self.cloud.look(self.state)
        self._maybe_snapshot()

    def _note_stall(self) -> None:
        """A turn that starts long after the last one did means the boss
        could not listen meanwhile (stopped, starved): its next append says
        so (``boss.resumed``), so no worker is judged on that silence."""
        now = time.monotonic()
        gap = now - self._turn_started
        self._turn_started = now
        limit = max(STALL_AFTER, context.heartbeat_timeout(self.state) / 5)
        if gap > limit and self._stalled is None:
            self._stalled = (time.time() - gap, f"the boss's loop stood still for {gap:.1f}s")

    def _sync_accounts(self) -> None:
        """The broker's worker accounts follow the open VMs: one is made
        before its VM is spawned, and it goes once the VM is killed or gone.
        Only VM events change the open VMs, so a turn without one costs
        nothing; a failure to write is logged and tried again next turn."""
        if self.accounts is None or not self._vms_changed:
            return
        try:
            self.accounts.sync(self.state.open_vms)
            self._vms_changed = False
        except (OSError, ConfigError) as exc:
            log.error("cannot write the broker's worker accounts: %s", exc)

    def _check_lease(self) -> None:
        """Twice a second, make sure this boss still may append: a boss that
        was paused while a standby took over must stop before it sends
        anything to a worker, not only when it next appends."""
        now = time.monotonic()
        if self._lease is None or now - self._lease_checked < 0.5:
            return
        self._lease_checked = now
        try:
            self._lease.check()
        except FencedError:
            self.fenced = True
            raise
        except StoreError as exc:
            log.error("cannot check the boss lease: %s", exc)

    def _timeout(self) -> float:
        deadline = next_deadline(self.state)
        if deadline is None:
            return self.poll
        return max(0.0, min(self.poll, deadline - time.time()))

    def _drain(self, timeout: float) -> list:
        """Everything waiting in the inbox (waiting up to ``timeout`` for the
        first item), turned into events."""
        events: list = []
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return events
        count = 0
        while True:
            self._convert(item, events)
            count += 1
            if count >= MAX_BATCH:
                break
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
        return events

    def _convert(self, item: tuple, events: list) -> None:
        if item[0] == "mqtt" and item[1] == self._hook_topic:
            if len(self._heard_callbacks) > 10_000:  # folded long since: the state has them
                self._heard_callbacks.clear()
            events.extend(callback_events(item[2], self.cluster, self.vm_prefix, self.state,
                                          time.time(), self._heard_callbacks))
        elif item[0] == "mqtt":
            assert self.outbox is not None
            events.extend(to_events(item[1], item[2], self.cluster, self.state, self.outbox,
                                    self.heard))
        else:
            events.extend(item[1])

    # ------------------------------------------------------ log and fold

    def _commit(self, events: list) -> bool:
        """Append in one transaction; on failure keep them for the next try.
        A boss that lost the right to append (another took over) stops.
        After a stall the batch starts with ``boss.resumed``."""
        ts = time.time()
        batch = events
        if self._stalled is not None:
            since, why = self._stalled
            batch = [ev.BossResumed(round(max(0.0, ts - since), 3), why)] + events
        try:
            seqs = self.store.append(batch, ts=ts)
            if seqs:
                self._appended = (seqs[0], ts, batch)
            if self._stalled is not None:
                log.warning("logging again after %.1fs: %s", ts - self._stalled[0], self._stalled[1])
                self._stalled = None
            return True
        except FencedError:
            self.fenced = True
            raise
        except StoreError as exc:
            log.error("cannot append %d event(s), will retry: %s", len(events), exc)
            if self._stalled is None:
                self._stalled = (ts, wire.bounded_reason(f"could not append to the log: {exc}", 300))
            self._pending = events + self._pending
            self.stopping.wait(1.0)
            return False

    def _fold_new(self) -> list:
        """Fold every event committed since the state's seq (ours and other
        writers'), returning their effects in order."""
        effects: list = []
        records: list[Recorded] = []
        start = self.state.seq + 1
        mine, self._appended = self._appended, None
        now = time.monotonic()
        read = True
        if mine is not None and mine[0] == start:
            # Our own batch follows the state directly: fold the events we
            # hold (their seqs and ts are what the log has; decoding what we
            # just encoded would give them back equal). What other writers
            # (ecloud push, the CLI) appended after it is read at most every
            # ``poll`` seconds while busy - a read costs two round trips to
            # MariaDB, a third of a turn. Nothing is missed: a batch of ours
            # appended after theirs no longer follows the state directly,
            # and then everything in between is read.
            first, ts, events = mine
            records = [Recorded(first + i, ts, e) for i, e in enumerate(events)]
            start = first + len(events)
            read = now - self._last_read >= self.poll
        if read:
            self._last_read = now
            try:
                records += self.store.read(start)
            except StoreError as exc:
                log.error("cannot read the log: %s", exc)
        for rec in records:
            _, out = step(self.state, rec)
            effects.extend(out)
            if rec.event.TYPE in ROSTER_EVENTS:
                self._roster_changed = True
                if rec.event.TYPE.startswith("vm."):
                    self._vms_changed = True
        self._since_snapshot += len(records)
        return effects

    # ------------------------------------------------------------- effects

    def _perform(self, effects: list) -> None:
        assert self.outbox is not None
        self.outbox.perform(effects, self.state)
        for effect in effects:
            if type(effect) is Ack:  # committed: a resend of it only needs the ack again
                self.heard.remember(effect.worker_id, effect.msg_id)
        self.cloud.perform(effects)

    # ------------------------------------------------------------- upkeep

    def _maybe_snapshot(self) -> None:
        """A snapshot every ``snapshot_every`` events, or every
        ``snapshot_interval`` seconds if anything happened since the last."""
        due_by_time = (self.snapshot_interval and self._since_snapshot
                       and time.monotonic() - self._last_snapshot >= self.snapshot_interval)
        if (self.snapshot_every and self._since_snapshot >= self.snapshot_every) or due_by_time:
            self._last_snapshot = time.monotonic()
            try:
                snap = save_snapshot(self.store, self.state, time.time())
                log.info("snapshot at seq %d (%d bytes)", snap.seq, len(snap.data))
                self._since_snapshot = 0
            except StoreError as exc:
                log.error("snapshot failed: %s", exc)

    def _publish_view(self) -> None:
        """Copy a few numbers for other threads (progress bars, tests). The
        counts and the head are copied every turn. The roster - every worker
        and VM with its status - costs a walk over all of them (1.6 ms at
        10,000 workers, which turned a boss holding that many heartbeating
        workers into one busy copying it), so it is copied when a worker or
        VM came or went in this turn (at most every :data:`ROSTER_EVERY`
        seconds past 1,000 workers), and at least every that many seconds
        otherwise: a worker's idle/busy status there may lag by as much."""
        state = self.state
        now = time.monotonic()
        roster = self.view.get("workers"), self.view.get("vms")
        due = now - self._roster_at >= ROSTER_EVERY
        if roster[0] is None or due or (self._roster_changed and len(state.workers) <= 1000):
            roster = ({w: (r.status, sorted(r.running)) for w, r in state.workers.items()},
                      [(vm.vm_id, vm.status) for vm in state.vms.values() if vm.vm_id is not None])
            self._roster_at = now
            self._roster_changed = False
        counts = state.counts
        # only when nothing runs: then it costs a walk over the ready tasks
        blocked = stuck(state) if not (counts["dispatched"] or counts["running"]) else {}
        self.view = {"seq": state.seq, "counts": dict(counts), "total": len(state.tasks),
                     "workers": roster[0], "vms": roster[1], "stuck": blocked,
                     "vm_failures": [(vm.vm_name, vm.reason) for vm in state.vms.values()
                                     if vm.failed_at is not None] if blocked else []}

    def _close(self) -> None:
        self.cloud.close()
        if self.store is not None and self.outbox is not None and not self.fenced:
            # outcomes that arrived while shutting down are still worth logging,
            # and the reports among them acked (else every one comes back as
            # a resend to the next boss)
            leftover = self._drain(0.0) + self._pending
            self._pending = []
            if leftover:
                try:
                    self.store.append(leftover)
                    self.outbox.perform(self._fold_new(), self.state)
                except StoreError as exc:
                    log.error("could not log %d event(s) on the way out: %s", len(leftover), exc)
        if self.outbox is not None:
            self.outbox.flush()
        self._beat_stop.set()
        if self._beater is not None:
            self._beater.join(5)
        if self.conn is not None:
            if not self.fenced:
                self._beat(up=False)  # gone on purpose: no will is sent for a clean stop
            self.conn.stop()
