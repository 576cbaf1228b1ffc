"""Running attempts: directories, processes, slots, timeouts and kills.

The :class:`Runner` belongs to the agent's main loop: every method is called
from that one thread, so its tables need no lock. A spawned attempt is
watched through a pidfd (Linux 5.3+) that the main loop's selector waits on
next to its inbox (:class:`Watcher`); when it turns readable the loop calls
:meth:`Runner.reap`. No thread per attempt: starting and joining one cost
about as much as the spawn of a short task. Where there is no pidfd (another
OS, an old kernel, no watcher given) a daemon thread blocks in ``waitpid``
instead and posts ``("exit", attempt, when)``, which the loop hands to
:meth:`Runner.exited`. Deadlines (task timeouts, SIGKILL after a SIGTERM)
are not watched by anyone: the main loop asks :meth:`Runner.next_deadline`,
sleeps on its inbox until then and calls :meth:`Runner.tick`.

An attempt runs in a fresh directory ``<work dir>/<task id>/<attempt>/``
(``%`` and ``/`` in the id escaped as ``%25`` and ``%2F``; a directory left by
an earlier process is renamed aside and deleted in the background), in its own
session and process group, with stdout and stderr going to the files
``stdout`` and ``stderr`` there - files, not pipes, so output of any size never
blocks the task. When the task's leader exits, whatever it left running in its
process group is killed, so no attempt outlives its report. What left the group
(``setsid``) is told by the token in its environment and gets the group's
signals all the same (:mod:`ecloud_worker.reaper`). The directory's path, its
making and what is read back from it at the end are in :mod:`ecloud_worker.attemptdir`.

A task of a workflow may come with a node (:class:`ecloud.events.types.NodeSpec`):
its scripts, and a working directory and stdin/stdout/stderr files of its
own. The attempt directory stays where ecloud keeps the attempt's files (its
``stdout`` and ``stderr`` always have the command's output), whatever the
process's working directory. A workdir or stdin alone is placed here; scripts,
output files, and placement with staging or for a ``--run-as`` user run in
the node wrapper (:mod:`ecloud_worker.node`), which says in
``.ecloud/node.json`` which part decided the exit status (``Finished.stage``).
A plain task (no node) costs what it always did: no wrapper, no extra file.

Stopping an attempt (cancel, timeout, shutdown) sends SIGTERM to the whole
group and SIGKILL 5 s later if the leader still runs. An attempt stopped on
purpose is never reported as a success: its ``exit_code`` is None and
``signal`` says what ended it, even if it caught the SIGTERM and exited.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from attrs import define, frozen

from ecloud.events.types import default_results_folder
from ecloud.wire import DispatchMsg, Finished
from ecloud_worker import macros, node
from ecloud_worker.attemptdir import (
    attempt_path,
    close_fds,
    fresh_dir,
    node_outcome,
    staging_outcome,
    tail,
)
from ecloud_worker.placement import NOT_STARTED, PlacementError, check_workdir, open_stdin
from ecloud_worker.reaper import TOKEN_VAR, Reaper, new_token
from ecloud_worker.runas import RunAs

log = logging.getLogger(__name__)

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
#: seconds a dispatch may wait in the queue for a slot before it is given back
#: to the boss unstarted (it was queued ahead behind a task that runs long)
RETURN_AFTER = 2.0

Key = tuple[str, int]


@frozen
class Launched:
    """An attempt's process was spawned (report it started)."""

    task_id: str
    attempt: int
    pid: int
    cwd: str


def _exited(task_id: str, attempt: int, exit_code: int | None, duration: float,
            **details) -> Finished:
    """An attempt is over: its report, still without a message id (the outbox
    gives it one when it queues the report)."""
    return Finished("", task_id, attempt, exit_code, duration, **details)


class Watcher(Protocol):
    """Who waits on pidfds for the runner: the agent's inbox."""

    def watch(self, fd: int, data: object) -> None: ...

    def unwatch(self, fd: int) -> None: ...


