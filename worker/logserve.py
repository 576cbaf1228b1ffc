"""Serve ``ecloud logs``: a piece of an attempt's stdout or stderr, read
from the attempt's directory on this worker.

Only the two output files of an attempt this worker has a directory for
are ever read (the path is built from the task id and attempt the same way
the runner builds it, escaped, never taken from the request), at most
:data:`~ecloud.wire.LOG_CHUNK` bytes per answer - and only if they are
regular files: the attempt's directory is the task's, and the agent (maybe
root) never follows a link a task put there, nor waits on a FIFO
(:mod:`ecloud_worker.attemptfiles`). A task whose ``stdout``/``stderr`` go
to files of its own still has its output here: the command writes these
files, and the node wrapper copies its part to the task's files
(:mod:`ecloud_worker.node`).
"""

from __future__ import annotations

import base64
import os

from ecloud.wire import LogsReply, LogsRequest, check_logs_request
from ecloud_worker.attemptfiles import open_regular
from ecloud_worker.runner import attempt_path


def answer(work_dir: str, request: LogsRequest, running: bool) -> LogsReply:
    """The reply to ``request``; ``running``: the attempt still runs here."""

    def reply(size: int, data: bytes = b"", error: str = "") -> LogsReply:
        return LogsReply(request.request_id, request.task_id, request.attempt, request.stream,
                         request.offset, size, running, base64.b64encode(data).decode(), error)

    problem = check_logs_request(request)
    if problem is not None:
        return reply(-1, error=problem)
    path = os.path.join(attempt_path(work_dir, request.task_id, request.attempt), request.stream)
    try:
        fd = open_regular(path)
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, request.limit, request.offset) if request.offset < size else b""
        finally:
            os.close(fd)
    except FileNotFoundError:
        return reply(-1, error=f"this worker has no output of {request.task_id} attempt "
                               f"{request.attempt}")
    except OSError as exc:
        return reply(-1, error=f"cannot read the output: {exc.strerror}")
    return reply(size, data)
