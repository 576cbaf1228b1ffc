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
import stat
from pathlib import Path

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
        """Make ``path`` the user's (an attempt directory)."""
        os.chown(path, self.uid, self.gid)

    def private_copy(self, folder: Path, name: str, material: bytes) -> Path:
        """``material`` in ``folder/name``, both the user's alone (0700,
        0600): what the task's side needs of the agent's secrets (the
        datastore key, for staging), kept apart from the agent's own."""
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(folder)
            if not stat.S_ISDIR(info.st_mode):
                raise UserError(f"{folder} is not a folder: remove it")
            os.chown(folder, self.uid, self.gid)
            os.chmod(folder, 0o700)
            temp = folder / f".{name}.{os.getpid()}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.fchown(fd, self.uid, self.gid)
                os.fchmod(fd, 0o600)
                view = memoryview(material)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(temp, folder / name)
        except OSError as exc:
            raise UserError(f"cannot give {self.name} its copy of {name} in {folder}: "
                            f"{exc.strerror or exc}") from None
        return folder / name


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
