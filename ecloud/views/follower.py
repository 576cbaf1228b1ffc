"""A read-only follower of the log: the state the web page and the metrics
show, kept current by folding each event as it is committed.

It is a fold like the boss's, on its own connection, so it can run beside
the boss (in the boss's process when the boss serves the page, or in
``ecloud web`` anywhere that reaches the log) without touching the boss's
state. It folds the whole log from seq 1 (so its metrics cover the whole
history), then follows; past moments (the page's time slider) are rebuilt
on demand by the same replay engine ``ecloud-replay`` uses.

Beside the state it keeps a small :class:`LogIndex` of what the state
forgets but the page needs: the seqs of each task's events (a task's page
reads them back), every failed attempt (the final failures' reports, the
slider's jumps to the next failure) and the log's clock against seqs (the
slider's jump to a time).

Threads: the follower's thread owns the follow connection and is the only
writer of the state and the index; readers take :attr:`lock` and get data
built from the state at one seq. A store is used only by the thread that
opened it (the SQLite store asks for that): past states are replayed on
one :class:`OwnStore`, events are read back for the live page on another,
so a long replay never holds up a task's page.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import logging
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ecloud.errors import EcloudError
from ecloud.events import types as ev
from ecloud.events.types import Recorded
from ecloud.log.rebuild import collector_paused, load_state
from ecloud.log.store import LogStore
from ecloud.log.url import open_store
from ecloud.projections.fold import step
from ecloud.projections.state import ATTEMPT_CANCELLED, ATTEMPT_LOST, Failure, State
from ecloud.views import dag, summary
from ecloud.views.metrics import Meters, families

log = logging.getLogger("ecloud.web")

#: events folded per turn before the lock is let go (readers wait at most that)
CHUNK = 2000
#: past states kept for the time slider
HISTORY_CACHE = 16
#: the live page is rebuilt at most once per this many times its build cost
PAGE_DUTY = 4.0
#: reports' output tails kept after reading them (per store thread)
TAIL_CACHE = 256
#: events that name one task (``task_id``) and belong on its page
TASK_EVENTS = frozenset({ev.TaskDispatched, ev.TaskStarted, ev.TaskFinished, ev.TaskCancelled,
                         ev.RetryRequested})

T = TypeVar("T")


class OwnStore:
    """A connection to the log used by one thread of its own (SQLite allows
    no other): :meth:`call` runs a function with the store on that thread."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._store: LogStore | None = None
        self._tails: OrderedDict[int, tuple[str, str]] = OrderedDict()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(self._run, fn, args).result()

    def _run(self, fn: Callable[..., T], args: tuple) -> T:
        if self._store is None:
            self._store = open_store(self.url, create=False)
        return fn(self._store, *args)

    def tails(self, seqs: Iterable[int]) -> dict[int, tuple[str, str]]:
        """The output tails of the reports at ``seqs`` (from this thread)."""
        return self.call(self._read_tails, sorted(set(seqs)))

    def _read_tails(self, store: LogStore, seqs: list[int]) -> dict[int, tuple[str, str]]:
        found = {}
        for seq in seqs:
            if seq not in self._tails:
                self._tails[seq] = ("", "")
                for rec in store.read(seq, seq):
                    if isinstance(rec.event, ev.TaskFinished):
                        self._tails[seq] = (rec.event.stdout_tail, rec.event.stderr_tail)
                while len(self._tails) > TAIL_CACHE:
                    self._tails.popitem(last=False)
            self._tails.move_to_end(seq)
            found[seq] = self._tails[seq]
        return found

    def close(self) -> None:
        """Close the connection on its thread, after any call in hand."""
        self._pool.submit(self._close)
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def read_seqs(store: LogStore, seqs: Iterable[int]) -> list[Recorded]:
    """The events at ``seqs``, in seq order, a run of consecutive seqs read at once."""
    out: list[Recorded] = []
    ordered = sorted(set(seqs))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.extend(store.read(ordered[i], ordered[j]))
        i = j + 1
    return out


