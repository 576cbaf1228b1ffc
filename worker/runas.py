"""Running tasks as an unprivileged user when the agent runs as root.

On a worker VM the agent usually runs as root (a systemd service). A task
is arbitrary code from the task file: it runs as the configured user
(``--run-as``), with that user's groups, HOME, USER and LOGNAME, in an
attempt directory given to that user. Only the agent keeps root: it reads
the broker's credentials and writes the journal, neither of which a task
may touch.
"""

from __future__ import annotations

import os
import pwd

from attrs import frozen

from ecloud.errors import UserError


@frozen
class RunAs:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    def environment(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def give(self, path: str) -> None:
        """Make ``path`` the user's (an attempt directory, a key it needs)."""
        os.chown(path, self.uid, self.gid)


def resolve_run_as(name: str | None, euid: int | None = None) -> RunAs | None:
    """The user tasks run as: None when the agent is not root (tasks run as
    the agent's user, the only one it can give them) or no user is set."""
    euid = os.geteuid() if euid is None else euid
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UserError(f"--run-as {name!r}: no such user on this machine") from None
    if euid != 0:
        if entry.pw_uid == euid:
            return None
        raise UserError(f"--run-as {name!r}: only an agent running as root can run tasks as "
                        "another user")
    if entry.pw_uid == 0:
        raise UserError(f"--run-as {name!r} is root: name an unprivileged user")
    groups = tuple(sorted({entry.pw_gid, *os.getgrouplist(name, entry.pw_gid)}))
    return RunAs(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)
