"""The processes that leave an attempt's process group: found, killed, reaped.

An attempt runs in a session and process group of its own, which the runner
signals when it stops the attempt and kills when its leader exits. A
descendant that calls ``setsid`` leaves the group and would outlive all of
that, re-parented to PID 1 (which on some machines never reaps it). So:

- the agent makes itself a *child subreaper* (:func:`become_subreaper`,
  Linux): whatever an attempt orphans is re-parented to the agent instead of
  PID 1, and stays one of its descendants;
- every attempt's environment carries a token of its own
  (:data:`TOKEN_VAR`, :func:`new_token`) that its descendants inherit: the
  attempt a process belongs to is read from ``/proc/<pid>/environ``;
- :class:`Reaper` signals the descendants of the agent that hold a token,
  and reaps the children the agent adopted - each by its pid, with
  ``WNOHANG``; never ``waitpid(-1)``, which would take the exit statuses
  that ``subprocess.Popen`` waits for (the attempts' leaders).

Descendants are found by walking ``/proc/<pid>/task/*/children`` down from
the agent; on a kernel without those files (no ``CONFIG_PROC_CHILDREN``)
by reading the parent pid in every ``/proc/<pid>/stat``.

What it costs. An attempt whose leader exits costs one read of the agent's
own children lists (``/proc/self/task/*/children``, about 10 us), once per
turn of the main loop however many attempts ended in it (:meth:`Reaper.reap`).
Only a child that is no running attempt's leader - an orphan: something
escaped, or was left behind in the group - leads to more: its subtree is
walked and the environments there read. Stopping an attempt (cancel,
timeout, shutdown) walks its leader's subtree too. Without children files
every look at the tree is a scan of ``/proc``; the per-turn one is then
made at most every :data:`SCAN_GAP` seconds.

Limits: a process that drops the token from its environment (``env -u``,
``env -i``) cannot be told from any other; it lives on, adopted by the
agent, until it exits (and is reaped) or the agent exits
(:meth:`Reaper.kill_all` kills every descendant). A process the agent may
not inspect (another user's, when the agent is not root) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable

log = logging.getLogger(__name__)

#: the environment variable that names a process's attempt
TOKEN_VAR = "ECLOUD_ATTEMPT_TOKEN"
SWEEPS = 10  # passes over the tree per sweep, at most (a process may fork meanwhile)
SCAN_GAP = 1.0  # seconds between two per-turn scans of /proc, without children files
KILL_WAIT = 5.0  # seconds the agent waits at exit for what it killed to be reaped
PR_SET_CHILD_SUBREAPER = 36

_NEEDLE = b"\0" + TOKEN_VAR.encode() + b"="
_pidfd_open = getattr(os, "pidfd_open", None)
_pidfd_send_signal = getattr(signal, "pidfd_send_signal", None)


def new_token() -> str:
    return secrets.token_hex(16)


def become_subreaper() -> bool:
    """Have orphaned descendants re-parented to this process rather than to
    PID 1 (Linux 3.4+); False where that cannot be done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    if prctl(PR_SET_CHILD_SUBREAPER, one, zero, zero, zero) != 0:
        log.warning("cannot become a child subreaper: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


# ------------------------------------------------------------------ /proc


def _read(path: str) -> bytes | None:
    """A /proc file's contents; None if it cannot be read (gone, not ours)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def token_of(pid: int) -> str | None:
    """The attempt token in ``pid``'s environment (as it was at its exec);
    None if it has none or cannot be read (a zombie's reads as empty)."""
    data = _read(f"/proc/{pid}/environ")
    if not data:
        return None
    env = b"\0" + data
    at = env.find(_NEEDLE)
    if at < 0:
        return None
    start = at + len(_NEEDLE)
    end = env.find(b"\0", start)
    return env[start:end if end >= 0 else len(env)].decode("ascii", "replace")


def _task_children(pid: int) -> set[int]:
    """``pid``'s children, from its threads' children lists."""
    kids: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        data = _read(f"/proc/{pid}/task/{tid}/children")
        if data:
            kids.update(map(int, data.split()))
    return kids


def _scan() -> dict[int, set[int]]:
    """Every process's children, from the parent pids in /proc/*/stat."""
    kids: dict[int, set[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        data = _read(f"/proc/{name}/stat")
        try:
            ppid = int(data.rsplit(b")", 1)[1].split()[1])  # type: ignore[union-attr]
        except (AttributeError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, set()).add(int(name))
    return kids


class _Tree:
    """A look at the process tree: children files read as asked, or one
    scan of /proc."""

    def __init__(self, files: bool) -> None:
        self._map = None if files else _scan()

    def children(self, pid: int) -> set[int]:
        if self._map is None:
            return _task_children(pid)
        return set(self._map.get(pid, ()))

    def walk(self, roots: Iterable[int]) -> list[int]:
        """``roots`` and all their descendants."""
        seen: set[int] = set()
        todo = list(roots)
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                todo.extend(self.children(pid))
        return list(seen)


def _signal(pid: int, sig: int, still: Callable[[int], bool]) -> bool:
    """Send ``sig`` to ``pid`` if ``still(pid)`` holds. Through a pidfd
    where there are pidfds, opened before the check: the process checked is
    the process signalled, even if ``pid`` is reused meanwhile."""
    fd = None
    if _pidfd_open is not None and _pidfd_send_signal is not None:
        try:
            fd = _pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:  # no pidfds here: by pid
            fd = None
    try:
        if not still(pid):
            return False
        if fd is None:
            os.kill(pid, sig)
        else:
            _pidfd_send_signal(fd, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)


def _reap(pid: int) -> bool:
    """Reap ``pid`` if it is a child of ours that has exited."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not (or no longer) our child
        return False
    if done:
        log.debug("reaped adopted process %d (status %#x)", pid, status)
    return bool(done)


def _in_group(pgid: int) -> Callable[[int], bool]:
    def check(pid: int) -> bool:
        try:
            return os.getpgid(pid) == pgid
        except OSError:
            return False
    return check


class Reaper:
    """Finds, signals and reaps an agent's escaped descendants.

    Used from the agent's main thread only, but for :meth:`child_exited`,
    which a SIGCHLD handler may call at any time (it sets a flag)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self.enabled = os.path.isdir(f"/proc/{self._pid}/task")
        self._files = self.enabled and os.path.exists(
            f"/proc/{self._pid}/task/{threading.get_native_id()}/children")
        self._dirty = False  # a child may have exited, or an attempt ended
        self._ended: set[str] = set()  # tokens of the attempts over since the last reap
        self._not_before = 0.0  # no per-turn scan before then (without children files)

    # ------------------------------------------------------------ the loop

    def attempt_over(self, token: str) -> None:
        """The attempt holding ``token`` has no leader any more: what holds
        its token is killed at the next :meth:`reap` (the end of this turn of
        the main loop)."""
        if self.enabled:
            self._ended.add(token)
            self._dirty = True

    def child_exited(self) -> None:
        """SIGCHLD: one of our children exited (or stopped)."""
        self._dirty = True

    def due(self) -> float | None:
        """When :meth:`reap` has work (None: nothing to do)."""
        return self._not_before if self._dirty and self.enabled else None

    def reap(self, now: float, leaders: Callable[[], Collection[int]]) -> None:
        """If a child exited or an attempt ended: kill what holds the ended
        attempts' tokens, and reap the children we adopted that have
        exited. ``leaders()``: the pids of the running attempts' leaders
        (``Popen``'s to wait for, not ours). One read of our own children
        lists when nothing escaped."""
        if not self._dirty or now < self._not_before or not self.enabled:
            return
        self._dirty = False  # first: a SIGCHLD from now on asks for another round
        if not self._files:
            self._not_before = now + SCAN_GAP
        tree = _Tree(self._files)
        leading = set(leaders())
        orphans = tree.children(self._pid) - leading
        ended, self._ended = self._ended, set()
        if not orphans:
            return
        if ended:
            self._sweep(ended, signal.SIGKILL, leading, tree=tree)
        for pid in orphans:
            _reap(pid)

    # -------------------------------------------------------------- sweeps

    def sweep(self, token: str, sig: int, leaders: Collection[int], leader: int) -> int:
        """An attempt is being stopped and its process group was sent
        ``sig``: send it to the attempt's other processes too - those that
        hold ``token`` under its running ``leader`` or among the orphans we
        adopted. Returns how many were signalled."""
        if not self.enabled:
            return 0
        return self._sweep({token}, sig, set(leaders), leader=leader)

    def _sweep(self, tokens: set[str], sig: int, leaders: set[int], leader: int | None = None,
               tree: _Tree | None = None) -> int:
        """Signal the holders of ``tokens`` among our descendants (not under
        another attempt's leader; not in ``leader``'s process group, which
        killpg reached), passing over the tree again while it shows one not
        signalled yet, :data:`SWEEPS` times at most."""
        skip = _in_group(leader) if leader is not None else (lambda pid: False)

        def holds(pid: int) -> bool:
            return not skip(pid) and token_of(pid) in tokens

        signalled: set[int] = set()
        for _ in range(SWEEPS):
            tree = tree or _Tree(self._files)
            roots = tree.children(self._pid) - leaders
            if leader is not None:
                roots.add(leader)
            fresh = [pid for pid in tree.walk(roots) if pid not in signalled and holds(pid)]
            if not fresh:
                break
            for pid in fresh:
                signalled.add(pid)
                _signal(pid, sig, holds)
            tree = None
        if signalled:
            log.debug("%s to %d process(es) holding an attempt's token: %s",
                      signal.Signals(sig).name, len(signalled), sorted(signalled))
        return len(signalled)

    # ---------------------------------------------------------------- exit

    def kill_all(self, leaders: Iterable[subprocess.Popen], timeout: float = KILL_WAIT) -> None:
        """The agent is exiting: SIGKILL every descendant, token or not, and
        wait until every child is reaped (the leaders through their
        ``Popen``) - a child left to PID 1 might never be - for up to
        ``timeout`` seconds."""
        if not self.enabled:
            return
        procs = list(leaders)
        leading = {proc.pid for proc in procs}
        deadline = time.monotonic() + timeout
        killed: set[int] = set()
        while True:
            tree = _Tree(self._files)
            kids = tree.children(self._pid)
            for pid in tree.walk(kids):
                if _signal(pid, signal.SIGKILL, lambda pid: True):
                    killed.add(pid)
            for proc in procs:
                proc.poll()
            for pid in kids - leading:
                _reap(pid)
            kids = _Tree(self._files).children(self._pid)
            now = time.monotonic()
            if not kids or now >= deadline:
                break
            _wait_any(kids, min(0.1, deadline - now))
        if killed:
            log.debug("killed %d process(es) left at exit", len(killed))
        if kids:
            log.warning("processes left at exit, not reaped: %s", sorted(kids))


def _wait_any(pids: Collection[int], timeout: float) -> None:
    """Wait until one of ``pids`` has exited, up to ``timeout`` seconds."""
    fds = []
    try:
        for pid in pids if _pidfd_open is not None else ():
            try:
                fds.append(_pidfd_open(pid))
            except ProcessLookupError:
                return  # gone already: look again
            except OSError:  # no pidfds after all
                break
        if fds and len(fds) == len(pids):
            select.select(fds, [], [], timeout)
        else:
            time.sleep(min(timeout, 0.01))
    finally:
        for fd in fds:
            os.close(fd)
