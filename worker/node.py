"""The node wrapper: one attempt of a task with scripts, run as DAGMan runs
one node.

The runner starts ``python -m ecloud_worker.node PLAN`` as the attempt's
process, in the attempt directory (stdout and stderr already its files),
when a task's :class:`~ecloud.events.types.NodeSpec` asks for more than the
agent does itself (:func:`wraps`): a pre or post script, ``stdout`` or
``stderr`` files, or a workdir or stdin together with data staging or a
``--run-as`` user. Being the attempt's process is the point, as for the
staging wrapper (:mod:`ecloud_worker.stage`, whose steps it runs itself
when data moves - one wrapper, not two): the timeout covers the whole
attempt, and a cancel or a timeout kills the process group, whichever part
runs. In order:

1. *place*: change to ``workdir`` (else stay in the attempt directory) and
   make or empty the ``stdout``/``stderr`` files; if either fails, nothing
   runs (exit :data:`NOT_STARTED`, the reason in ``.ecloud/node.json``);
2. *pre script*: a failure ends the attempt with its exit status (DAGMan's
   default ``DAGMAN_ALWAYS_RUN_POST = False``: neither command nor post
   runs), but an exit equal to ``pre_skip`` ends it as a success, skipping
   the rest;
3. fetch the inputs (when data moves; a failure ends the attempt, as in the
   staging wrapper);
4. *the command*, with ``stdin`` (opened only now: a pre script may make
   it). It writes the attempt's ``stdout`` and ``stderr`` like any task's
   (so the report's tails and ``ecloud logs``, also while it runs, show
   it); once it has exited, what it wrote there is copied to the task's
   ``stdout``/``stderr`` files (as HTCondor's file transfer delivers
   output when a job ends);
5. *post script*, whatever the command did, with ``$RETURN`` and
   ``$PRE_SCRIPT_RETURN``; its exit status is the attempt's;
6. push the outputs (when data moves), only after a success.

Scripts run in the command's working directory and environment, plus
their macros (:mod:`ecloud_worker.macros`), with stdin ``/dev/null``, and
write to the attempt's ``stdout``/``stderr`` (so a failing script's
complaint is in the report's tail), never to the task's own files.

The attempt ends as its deciding part did: with its exit status, or - died
by a signal - killed by that same signal (no core dump of the wrapper), so
the runner reports it as it would the bare command. Which part decided is
written to ``.ecloud/node.json`` (also, while the attempt runs, which part
is running: a timeout's reason names it); the runner reads it back for
``Finished.stage``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

from ecloud_worker import macros
from ecloud_worker.placement import (
    NOT_STARTED,
    PlacementError,
    check_workdir,
    open_output,
    open_stdin,
)

META = ".ecloud"
RESULT = "node.json"  # in META: {"part": running part, "stage", "reason"}
#: what the wrapper reports as ``stage``, see TaskFinished.stage
STAGES = ("", "pre", "post", "pre_skip")
#: exit status when the command's output could not be copied to the task's
#: files: ecloud failed to move the task's data (as the staging wrapper's 97)
COPY_FAILED = 97


def wraps(node: Any, moves: bool, run_as: bool) -> bool:
    """Whether an attempt of a task with this node runs in the node wrapper.
    A node asking only for a workdir or a stdin is placed by the runner
    itself (no wrapper: a plain task's cost), unless data moves (the staging
    wrapper knows nothing of placement) or tasks run as another user (the
    agent would open the task's files with root's rights)."""
    return (node.pre is not None or node.post is not None
            or node.stdout is not None or node.stderr is not None
            or ((node.workdir is not None or node.stdin is not None) and (moves or run_as)))


class Ended(NamedTuple):
    """How a part (or the attempt) ended: ``code``, or ``signal``, or
    neither (it never started: ``reason`` says why)."""

    code: int | None = None
    signal: int | None = None
    reason: str = ""
    stage: str = ""


class Journal:
    """``.ecloud/node.json``, replaced whole at every step (a kill never
    leaves half of it). Best effort: a task that removed ``.ecloud`` loses
    only the report's stage, not its attempt."""

    def __init__(self, meta: Path) -> None:
        self.path = meta / RESULT

    def write(self, **fields: str) -> None:
        temp = self.path.with_name(f".{RESULT}.tmp")
        try:
            temp.write_text(json.dumps(fields))
            os.replace(temp, self.path)
        except OSError:
            pass


