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

This module is the turn and its order; each job has a module of its own:
the inbox (:mod:`.inbox`), appending and folding (:mod:`.journal`), the
beat (:mod:`.presence`), the cloud's calls and looks (:mod:`.cloud`), the
reports heard (:mod:`.heard`), the copy other threads read (:mod:`.view`),
the lease (:mod:`.lease`), and turning messages into events (:mod:`.edge`,
:mod:`.callbacks`).
"""

from __future__ import annotations

import gc
import logging
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
from ecloud.boss.inbox import Inbox
from ecloud.boss.journal import Journal
from ecloud.boss.lease import Lease, lease_for
from ecloud.boss.presence import Presence
from ecloud.boss.recent_reports import committed_reports
from ecloud.boss.view import BossView
from ecloud.effects.messaging.mqtt import Connection, MqttAuth
from ecloud.effects.messaging.outbox import Outbox
from ecloud.errors import ConfigError, EcloudError, FencedError, StoreError
from ecloud.events import types as ev
from ecloud.log.store import LogStore
from ecloud.log.url import open_store
from ecloud.projections.autoscale import autoscale
from ecloud.projections.effects import Ack
from ecloud.projections.liveness import losses
from ecloud.projections.outstanding import outstanding
from ecloud.projections.reconcile import reconcile
from ecloud.projections.scheduler import schedule
from ecloud.projections.state import CURRENT_RULES, State
from ecloud.projections.timers import next_deadline
from ecloud.security.accounts import BrokerAccounts

log = logging.getLogger("ecloud.boss")

BEAT_EVERY = 5.0  # seconds between the boss's beats to the workers
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
        self.inbox = Inbox()
        self.stopping = threading.Event()
        self.ready = threading.Event()
        #: appends, folds, snapshots (boss/journal.py); made when the store is open
        self.journal: Journal | None = None
        #: the beat, and another log's boss on this cluster (boss/presence.py)
        self.presence = Presence(cluster, self.boss_id, broker, beat_every)
        self._view = BossView()
        self._roster_changed = False  # a worker or VM came, went or changed since
        self._vms_changed = True  # a vm.* event was folded since the accounts were synced
        #: loss decisions of the last turn: they go after what arrives meanwhile
        self._losses: list = []
        self._lease: Lease | None = None
        self._lease_checked = 0.0
        self._fenced = False
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

    @property
    def state(self) -> State:
        """The boss's state: only the boss's thread may read it while it runs."""
        return self.journal.state if self.journal is not None else State()

    @property
    def view(self) -> dict[str, Any]:
        """A copy of a few numbers for other threads (boss/view.py)."""
        return self._view.view

    @property
    def fenced(self) -> bool:
        """Another boss took the log over: this one stops without a word more."""
        return self._fenced or (self.journal is not None and self.journal.fenced)

    def watch(self, task_ids: list[str]) -> None:
        """Count these tasks apart in :attr:`view` (``run_counts``)."""
        self._view.watch(task_ids)

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
            self.journal = Journal(self.store, poll=self.poll, snapshot_every=self.snapshot_every,
                                   snapshot_interval=self.snapshot_interval,
                                   stopping=self.stopping)
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
        journal = self.journal
        assert journal is not None
        state = journal.load()
        gc.freeze()  # the state lives as long as the boss: later collections need not walk it
        log.info("boss %s: state at seq %d, cluster %s", self.boss_id, state.seq, self.cluster)
        # A client id of this start's own, and a clean session: nobody can
        # take the boss's session over (its id is not to be guessed) or plant
        # a subscription in it for a later boss to inherit. Reports sent
        # while no boss listens are not lost: their workers send them again.
        presence = self.presence
        will_topic, will = presence.will()
        self.conn = Connection(
            self.broker, f"ecloud-{self.cluster}-boss-{self.boss_id}", clean_session=True,
            on_message=lambda topic, payload: (presence.heard(payload) if topic == presence.topic
                                               else self.inbox.put(("mqtt", topic, payload))),
            on_connect=self._connected,
            will=(will_topic, will),
            will_retain=True,
            auth=self.auth,
        )
        self.outbox = Outbox(self.conn.publish, self.cluster, self.resend_after)
        for worker_id, msg_id in committed_reports(self.store):
            self.heard.remember(worker_id, msg_id)  # their resends get an ack, not a new event
        presence.attach(self.conn.publish, self.store.log_id())
        self.conn.start(wait=self.connect_wait)
        # the retained beat (if any) comes right after the subscription: a boss
        # of another log on this cluster is found before this one does anything
        presence.listen()
        if presence.conflict is not None:
            raise EcloudError(presence.conflict)
        journal.commit([ev.BossStarted(self.boss_id, CURRENT_RULES)])
        effects = self._fold_new()
        # on_start sees the state before any effect is re-issued (it may set
        # up the provider), and its events are logged with the first batch
        extra = self.on_start(self.state) if self.on_start is not None else []
        self._sync_accounts()
        self._perform(effects + outstanding(self.state))
        self.submit(extra)
        journal.turns_start()
        presence.start(lambda: self.fenced)
        self.ready.set()

    def _connected(self) -> None:
        """On paho's thread, after every (re)connection."""
        assert self.conn is not None
        self.conn.subscribe(wire.from_all(self.cluster))
        self.conn.subscribe(self.presence.topic)
        if self.provider is not None:  # OpenNebula's state hook (onehook.hook)
            self.conn.subscribe(self._hook_topic)
        self.presence.beat()

    def _iteration(self, wait: bool = True) -> None:
        """One turn of the loop: one transaction, one fold, one round of
        effects. The scheduler's decisions are not committed on their own:
        they lead the next turn's batch (which then does not wait for the
        inbox), so a busy boss pays one commit per turn, not two. They were
        made on the state as it is after this turn's fold, and nothing is
        appended by this boss before them, so they are judged as made."""
        journal = self.journal
        assert journal is not None and self.outbox is not None
        self._check_lease()
        if self.presence.conflict is not None:
            raise EcloudError(self.presence.conflict)
        journal.note_turn()
        events = journal.take_pending()
        events += self.inbox.drain(self._timeout() if wait and not events else 0.0,
                                   self._convert)
        # the last turn's loss decisions after every report that arrived since:
        # a worker heard meanwhile is not lost (the fold judges ``silent_since``)
        events += self._losses
        self._losses = []
        deadline = next_deadline(self.state)
        if deadline is not None and time.time() >= deadline:
            events.append(ev.Tick())
        committed = journal.commit(events) if events else True
        effects = self._fold_new()
        self._sync_accounts()  # before a spawn: the new VM's account must exist when it connects
        self._perform(effects)
        if committed:  # no decisions on a state that cannot move: they would pile up
            journal.pending = self._decide() + journal.pending
            self._losses = losses(self.state)
        # before anything goes out: whoever sees an ack sees its state
        if self._view.publish(self.state, self._roster_changed):
            self._roster_changed = False
        self.outbox.resend_due(self.state)
        self.outbox.flush()
        self.cloud.look(self.state)
        journal.maybe_snapshot()

    def _decide(self) -> list:
        """This turn's decisions, in the order they are judged: the
        scheduler's, then the autoscaler's (a kill of a worker just given
        work is refused), the reconciler's, and the owner's upkeep."""
        state = self.state
        decisions = schedule(state)
        decisions += autoscale(state, self.vm_prefix)
        decisions += reconcile(state)
        if self.upkeep is not None:
            decisions += self.upkeep(state)
        return decisions

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
            self._fenced = True
            raise
        except StoreError as exc:
            log.error("cannot check the boss lease: %s", exc)

    def _timeout(self) -> float:
        deadline = next_deadline(self.state)
        if deadline is None:
            return self.poll
        return max(0.0, min(self.poll, deadline - time.time()))

    def _convert(self, item: tuple, events: list) -> None:
        """An inbox item as events: a message of the state hook, a worker's
        message, or events as they are."""
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

    def _fold_new(self) -> list:
        """Fold what is new in the log; note whether the roster or the VMs changed."""
        assert self.journal is not None
        effects, records = self.journal.fold_new()
        for rec in records:
            if rec.event.TYPE in ROSTER_EVENTS:
                self._roster_changed = True
                if rec.event.TYPE.startswith("vm."):
                    self._vms_changed = True
        return effects

    def _perform(self, effects: list) -> None:
        assert self.outbox is not None
        self.outbox.perform(effects, self.state)
        for effect in effects:
            if type(effect) is Ack:  # committed: a resend of it only needs the ack again
                self.heard.remember(effect.worker_id, effect.msg_id)
        self.cloud.perform(effects)

    def _close(self) -> None:
        self.cloud.close()
        journal = self.journal
        if journal is not None and self.outbox is not None and not self.fenced:
            # outcomes that arrived while shutting down are still worth logging,
            # and the reports among them acked (else every one comes back as
            # a resend to the next boss)
            leftover = journal.take_pending() + self.inbox.drain(0.0, self._convert)
            if leftover:
                try:
                    journal.append_now(leftover)
                    self.outbox.perform(self._fold_new(), self.state)
                except StoreError as exc:
                    log.error("could not log %d event(s) on the way out: %s", len(leftover), exc)
        if self.outbox is not None:
            self.outbox.flush()
        self.presence.stop()
        if self.conn is not None:
            if not self.fenced:
                self.presence.beat(up=False)  # gone on purpose: no will is sent for a clean stop
            self.conn.stop()
