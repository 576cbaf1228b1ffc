"""A real OpenSSH server for the tests: the ``sshd`` fixture.

It runs Debian's ``/usr/sbin/sshd`` as the current user in the foreground
(``-D -e``) on a free port of 127.0.0.1 with a fresh ed25519 host key, its own
``sshd_config`` (no PAM, keys only, ``StrictModes no``) and a generated client
key, and serves a temporary directory as a datastore. ``stop()`` kills the
server and the sshd process of every connection - the network to the
datastore goes away - and ``start()`` brings it back on the same port with the same
host key. The fixture also points ``ECLOUD_SSH_KNOWN_HOSTS`` at a file of the
test's own, so host keys of other tests' servers never get in the way.

Without ``/usr/sbin/sshd`` the test FAILS (``apt-get install openssh-server``;
``.ci/run`` does it) - it never skips.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"

__all__ = ["SSHD", "SshServer", "banner", "sshd"]


def banner(port: int) -> bool:
    """Whether an SSH server answers with its banner on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(1)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """The pids of every live descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshServer:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.user = getpass.getuser()
        self.datastore = base / "datastore"
        self.datastore.mkdir()
        self.host_key = base / "ssh_host_ed25519_key"
        self.key_file = str(base / "client_ed25519")
        for key in (self.host_key, Path(self.key_file)):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True, stdin=subprocess.DEVNULL)
        self.authorized_keys = base / "authorized_keys"
        self.authorized_keys.write_text(Path(self.key_file + ".pub").read_text())
        self.known_hosts = base / "known_hosts"
        self.config = base / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {base / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel ERROR",
            "",
        ]))
        self.log = base / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.datastore}"

    def ssh_command(self) -> list[str]:
        """ssh with the options our movers use, for plain rsync/ssh in tests."""
        return ["ssh", "-p", str(self.port), "-i", self.key_file, "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "LogLevel=ERROR"]

    def start(self, deadline: float = 15.0) -> None:
        assert self.proc is None, "sshd is already running"
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation, as root
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        until = time.monotonic() + deadline
        while not banner(self.port):
            if self.proc.poll() is not None or time.monotonic() >= until:
                self.stop()
                pytest.fail(f"sshd did not answer on 127.0.0.1:{self.port} within {deadline:g}s;"
                            f" its log:\n{self.log.read_text()}", pytrace=False)
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill sshd: the listener and the sshd process of every connection
        (each calls setsid(), so they are found as descendants, not by
        group), as when the network to the datastore goes. The commands the
        sessions ran (a remote rsync) are not killed: they see their
        connection close, like on a real server."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                if os.readlink(f"/proc/{pid}/exe") == SSHD:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, FileNotFoundError):
                pass
        self.proc.wait()
        self.proc = None


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SshServer]:
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} is missing: install openssh-server (apt-get install openssh-server"
                    " rsync); .ci/run does it", pytrace=False)
    base = tmp_path / "sshd"
    base.mkdir()
    server = SshServer(base)
    monkeypatch.setenv("ECLOUD_SSH_KNOWN_HOSTS", str(server.known_hosts))
    server.start()
    try:
        yield server
    finally:
        server.stop()
