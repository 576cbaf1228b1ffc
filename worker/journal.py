"""A worker's own record of every report it made, for audits and the chaos
suite: one JSON line per report when it is made (not per resend), and one
when an unacknowledged report is withdrawn (an older hello superseded by a
new one). A line is written with one ``write`` call, so it survives the
worker being killed the instant after.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from ecloud.errors import UserError


class Journal:
    def __init__(self, path: str | os.PathLike, worker_id: str) -> None:
        target = Path(path)
        if target.is_dir():
            target = target / f"{worker_id}.jsonl"
        try:
            self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise UserError(f"cannot open the journal {target}: {exc.strerror or exc}") from None
        self.worker_id = worker_id
        self.path = target

    def made(self, report: Any) -> None:
        self._line({"msg_id": report.msg_id, "kind": report.kind,
                    "task_id": getattr(report, "task_id", None),
                    "attempt": getattr(report, "attempt", None),
                    "exit_code": getattr(report, "exit_code", None),
                    "duration": getattr(report, "duration", None)})

    def withdrawn(self, msg_id: str) -> None:
        self._line({"msg_id": msg_id, "withdrawn": True})

    def _line(self, fields: dict) -> None:
        fields.update(worker_id=self.worker_id, pid=os.getpid(), t=time.time())
        os.write(self._fd, orjson.dumps(fields) + b"\n")

    def close(self) -> None:
        os.close(self._fd)
