"""``ecloud status --watch``: the status kept up to date as the log moves
on, as ``condor_watch_q`` does for a queue. The state is folded once, then
only what each look finds new is folded."""

from __future__ import annotations

import io
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ecloud.cli import render
from ecloud.cli.common import log_store, out, progress_bar
from ecloud.log.rebuild import fold_range, load_state
from ecloud.projections.state import State
from ecloud.views.progress import counts_text, tally


def watch_status(db: str | None, config_path: str | None, every: float) -> None:
    """Until Ctrl-C (which ends it quietly, exit 0)."""
    with log_store(db, config_path, create=False) as store:
        with progress_bar("reading the log") as progress:
            state = load_state(store, progress=progress)
        try:
            if out.is_terminal:
                _redraw(store, state, every)
            else:
                _lines(store, state, every)
        except KeyboardInterrupt:
            return


def _drawn(state: State, title: str) -> Text:
    """The status as ``ecloud status`` prints it, as one renderable."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=out.width, force_terminal=True, color_system="truecolor",
                      highlight=False, soft_wrap=True)
    render.render_status(state, console, title=title, now=time.time())
    console.print("[dim]every look folds what is new · Ctrl-C to stop[/]")
    return Text.from_ansi(buffer.getvalue())


def _redraw(store, state: State, every: float) -> None:
    with Live(_drawn(state, store.url), console=out.real(), auto_refresh=False,
              vertical_overflow="visible") as live:
        while True:
            time.sleep(every)  # the watch's own pace: nothing to wait on but the clock
            seq = state.seq
            fold_range(store, state)
            if state.seq != seq:
                live.update(_drawn(state, store.url), refresh=True)


def _lines(store, state: State, every: float) -> None:
    """One line of counts at the start and whenever they change."""
    last = None
    while True:
        t = tally(state.counts)
        if t != last:
            out.print(f"{render.when(state.clock)} seq {state.seq}: {t.done} of {t.total} "
                      f"tasks done · {counts_text(t) or 'no task'}", markup=False)
            last = t
        time.sleep(every)
        fold_range(store, state)