class LogIndex:
    """What the page needs of the log that the state does not keep, noted
    as each event is folded (:meth:`before` and :meth:`after` the step):
    a few words per event, so a task's page, a jump to the next failure or
    to a time costs a lookup, not a scan of the log."""

    def __init__(self) -> None:
        #: task id -> seqs of the events that name it (TASK_EVENTS, tasks.replaced)
        self.task_seqs: dict[str, array] = {}
        #: (task id, attempt) -> its failure (timeouts included: they have no report)
        self.failures: dict[tuple[str, int], Failure] = {}
        #: the seqs at which an attempt failed, ascending
        self.failure_seqs = array("q")
        #: (task id, attempt) -> (status, reason) of an attempt that ended with
        #: no report and no failure: its worker went, or it was cancelled
        self.ends: dict[tuple[str, int], tuple[str, str]] = {}
        #: the log's clock: each time it moved on, and the first seq at it
        self.times = array("d")
        self.time_seqs = array("q")

    def before(self, rec: Recorded, state: State) -> None:
        """An attempt that ended silently is known for what it was only until
        the next one starts: note it as that next one is dispatched."""
        e = rec.event
        if type(e) is ev.TaskDispatched and e.attempt > 1:
            task = state.tasks.get(e.task_id)
            if task is not None and task.attempt == e.attempt - 1 \
                    and task.attempt_status in (ATTEMPT_LOST, ATTEMPT_CANCELLED):
                self.ends[(e.task_id, task.attempt)] = (task.attempt_status, task.reason)

    def after(self, rec: Recorded, state: State) -> None:
        if not self.times or rec.ts > self.times[-1]:
            self.times.append(rec.ts)
            self.time_seqs.append(rec.seq)
        if state.rejected and state.rejected[-1].seq == rec.seq:
            return  # refused: it changed nothing, and the page shows what did
        e = rec.event
        kind = type(e)
        if kind in TASK_EVENTS:
            self._note(e.task_id, rec.seq)
        elif kind is ev.TasksReplaced:
            for spec in e.tasks:
                self._note(spec.id, rec.seq)
        failures = state.recent_failures
        if failures and failures[-1].seq == rec.seq:
            self.failure_seqs.append(rec.seq)
            for failure in reversed(failures):  # one tick may time out several
                if failure.seq != rec.seq:
                    break
                self.failures[(failure.task_id, failure.attempt)] = failure

    def _note(self, task_id: str, seq: int) -> None:
        seqs = self.task_seqs.get(task_id)
        if seqs is None:
            self.task_seqs[task_id] = array("q", (seq,))
        else:
            seqs.append(seq)

    def failure_of(self, until: int) -> summary.FailureOf:
        """A lookup of failures that happened at or before ``until``."""
        def find(task_id: str, attempt: int) -> Failure | None:
            failure = self.failures.get((task_id, attempt))
            return failure if failure is not None and failure.seq <= until else None
        return find

    def seqs_of(self, task_id: str, until: int) -> list[int]:
        seqs = self.task_seqs.get(task_id, ())
        return [s for s in seqs if s <= until]

    def ends_of(self, task_id: str, attempts: int) -> dict[int, tuple[str, str]]:
        return {n: self.ends[(task_id, n)] for n in range(1, attempts + 1)
                if (task_id, n) in self.ends}

    def seq_at(self, ts: float, head: int) -> int:
        """The last seq whose event's time is at or before ``ts`` (0 before
        the first): the page at that seq is the cluster at that time."""
        i = bisect.bisect_right(self.times, ts)
        if i == len(self.times):
            return head
        return self.time_seqs[i] - 1

    def next_failure(self, seq: int, forward: bool) -> int | None:
        """The seq of the first failure after ``seq`` (or the last before it)."""
        if forward:
            i = bisect.bisect_right(self.failure_seqs, seq)
            return self.failure_seqs[i] if i < len(self.failure_seqs) else None
        i = bisect.bisect_left(self.failure_seqs, seq)
        return self.failure_seqs[i - 1] if i > 0 else None


