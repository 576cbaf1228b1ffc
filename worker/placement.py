"""Where a task's process runs and what its standard streams are: a node's
``workdir``, ``stdin``, ``stdout`` and ``stderr`` (see
:class:`ecloud.events.types.NodeSpec`).

Shared by the runner (a node with only a working directory or an input file
is placed by the agent itself, no wrapper) and the node wrapper
(:mod:`ecloud_worker.node`, which places the others). Every check raises
:class:`PlacementError` with a reason an operator can act on; the attempt
(or the command, when a pre script ran first) then counts as not started.

The files a task names are opened by a process with the task's rights: the
agent opens them only when tasks run as its own user. An agent running as
root for an unprivileged ``--run-as`` user hands every named file to the
wrapper, which runs as that user - or a task file could have root truncate
any file on the machine.
"""

from __future__ import annotations

import os
import stat

NOT_STARTED = 127  # exit code reported for a command (an attempt) that cannot start


class PlacementError(Exception):
    """A working directory or a stream file that cannot be used."""

    @property
    def reason(self) -> str:
        return str(self)


def check_workdir(workdir: str) -> str:
    """``workdir`` if it is an existing directory given by absolute path."""
    if not os.path.isabs(workdir):
        raise PlacementError(f"workdir {workdir!r} is not an absolute path")
    try:
        info = os.stat(workdir)
    except OSError as exc:
        raise PlacementError(f"workdir {workdir}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise PlacementError(f"workdir {workdir}: not a directory")
    if not os.access(workdir, os.X_OK):  # the task's user (the wrapper's) may not enter it
        raise PlacementError(f"workdir {workdir}: Permission denied")
    return workdir


def resolve(path: str, cwd: str) -> str:
    """A stream file's path: relative ones are in the process working directory."""
    return os.path.join(cwd, path)


def open_stdin(path: str, cwd: str) -> int:
    """The command's standard input, open for reading (close-on-exec: the
    spawn duplicates it onto 0). Opened without blocking, so that a FIFO
    with no writer yet fails rather than hangs the caller; a directory or a
    FIFO is refused."""
    where = resolve(path, cwd)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PlacementError(f"cannot open stdin {where}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise PlacementError(f"stdin {where} is not a file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_output(path: str, cwd: str) -> int:
    """A stream file, made or emptied (as HTCondor does at each run of a
    job), open for writing (without blocking on a FIFO nobody reads)."""
    where = resolve(path, cwd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(where, flags, 0o644)
    except OSError as exc:
        raise PlacementError(f"cannot open {where} for the output: {exc.strerror or exc}") \
            from None
    os.set_blocking(fd, True)
    return fd
