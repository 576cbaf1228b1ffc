"""A worker running as root runs its tasks as the configured unprivileged
user (``--run-as``), in attempt directories given to that user."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from ecloud.errors import UserError
from ecloud.wire import DispatchMsg
from ecloud_worker.runas import resolve_run_as
from tests.test_worker import boss, start  # noqa: F401 - fixtures

USER = "nobody"


@pytest.fixture
def open_work_dir():
    """A work dir the task's user can reach (pytest's tmp folders are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ecloud-runas-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only a worker running as root can change user")
def test_a_root_worker_runs_tasks_as_the_configured_user(boss, start, open_work_dir):  # noqa: F811
    nobody = pwd.getpwnam(USER)
    start("w1", "--run-as", USER, "--work-dir", str(open_work_dir))
    boss.report("w1", "hello")
    boss.send("w1", dispatch=[DispatchMsg("who", 1, 'id -u; id -g; echo "$HOME $USER"; '
                                                    "touch made-here; cat /etc/shadow")])
    report = boss.report("w1", "finished", "who").report
    uid, gid, names = report.stdout_tail.splitlines()
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert names == f"{nobody.pw_dir} {USER}"
    assert report.exit_code != 0 and "Permission denied" in report.stderr_tail  # not root
    attempt = open_work_dir / "who" / "1"
    assert attempt.stat().st_uid == nobody.pw_uid
    assert (attempt / "made-here").stat().st_uid == nobody.pw_uid
    # the agent itself still runs as root
    boss.send("w1", dispatch=[DispatchMsg("again", 1, "id -u")])
    assert boss.report("w1", "finished", "again").report.stdout_tail == f"{nobody.pw_uid}\n"


def test_run_as_is_checked_at_start() -> None:
    with pytest.raises(UserError, match="no such user"):
        resolve_run_as("no-such-user-here", euid=0)
    with pytest.raises(UserError, match="unprivileged"):
        resolve_run_as("root", euid=0)
    with pytest.raises(UserError, match="only an agent running as root"):
        resolve_run_as(USER, euid=12345)
    assert resolve_run_as(None, euid=0) is None
    assert resolve_run_as(USER, euid=pwd.getpwnam(USER).pw_uid) is None  # already that user
    run_as = resolve_run_as(USER, euid=0)
    assert run_as is not None and run_as.uid == pwd.getpwnam(USER).pw_uid
