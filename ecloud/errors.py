"""Every error ecloud raises on purpose derives from :class:`EcloudError`.

The split matters at the boundary: a :class:`UserError` is the operator's (or an
outside party's) mistake and becomes one clear message with exit status 2; any
other :class:`EcloudError` is an environment problem (database down, corrupt
log) and exits 1 with its message; anything that is not an ``EcloudError`` is a
bug in ecloud and is allowed to show its traceback.
"""

from __future__ import annotations


class EcloudError(Exception):
    """Base of all errors ecloud raises deliberately."""

    exit_status = 1


class UserError(EcloudError):
    """Bad input from the person at the keyboard: a wrong flag, file or URL."""

    exit_status = 2


class MissingLogError(UserError):
    """The event log named does not exist (and the command does not create one)."""


class ConfigError(UserError):
    """The configuration (file, environment, flags) cannot be used."""


class ValidationError(UserError):
    """A task file or command argument failed validation.

    ``problems`` lists every problem found, each already naming its location,
    so the operator can fix them all in one go.
    """

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        count = len(self.problems)
        lines = [f"{head}{count} problem{'s' if count != 1 else ''} found:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class CodecError(EcloudError):
    """An event body could not be encoded or decoded (unknown tag, bad shape)."""


class StoreError(EcloudError):
    """The event log or snapshot store failed or holds something unusable."""


class ConcurrencyError(StoreError):
    """An append expected the log to end at one seq but another writer moved it."""

    def __init__(self, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"the log moved on: expected head {expected}, found {actual}")


class CommitInDoubtError(StoreError):
    """The connection broke during COMMIT: the batch (seqs ``first`` to
    ``first + count - 1``) may or may not be in the log.

    A writer that retries must first look whether it landed
    (:class:`~ecloud.boss.journal.Journal` does), or it may write it twice."""

    def __init__(self, message: str, first: int, count: int) -> None:
        self.first = first
        self.count = count
        super().__init__(message)


class FencedError(StoreError):
    """This writer lost the right to append (another boss holds the log).

    Exit status 3, so that a supervisor can tell "another boss took over"
    from a failure."""

    exit_status = 3


class ReducerBug(EcloudError):
    """The fold met an event that cannot happen in a log ecloud wrote.

    This stops replay loudly instead of skipping: a skipped event would make
    every later state silently wrong.
    """

    def __init__(self, seq: int, message: str) -> None:
        self.seq = seq
        super().__init__(f"seq {seq}: {message}")


class LogHeldError(EcloudError):
    """Another live boss holds the log (``ecloud run`` does not wait)."""

    exit_status = 4  # ecloud.cli.exits.LOG_HELD (tests/test_exits.py checks they agree)
