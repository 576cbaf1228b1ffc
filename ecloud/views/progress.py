"""A run's progress as people read it: counts that mean what they say, a
rate over the last half minute, and when to print a line where no bar can
be drawn (a log file, CI).

Pure: every function takes the time it reasons about. ``ecloud run`` feeds
it the boss's counts of *this run's* tasks, on a terminal into a live bar,
elsewhere into plain lines (:class:`LinePolicy`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from attrs import frozen

from ecloud.projections.state import State

#: seconds of history the rate is taken over: recent enough to follow a
#: change of pace, long enough not to jump with every finished task
RATE_WINDOW = 30.0
#: seconds of history the rate needs at least before it says anything
RATE_MIN_SPAN = 1.0
#: seconds between plain lines while the counts move (a quiet run prints one a minute)
LINE_EVERY = 5.0
QUIET_LINE_EVERY = 60.0
#: seconds between two lines that a new failure prints at once
NEWS_GAP = 1.0


@frozen
class Tally:
    """How the tasks of a run stand. ``running`` is what workers report
    running; ``queued`` is ready or given to a worker that has not started
    it (a worker queues short tasks ahead of its slots)."""

    total: int
    succeeded: int = 0
    failed: int = 0
    blocked: int = 0
    cancelled: int = 0
    running: int = 0
    queued: int = 0
    waiting: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.blocked + self.cancelled

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total

    @property
    def troubles(self) -> tuple[int, int, int]:
        """What a plain-line reader must hear of at once when it grows."""
        return self.failed, self.blocked, self.cancelled


def status_counts(state: State, task_ids: Iterable[str]) -> dict[str, int]:
    """How many of ``task_ids`` are in each status (non-zero counts only): a
    run's tasks among the log's."""
    counts: dict[str, int] = {}
    tasks = state.tasks
    for task_id in task_ids:
        task = tasks.get(task_id)
        if task is not None:
            counts[task.status] = counts.get(task.status, 0) + 1
    return counts


def tally(counts: Mapping[str, int], total: int | None = None) -> Tally:
    """A tally from counts per task status (``State.counts`` or a run's)."""
    get = counts.get
    return Tally(
        total=sum(counts.values()) if total is None else total,
        succeeded=get("succeeded", 0), failed=get("failed", 0), blocked=get("blocked", 0),
        cancelled=get("cancelled", 0), running=get("running", 0),
        queued=get("ready", 0) + get("dispatched", 0), waiting=get("waiting", 0))


class Rate:
    """Tasks finished per second over the last :data:`RATE_WINDOW` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        samples = self._samples
        samples.append((now, done))
        # keep one sample at or before the window's start, so the span is full
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()

    def per_second(self) -> float | None:
        """None until :data:`RATE_MIN_SPAN` seconds of samples are in."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 - t0 < RATE_MIN_SPAN:
            return None
        return max(0, d1 - d0) / (t1 - t0)

    def eta(self, remaining: int) -> float | None:
        """Seconds until ``remaining`` more tasks are done at this rate."""
        rate = self.per_second()
        if remaining <= 0:
            return 0.0
        if not rate:
            return None
        return remaining / rate


def clock(seconds: float | None) -> str:
    """``1:02:03``, ``2:03``, or ``?`` when unknown."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def counts_text(t: Tally, styles: Mapping[str, str] | None = None) -> str:
    """``28 succeeded, 1 failed, 1 blocked · 4 running · 15 queued``: every
    non-zero count, each under its own name; ``styles`` (name -> rich
    style) marks some up for a terminal."""
    styles = styles or {}

    def shown(n: int, name: str) -> str:
        style = styles.get(name)
        return f"[{style}]{n} {name}[/]" if style else f"{n} {name}"

    ended = [shown(n, name) for n, name in ((t.succeeded, "succeeded"), (t.failed, "failed"),
                                            (t.blocked, "blocked"), (t.cancelled, "cancelled"))
             if n]
    parts = [", ".join(ended)] if ended else []
    parts += [shown(n, name) for n, name in ((t.running, "running"), (t.queued, "queued"),
                                             (t.waiting, "waiting")) if n]
    return " · ".join(parts)


def line(t: Tally, elapsed: float, rate: Rate) -> str:
    """One plain progress line: ``[0:16] 30 of 50 tasks done (60%): 28
    succeeded, 1 failed, 1 blocked · 4 running · 15 queued · 4.5 tasks/s,
    ETA 0:04``."""
    percent = 100 * t.done // t.total if t.total else 100
    text = f"[{clock(elapsed)}] {t.done} of {t.total} tasks done ({percent}%)"
    counts = counts_text(t)
    if counts:
        text += f": {counts}"
    per_second = rate.per_second()
    if t.finished:
        return text
    if per_second is not None:
        text += f" · {per_second:.3g} tasks/s, ETA {clock(rate.eta(t.total - t.done))}"
    return text


def _first_trouble(last: Tally, now: Tally) -> bool:
    """The run's first failure, block or cancel: news a log reader wants at
    once (later ones come with the next regular line, or a run failing a
    task a second would print a line a second)."""
    return any(before == 0 < after for before, after in zip(last.troubles, now.troubles,
                                                             strict=True))


class LinePolicy:
    """When to print a plain line: at once for the first look, for the
    first failure, block or cancel (at most one per :data:`NEWS_GAP` s) and
    at the end; otherwise every :data:`LINE_EVERY` s while the counts move,
    and every :data:`QUIET_LINE_EVERY` s while they stand still (alive)."""

    def __init__(self) -> None:
        self._last_at: float | None = None
        self.last: Tally | None = None  # the tally of the last line printed

    def due(self, now: float, t: Tally) -> bool:
        last, at = self.last, self._last_at
        if last is None or at is None:
            return self._printed(now, t)
        if t == last:
            return now - at >= QUIET_LINE_EVERY and self._printed(now, t)
        if t.finished or (_first_trouble(last, t) and now - at >= NEWS_GAP):
            return self._printed(now, t)
        if now - at >= LINE_EVERY:
            return self._printed(now, t)
        return False

    def _printed(self, now: float, t: Tally) -> bool:
        self.last, self._last_at = t, now
        return True


__all__ = ["LINE_EVERY", "NEWS_GAP", "QUIET_LINE_EVERY", "RATE_WINDOW", "LinePolicy", "Rate",
           "Tally", "clock", "counts_text", "line", "status_counts", "tally"]
