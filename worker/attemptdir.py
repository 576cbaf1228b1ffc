"""An attempt's directory, as the agent's runner (:mod:`ecloud_worker.runner`)
handles it: where it is, making it fresh, and what is read back from it when
the attempt is over - the tails of its ``stdout`` and ``stderr`` and what the
wrappers (:mod:`ecloud_worker.stage`, :mod:`ecloud_worker.node`) said in
``.ecloud/``.

An attempt runs in ``<work dir>/<task id>/<attempt>/``, the task's id made
one file name (``%`` and ``/`` escaped as ``%25`` and ``%2F``, a long one cut
and made unique by a hash); a directory left there by an earlier process is
renamed aside and deleted in the background. Everything in it belongs to the
task, so it is read through :func:`ecloud_worker.attemptfiles.read_meta`,
within limits, and nothing read is trusted.

This module exists so the runner keeps to processes, slots and deadlines,
and so what else needs the layout (``ecloud logs`` through
:mod:`ecloud_worker.logserve`) finds :func:`attempt_path` in one place (it is
importable from :mod:`ecloud_worker.runner` as well).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

from ecloud import limits
from ecloud.events.types import StagedFile
from ecloud.wire import TAIL
from ecloud_worker import node
from ecloud_worker.attemptfiles import read_meta

__all__ = ["META_BYTES", "TASK_DIR_BYTES", "attempt_path", "close_fds", "fresh_dir",
           "node_outcome", "staging_outcome", "tail"]

log = logging.getLogger(__name__)

#: the most of a wrapper's .ecloud/staged.json the agent reads
META_BYTES = 64 << 20
#: longest directory name of an attempt's task (NAME_MAX is 255 bytes)
TASK_DIR_BYTES = 240


def attempt_path(work_dir: str, task_id: str, attempt: int) -> str:
    """``<work dir>/<task>/<attempt>``, the task's id made one file name
    ('/' and '%' escaped). An id whose escaped name would pass NAME_MAX (200
    characters with many '/') is cut, and the cut name made unique by a hash
    of the whole id."""
    name = task_id.replace("%", "%25").replace("/", "%2F")
    if name in ("", ".", ".."):
        name = "%" + name.replace(".", "%2E")
    if len(name.encode()) > TASK_DIR_BYTES:
        digest = hashlib.sha256(task_id.encode()).hexdigest()[:16]
        name = name.encode()[:TASK_DIR_BYTES - 17].decode(errors="ignore").rstrip("%0123456789ABCDEF")
        name = f"{name}~{digest}"
    return f"{work_dir}/{name}/{attempt}"

# ---------------------------------------------------------------- making it


def fresh_dir(path: str) -> str:
    """Make the attempt's directory (and its task's); a directory left there
    by an earlier process is renamed aside and deleted in the background.
    The common case costs two ``mkdir`` calls."""
    parent = os.path.dirname(path)
    try:
        os.mkdir(parent)
    except FileExistsError:
        pass
    except FileNotFoundError:  # the first attempt in a new work directory
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path)
    except FileExistsError:
        aside = f"{path}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, aside)
        threading.Thread(target=shutil.rmtree, args=(aside,), kwargs={"ignore_errors": True},
                         daemon=True).start()
        os.mkdir(path)
    return path

# ---------------------------------------------------------------- reading it back


def tail(fd: int) -> str:
    """The last :data:`ecloud.wire.TAIL` bytes of an open file, as text."""
    if fd < 0:
        return ""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, TAIL, max(0, size - TAIL)).decode("utf-8", errors="replace") \
            if size else ""
    except OSError:
        return ""


def close_fds(*fds: int) -> None:
    """Close the descriptors that are open (-1: not opened)."""
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def staging_outcome(cwd: Path) -> tuple[list[StagedFile], str]:
    """What the staging wrapper moved and, if staging failed, why."""
    staged: list[StagedFile] = []
    room = limits.STAGED_REPORT_BYTES
    try:
        items = json.loads(read_meta(str(cwd), "staged.json", META_BYTES) or b"")
        for item in items:
            size = len(item["name"].encode()) + len(item["path"].encode()) + 160  # as JSON
            if size > room:  # the report must stay within what the boss accepts
                log.warning("attempt in %s moved %d files; its report lists the first %d "
                            "(the rest are on the datastore, not in the log)", cwd, len(items),
                            len(staged))
                break
            room -= size
            staged.append(StagedFile(item["direction"], item["name"], item["path"],
                                     item["sha256"], item["bytes"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # no staging, or it was killed before writing
    failure = (read_meta(str(cwd), "failure", 4000) or b"").decode(errors="replace")[:1000]
    return staged, failure


def node_outcome(cwd: str) -> tuple[str, str, str]:
    """What the node wrapper says of its attempt: the stage that decided
    (one the boss knows, else ""), its reason, and the part running last
    ("" once over). The file is the task's: nothing in it is trusted."""
    try:
        said = json.loads(read_meta(cwd, node.RESULT, 16384) or b"")
        stage, reason, part = said.get("stage", ""), said.get("reason", ""), said.get("part", "")
    except (ValueError, AttributeError):
        return "", "", ""
    stage = stage if stage in node.STAGES else ""
    reason = reason[:1000] if isinstance(reason, str) else ""
    part = part[:40] if isinstance(part, str) and part.isprintable() else ""
    return stage, reason, part

