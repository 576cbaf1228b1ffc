"""Processes that leave their attempt's process group (``setsid``) die with
the attempt all the same.

Real agents against the machine's Mosquitto (the fixtures of
tests/test_worker.py), real processes, no mocks. Each task starts escapees
that record their own pids in the file ``pids`` of the attempt directory
(their working directory), then the test stops the attempt one way or
another and waits, with a deadline, until every recorded pid is *gone*: not
running and not a zombie either (an adopted child must be reaped - PID 1
here reaps nothing, so a zombie left to it stays forever).
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from ecloud.wire import CancelMsg, DispatchMsg
from tests.support.brokers import wait_for
from tests.support.worker_helpers import alive
from tests.test_worker import boss, start  # noqa: F401 - fixtures

#: escapees: record our own pid, then sleep (TERM ignored for the stubborn one;
#: an ignored signal stays ignored across exec)
ESCAPEE = "echo $$ >> pids; exec sleep 600\n"
STUBBORN = "trap '' TERM; echo $$ >> pids; exec sleep 600\n"

#: the three ways out of the group, 4 pids in all (the task's environment
#: gives $ESC, the escapee script):
ESCAPES = "\n".join([
    # a child of the leader in a session of its own
    'setsid sh "$ESC" &',
    # orphaned at once (its parent exits): adopted while the attempt runs
    "sh -c 'setsid sh \"$ESC\" &'",
    # a session of its own with a child in it (both record their pids)
    "setsid sh -c 'echo $$ >> pids; sh \"$ESC\" & wait' &",
]) + "\n"
ESCAPED = 4


def until_recorded(count: int) -> str:
    """Shell: wait until ``pids`` has ``count`` lines (so no escapee is
    killed before it has said who it is)."""
    return (f'until [ "$(cat pids 2>/dev/null | wc -l)" -ge {count} ]; do sleep 0.01; done\n')


@pytest.fixture
def scripts(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, text in (("ESC", ESCAPEE), ("STUBBORN", STUBBORN)):
        path = tmp_path / f"{name.lower()}.sh"
        path.write_text(text)
        paths[name] = str(path)
    return paths


def attempt_dir(worker, task_id: str, attempt: int = 1) -> Path:
    return worker.work_dir / task_id / str(attempt)


def recorded(worker, task_id: str, count: int, attempt: int = 1) -> list[int]:
    """The pids the attempt's escapees recorded, once there are ``count``."""
    path = attempt_dir(worker, task_id, attempt) / "pids"

    def complete() -> list[int]:
        try:
            lines = path.read_text().split("\n")[:-1]  # whole lines only
        except FileNotFoundError:
            return []
        return [int(line) for line in lines] if len(lines) >= count else []

    pids = wait_for(complete, timeout=15, what=f"{count} pids in {path}")
    assert all(alive(pid) for pid in pids), [state(pid) for pid in pids]
    return pids


def recorded_now(worker, task_id: str) -> list[int]:
    """The pids recorded (the leader waited for all of them before exiting)."""
    text = (attempt_dir(worker, task_id) / "pids").read_text()
    pids = [int(line) for line in text.split()]
    assert len(pids) == ESCAPED, text
    return pids