def _run(argv: list[str], cwd: str, env: dict[str, str], stdin: int | None = None) -> Ended:
    """Run one part to its end, its stdout and stderr the wrapper's own."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return Ended(reason=str(exc))
    finally:
        if stdin is not None:
            os.close(stdin)
    code = proc.wait()
    return Ended(code) if code >= 0 else Ended(signal=-code)


def _say(text: str) -> None:
    """A line of the wrapper's in the attempt's stderr (and so in its tail)."""
    sys.stderr.write(f"ecloud: {text}\n")
    sys.stderr.flush()


def _copy(source: int, start: int, dest: int | None) -> None:
    """What ``source`` (the attempt's stdout or stderr) holds from ``start``
    on, appended to the task's file ``dest``."""
    if dest is None:
        return
    end = os.fstat(source).st_size
    offset = start
    while offset < end:
        try:
            sent = os.sendfile(dest, source, offset, end - offset)
        except OSError:
            sent = os.write(dest, os.pread(source, min(end - offset, 1 << 20), offset))
        if sent == 0:
            break
        offset += sent


class Attempt:
    """One attempt as the plan says; :meth:`run` returns how it ended."""

    def __init__(self, plan: dict, attempt_dir: Path) -> None:
        self.plan = plan
        self.attempt_dir = attempt_dir
        self.meta = attempt_dir / META
        self.journal = Journal(self.meta)
        #: the macros the boss sent; the command has them in its environment already
        self.macros = macros.clean(plan.get("macros") or {})
        self.env = dict(os.environ)
        self.cwd = str(attempt_dir)
        self.outputs: dict[int, int | None] = {1: None, 2: None}
        self.staged: list[dict] = []
        self.mover: Any = None
        self.copy_failure = ""

    def run(self) -> Ended:
        try:
            self._place()
        except PlacementError as exc:
            _say(f"not started: {exc.reason}")
            return Ended(NOT_STARTED, reason=f"not started: {exc.reason}")
        pre_return = macros.NO_PRE_SCRIPT
        if self.plan.get("pre") is not None:
            pre = self._script("pre", self.macros)
            if pre.code != 0:
                return self._pre_failed(pre)
            pre_return = 0
        try:  # after the pre script, which may make their folders (as DAGMan's PRE may)
            self._open_outputs()
        except PlacementError as exc:
            _say(f"not started: {exc.reason}")
            return Ended(NOT_STARTED, reason=f"not started: {exc.reason}")
        with contextlib.ExitStack() as stack:
            if self.plan.get("staging"):
                failure = self._staging(lambda: self._fetch(stack))
                if failure is not None:
                    return failure
            command = self._command()
            if self.copy_failure:  # the post and the outputs would miss the task's files
                return Ended(COPY_FAILED, reason=self.copy_failure)
            if self.plan.get("post") is not None:
                values = {**self.macros,
                          "RETURN": macros.status_macro(command.code, command.signal),
                          "PRE_SCRIPT_RETURN": str(pre_return)}
                ended = self._script("post", values)
                if ended.code is None and ended.signal is None:
                    ended = Ended(NOT_STARTED, reason=f"the post script did not start: "
                                                      f"{ended.reason}", stage="post")
            elif command.code is None and command.signal is None:
                ended = Ended(NOT_STARTED, reason=f"not started: {command.reason}")
            else:
                ended = command
            if ended.code == 0 and self.mover is not None:
                failure = self._staging(self._push)
                if failure is not None:
                    return failure
            return ended

    # ---------------------------------------------------------------- parts

    def _place(self) -> None:
        """Into the workdir (it must exist before anything runs)."""
        if self.plan.get("workdir") is not None:
            self.cwd = check_workdir(self.plan["workdir"])

    def _open_outputs(self) -> None:
        """The task's output files, made or emptied: after the pre script,
        right before the command (a job's output is opened when it runs)."""
        for fd, name in ((1, "stdout"), (2, "stderr")):
            if self.plan.get(name) is not None:
                self.outputs[fd] = open_output(self.plan[name], self.cwd)
        out, err = self.outputs[1], self.outputs[2]
        if out is not None and err is not None:
            a, b = os.fstat(out), os.fstat(err)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):  # one file for both: one offset
                os.close(err)
                self.outputs[2] = out

    def _script(self, which: str, values: dict[str, str]) -> Ended:
        self.journal.write(part=f"{which} script")
        argv = macros.argv_of(self.plan[which], values)
        ended = _run(argv, self.cwd, {**self.env, **values}, stdin=None)
        if ended.code is None and ended.signal is None:
            _say(f"the {which} script did not start: {ended.reason}")
        return Ended(ended.code, ended.signal, ended.reason, stage=which)

    def _pre_failed(self, pre: Ended) -> Ended:
        if pre.signal is not None:
            return pre
        if pre.code is None:  # never ran: not an exit status to compare with pre_skip
            return Ended(NOT_STARTED, reason=f"the pre script did not start: {pre.reason}",
                         stage="pre")
        if pre.code == self.plan.get("pre_skip"):
            return Ended(0, stage="pre_skip")
        return pre

    def _command(self) -> Ended:
        """The command, from its stdin; its output copied to the task's files."""
        self.journal.write(part="command")
        starts = {fd: os.fstat(fd).st_size for fd in (1, 2)}
        try:
            stdin = open_stdin(self.plan["stdin"], self.cwd) \
                if self.plan.get("stdin") is not None else None
        except PlacementError as exc:
            ended = Ended(reason=exc.reason)
        else:
            ended = _run(macros.argv_of(self.plan["command"], {}), self.cwd, self.env, stdin)
        for fd, start in starts.items():  # before the wrapper says more there
            try:
                _copy(fd, start, self.outputs[fd])
            except OSError as exc:
                name = "stdout" if fd == 1 else "stderr"
                self.copy_failure = f"cannot copy the command's {name} to " \
                                    f"{self.plan[name]}: {exc.strerror or exc}"
        if ended.code is None and ended.signal is None:
            _say(f"the command did not start: {ended.reason}")
        if self.copy_failure:
            _say(self.copy_failure)
        return ended

    # -------------------------------------------------------------- staging

    def _staging(self, step) -> Ended | None:
        """Run a staging step; its failure as the attempt's end (the reason
        also in ``.ecloud/failure``, as the staging wrapper leaves it)."""
        from ecloud_worker import stage

        try:
            step()
        except (stage.StagingError, OSError) as exc:
            self._save()
            return Ended(stage.STAGING_FAILED, reason=stage.failed(self.meta, exc))
        self._save()
        return None

    def _fetch(self, stack: contextlib.ExitStack) -> None:
        from ecloud_worker import stage

        plan = self.plan["staging"]
        self.journal.write(part="input fetch")
        self.mover = stack.enter_context(stage.mover_for(
            plan["datastore"], key_file=plan.get("key_file"),
            identity=plan.get("datastore_id") or None))
        self.mover.identify()  # a root gone before the start: say so, not "no such input"
        self.staged += stage.stage_in(plan, Path(self.cwd), self.mover)

    def _push(self) -> None:
        from ecloud_worker import stage

        self.journal.write(part="output push")
        sys.stdout.flush()
        sys.stderr.flush()
        self.staged += stage.stage_out(self.plan["staging"], Path(self.cwd), self.mover,
                                       self.attempt_dir)

    def _save(self) -> None:
        with contextlib.suppress(OSError):
            (self.meta / "staged.json").write_text(json.dumps(self.staged))


def _die_by(sig: int) -> None:
    """End the wrapper as its deciding part ended: killed by ``sig``."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with contextlib.suppress(ValueError, OSError):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal whose default is not to end a process


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    attempt_dir = Path(os.getcwd())
    ended = Attempt(plan, attempt_dir).run()
    stage = ended.stage if ended.stage in STAGES else ""
    Journal(attempt_dir / META).write(part="", stage=stage, reason=ended.reason)
    if ended.signal is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        _die_by(ended.signal)
    sys.exit(NOT_STARTED if ended.code is None else ended.code)


if __name__ == "__main__":
    main()
