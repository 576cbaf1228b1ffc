"""What every command shares: ``--db``/``--config``, opening the log, error
handling at the boundary, output consoles and progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ecloud.cli.exits import handle_errors  # noqa: F401 - every command's, re-exported
from ecloud.errors import ConfigError, EcloudError, MissingLogError, UserError

if TYPE_CHECKING:
    from rich.console import Console

    from ecloud.log.store import LogStore

#: the width of output that is not a terminal (a file, a pipe): wide enough
#: that no table cuts or folds a value (rich would lay them out at 80)
PIPE_WIDTH = 1000


class LazyConsole:
    """A rich Console made on first use: importing rich costs ~50 ms, which
    ``ecloud --help`` and every command that fails early need not pay. It
    passes every attribute on to the console; :meth:`real` is the console
    itself, for rich's own classes (a progress bar, a live view)."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            class QuietOnBrokenPipe(Console):
                """A reader that stopped reading (``ecloud log | head -1``) is no
                failure: stop writing and exit 0 (rich exits 1) - unless the
                command does work of its own (:func:`keep_going_on_broken_pipe`):
                then it only stops writing, and ends with its own status."""

                def on_broken_pipe(self) -> None:
                    self.quiet = True
                    _silence(sys.stderr if self.stderr else sys.stdout)
                    if not _KEEP_GOING[0]:
                        raise SystemExit(0)

            stream = sys.stderr if self._stderr else sys.stdout
            # output to a file or a pipe is laid out wide: no table cuts a value
            self._console = QuietOnBrokenPipe(stderr=self._stderr, highlight=False, soft_wrap=True,
                                    width=None if self._stderr or stream.isatty()
                                    else PIPE_WIDTH)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


def _silence(stream: Any) -> None:
    """Send what is still written to ``stream`` to /dev/null (its reader is gone)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


#: whether a broken pipe only silences the output (True) or ends the command
_KEEP_GOING = [False]


def keep_going_on_broken_pipe() -> None:
    """For a command whose work matters more than its output (``ecloud
    run``): a reader that goes away silences it, and it ends with its own
    exit status - never 0 for a run that did not do its work."""
    _KEEP_GOING[0] = True


def write_stdout(text: str) -> None:
    """Write to stdout (JSON for programs), silencing it if its reader is gone."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence(sys.stdout)
        if not _KEEP_GOING[0]:
            raise


out = LazyConsole()
err = LazyConsole(stderr=True)


def common_options(fn: Callable) -> Callable:
    """``--db`` and ``--config``, accepted by every command."""
    fn = click.option(
        "--config",
        "config_path",
        metavar="PATH",
        help="Configuration file (TOML). Default: $ECLOUD_CONFIG, ./ecloud.toml, "
        "~/.config/ecloud/ecloud.toml.",
    )(fn)
    fn = click.option(
        "--db",
        metavar="URL",
        help="Event log: sqlite:///path.db or mysql://user:pass@host:port/db. "
        "Default: $ECLOUD_DB, the config file, else sqlite:///ecloud.db.",
    )(fn)
    return fn


def config_for(db: str | None, config_path: str | None):
    from ecloud.config import load_config

    flags: dict[str, Any] = {}
    if db:
        flags["db"] = db
    if config_path:
        flags["config"] = config_path
    return load_config(flags)


def _command_excerpt() -> str:
    """The operator command being run, for a rejection: its name and
    arguments, without ``--db``/``--config`` (a URL may hold a password)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ""
    args = " ".join(f"{k}={_shown(v)}" for k, v in sorted(ctx.params.items())
                    if k not in ("db", "config_path") and v not in (None, (), False))
    return f"{ctx.command_path} {args}".strip()


def _shown(value: Any) -> str:
    return repr(os.fspath(value)) if isinstance(value, os.PathLike) else repr(value)


def log_refusal(store: LogStore, exc: UserError) -> None:
    """Record ``exc``, a refusal of this command, as :func:`operator_log` does."""
    if not isinstance(exc, (MissingLogError, ConfigError)):
        _log_refusal(store, exc)


@contextmanager
def operator_log(db: str | None, config_path: str | None, *, create: bool) -> Iterator[LogStore]:
    """:func:`log_store` for a command that changes the log: a command the
    log's state refuses (an unknown task, a bad context value, a task file
    that does not fit) is recorded as an ``input.rejected`` event with the
    reason and the command - nothing else is written - and then reported.
    A log with no event yet (made by this very command) stays empty."""
    with log_store(db, config_path, create=create, read_only=False) as store:
        try:
            yield store
        except UserError as exc:
            if not isinstance(exc, (MissingLogError, ConfigError)):
                _log_refusal(store, exc)
            raise


def _log_refusal(store: LogStore, exc: UserError) -> None:
    from ecloud import wire
    from ecloud.events.types import InputRejected

    try:
        if store.head() > 0:
            store.append([InputRejected("operator", wire.bounded_reason(str(exc)),
                                        wire.excerpt(_command_excerpt().encode()))])
    except EcloudError:
        pass  # the refusal is still reported; the log could not take it


@contextmanager
def log_store(db: str | None, config_path: str | None, *, create: bool,
              read_only: bool | None = None) -> Iterator[LogStore]:
    """Open the configured log; ``create`` only for commands that write.
    ``read_only`` (by default: unless ``create``) for commands that only
    read: they work on a read-only filesystem too."""
    from ecloud.log.url import open_store

    config = config_for(db, config_path)
    store = open_store(config.db, create=create,
                       read_only=not create if read_only is None else read_only)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress callback ``(done, total)``; draws a bar on a terminal only."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err.real(),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