def state(pid: int) -> str:
    """``pid``'s state letter (R, S, Z...) from /proc, or "gone"."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    """Neither running nor a zombie: the pid no longer exists."""
    return state(pid) in ("gone", "X")


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    try:
        wait_for(lambda: all(gone(pid) for pid in pids), timeout=timeout,
                 what=f"pids {pids} to be gone")
    except BaseException:
        print("states:", {pid: state(pid) for pid in pids})
        raise


# ----------------------------------------------------------- stopping tasks


def test_cancel_kills_the_escapees_even_those_ignoring_sigterm(boss, start, scripts):  # noqa: F811
    worker = start("w1")
    boss.report("w1", "hello")
    boss.dispatch("w1", "c", ESCAPES + 'setsid sh "$STUBBORN" &\n' + until_recorded(ESCAPED + 1)
                  + "sleep 600", env=scripts)
    boss.report("w1", "started", "c")
    pids = recorded(worker, "c", ESCAPED + 1)
    boss.send("w1", cancel=[CancelMsg("c", 1)])
    done = boss.report("w1", "finished", "c").report
    assert (done.reason, done.exit_code, done.signal) == ("cancelled", None, signal.SIGTERM)
    wait_gone(pids)


def test_timeout_kills_the_escapees(boss, start, scripts):  # noqa: F811
    worker = start("w1")
    boss.report("w1", "hello")
    boss.dispatch("w1", "t", ESCAPES + until_recorded(ESCAPED) + "sleep 600", env=scripts,
                  timeout=3.0)
    pids = recorded(worker, "t", ESCAPED)
    done = boss.report("w1", "finished", "t").report
    assert done.reason == "timeout after 3s"
    wait_gone(pids)


def test_escapees_die_when_the_leader_exits(boss, start, scripts):  # noqa: F811
    worker = start("w1")
    boss.report("w1", "hello")
    boss.dispatch("w1", "e", ESCAPES + until_recorded(ESCAPED) + "exit 0", env=scripts)
    done = boss.report("w1", "finished", "e").report
    assert (done.exit_code, done.signal, done.reason) == (0, None, "")
    wait_gone(recorded_now(worker, "e"))


def test_sigterm_to_the_agent_kills_the_escapees_and_every_other_descendant(
        boss, start, scripts):  # noqa: F811
    worker = start("w1", "--drain-timeout", "0.5")
    boss.report("w1", "hello")
    # one escapee without the attempt's token cannot be told from any other
    # process: it dies when the agent exits
    untokened = 'env -u ECLOUD_ATTEMPT_TOKEN setsid sh "$ESC" &\n'
    boss.dispatch("w1", "d", ESCAPES + untokened + until_recorded(ESCAPED + 1) + "sleep 600",
                  env=scripts)
    pids = recorded(worker, "d", ESCAPED + 1)
    worker.signal(signal.SIGTERM)
    boss.report("w1", "bye")
    assert worker.wait() == 0
    wait_gone(pids)


# ------------------------------------------------------------- attribution


def test_escapees_of_one_attempt_are_told_from_another(boss, start, scripts):  # noqa: F811
    worker = start("w1", slots=2)
    boss.report("w1", "hello")
    command = ESCAPES + until_recorded(ESCAPED) + "echo $$ > leader\nsleep 600"
    boss.send("w1", dispatch=[DispatchMsg("a", 1, command, env=scripts),
                              DispatchMsg("b", 1, command, env=scripts)])
    a, b = recorded(worker, "a", ESCAPED), recorded(worker, "b", ESCAPED)
    leader_file = attempt_dir(worker, "b") / "leader"
    b_leader = int(wait_for(lambda: leader_file.exists() and leader_file.read_text().strip(),
                            what="b's leader pid"))

    boss.send("w1", cancel=[CancelMsg("a", 1)])
    boss.report("w1", "finished", "a")
    wait_gone(a)
    # the sweeps for a are over before its report goes out: b was spared
    assert all(alive(pid) for pid in [b_leader, *b]), {p: state(p) for p in [b_leader, *b]}
    assert boss.reports("w1", "finished", "b") == []

    boss.send("w1", cancel=[CancelMsg("b", 1)])
    boss.report("w1", "finished", "b")
    wait_gone([b_leader, *b])


def test_an_adopted_child_that_exits_on_its_own_is_reaped(boss, start, tmp_path):  # noqa: F811
    """An escapee without the token outlives its attempt (nothing says whose
    it is), adopted by the agent, which reaps it when it exits."""
    gate = tmp_path / "gate"
    worker = start("w1")
    boss.report("w1", "hello")
    boss.dispatch("w1", "u", "env -u ECLOUD_ATTEMPT_TOKEN setsid sh -c 'echo $$ >> pids; "
                  "while [ ! -e \"$GATE\" ]; do sleep 0.05; done' &\n" + until_recorded(1),
                  env={"GATE": str(gate)})
    boss.report("w1", "finished", "u")
    (pid,) = recorded(worker, "u", 1)
    assert parent(pid) == worker.proc.pid  # the agent is a child subreaper
    gate.touch()
    wait_gone([pid])
    assert worker.proc.poll() is None


def test_every_attempt_has_a_token_of_its_own(boss, start):  # noqa: F811
    start("w1")
    boss.report("w1", "hello")
    boss.send("w1", dispatch=[DispatchMsg("k", 1, 'echo "$ECLOUD_ATTEMPT_TOKEN"'),
                              DispatchMsg("k", 2, 'echo "$ECLOUD_ATTEMPT_TOKEN"',
                                          env={"ECLOUD_ATTEMPT_TOKEN": "forged"})])
    one = boss.report("w1", "finished", "k", attempt=1).report.stdout_tail.strip()
    two = boss.report("w1", "finished", "k", attempt=2).report.stdout_tail.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", one) and re.fullmatch(r"[0-9a-f]{32}", two)
    assert one != two
