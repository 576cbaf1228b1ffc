"""A read-only follower of the log: the state the web page and the metrics
show, kept current by folding each event as it is committed.

It is a fold like the boss's, on its own connection, so it can run beside
the boss (in the boss's process when the boss serves the page, or in
``ecloud web`` anywhere that reaches the log) without touching the boss's
state. It folds the whole log from seq 1 (so its metrics cover the whole
history), then follows; past moments (the page's time slider) are rebuilt on demand by the same replay engine
``ecloud-replay`` uses, on a second connection owned by one thread.

Threads: the follower's thread owns the follow connection and is the only
writer of the state; readers take :attr:`lock` and get data built from the
state at one seq. A store is used only by the thread that opened it (the
SQLite store asks for that).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from ecloud.errors import EcloudError
from ecloud.events import types as ev
from ecloud.log.rebuild import collector_paused, load_state
from ecloud.log.store import LogStore
from ecloud.log.url import open_store
from ecloud.projections.fold import step
from ecloud.projections.state import State
from ecloud.views import dag, summary
from ecloud.views.metrics import Meters, families

log = logging.getLogger("ecloud.web")

#: events folded per turn before the lock is let go (readers wait at most that)
CHUNK = 2000
#: past states kept for the time slider
HISTORY_CACHE = 16
#: the live page is rebuilt at most once per this many times its build cost
PAGE_DUTY = 4.0


class Follower:
    """Follow the log at ``url``; see the module docstring."""

    def __init__(self, url: str, *, source: str = "", poll: float = 0.25) -> None:
        self.url = url
        self.source = source
        self.poll = poll
        self.lock = threading.Lock()
        self.meters = Meters()
        self.state = State()
        self.head = 0
        self.error: str | None = None
        #: every VM request, kill and failure folded, in seq order (a few per VM):
        #: the live page shows the last ones, a past seq those up to it
        self._decisions: list[dict[str, Any]] = []
        self._tails: dict[int, tuple[str, str]] = {}
        self._page: tuple[int, dict[str, Any]] | None = None
        self._page_at_time = 0.0
        self._page_cost = 0.0
        self._layouts: dict[str, dag.Layout] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._history = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ecloud-history")
        self._history_store: LogStore | None = None
        self._history_cache: OrderedDict[int, Any] = OrderedDict()

    # --------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 60.0) -> Follower:
        """Open the log and start folding it from seq 1 in a thread; raise
        :class:`EcloudError` if the log cannot be opened. The state is
        readable at once and catches up with the head in chunks (the page
        says which seq it shows)."""
        self._thread = threading.Thread(target=self._run, name="ecloud-follower", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EcloudError(f"the log at {self.source or 'the given URL'} did not open within "
                              f"{timeout:.0f}s")
        if self.error is not None:
            raise EcloudError(self.error)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        # the history thread closes its own connection, after any replay in hand
        self._history.submit(self._close_history)
        self._history.shutdown(wait=True, cancel_futures=False)

    def _run(self) -> None:
        try:
            store = open_store(self.url, create=False)
        except EcloudError as exc:
            self.error = str(exc)
            self._ready.set()
            return
        self._ready.set()
        try:
            with collector_paused():  # the catching up at start makes objects that live on
                self._follow_once(store)
            while not self._stop.is_set():
                if not self._follow_once(store):
                    self._stop.wait(self.poll)
        except EcloudError as exc:
            self.error = str(exc)
            log.error("following the log stopped: %s", exc)
        finally:
            store.close()

    @staticmethod
    def _read_tails(store: LogStore, state) -> dict[int, tuple[str, str]]:
        tails = {}
        for failure in state.recent_failures:
            for rec in store.read(failure.seq, failure.seq):
                if isinstance(rec.event, ev.TaskFinished):
                    tails[rec.seq] = (rec.event.stdout_tail, rec.event.stderr_tail)
        return tails

    def _follow_once(self, store: LogStore) -> bool:
        """Fold what was appended since the last turn; True if anything was."""
        head = store.head()
        moved = False
        while self.state.seq < head and not self._stop.is_set():
            end = min(head, self.state.seq + CHUNK)
            records = list(store.read(self.state.seq + 1, end))
            with self.lock:
                for rec in records:
                    self._fold(rec)
                self.head = max(head, self.state.seq)
            moved = True
        if not moved and head != self.head:
            with self.lock:
                self.head = head
        return moved

    def _fold(self, rec) -> None:
        state = self.state
        step(state, rec)
        self.meters.observe(rec, state)
        event = rec.event
        if isinstance(event, ev.TaskFinished) and state.recent_failures \
                and state.recent_failures[-1].seq == rec.seq:
            self._tails[rec.seq] = (event.stdout_tail, event.stderr_tail)
            keep = {f.seq for f in state.recent_failures}
            for seq in [s for s in self._tails if s not in keep]:
                del self._tails[seq]
        elif type(event) in (ev.VMRequested, ev.VMKillRequested, ev.VMFailed):
            self._decisions.append(summary.decision_row(rec, state))

    # ------------------------------------------------------------------ reading

    def page(self) -> dict[str, Any]:
        """The page's data at the followed head: built once per seq, and
        while events stream in, at most once per :data:`PAGE_DUTY` times
        its own cost (on a million tasks a build takes a good part of a
        second, all of it holding the lock the fold needs). Its ``seq``
        says which state it shows."""
        with self.lock:
            cached = self._page
            now = time.monotonic()
            if cached is None or (cached[0] != self.state.seq
                                  and now - self._page_at_time >= PAGE_DUTY * self._page_cost):
                data = summary.page(self.state, head=self.head, source=self.source,
                                    decisions=self._decisions_until(self.state.seq),
                                    tails=lambda seq: self._tails.get(seq, ("", "")))
                self._page = cached = (self.state.seq, data)
                self._page_at_time = time.monotonic()
                self._page_cost = self._page_at_time - now
            return {**cached[1], "head": self.head, "live": True}

    def _decisions_until(self, seq: int) -> list[dict[str, Any]]:
        """The last decisions at or before ``seq``, newest first (call with
        :attr:`lock` held)."""
        end = bisect.bisect_right(self._decisions, seq, key=lambda row: row["seq"])
        return self._decisions[max(0, end - summary.MAX_DECISIONS):end][::-1]

    def graph(self, mode: str = "auto") -> dict[str, Any]:
        """The DAG at the followed head; its layout is kept until tasks are
        added, so a refresh only re-counts states."""
        with self.lock:
            plan = self._layouts.get(mode)
            if plan is None or not plan.fits(self.state):
                plan = self._layouts[mode] = dag.layout(self.state, mode)
            data = dag.build(self.state, mode, plan)
            data["seq"] = self.state.seq
            return data

    def metric_families(self) -> list[Any]:
        with self.lock:
            return list(families(self.state, self.meters, self.head))

    # ---------------------------------------------------------------- history

    def page_at(self, seq: int) -> dict[str, Any]:
        """The page's data as it was right after ``seq`` (the time slider)."""
        return self._history.submit(self._page_at, seq).result()

    def graph_at(self, seq: int, mode: str = "auto") -> dict[str, Any]:
        return self._history.submit(self._graph_at, seq, mode).result()

    def _store(self) -> LogStore:
        if self._history_store is None:
            self._history_store = open_store(self.url, create=False)
        return self._history_store

    def _close_history(self) -> None:
        if self._history_store is not None:
            self._history_store.close()
            self._history_store = None

    def _state_at(self, seq: int):
        state = self._history_cache.get(seq)
        if state is None:
            store = self._store()
            head = store.head()
            if not 0 <= seq <= head:
                raise ValueError(f"seq {seq} is not in the log (it ends at seq {head})")
            state = load_state(store, seq)
            self._history_cache[seq] = state
            while len(self._history_cache) > HISTORY_CACHE:
                self._history_cache.popitem(last=False)
        return state

    def _page_at(self, seq: int) -> dict[str, Any]:
        state = self._state_at(seq)
        store = self._store()
        with self.lock:
            folded = self.state.seq >= seq
            decisions = self._decisions_until(seq) if folded else []
        if not folded:  # the follower has not got there yet: read them
            decisions = summary.recent_decisions(
                store.read(1, seq, types=summary.DECISION_TYPES), state)
        tails = self._read_tails(store, state)
        data = summary.page(state, head=self.head, source=self.source, decisions=decisions,
                            tails=lambda s: tails.get(s, ("", "")))
        return {**data, "live": False}

    def _graph_at(self, seq: int, mode: str) -> dict[str, Any]:
        data = dag.build(self._state_at(seq), mode)
        data["seq"] = seq
        return data
