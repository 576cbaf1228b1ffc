"""Reading what an attempt's processes left in its directory, as the agent.

The attempt directory belongs to the task (to the ``--run-as`` user when
the agent runs as root): anything in it may have been replaced by the task
- ``stdout`` by a link to ``/etc/shadow``, ``.ecloud/failure`` by a FIFO.
The agent reads those files for ``ecloud logs`` and for its reports, so it
opens them without following a symbolic link (on any component inside the
attempt directory: the directory itself is in the agent's own task
directory), without blocking (a FIFO with no writer), and reads only a
regular file, and only so much of it.
"""

from __future__ import annotations

import errno
import os
import stat

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotAFile(OSError):
    """The name is there but is no regular file (a link, a FIFO, a directory)."""


def open_regular(path: str, dir_fd: int | None = None) -> int:
    """``path`` (its last component not followed) open for reading, if it
    is a regular file; else :class:`NotAFile` or the open's OSError."""
    try:
        fd = os.open(path, _FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise NotAFile(exc.errno, "a symbolic link, not a file", path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotAFile(errno.EINVAL, "not a regular file", path)
    return fd


def read_meta(attempt_dir: str, name: str, limit: int) -> bytes | None:
    """At most ``limit`` bytes of ``.ecloud/<name>`` in an attempt
    directory; None if it is not there (or is no regular file)."""
    try:
        meta = os.open(f"{attempt_dir}/.ecloud", _FLAGS | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fd = open_regular(name, dir_fd=meta)
    except OSError:
        return None
    finally:
        os.close(meta)
    try:
        chunks, left = [], limit
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
