"""What every command shares: ``--db``/``--config``, opening the log, error
handling at the boundary, output consoles and progress bars."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ecloud.errors import EcloudError
from ecloud.events.store import LogStore, open_store

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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


@contextmanager
def log_store(db: str | None, config_path: str | None, *, create: bool) -> Iterator[LogStore]:
    """Open the configured log; ``create`` only for commands that write."""
    config = config_for(db, config_path)
    store = open_store(config.db, create=create)
    try:
        yield store
    finally:
        store.close()


def handle_errors(fn: Callable) -> Callable:
    """Turn ecloud's errors into one clear line and an exit status; a bug
    (any other exception) keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EcloudError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            sys.exit(exc.exit_status)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except BrokenPipeError:  # e.g. `ecloud log | head`
            sys.stderr.close()
            sys.exit(0)

    return wrapper


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress callback ``(done, total)``; draws a bar on a terminal only."""
    if not enabled or not err.is_terminal:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
