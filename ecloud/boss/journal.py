"""The boss's side of the log: append a turn's events in one transaction,
fold what is new, and snapshot now and then.

Appends that fail (the database down or locked) are kept and tried again, in
order, ahead of whatever comes next; meanwhile the boss makes no decision
(:meth:`Journal.commit` says False). An append whose COMMIT broke off may
have landed all the same (:class:`~ecloud.errors.CommitInDoubtError`): before
it is written again, the journal reads its seqs back, and drops it from the
retry if the log holds it - else one report or decision would be in the log
twice. A boss that could not listen or log for
a while - the database down, the process stopped or starved - starts its next
append with ``boss.resumed``, which restarts every deadline from that moment:
the boss's silence is never taken for its workers'. A boss that lost the
right to append (another took over: :class:`~ecloud.errors.FencedError`)
stops before it sends anything more."""

from __future__ import annotations

import logging
import threading
import time

from ecloud import wire
from ecloud.errors import CommitInDoubtError, FencedError, StoreError
from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.log.rebuild import load_state, save_snapshot
from ecloud.log.store import LogStore
from ecloud.projections import context
from ecloud.projections.fold import step
from ecloud.projections.state import State

log = logging.getLogger("ecloud.boss")

#: a turn that comes this long after the previous one (at least; a fifth of
#: heartbeat_timeout when that is longer) means the boss could not listen
STALL_AFTER = 2.0


class Journal:
    def __init__(self, store: LogStore, *, poll: float, snapshot_every: int,
                 snapshot_interval: float, stopping: threading.Event) -> None:
        self.store = store
        self.poll = poll
        self.snapshot_every = snapshot_every
        self.snapshot_interval = snapshot_interval
        self.stopping = stopping  # a failed append waits on it before the next try
        self.state = State()
        self.fenced = False
        #: events not yet committed (the database was down): they lead the next append
        self.pending: list = []
        #: (since when, why) the boss could not listen or log, until it logs again
        self._stalled: tuple[float, str] | None = None
        self._turn_started = 0.0  # monotonic start of the last turn
        #: (first seq, ts, events) of the batch this boss appended last, not yet folded
        self._appended: tuple[int, float, list] | None = None
        #: (first seq, ts, batch as sent, the events of it that lead ``pending``)
        #: of an append whose COMMIT broke off: settled before the next append
        self._in_doubt: tuple[int, float, list, list] | None = None
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._last_read = 0.0  # when the log was last read for other writers' events

    def load(self) -> State:
        """The state at the log's head (newest snapshot + suffix)."""
        self.state = load_state(self.store)
        return self.state

    def turns_start(self) -> None:
        """The loop's first turn starts now (what came before - loading,
        connecting - is no stall)."""
        self._turn_started = time.monotonic()

    def note_turn(self) -> None:
        """A turn that starts long after the last one did means the boss
        could not listen meanwhile (stopped, starved): its next append says
        so (``boss.resumed``), so no worker is judged on that silence."""
        now = time.monotonic()
        gap = now - self._turn_started
        self._turn_started = now
        limit = max(STALL_AFTER, context.heartbeat_timeout(self.state) / 5)
        if gap > limit and self._stalled is None:
            self._stalled = (time.time() - gap, f"the boss's loop stood still for {gap:.1f}s")

    def take_pending(self) -> list:
        events, self.pending = self.pending, []
        return events

    def commit(self, events: list) -> bool:
        """Append in one transaction; on failure keep them for the next try.
        After a stall the batch starts with ``boss.resumed``. ``events``
        starts with what :meth:`take_pending` gave back (a failed batch
        leads the next)."""
        ts = time.time()
        batch = events
        try:
            events = self._settle(events)
            if not events:
                return True
            if self._stalled is not None:
                since, why = self._stalled
                batch = [ev.BossResumed(round(max(0.0, ts - since), 3), why)] + events
            else:
                batch = events
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
            if isinstance(exc, CommitInDoubtError) and self._in_doubt is None:
                self._in_doubt = (exc.first, ts, batch, events)
            if self._stalled is None:
                self._stalled = (ts, wire.bounded_reason(f"could not append to the log: {exc}", 300))
            self.pending = events + self.pending
            self.stopping.wait(1.0)
            return False

    def _settle(self, events: list) -> list:
        """``events`` without the batch whose COMMIT was in doubt, if the log
        holds it after all (read back: the same events at the same seqs with
        the same timestamp - no other writer's batch matches that). Raises
        StoreError while the log cannot be read."""
        if self._in_doubt is None:
            return events
        first, ts, batch, held = self._in_doubt
        if events[:len(held)] != held:
            raise AssertionError("the events of a failed append must lead the next one")
        found = list(self.store.read(first, first + len(batch) - 1))
        self._in_doubt = None
        landed = (len(found) == len(batch)
                  and all(rec.ts == ts and rec.event == e for rec, e in zip(found, batch, strict=True)))
        if not landed:
            log.warning("the append whose COMMIT broke off (seqs %d..%d) is not in the log:"
                        " writing it again", first, first + len(batch) - 1)
            return events
        log.warning("the append whose COMMIT broke off (seqs %d..%d) is in the log:"
                    " not writing it again", first, first + len(batch) - 1)
        return events[len(held):]

    def fold_new(self) -> tuple[list, list[Recorded]]:
        """Fold every event committed since the state's seq (ours and other
        writers'): their effects in order, and the records folded."""
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
        state = self.state
        for rec in records:
            _, out = step(state, rec)
            effects.extend(out)
        self._since_snapshot += len(records)
        return effects, records

    def append_now(self, events: list) -> None:
        """Append without the turn's bookkeeping (on the way out); raises
        StoreError. ``events`` starts with :meth:`take_pending`'s, as for
        :meth:`commit`."""
        events = self._settle(events)
        if events:
            self.store.append(events)

    def maybe_snapshot(self) -> None:
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


__all__ = ["STALL_AFTER", "Journal"]