class Follower:
    """Follow the log at ``url``; see the module docstring."""

    def __init__(self, url: str, *, source: str = "", poll: float = 0.25) -> None:
        self.url = url
        self.source = source
        self.poll = poll
        self.lock = threading.Lock()
        self.meters = Meters()
        self.state = State()
        self.index = LogIndex()
        self.head = 0
        self.error: str | None = None
        #: every VM request, kill and failure folded, in seq order (a few per VM):
        #: the live page shows the last ones, a past seq those up to it
        self._decisions: list[dict[str, Any]] = []
        self._page: tuple[int, dict[str, Any]] | None = None
        self._page_at_time = 0.0
        self._page_cost = 0.0
        self._layouts: dict[str, dag.Layout] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._history = OwnStore(url, "ecloud-history")
        self._lookups = OwnStore(url, "ecloud-lookups")
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
        self._history.close()
        self._lookups.close()

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

    def _fold(self, rec: Recorded) -> None:
        state = self.state
        self.index.before(rec, state)
        step(state, rec)
        self.index.after(rec, state)
        self.meters.observe(rec, state)
        if type(rec.event) in (ev.VMRequested, ev.VMKillRequested, ev.VMFailed):
            self._decisions.append(summary.decision_row(rec, state))

    # ------------------------------------------------------------------ reading

    def page(self) -> dict[str, Any]:
        """The page's data at the followed head: built once per seq, and
        while events stream in, at most once per :data:`PAGE_DUTY` times
        its own cost (on a million tasks a build takes a good part of a
        second, all of it holding the lock the fold needs). Its ``seq``
        says which state it shows. The failures' tails are read from the
        log after the lock is let go."""
        with self.lock:
            now = time.monotonic()
            cached = self._page
            if cached is not None and (cached[0] == self.state.seq
                                       or now - self._page_at_time < PAGE_DUTY * self._page_cost):
                return {**cached[1], "head": self.head, "live": True}
            data = summary.page(self.state, head=self.head, source=self.source,
                                decisions=self._decisions_until(self.state.seq),
                                failure_of=self.index.failure_of(self.state.seq))
        summary.fill_tails(data, self._lookups.tails)
        self._page = (data["seq"], data)
        self._page_at_time = time.monotonic()
        self._page_cost = self._page_at_time - now
        return {**data, "head": self.head, "live": True}

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

    def _key_of(self, state: State, mode: str) -> dict[str, str]:
        """Each task's DAG node under ``mode`` (a layout the DAG keeps, if
        one of this state's tasks is at hand; call with the lock held for
        the live state)."""
        if state is self.state:
            for plan in self._layouts.values():
                if plan.mode == mode and plan.fits(state):
                    return plan.key_of
        return dag.group_of(state, mode)

    def tasks(self, seq: int | None = None, *, group: str | None = None,
              mode: str | None = None, **filters: Any) -> dict[str, Any]:
        """A page of the task list (see :func:`summary.task_list`), at the
        head or right after ``seq``; ``group`` is a DAG node's key under
        the grouping ``mode``."""
        def build(state: State) -> dict[str, Any]:
            key_of = self._key_of(state, mode) if group is not None and mode else None
            return summary.task_list(state, group=group, key_of=key_of, **filters)
        if seq is None:
            with self.lock:
                return {**build(self.state), "live": True}
        return {**self._history.call(lambda store: build(self._state_at(store, seq))),
                "live": False}

    def task(self, task_id: str, seq: int | None = None) -> dict[str, Any] | None:
        """One task's page (see :func:`summary.task_page`) at the head or
        right after ``seq``; None if the log (up to there) has no such task.
        Its events are read back by the seqs the index kept; live, the
        state may move on meanwhile, so it reads again what it missed."""
        if seq is not None:
            return self._history.call(self._task_at, task_id, seq)
        have: dict[int, Recorded] = {}
        for _ in range(3):
            with self.lock:
                seqs = self.index.seqs_of(task_id, self.state.seq)
                missing = [s for s in seqs if s not in have]
                if not missing:
                    data = self._task_page(self.state, task_id, [have[s] for s in seqs])
                    return data and {**data, "live": True}
            for rec in self._lookups.call(read_seqs, missing):
                have[rec.seq] = rec
        with self.lock:  # a busy task: show what was read
            seqs = [s for s in self.index.seqs_of(task_id, self.state.seq) if s in have]
            data = self._task_page(self.state, task_id, [have[s] for s in seqs])
            return data and {**data, "live": True}

    def _task_page(self, state: State, task_id: str, records: list[Recorded]
                   ) -> dict[str, Any] | None:
        task = state.tasks.get(task_id)
        ends = self.index.ends_of(task_id, task.attempt) if task is not None else {}
        return summary.task_page(state, task_id, records, self.index.failure_of(state.seq), ends)

    def _task_at(self, store: LogStore, task_id: str, seq: int) -> dict[str, Any] | None:
        state = self._state_at(store, seq)
        with self.lock:
            seqs = self.index.seqs_of(task_id, seq)
        records = read_seqs(store, seqs)
        with self.lock:  # the index is written by the follower's thread
            data = self._task_page(state, task_id, records)
        return data and {**data, "live": False}

    def seek_time(self, ts: float) -> int:
        """The seq the log was at, at time ``ts``."""
        with self.lock:
            return self.index.seq_at(ts, self.state.seq)

    def seek_failure(self, seq: int, forward: bool) -> int | None:
        """The seq of the next failed attempt after ``seq`` (or the last before it)."""
        with self.lock:
            return self.index.next_failure(seq, forward)

    # ---------------------------------------------------------------- history

    def page_at(self, seq: int) -> dict[str, Any]:
        """The page's data as it was right after ``seq`` (the time slider)."""
        return self._history.call(self._page_at, seq)

    def graph_at(self, seq: int, mode: str = "auto") -> dict[str, Any]:
        return self._history.call(self._graph_at, seq, mode)

    def _state_at(self, store: LogStore, seq: int) -> State:
        state = self._history_cache.get(seq)
        if state is None:
            head = store.head()
            if not 0 <= seq <= head:
                raise ValueError(f"seq {seq} is not in the log (it ends at seq {head})")
            state = load_state(store, seq)
            self._history_cache[seq] = state
            while len(self._history_cache) > HISTORY_CACHE:
                self._history_cache.popitem(last=False)
        return state

    def _page_at(self, store: LogStore, seq: int) -> dict[str, Any]:
        state = self._state_at(store, seq)
        with self.lock:
            folded = self.state.seq >= seq
            decisions = self._decisions_until(seq) if folded else []
            failure_of = self.index.failure_of(seq)
        if not folded:  # the follower has not got there yet: read them
            decisions = summary.recent_decisions(
                store.read(1, seq, types=summary.DECISION_TYPES), state)
        data = summary.page(state, head=self.head, source=self.source, decisions=decisions,
                            failure_of=failure_of)
        summary.fill_tails(data, lambda seqs: self._history._read_tails(store, sorted(seqs)))
        return {**data, "live": False}

    def _graph_at(self, store: LogStore, seq: int, mode: str) -> dict[str, Any]:
        data = dag.build(self._state_at(store, seq), mode)
        data["seq"] = seq
        return data
