"""A task's node on the worker: pre and post scripts, PRE_SKIP, the macros,
workdir and stdin/stdout/stderr files - DAGMan's semantics for one node
(docs/automated-workflows/node-pass-or-fail.rst and dagman-scripts.rst of
HTCondor), run by the real :class:`~ecloud_worker.runner.Runner` with real
processes and files.

The runner is driven as the agent's main loop drives it (:class:`Loop`): a
selector on the attempts' pidfds and the runner's deadlines. No test sleeps
past a race: each waits for a condition (a report, a file a script made)
with a deadline.
"""

from __future__ import annotations

import base64
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ecloud.events.types import InputSpec, NodeSpec
from ecloud.wire import DispatchMsg, Finished, LogsRequest
from ecloud_worker import logserve, macros
from ecloud_worker.node import wraps
from ecloud_worker.runner import NOT_STARTED, Launched, Runner, attempt_path
from tests.support.worker_helpers import WAIT, wait_dead
from tests.test_worker import boss, start  # noqa: F401 - fixtures

# ------------------------------------------------------------------ the loop


class Loop:
    """The agent's main loop in miniature around a real :class:`Runner`."""

    def __init__(self, work_dir: Path, **options) -> None:
        self.work_dir = work_dir
        self.selector = selectors.DefaultSelector()
        self.runner = Runner(work_dir, 4, self._notified, watcher=self, **options)
        self.launched: dict[tuple[str, int], Launched] = {}
        self.finished: dict[tuple[str, int], Finished] = {}

    # the Watcher protocol: the runner's pidfds
    def watch(self, fd: int, data: object) -> None:
        self.selector.register(fd, selectors.EVENT_READ, data)

    def unwatch(self, fd: int) -> None:
        self.selector.unregister(fd)

    def _notified(self, item: tuple) -> None:  # only without pidfds
        raise AssertionError(f"the runner fell back to a waiter thread: {item}")

    def _take(self, outcomes) -> None:
        for o in outcomes or ():
            if isinstance(o, Launched):
                self.launched[(o.task_id, o.attempt)] = o
            else:
                self.finished[(o.task_id, o.attempt)] = o

    def step(self, timeout: float) -> None:
        deadline = self.runner.next_deadline()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        for key, _ in self.selector.select(timeout):
            self._take(self.runner.reap(key.data))
        self._take(self.runner.tick(time.monotonic()))

    def until(self, done: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Run the loop until ``done()``; a file appearing has no event, so
        the loop looks again every 20 ms."""
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise AssertionError(f"not {what} within {timeout}s")
            self.step(0.02)

    def submit(self, msg: DispatchMsg) -> None:
        self._take(self.runner.submit(msg))

    def run(self, msg: DispatchMsg) -> Finished:
        """Submit ``msg`` and wait for its report."""
        self.submit(msg)
        key = (msg.task_id, msg.attempt)
        self.until(lambda: key in self.finished, f"finished {key}")
        return self.finished[key]

    def attempt_dir(self, task_id: str, attempt: int = 1) -> Path:
        return Path(attempt_path(str(self.work_dir), task_id, attempt))

    def close(self) -> None:
        self.runner.give_up(now=True)
        self.until(lambda: not self.runner.running(), "all attempts reaped")
        self.runner.finish()
        self.selector.close()


@pytest.fixture
def loop(tmp_path):
    running = Loop(tmp_path / "work")
    yield running
    running.close()


@pytest.fixture
def wd(tmp_path) -> Path:
    """A task's workdir, apart from the worker's work dir."""
    path = tmp_path / "wd"
    path.mkdir()
    return path


def node_msg(task_id: str, command, attempt: int = 1, macros: dict | None = None,
             env: dict | None = None, timeout: float | None = None, **node) -> DispatchMsg:
    return DispatchMsg(task_id, attempt, command, env=env or {}, node=NodeSpec(**node),
                       macros=macros or {}, timeout=timeout)


def ran(wd: Path) -> list[str]:
    """What the parts of the attempts in ``wd`` wrote to its ``ran`` file."""
    path = wd / "ran"
    return path.read_text().split() if path.exists() else []


# ----------------------------------------------------- DAGMan's node table

#: exit status of each part when it fails (distinct, to tell who decided)
PRE_FAILS, JOB_FAILS, POST_FAILS = 3, 5, 7


def part(name: str, fails: bool) -> str:
    code = {"pre": PRE_FAILS, "job": JOB_FAILS, "post": POST_FAILS}[name] if fails else 0
    return f"echo {name} >> ran; echo {name} says hi; exit {code}"


@pytest.mark.parametrize("pre", [None, "S", "F"])
@pytest.mark.parametrize("job", ["S", "F"])
@pytest.mark.parametrize("post", [None, "S", "F"])
def test_the_node_success_table(loop, wd, pre, job, post):
    """Table 2.1 (DAGMAN_ALWAYS_RUN_POST = False): the exit status of
    whatever part ran last decides; a failed pre script runs nothing more."""
    msg = node_msg("t", part("job", job == "F"), workdir=str(wd),
                   pre=None if pre is None else part("pre", pre == "F"),
                   post=None if post is None else part("post", post == "F"))
    report = loop.run(msg)
    if pre == "F":
        expect_ran, expect = ["pre"], (PRE_FAILS, "pre")
    elif post is not None:
        expect_ran = (["pre"] if pre else []) + ["job", "post"]
        expect = (POST_FAILS if post == "F" else 0, "post")
    else:
        expect_ran = (["pre"] if pre else []) + ["job"]
        expect = (JOB_FAILS if job == "F" else 0, "")
    assert ran(wd) == expect_ran
    assert (report.exit_code, report.stage) == expect, report
    assert report.signal is None and report.reason == ""
    # every part's output is in the attempt's stdout, and so in the report's tail
    assert report.stdout_tail == "".join(f"{p} says hi\n" for p in expect_ran)


def test_a_retry_runs_pre_command_and_post_again(loop, wd):
    """Retry reruns the whole node; the task's stdout file is emptied at
    each attempt (it holds only the last command's output)."""
    for attempt in (1, 2):
        report = loop.run(node_msg(
            "t", f"echo job >> ran; echo output {attempt}", attempt,
            macros={"RETRY": str(attempt - 1)}, workdir=str(wd), stdout="out.txt",
            pre="echo pre$RETRY >> ran", post="echo post$RETRY >> ran; exit $RETURN"))
        assert (report.exit_code, report.stage) == (0, "post")
    assert ran(wd) == ["pre0", "job", "post0", "pre1", "job", "post1"]
    assert (wd / "out.txt").read_text() == "output 2\n"


def test_pre_skip_succeeds_without_running_command_or_post(loop, wd):
    skipped = loop.run(node_msg("skip", "echo job >> ran", workdir=str(wd), pre_skip=2,
                                pre="echo pre >> ran; exit 2", post="echo post >> ran; exit 1"))
    assert (skipped.exit_code, skipped.stage, skipped.signal) == (0, "pre_skip", None)
    assert ran(wd) == ["pre"]
    # another failure of the pre script is a failure; a success runs the rest
    other = loop.run(node_msg("other", "echo job >> ran", workdir=str(wd), pre_skip=2,
                              pre="echo pre >> ran; exit 4", post="echo post >> ran"))
    assert (other.exit_code, other.stage) == (4, "pre")
    fine = loop.run(node_msg("fine", "echo job >> ran", workdir=str(wd), pre_skip=2,
                             pre="echo pre >> ran", post="echo post >> ran"))
    assert (fine.exit_code, fine.stage) == (0, "post")
    assert ran(wd) == ["pre", "pre", "pre", "job", "post"]


# ------------------------------------------------------------------ macros

RECORD_RETURNS = 'echo "$RETURN $PRE_SCRIPT_RETURN" > returns'


@pytest.mark.parametrize(("command", "node", "expect"), [
    ("exit 5", {}, "5 -1"),
    ("exit 0", {"pre": "true"}, "0 0"),
    ("kill -KILL $$", {}, "-9 -1"),  # died by a signal: minus its number
    ("kill -TERM $$", {"pre": "exit 0"}, "-15 0"),
    (("/nonexistent/program",), {}, "-1001 -1"),  # never started
    ("cat", {"stdin": "no-such-input"}, "-1001 -1"),
], ids=["exit", "exit-after-pre", "sigkill", "sigterm", "no-program", "no-stdin"])
def test_the_post_script_gets_return_and_pre_script_return(loop, wd, command, node, expect):
    report = loop.run(node_msg("t", command, workdir=str(wd), post=RECORD_RETURNS, **node))
    assert (wd / "returns").read_text() == expect + "\n"
    assert (report.exit_code, report.signal, report.stage) == (0, None, "post")


def test_without_a_post_the_command_decides_as_a_bare_one_would(loop, wd):
    killed = loop.run(node_msg("killed", "kill -KILL $$", workdir=str(wd), pre="true"))
    assert (killed.exit_code, killed.signal, killed.stage) == (None, signal.SIGKILL, "")
    missing = loop.run(node_msg("missing", ("/nonexistent/program",), pre="true"))
    assert (missing.exit_code, missing.stage) == (NOT_STARTED, "")
    assert "not started" in missing.reason and "/nonexistent/program" in missing.reason
    assert "the command did not start" in missing.stderr_tail
    # a script killed by a signal fails the attempt by that signal, its stage said
    pre = loop.run(node_msg("pre-killed", "true", pre="kill -SEGV $$"))
    assert (pre.exit_code, pre.signal, pre.stage) == (None, signal.SIGSEGV, "pre")
    post = loop.run(node_msg("post-killed", "true", post=("/nonexistent/post",)))
    assert (post.exit_code, post.stage) == (NOT_STARTED, "post")
    assert "post script did not start" in post.reason


def test_argv_scripts_have_the_macros_replaced_as_whole_arguments_only(loop, wd):
    """DAGMan's rule: an argument that is exactly ``$NAME`` is replaced; a
    macro inside an argument, braced, or unknown stays as written."""
    values = {"JOB": "B", "RETRY": "2", "MAX_RETRIES": "3"}
    argv = ("/bin/sh", "-c", 'printf "%s\\n" "$@" > "$0.args"', "$JOB",
            "$RETRY", "x$RETRY.y", "retry=$RETRY", "$RETRYX", "${RETRY}", "$HOME", "$retry",
            "$MAX_RETRIES", "$$RETRY", "$JOBID", "job_status=$RETURN", "$RETURN",
            "$PRE_SCRIPT_RETURN")
    report = loop.run(node_msg("t", "exit 6", macros=values, workdir=str(wd), pre=argv,
                               post=argv))
    assert (report.exit_code, report.stage) == (0, "post")
    assert (wd / "B.args").read_text().split("\n")[:-1] == [
        "2", "x$RETRY.y", "retry=$RETRY", "$RETRYX", "${RETRY}", "$HOME", "$retry", "3",
        "$$RETRY", "$JOBID", "job_status=$RETURN", "6", "0"]
    # $RETURN and $PRE_SCRIPT_RETURN are a post script's macros: the pre script's
    # arguments keep them as written
    pre = loop.run(node_msg("p", "true", macros=values, workdir=str(wd), pre=argv))
    assert pre.exit_code == 0
    assert (wd / "B.args").read_text().split("\n")[-4:-1] == [
        "job_status=$RETURN", "$RETURN", "$PRE_SCRIPT_RETURN"]


def test_a_macro_inside_an_argument_is_passed_as_written():
    """The manual's own example (dagman-scripts.rst): ``SCRIPT POST A stage-out
    job_status=$RETURN`` passes ``job_status=$RETURN`` unchanged, where
    ``stage-out job_status $RETURN`` passes the job's return value."""
    values = {"RETURN": "-1"}
    assert macros.argv_of(("stage-out", "job_status=$RETURN"), values) == \
        ["stage-out", "job_status=$RETURN"]
    assert macros.argv_of(("stage-out", "job_status", "$RETURN"), values) == \
        ["stage-out", "job_status", "-1"]


def test_string_scripts_and_the_command_have_the_macros_in_their_environment(loop, wd):
    values = {"JOB": "final", "RETRY": "0", "MAX_RETRIES": "1", "DAG_STATUS": "2",
              "FAILED_COUNT": "3"}
    report = loop.run(node_msg(
        "t", 'echo "$JOB $RETRY $DAG_STATUS $FAILED_COUNT $ECLOUD_TASK_ID" > command.env; exit 4',
        macros=values, env={"RETRY": "the task's own"}, workdir=str(wd),
        pre='echo "$JOB $RETRY $MAX_RETRIES $DAG_STATUS $FAILED_COUNT" > pre.env',
        post='echo "$JOB $RETRY $RETURN $PRE_SCRIPT_RETURN" > post.env; exit 0'))
    assert (report.exit_code, report.stage) == (0, "post")
    # the task's own environment wins for its command, the macros for the scripts
    assert (wd / "command.env").read_text() == "final the task's own 2 3 t\n"
    assert (wd / "pre.env").read_text() == "final 0 1 2 3\n"
    assert (wd / "post.env").read_text() == "final 0 4 0\n"


def test_a_final_task_s_command_alone_has_the_macros_without_a_wrapper(loop):
    report = loop.run(node_msg("final", 'echo "$DAG_STATUS $FAILED_COUNT"; echo $$ > pid',
                               macros={"DAG_STATUS": "0", "FAILED_COUNT": "0"}, final=True))
    assert (report.exit_code, report.stdout_tail, report.stage) == (0, "0 0\n", "")
    attempt = loop.attempt_dir("final")
    assert int((attempt / "pid").read_text()) == loop.launched[("final", 1)].pid
    assert not (attempt / ".ecloud").exists()


def test_macro_expansion_takes_whole_arguments_and_known_names_only():
    values = macros.clean({"RETRY": "1", "$JOB": "A", "not a name": "x", "HOME": "/h"})
    assert values == {"RETRY": "1", "JOB": "A", "HOME": "/h"}
    written = ["$RETRY/$JOB", "x$RETRY", "$RETRY.y", "${RETRY}", "${RETRY}X", "$RETRYX",
               "$retry", " $RETRY", "$HOME", "$RETURN", "$1", "$", "$$", "RETRY", ""]
    assert [macros.expand(arg, values) for arg in written] == written
    assert [macros.expand(arg, values) for arg in ("$RETRY", "$JOB")] == ["1", "A"]
    assert macros.argv_of("echo $RETRY", values) == ["/bin/sh", "-c", "echo $RETRY"]
    assert macros.status_macro(None, None) == "-1001" and macros.status_macro(None, 9) == "-9"


# --------------------------------------------------------------- placement


def test_a_plain_task_runs_as_before_no_wrapper_no_file(loop):
    report = loop.run(DispatchMsg("plain", 1, "echo $$ > pid; pwd"))
    attempt = loop.attempt_dir("plain")
    assert report.stdout_tail == f"{os.path.realpath(attempt)}\n" and report.stage == ""
    assert int((attempt / "pid").read_text()) == loop.launched[("plain", 1)].pid
    assert sorted(p.name for p in attempt.iterdir()) == ["pid", "stderr", "stdout"]


def test_workdir_and_stdin_alone_are_placed_by_the_runner(loop, wd):
    (wd / "in.txt").write_text("from the input\n")
    report = loop.run(node_msg("t", "echo $$ > pid; pwd; cat", workdir=str(wd), stdin="in.txt"))
    assert (report.exit_code, report.stage) == (0, "")
    assert report.stdout_tail == f"{os.path.realpath(wd)}\nfrom the input\n"
    assert int((wd / "pid").read_text()) == loop.launched[("t", 1)].pid  # no wrapper
    attempt = loop.attempt_dir("t")
    assert (attempt / "stdout").read_text() == report.stdout_tail
    assert not (attempt / ".ecloud").exists()
    absolute = loop.run(node_msg("abs", "cat", stdin=str(wd / "in.txt")))
    assert absolute.stdout_tail == "from the input\n"


def test_redirected_output_lands_in_the_task_s_files_and_in_the_attempt_s(loop, wd):
    (wd / "in.txt").write_text("line one\nline two\n")
    (wd / "logs").mkdir()
    report = loop.run(node_msg(
        "t", "pwd; cat; echo oops >&2", workdir=str(wd), stdin="in.txt",
        stdout="out.txt", stderr="logs/err.txt",
        pre="echo pre speaks; echo pre warns >&2", post="echo post speaks"))
    assert (report.exit_code, report.stage) == (0, "post")
    out = f"{os.path.realpath(wd)}\nline one\nline two\n"
    assert (wd / "out.txt").read_text() == out  # the command's output, not the scripts'
    assert (wd / "logs" / "err.txt").read_text() == "oops\n"
    # the report's tails and the attempt directory (ecloud logs) have every part's
    assert report.stdout_tail == f"pre speaks\n{out}post speaks\n"
    assert report.stderr_tail == "pre warns\noops\n"
    attempt = loop.attempt_dir("t")
    assert (attempt / "stdout").read_text() == report.stdout_tail
    served = logserve.answer(str(loop.work_dir), LogsRequest("r1", "t", 1, "stdout"), False)
    assert (served.error, base64.b64decode(served.data).decode()) == ("", report.stdout_tail)


def test_one_file_for_stdout_and_stderr_has_both(loop, wd):
    report = loop.run(node_msg("t", "echo out; echo err >&2", workdir=str(wd),
                               stdout="both.log", stderr=str(wd / "both.log")))
    assert report.exit_code == 0
    assert (wd / "both.log").read_text() == "out\nerr\n"


@pytest.mark.parametrize("scripts", [{}, {"pre": "echo pre >> ran"}], ids=["runner", "wrapper"])
def test_a_missing_workdir_or_stdin_is_not_started(loop, wd, tmp_path, scripts):
    (tmp_path / "a-file").write_text("")
    cases = {
        "gone": ({"workdir": str(tmp_path / "gone")}, "No such file or directory"),
        "file": ({"workdir": str(tmp_path / "a-file")}, "not a directory"),
        "relative": ({"workdir": "wd"}, "not an absolute path"),
    }
    for task, (placement, why) in cases.items():
        report = loop.run(node_msg(task, "echo job >> ran", **placement, **scripts))
        assert (report.exit_code, report.signal, report.stage) == (NOT_STARTED, None, ""), report
        assert report.reason.startswith("not started: workdir") and why in report.reason
    stdin = loop.run(node_msg("stdin", "echo job >> ran", workdir=str(wd), stdin="nope",
                              **scripts))
    assert (stdin.exit_code, stdin.stage) == (NOT_STARTED, "")
    assert f"cannot open stdin {wd}/nope: No such file or directory" in stdin.reason
    assert ran(wd) == (["pre"] if scripts else [])  # the pre script ran, the command not


def test_a_pre_script_may_make_the_command_s_stdin(loop, wd):
    report = loop.run(node_msg("t", "cat", workdir=str(wd), stdin="made.txt",
                               pre="echo made by pre > made.txt"))
    assert (report.exit_code, report.stdout_tail) == (0, "made by pre\n")


def test_ecloud_logs_never_follows_a_link_the_task_put_there(loop, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("not for the task's eyes")
    report = loop.run(DispatchMsg("t", 1, f"rm stdout stderr; ln -s {secret} stdout; mkfifo stderr"))
    assert report.exit_code == 0
    for stream in ("stdout", "stderr"):
        served = logserve.answer(str(loop.work_dir), LogsRequest("r", "t", 1, stream), False)
        assert served.size == -1 and served.data == "" and "cannot read" in served.error


# ------------------------------------------------------- stopping a script


def test_a_timeout_while_the_post_script_runs_kills_it_and_is_no_success(loop, wd):
    timeout = 3.0
    msg = node_msg("t", "true", workdir=str(wd), timeout=timeout,
                   post="echo $$ > post.pid; sleep 30; touch post-done")
    loop.submit(msg)
    loop.until(lambda: (wd / "post.pid").exists(), "post script started")
    loop.until(lambda: ("t", 1) in loop.finished, "finished")
    report = loop.finished[("t", 1)]
    assert (report.exit_code, report.signal, report.stage) == (None, signal.SIGTERM, "")
    assert report.reason == f"timeout after {timeout:g}s (in the post script)"
    wait_dead(int((wd / "post.pid").read_text()))
    assert not (wd / "post-done").exists()


def test_cancel_during_the_pre_script_runs_nothing_more(loop, wd):
    loop.submit(node_msg("t", "echo job >> ran", workdir=str(wd),
                         pre="echo pre >> ran; echo $$ > pre.pid; exec sleep 30",
                         post="echo post >> ran"))
    loop.until(lambda: (wd / "pre.pid").exists() and (wd / "pre.pid").read_text(),
               "pre script started")
    assert loop.runner.cancel(("t", 1)) == []
    loop.until(lambda: ("t", 1) in loop.finished, "finished")
    report = loop.finished[("t", 1)]
    assert (report.exit_code, report.signal, report.stage) == (None, signal.SIGTERM, "")
    assert report.reason == "cancelled (in the pre script)"
    wait_dead(int((wd / "pre.pid").read_text()))
    assert ran(wd) == ["pre"]


# ----------------------------------------------------------------- staging


@pytest.fixture
def store(tmp_path):
    """A marked local datastore holding one input (see tests/support/datastores.py)."""
    from ecloud.effects.data.movers import LocalDirMover

    root = tmp_path / "store"
    (root / "data").mkdir(parents=True)
    (root / "data" / "in.txt").write_text("input data\n")
    return root, LocalDirMover(root).mark()


def staged_msg(task_id: str, store, post: str, **node) -> DispatchMsg:
    root, identity = store
    return DispatchMsg(
        task_id, 1, "echo job >> ran; tr a-z A-Z < in.txt > out.txt; echo job output",
        inputs=[InputSpec("data/in.txt")], outputs=["out.txt"], datastore=str(root),
        datastore_id=identity,
        node=NodeSpec(pre="echo pre >> ran; test -e in.txt && echo in-before-pre >> ran; true",
                      post=post, **node))


def test_scripts_and_staging_run_in_one_wrapper_in_order(loop, wd, store):
    root, _ = store
    report = loop.run(staged_msg("s", store, "echo post >> ran; cat out.txt", workdir=str(wd)))
    assert (report.exit_code, report.stage, report.reason) == (0, "post", "")
    assert ran(wd) == ["pre", "job", "post"]  # the input came after the pre script
    results = root / "results" / "s"
    assert (results / "out.txt").read_text() == "INPUT DATA\n"
    assert (results / "stdout").read_text() == "job output\nINPUT DATA\n"  # with the post's
    assert [(f.direction, f.name) for f in report.staged] == [
        ("in", "in.txt"), ("out", "out.txt"), ("out", "stdout"), ("out", "stderr")]
    attempt = loop.attempt_dir("s")
    assert not (attempt / "in.txt").exists() and (wd / "in.txt").exists()


def test_a_failed_post_script_pushes_nothing(loop, wd, store):
    root, _ = store
    report = loop.run(staged_msg("f", store, "echo post >> ran; exit 9", workdir=str(wd)))
    assert (report.exit_code, report.stage) == (9, "post")
    assert [f.direction for f in report.staged] == ["in"]
    assert not (root / "results" / "f").exists()


# ------------------------------------------------------------ as a user


@pytest.fixture
def open_dir():
    """A directory the task's user can reach (pytest's tmp folders are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ecloud-scripts-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_what_runs_in_the_wrapper():
    """Scripts and output files always; a workdir or stdin only when data
    moves or tasks run as another user (the agent would open them as root)."""
    assert not wraps(NodeSpec(), moves=True, run_as=True)
    assert not wraps(NodeSpec(workdir="/x", stdin="in", final=True), moves=False, run_as=False)
    for spec in (NodeSpec(pre="true"), NodeSpec(post=("true",)), NodeSpec(stdout="o"),
                 NodeSpec(stderr="e")):
        assert wraps(spec, moves=False, run_as=False)
    for spec in (NodeSpec(workdir="/x"), NodeSpec(stdin="in")):
        assert wraps(spec, moves=True, run_as=False) and wraps(spec, moves=False, run_as=True)


def _runs_as_nobody() -> bool:
    """Whether this interpreter (the wrapper's) can run as ``nobody``: not
    from a virtualenv under /root, say."""
    try:
        return subprocess.run([sys.executable, "-c", "import ecloud_worker.node"], user="nobody",
                              cwd="/", capture_output=True, timeout=WAIT).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="only a worker running as root can change user")
def test_a_root_worker_opens_the_task_s_files_with_the_task_s_rights(open_dir):
    from ecloud_worker.runas import resolve_run_as

    if not _runs_as_nobody():
        pytest.skip(f"nobody cannot run {sys.executable} with ecloud_worker")
    nobody = pwd.getpwnam("nobody")
    private = open_dir / "root-only"
    private.mkdir(mode=0o700)
    (private / "in.txt").write_text("root's")
    mine = open_dir / "nobody's"
    mine.mkdir()
    os.chown(mine, nobody.pw_uid, nobody.pw_gid)
    loop = Loop(open_dir / "work", run_as=resolve_run_as("nobody", euid=0))
    try:
        clobber = loop.run(node_msg("clobber", "true", stdout=str(private / "out.txt")))
        assert clobber.exit_code == NOT_STARTED
        assert clobber.reason == f"not started: cannot open {private}/out.txt for the output: " \
                                 "Permission denied"
        assert not (private / "out.txt").exists()
        read = loop.run(node_msg("read", "cat", stdin=str(private / "in.txt")))
        assert read.exit_code == NOT_STARTED
        assert read.reason == f"not started: cannot open stdin {private}/in.txt: Permission denied"
        inside = loop.run(node_msg("inside", "cat in.txt", workdir=str(private), pre="true"))
        assert (inside.exit_code, inside.stage) == (NOT_STARTED, "")
        assert inside.reason == f"not started: workdir {private}: Permission denied"
        ok = loop.run(node_msg("ok", "id -u", workdir=str(mine), stdout="who", post="true"))
        assert (ok.exit_code, ok.stage) == (0, "post")
        assert (mine / "who").read_text() == f"{nobody.pw_uid}\n"
        assert (mine / "who").stat().st_uid == nobody.pw_uid
        assert (loop.attempt_dir("ok") / ".ecloud").stat().st_uid == nobody.pw_uid
    finally:
        loop.close()



# ------------------------------------------------------- through the agent


def test_a_real_agent_runs_a_node_and_reports_its_stage(boss, start, wd):  # noqa: F811
    """The dispatch's node and macros and the report's stage cross MQTT
    (the boss's parse checks the stage) with a real agent."""
    start("w1")
    boss.report("w1", "hello")
    boss.send("w1", dispatch=[
        node_msg("skip", "echo job >> ran", macros={"JOB": "skip"}, workdir=str(wd),
                 pre_skip=3, pre='echo "pre $JOB" >> ran; exit 3'),
        node_msg("post", "exit 2", macros={"JOB": "post"}, workdir=str(wd),
                 post=("/bin/sh", "-c", 'echo "post $1" >> ran; exit 1', "post", "$RETURN"))])
    skipped = boss.report("w1", "finished", "skip").report
    assert (skipped.exit_code, skipped.stage) == (0, "pre_skip")
    post = boss.report("w1", "finished", "post").report
    assert (post.exit_code, post.stage) == (1, "post")
    assert sorted((wd / "ran").read_text().splitlines()) == ["post 2", "pre skip"]
