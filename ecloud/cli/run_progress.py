"""How ``ecloud run`` shows its progress: a live bar on a terminal, plain
lines everywhere else (a log file, CI), both from the same counts of the
run's own tasks (:mod:`ecloud.views.progress`)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from ecloud.views.progress import LinePolicy, Rate, Tally, clock, counts_text, line, tally

UNFINISHED = ("waiting", "ready", "dispatched", "running")


def run_tally(view: dict[str, Any], total: int) -> Tally:
    """The run's tasks as the boss's view counts them (before the boss has
    counted them: nothing done yet)."""
    counts = view.get("run_counts")
    if counts is None:
        return Tally(total=total, waiting=total)
    return tally(counts, total)


def others_unfinished(view: dict[str, Any], t: Tally) -> int:
    """Unfinished tasks of the log that are not this run's (earlier pushes):
    the boss runs them too, and the run waits for them."""
    counts = view.get("counts", {})
    everyone = sum(counts.get(s, 0) for s in UNFINISHED)
    return max(0, everyone - (t.total - t.done))


class RunDisplay:
    """Shows the run's tally: :meth:`show` on every look, :meth:`close` at
    the end (a last line where no bar is drawn)."""

    def __init__(self, console: Console, total: int, started: float | None = None) -> None:
        # the console itself, not the CLI's lazy stand-in: rich's bar wants it
        self.console = console = console.real() if hasattr(console, "real") else console
        self.total = total
        self.started = time.monotonic() if started is None else started
        self.rate = Rate()
        self.policy = LinePolicy()
        self.last: Tally | None = None
        self._others = 0
        self._bar: Progress | None = None
        self._closed = False
        self._task: Any = None
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]tasks"), BarColumn(),
                TextColumn("{task.completed}/{task.total} done · {task.fields[counts]}"),
                TextColumn("· elapsed {task.fields[elapsed]} · {task.fields[eta]}"),
                console=console, transient=False)

    def __enter__(self) -> RunDisplay:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("tasks", total=self.total, counts="", elapsed="0:00",
                                            eta="ETA ?")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def show(self, view: dict[str, Any], now: float | None = None) -> Tally:
        now = time.monotonic() if now is None else now
        if view.get("run_counts") is None and self.last is None:
            return run_tally(view, self.total)  # the boss has not counted them yet
        t = run_tally(view, self.total)
        self.last = t
        self._others = others_unfinished(view, t)
        self.rate.add(now, t.done)
        elapsed = now - self.started
        if self._bar is not None:
            per_second = self.rate.per_second()
            eta = ("ETA " + clock(self.rate.eta(t.total - t.done))
                   + (f" at {per_second:.3g} tasks/s" if per_second else ""))
            self._bar.update(self._task, total=t.total, completed=t.done,
                             counts=self._counts_markup(t), elapsed=clock(elapsed), eta=eta)
        elif self.policy.due(now, t):
            self.console.print(self._line(t, elapsed), markup=False, highlight=False)
        return t

    def finish(self, final: Tally) -> None:
        """The run's last tally (from the state it ended with), then close."""
        self.last = final
        if self._bar is not None:
            self._bar.update(self._task, total=final.total, completed=final.done,
                             counts=self._counts_markup(final))
        self.close()

    def close(self) -> None:
        """Stop the bar, or print the last line if it was not printed yet
        (once: ``finish`` and leaving the ``with`` both close)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.last is not None and self.policy.last != self.last:
            self.console.print(self._line(self.last, time.monotonic() - self.started),
                               markup=False, highlight=False)

    def _line(self, t: Tally, elapsed: float) -> str:
        text = line(t, elapsed, self.rate)
        if self._others:
            text += f" · {self._others} task(s) of earlier pushes unfinished"
        return text

    def _counts_markup(self, t: Tally) -> str:
        text = counts_text(t, {"failed": "red", "blocked": "yellow"}) or "nothing started yet"
        if self._others:
            text += f" · {self._others} of earlier pushes"
        return text


__all__ = ["RunDisplay", "others_unfinished", "run_tally"]
