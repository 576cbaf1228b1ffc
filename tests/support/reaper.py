"""A test that kills a process with SIGKILL leaves its children orphaned.
Linux re-parents orphans to the nearest *child subreaper* among their
ancestors, else to PID 1, which on an ordinary machine (systemd, tini,
``docker --init``) reaps them when they exit. The PID 1 of our CI machines
does not: an orphan that exits stays a zombie for good. So a test that
kills ``ecloud run`` and checks that nothing of it is left makes itself the
subreaper, as a real init would be, and reaps what is re-parented to it -
and only that: its own ``subprocess`` children keep their exit statuses.

    with Reaper() as reaper:
        ...                    # orphans of killed processes come to us
        reaper.reap()          # collect the ones that have exited
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def children() -> set[int]:
    """This process's children, from every thread's ``children`` list."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return found


def state_of(pid: int) -> str | None:
    """The process's state letter (``Z`` for a zombie), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Reaper:
    def __init__(self) -> None:
        self.mine: set[int] = set()  # children we made ourselves: never reaped here

    def __enter__(self) -> Reaper:
        self.mine = children()
        if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        return self

    def own(self, pid: int) -> None:
        """A child this test started (and waits for) itself."""
        self.mine.add(pid)

    def reap(self) -> list[int]:
        """Collect every adopted child that has exited; their pids."""
        reaped = []
        for pid in children() - self.mine:
            if state_of(pid) == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                    reaped.append(pid)
                except ChildProcessError:
                    pass
        return reaped

    def adopted(self) -> set[int]:
        """Adopted children still here (alive or not yet reaped)."""
        return children() - self.mine

    def __exit__(self, *exc: object) -> None:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        self.reap()