@define(eq=False)
class Attempt:
    msg: DispatchMsg
    slots: int
    cwd: str | None = None
    proc: subprocess.Popen | None = None
    pidfd: int | None = None
    #: the attempt's stdout and stderr files, kept open to read their tails
    out_fds: tuple[int, int] | None = None
    started: float = 0.0
    deadline: float | None = None
    stop_reason: str = ""  # why we are stopping it; "" while it runs its course
    last_signal: int | None = None
    queued_at: float = 0.0
    kill_at: float | None = None  # when to escalate to SIGKILL
    report: bool = True  # False once given up at shutdown: the boss takes it back
    #: in the environment of the attempt's processes (worker/reaper.py): tells
    #: those that left its process group
    token: str = ""
    #: runs in the node wrapper (worker/node.py): its .ecloud/node.json says
    #: which part decided
    wrapped: bool = False

    @property
    def key(self) -> Key:
        return (self.msg.task_id, self.msg.attempt)


class Runner:
    def __init__(
        self,
        work_dir: Path,
        slots: int,
        notify: Callable[[tuple], None],
        clock: Callable[[], float] = time.monotonic,
        datastore_key: str | None = None,
        watcher: Watcher | None = None,
        run_as: RunAs | None = None,
    ) -> None:
        self._work_dir = str(work_dir)
        #: the user tasks run as (None: the agent's own)
        self.run_as = run_as
        self._watcher = watcher
        # The agent's environment is fixed once its settings are read (the
        # datastore key is taken out of it then); decoding os.environ for
        # every attempt showed in profiles.
        self._base_env = dict(os.environ)
        if run_as is not None:
            self._base_env.update(run_as.environment())
        self.datastore_key = datastore_key
        self.slots = slots
        self._notify = notify
        self._clock = clock
        self._queue: deque[Attempt] = deque()
        self._running: dict[Key, Attempt] = {}
        self._used = 0
        self._closed = False
        #: what escapes the attempts' process groups (worker/reaper.py)
        self.reaper = Reaper()

    # ---------------------------------------------------------------- queries

    def has(self, key: Key) -> bool:
        return key in self._running or any(a.key == key for a in self._queue)

    def held(self) -> list[Key]:
        """Every attempt this runner holds: running, or queued for a slot."""
        return list(self._running) + [a.key for a in self._queue]

    def running(self) -> list[Key]:
        return list(self._running)

    def busy(self) -> bool:
        return bool(self._running or self._queue)

    def next_deadline(self) -> float | None:
        running = self._running.values()
        times = [a.deadline for a in running if a.deadline is not None and not a.stop_reason]
        times += [a.kill_at for a in running if a.kill_at is not None]
        if self._queue:  # the oldest queued dispatch is given back first
            times.append(self._queue[0].queued_at + RETURN_AFTER)
        if (reap := self.reaper.due()) is not None:
            times.append(reap)
        return min(times, default=None)

    # --------------------------------------------------------------- changes

    def submit(self, msg: DispatchMsg) -> list[Launched | Finished]:
        """Queue a dispatch and start whatever fits in the free slots."""
        need = max(0, min(msg.slots, self.slots))  # more than we have: run it alone
        self._queue.append(Attempt(msg, need, queued_at=self._clock()))
        return self._fill()

    def reap(self, attempt: Attempt) -> list[Launched | Finished] | None:
        """``attempt``'s pidfd turned readable: if its leader has exited,
        clear its process group and report it (see :meth:`exited`); None
        if it has not exited after all."""
        assert attempt.proc is not None
        if self._running.get(attempt.key) is not attempt or attempt.proc.poll() is None:
            return None
        ended = self._clock()
        self._unwatch(attempt)
        if _killpg(attempt.proc.pid, signal.SIGKILL):
            log.debug("killed what %s/%s left running in its process group", *attempt.key)
        return self.exited(attempt, ended)

    def exited(self, attempt: Attempt, ended: float) -> list[Launched | Finished]:
        """``attempt``'s leader exited at ``ended``: its report, and whatever
        starts in the slots it freed. What holds its token outside its
        process group is killed at the next :meth:`tick`."""
        del self._running[attempt.key]
        self.reaper.attempt_over(attempt.token)
        self._used -= attempt.slots
        out: list[Launched | Finished] = []
        if attempt.report:
            out.append(self._result(attempt, ended))
        return out + self._fill()

    def cancel(self, key: Key) -> list[Finished] | None:
        """Stop an attempt (None if we do not have it). A running one reports
        when it has exited; a queued one is over at once."""
        attempt = self._running.get(key)
        if attempt is not None:
            if not attempt.stop_reason:
                self._stop(attempt, "cancelled")
            return []
        for queued in self._queue:
            if queued.key == key:
                self._queue.remove(queued)
                return [_exited(key[0], key[1], None, 0.0, reason="cancelled")]
        return None

    def tick(self, now: float) -> list[Finished]:
        """Act on deadlines that have passed: timeouts, SIGKILL escalations,
        and dispatches that waited too long in the queue (given back); kill
        the escapees of attempts over and reap the children we adopted
        (:class:`ecloud_worker.reaper.Reaper`: nothing to do unless an attempt ended
        or a child exited since the last tick)."""
        self.reaper.reap(now, self._leaders)
        returned = []
        while self._queue and now >= self._queue[0].queued_at + RETURN_AFTER:
            msg = self._queue.popleft().msg
            returned.append(_exited(msg.task_id, msg.attempt, None, 0.0, returned=True,
                                    reason=f"given back unstarted after {RETURN_AFTER:g} s "
                                           f"in the worker's queue"))
        for attempt in list(self._running.values()):
            if attempt.kill_at is not None and now >= attempt.kill_at:
                attempt.kill_at = None
                self._signal(attempt, signal.SIGKILL)
            elif (not attempt.stop_reason and attempt.deadline is not None
                  and now >= attempt.deadline):
                self._stop(attempt, f"timeout after {attempt.msg.timeout:g}s")
        return returned

    def child_exited(self) -> None:
        """SIGCHLD (a signal handler may call this): reap at the next tick."""
        self.reaper.child_exited()

    def finish(self) -> None:
        """The agent is exiting: kill and reap every process it leaves,
        attempt or escapee, token or not."""
        self.reaper.kill_all(a.proc for a in self._running.values() if a.proc is not None)

    def close(self) -> list[DispatchMsg]:
        """Start nothing more; forget the queued attempts (never started).
        Returns their dispatches (to be given back to the boss)."""
        self._closed = True
        dropped = [attempt.msg for attempt in self._queue]
        self._queue.clear()
        return dropped

    def give_up(self, *, now: bool = False) -> None:
        """Stop everything still running without reporting it (shutdown):
        SIGTERM then SIGKILL after the grace period, or SIGKILL at once."""
        self.close()
        for attempt in self._running.values():
            attempt.report = False
            if now:
                self._signal(attempt, signal.SIGKILL)
            elif not attempt.stop_reason:
                self._stop(attempt, "shutdown")

    # --------------------------------------------------------------- helpers

    def _leaders(self) -> set[int]:
        """The running attempts' leaders: Popen's children, not the reaper's."""
        return {a.proc.pid for a in self._running.values() if a.proc is not None}

    def _fill(self) -> list[Launched | Finished]:
        out: list[Launched | Finished] = []
        while not self._closed and self._queue and self._queue[0].slots <= self.slots - self._used:
            out.append(self._start(self._queue.popleft()))
        return out

    def _start(self, attempt: Attempt) -> Launched | Finished:
        msg = attempt.msg
        began = self._clock()
        try:
            cwd = fresh_dir(attempt_path(self._work_dir, msg.task_id, msg.attempt))
            if self.run_as is not None:
                self.run_as.give(cwd)
        except (OSError, ValueError) as exc:
            return _exited(msg.task_id, msg.attempt, NOT_STARTED, 0.0,
                          reason=f"cannot prepare the work directory: {exc}")
        moves = bool(msg.inputs or msg.outputs)
        if moves:
            if not msg.datastore:
                return _exited(msg.task_id, msg.attempt, NOT_STARTED, 0.0,
                               reason="the task moves data but no datastore is set "
                                      "(ecloud datastore set ADDRESS)")
            if not msg.datastore_id:
                return _exited(msg.task_id, msg.attempt, NOT_STARTED, 0.0,
                               reason="the datastore was set without its identity (before "
                                      "datastores had markers): run `ecloud datastore set "
                                      f"{msg.datastore}` again, then `ecloud retry`")
        try:
            argv, workdir, stdin = self._program(attempt, cwd, moves)
        except PlacementError as exc:
            return _exited(msg.task_id, msg.attempt, NOT_STARTED, self._clock() - began,
                           reason=f"not started: {exc.reason}")
        except OSError as exc:  # the wrapper's plan could not be written
            return _exited(msg.task_id, msg.attempt, NOT_STARTED, self._clock() - began,
                           reason=f"cannot prepare the work directory: {exc}")
        attempt.token = new_token()
        # the boss's macros (a final task's $DAG_STATUS...) over the agent's
        # environment, the task's own over them
        env = {**self._base_env, **(macros.clean(msg.macros) if msg.macros else {}), **msg.env,
               "ECLOUD_TASK_ID": msg.task_id, "ECLOUD_ATTEMPT": str(msg.attempt),
               TOKEN_VAR: attempt.token}
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC  # read back for the tails
        out = err = -1
        try:
            out = os.open(f"{cwd}/stdout", flags, 0o644)
            err = os.open(f"{cwd}/stderr", flags, 0o644)
            user = self.run_as
            proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=stdin,
                                    stdout=out, stderr=err, start_new_session=True,
                                    user=user.uid if user else None,
                                    group=user.gid if user else None,
                                    extra_groups=list(user.groups) if user else None)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            stderr_tail = tail(err)
            close_fds(out, err)
            return _exited(msg.task_id, msg.attempt, NOT_STARTED, self._clock() - began,
                          reason=f"cannot start: {exc}", stderr_tail=stderr_tail)
        finally:
            if stdin >= 0:
                os.close(stdin)
        attempt.cwd, attempt.proc, attempt.started = cwd, proc, began
        attempt.out_fds = (out, err)
        if msg.timeout is not None:
            attempt.deadline = began + msg.timeout
        self._running[attempt.key] = attempt
        self._used += attempt.slots
        self._watch(attempt)
        return Launched(msg.task_id, msg.attempt, proc.pid, cwd)

    def _program(self, attempt: Attempt, cwd: str, moves: bool) -> tuple[list[str], str, int]:
        """What the attempt's process runs, where, reading what: the command
        itself or a wrapper around it (the node wrapper, the staging
        wrapper). A node's workdir and stdin without a wrapper are placed
        here: the agent runs tasks as its own user (see :func:`node.wraps`)."""
        msg, spec = attempt.msg, attempt.msg.node
        if spec is not None and node.wraps(spec, moves, self.run_as is not None):
            attempt.wrapped = True
            return self._node_argv(msg, Path(cwd), moves), cwd, subprocess.DEVNULL
        if moves:
            return self._staging_argv(msg, Path(cwd)), cwd, subprocess.DEVNULL
        cmd = msg.command
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if spec is None or (spec.workdir is None and spec.stdin is None):
            return argv, cwd, subprocess.DEVNULL
        workdir = check_workdir(spec.workdir) if spec.workdir is not None else cwd
        return argv, workdir, open_stdin(spec.stdin, workdir) if spec.stdin is not None \
            else subprocess.DEVNULL

    def _watch(self, attempt: Attempt) -> None:
        """Have the main loop's selector wait on the leader's pidfd; else a
        waiter thread."""
        assert attempt.proc is not None
        if self._watcher is not None and hasattr(os, "pidfd_open"):
            try:
                attempt.pidfd = os.pidfd_open(attempt.proc.pid)
            except OSError:  # kernel without pidfds, or out of descriptors
                attempt.pidfd = None
            else:
                self._watcher.watch(attempt.pidfd, attempt)
                return
        threading.Thread(target=self._wait, args=(attempt,), daemon=True,
                         name=f"wait-{attempt.proc.pid}").start()

    def _unwatch(self, attempt: Attempt) -> None:
        if attempt.pidfd is not None:
            assert self._watcher is not None
            self._watcher.unwatch(attempt.pidfd)
            os.close(attempt.pidfd)
            attempt.pidfd = None

    def _staging_argv(self, msg: DispatchMsg, cwd: Path) -> list[str]:
        """The attempt runs inside the staging wrapper (worker/stage.py),
        which moves the data around the command, in its process group."""
        plan = self._staging_plan(msg)
        return [sys.executable, "-m", "ecloud_worker.stage", self._write_plan(cwd, plan)]

    def _node_argv(self, msg: DispatchMsg, cwd: Path, moves: bool) -> list[str]:
        """The attempt runs inside the node wrapper (worker/node.py): pre
        script, command, post script - and the staging, when data moves."""
        spec = msg.node
        assert spec is not None
        plan = {"command": msg.command, "pre": spec.pre, "post": spec.post,
                "pre_skip": spec.pre_skip, "workdir": spec.workdir, "stdin": spec.stdin,
                "stdout": spec.stdout, "stderr": spec.stderr, "macros": msg.macros,
                "staging": self._staging_plan(msg) if moves else None}
        return [sys.executable, "-m", "ecloud_worker.node", self._write_plan(cwd, plan)]

    def _staging_plan(self, msg: DispatchMsg) -> dict:
        return {"task_id": msg.task_id, "command": msg.command, "datastore": msg.datastore,
                "datastore_id": msg.datastore_id,
                "key_file": self.datastore_key, "outputs": list(msg.outputs),
                "results": msg.results or default_results_folder(msg.task_id),
                "inputs": [{"source": _source(msg, i), "path": i.path, "name": i.name,
                            "sha256": i.sha256} for i in msg.inputs]}

    def _write_plan(self, cwd: Path, plan: dict) -> str:
        """``.ecloud/plan.json`` in the attempt directory, for a wrapper;
        ``.ecloud`` is the task's user's, who writes its reports there."""
        meta = cwd / ".ecloud"
        meta.mkdir()
        if self.run_as is not None:
            self.run_as.give(str(meta))
        (meta / "plan.json").write_text(json.dumps(plan))
        return str((meta / "plan.json").resolve())

    def _wait(self, attempt: Attempt) -> None:
        """The waiter thread: block until the leader exits, then clear its
        process group of leftovers and tell the main loop."""
        assert attempt.proc is not None
        attempt.proc.wait()
        ended = self._clock()
        if _killpg(attempt.proc.pid, signal.SIGKILL):
            log.debug("killed what %s/%s left running in its process group", *attempt.key)
        self._notify(("exit", attempt, ended))

    def _stop(self, attempt: Attempt, reason: str) -> None:
        attempt.stop_reason = reason
        self._signal(attempt, signal.SIGTERM)
        attempt.kill_at = self._clock() + KILL_GRACE

    def _signal(self, attempt: Attempt, sig: int) -> None:
        assert attempt.proc is not None
        if attempt.proc.returncode is None:  # not reaped yet: the group id is its pid
            attempt.last_signal = sig
            log.debug("%s to process group %d of %s/%s (%s)", signal.Signals(sig).name,
                      attempt.proc.pid, *attempt.key, attempt.stop_reason)
            _killpg(attempt.proc.pid, sig)
            self.reaper.sweep(attempt.token, sig, self._leaders(), attempt.proc.pid)

    def _result(self, attempt: Attempt, ended: float) -> Finished:
        assert attempt.proc is not None and attempt.cwd is not None
        code = attempt.proc.returncode
        exit_code, sig = (None, -code) if code < 0 else (code, None)
        if attempt.stop_reason and exit_code is not None:
            exit_code, sig = None, attempt.last_signal  # caught our SIGTERM: still no success
        staged, failure = ([], "")
        if attempt.msg.inputs or attempt.msg.outputs:  # ran inside a wrapper that stages
            staged, failure = staging_outcome(Path(attempt.cwd))
        reason, stage = attempt.stop_reason or failure, ""
        if attempt.wrapped:
            stage, why, part = node_outcome(attempt.cwd)
            if attempt.stop_reason:  # stopped: no part decided, but say which one ran
                stage = ""
                reason = f"{attempt.stop_reason} (in the {part})" if part else reason
            else:
                reason = why or failure
                if stage == "pre_skip" and exit_code != 0:  # the file is the task's
                    stage = ""
        out_fd, err_fd = attempt.out_fds or (-1, -1)
        try:
            stdout_tail, stderr_tail = tail(out_fd), tail(err_fd)
        finally:
            close_fds(out_fd, err_fd)
            attempt.out_fds = None
        return _exited(
            attempt.msg.task_id, attempt.msg.attempt, exit_code, max(0.0, ended - attempt.started),
            signal=sig, reason=reason,
            stdout_tail=stdout_tail, stderr_tail=stderr_tail, staged=staged, stage=stage,
        )


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it has no process left."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _source(msg: DispatchMsg, item) -> str:
    """The datastore path of an input: as given, or for one ``from`` an
    upstream task, under that task's results folder."""
    if not item.from_task:
        return item.path
    folder = msg.sources.get(item.from_task) or default_results_folder(item.from_task)
    return f"{folder}/{item.path}"
