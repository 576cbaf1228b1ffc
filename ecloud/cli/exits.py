"""Exit statuses of every command, as one table.

The README's "Exit statuses" section is generated from :data:`TABLE`
(:func:`markdown`), and a test checks that the two agree, so the prose
cannot drift from what the commands do. Code exits with the named
constants, never with a bare number.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

OK = 0
#: a task did not succeed (``ecloud run``), or the environment failed
#: (database unreachable, corrupt log): see the message
FAILED = 1
#: the operator's mistake: a bad flag, file, value or task file; nothing was changed
USAGE = 2
#: ``ecloud run``: a task can never run here (no present or possible worker
#: offers what it needs), and nothing else can progress
UNSCHEDULABLE = 3
#: ``ecloud-boss``: another boss took the log over (fenced)
FENCED = 3
#: ``ecloud run``: a live boss holds this log already (``ecloud-boss`` waits as a standby)
LOG_HELD = 4
#: interrupted by SIGINT or SIGTERM; run the same command again to continue
INTERRUPTED = 130

#: ``ecloud-worker``: the boss refused this agent (another protocol, or
#: another live agent holds its worker id)
WORKER_REFUSED = 3
#: ``ecloud-worker``: no boss was heard for ``--boss-grace`` seconds; its
#: attempts were stopped
WORKER_ORPHANED = 4
#: ``ecloud-worker``: the broker refused it (credentials, ACL, TLS)
WORKER_BROKER_REFUSED = 5


class Row(NamedTuple):  # not attrs: this module is imported by every command, --help too
    status: int | str  # "R": a value the task file chooses
    commands: str
    meaning: str


TABLE: tuple[Row, ...] = (
    Row(OK, "all", "success; `ecloud run`: every task of the file succeeded (a file with a "
        "`final` task: the final task succeeded)"),
    Row(FAILED, "all", "`ecloud run`: a task failed, was blocked or cancelled (the summary lists "
        "them; a file with a `final` task: the final task did not succeed); any command: the "
        "environment failed (database or broker unreachable, a corrupt log), the message says "
        "what"),
    Row(USAGE, "all", "a mistake in the command: a bad flag, value, file or task file; nothing "
        "was changed (a refused change is recorded as one `input.rejected` event)"),
    Row(UNSCHEDULABLE, "`ecloud run`", "a task can never run: no worker present or possible "
        "offers what it needs (e.g. more slots than any worker has); the message names it, "
        "`ecloud status` and `ecloud-replay --why TASK` say why"),
    Row(FENCED, "`ecloud-boss`", "another boss took the log over (this one was silent past "
        "`takeover_after`): it appended nothing more"),
    Row(LOG_HELD, "`ecloud run`", "a live boss holds this log already; the message names it "
        "(add tasks with `ecloud push`, watch with `ecloud status`); or `--work-dir` is the work "
        "directory of another log's live run (give another); nothing was changed"),
    Row("R", "`ecloud run`", "a task's `abort_on` aborted the workflow: R is the rule's `return` "
        "(its `exit` when it names none), as DAGMan's ABORT-DAG-ON; it may equal one of the "
        "statuses here - the summary's \"workflow aborted\" line tells"),
    Row(INTERRUPTED, "all", "interrupted (Ctrl-C; for `ecloud run` also SIGTERM): what was in "
        "hand was committed; run the same command again to continue. Not `ecloud status "
        "--watch` and `ecloud log --follow`, which Ctrl-C ends: 0"),
    Row(WORKER_REFUSED, "`ecloud-worker`", "the boss refused this agent: another protocol "
        "version, or another live agent holds its worker id (after 3 tries)"),
    Row(WORKER_ORPHANED, "`ecloud-worker`", "no boss was heard for `--boss-grace` seconds: its "
        "attempts were stopped (they run again under the next boss)"),
    Row(WORKER_BROKER_REFUSED, "`ecloud-worker`", "the broker refused the agent: bad "
        "credentials, not authorised, or TLS failed (unknown CA, wrong host name)"),
)


def markdown() -> str:
    """The table as Markdown, as the README shows it."""
    lines = ["| status | commands | meaning |", "| --- | --- | --- |"]
    lines += [f"| {row.status} | {row.commands} | {row.meaning} |" for row in TABLE]
    return "\n".join(lines)


def handle_errors(fn: Callable) -> Callable:
    """Turn ecloud's errors into one clear line and their exit status (the
    table above); a bug (any other exception) keeps its traceback. Here, not
    beside the CLI's other helpers, so that the worker agent, which must not
    import the boss's side, exits the same way."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rich.console import Console
        from rich.markup import escape

        from ecloud.errors import EcloudError

        try:
            return fn(*args, **kwargs)
        except EcloudError as exc:
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
            sys.exit(exc.exit_status)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # e.g. `ecloud log | head`
            sys.stderr.close()
            sys.exit(0)

    return wrapper
