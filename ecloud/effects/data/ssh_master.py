"""One shared ssh connection (an OpenSSH ``ControlMaster``) for a mover.

:class:`SshMaster` starts ``ssh -M -N`` lazily, the first time :meth:`options`
is asked for, and waits - at most ``timeout`` seconds - until its control
socket exists (OpenSSH links the socket into place only once the master has
logged in and listens on it). Until then, and whenever the master is not up,
:meth:`options` is empty and commands connect on their own: a master that
cannot start (login refused, host unreachable) is never an error here; the
command that runs without it fails the ordinary way and says why.

The socket lives in a private directory (``mkdtemp``, mode 0700) with a short
path, since a unix socket path is limited to about 104 bytes. A command given
``-o ControlMaster=no -o ControlPath=<socket>`` goes through the master, and
connects directly if the socket is gone (ssh says nothing then). A master
killed with SIGKILL leaves its socket behind, and ssh would fall back too but
print ``Control socket connect(...): Connection refused``; :meth:`options`
removes such a socket before handing out the options. A master that died
after having been up is started again on the next :meth:`options`; one that
failed to start is tried again only after a command without it succeeded
(:meth:`direct_success`), and not after :data:`MAX_FAILED_STARTS` failures.

The master is a plain child process in the caller's process group (not a new
session), so that killing the group - a worker stopping an attempt - kills it
too. Its stdin and stdout are ``/dev/null`` and stderr goes to a file in the
private directory: a pipe kept open by a long-lived master would make
``communicate()`` on anything sharing it hang. :meth:`close` sends ``ssh -O
exit``, then terminates and at last kills the process, each step with a
deadline, and removes the directory; a ``weakref.finalize`` does the same for a
master whose owner forgot to close it, at garbage collection or when the
interpreter exits (only in the process that started it, not a forked child).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import weakref

__all__ = ["MAX_FAILED_STARTS", "SshMaster"]

MAX_FAILED_STARTS = 2
_SOCKET = "s"
_POLL = 0.01


class _State:
    """What the finalizer needs: everything of a master but its owner."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.directory: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None


def _stop(state: _State, ssh: list[str], target: str, timeout: float) -> None:
    """Stop the master (``-O exit``, then SIGTERM, then SIGKILL) and remove its
    directory. Idempotent; does nothing in a forked child."""
    if state.pid != os.getpid():
        return
    proc, directory = state.proc, state.directory
    state.proc = state.directory = None
    if proc is not None:
        if proc.poll() is None and directory is not None:
            try:
                subprocess.run([*ssh, "-o", f"ControlPath={directory}/{_SOCKET}", "-O", "exit",
                                target], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=min(timeout, 5.0), check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
            try:
                proc.wait(timeout=min(timeout, 5.0))
            except subprocess.TimeoutExpired:
                pass
        _stop_proc(proc, timeout)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class SshMaster:
    """The shared connection of one mover to ``target``, made with the ssh
    options ``ssh`` (a list starting with "ssh", without the target)."""

    def __init__(self, ssh: list[str], target: str, timeout: float) -> None:
        self.ssh, self.target, self.timeout = list(ssh), target, timeout
        self._lock = threading.Lock()
        self._failed_starts = 0
        self._retry = True  # whether a start may be tried (again)
        self._new_state()

    def _new_state(self) -> None:
        self._state = _State()
        self._finalizer = weakref.finalize(self, _stop, self._state, self.ssh, self.target,
                                           self.timeout)

    @property
    def socket(self) -> str | None:
        """The control socket's path (once a directory exists for it)."""
        d = self._state.directory
        return f"{d}/{_SOCKET}" if d else None

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        proc = self._state.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def options(self) -> list[str]:
        """ssh options that send a command through the master, starting it
        if need be; empty when there is no master up."""
        with self._lock:
            if self._state.pid != os.getpid():  # a forked child: the master is the parent's
                self._new_state()
            if self._up() or self._start():
                return ["-o", "ControlMaster=no", "-o", f"ControlPath={self.socket}"]
            return []

    def direct_success(self) -> None:
        """A command without the master worked: the host is reachable, so a
        master that failed to start may be tried again."""
        with self._lock:
            self._retry = True

    def close(self) -> None:
        """Stop the master and remove its directory (a later :meth:`options`
        starts afresh)."""
        with self._lock:
            _stop(self._state, self.ssh, self.target, self.timeout)
            self._retry = True

    # ------------------------------------------------------------ internals

    def _up(self) -> bool:
        """Whether the master runs and listens; forgets one that died."""
        proc, sock = self._state.proc, self.socket
        if proc is None:
            return False
        if proc.poll() is None and sock is not None and os.path.exists(sock):
            return True
        # died (a broken connection, a kill): forget it, and any stale socket
        if proc.poll() is None:
            _stop_proc(proc, self.timeout)
        self._state.proc = None
        if sock is not None:
            try:
                os.unlink(sock)
            except FileNotFoundError:
                pass
        return False

    def _start(self) -> bool:
        if not self._retry or self._failed_starts >= MAX_FAILED_STARTS:
            return False
        if self._state.directory is None or not os.path.isdir(self._state.directory):
            self._state.directory = _private_dir()
        sock = self.socket
        assert sock is not None
        try:  # a stale socket would keep the new master from listening
            os.unlink(sock)
        except FileNotFoundError:
            pass
        argv = [*self.ssh, "-M", "-N", "-o", "ControlPersist=no", "-o", f"ControlPath={sock}",
                self.target]
        try:
            with open(f"{self._state.directory}/master.log", "ab") as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=log)
        except OSError:
            return self._failed()
        self._state.proc = proc
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() >= deadline:
                _stop_proc(proc, self.timeout)
                self._state.proc = None
                return self._failed()
            time.sleep(_POLL)
        return True

    def _failed(self) -> bool:
        self._failed_starts += 1
        self._retry = False
        return False


def _stop_proc(proc: subprocess.Popen[bytes], timeout: float) -> None:
    for stop in (proc.terminate, proc.kill):
        try:
            stop()
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=min(timeout, 5.0) if stop is proc.terminate else None)
            return
        except subprocess.TimeoutExpired:
            continue


def _private_dir() -> str:
    """A new directory of mode 0700 whose socket path stays short."""
    base = tempfile.gettempdir()
    if len(base) > 64:  # unix socket paths: about 104 bytes in all
        base = "/tmp"
    return tempfile.mkdtemp(prefix="ecl-ssh-", dir=base)
