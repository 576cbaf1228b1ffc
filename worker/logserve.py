"""Serve ``ecloud logs``: a piece of an attempt's stdout or stderr, read
from the attempt's directory on this worker.

Only the two output files of an attempt this worker has a directory for
are ever read (the path is built from the task id and attempt the same way
the runner builds it, escaped, never taken from the request), at most
:data:`~ecloud.wire.LOG_CHUNK` bytes per answer.
"""

from __future__ import annotations

import base64
import os

from ecloud.wire import LogsReply, LogsRequest, check_logs_request
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
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = os.pread(f.fileno(), request.limit, request.offset) if request.offset < size \
                else b""
    except FileNotFoundError:
        return reply(-1, error=f"this worker has no output of {request.task_id} attempt "
                               f"{request.attempt}")
    except OSError as exc:
        return reply(-1, error=f"cannot read the output: {exc.strerror}")
    return reply(size, data)
