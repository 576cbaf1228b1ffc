"""The account the secured broker runs as (``ecloud broker config --user``).

Mosquitto 2, started as root, switches to its ``user`` right after reading
its configuration, before it opens anything else - and on SIGHUP it reads
the configuration, certificates, password file and ACL again as that
account. These tests start a real Mosquitto as root on the layout
``ecloud broker config`` writes and check that it runs as ``mosquitto``,
still reads the password file the boss rewrites after the drop, and that
the files it needs no more stay their owner's only."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ecloud.errors import UserError
from ecloud.security.accounts import read_passwd, write_passwd
from ecloud.security.broker_config import resolve_broker_user
from ecloud.security.certs import init_certs
from tests.support.brokers import Client, wait_for
from tests.support.secure_broker import HOST, SecureBroker, reachable_folder
from tests.test_broker_security import _refusal, _started

CLUSTER = "sec"
BROKER_USER = "mosquitto"  # the Debian package's account; the suite needs the package

as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="only a broker started as root switches accounts")


def ecloud(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecloud.cli.main", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def _ids(pid: int) -> dict[str, list[int]]:
    """The real, effective, saved and file-system uids and gids of ``pid``."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: [int(v) for v in line.split(":", 1)[1].split()]
            for line in lines for key in ("Uid", "Gid") if line.startswith(f"{key}:")}


def _account_refused(broker: SecureBroker, worker: str) -> bool:
    client = Client(broker.url, worker, clean_session=True, auth=broker.worker_auth(worker))
    try:
        client.start(wait=2)
    except ConnectionError as exc:
        return "Not authorized" in str(exc)
    client.stop()
    return False


@as_root
def test_the_broker_runs_as_its_account_and_reads_the_accounts_the_boss_adds_later() -> None:
    account = pwd.getpwnam(BROKER_USER)
    with reachable_folder() as base:
        broker = SecureBroker(base / "broker", CLUSTER, user=BROKER_USER).start()
        try:
            assert broker.proc is not None and os.geteuid() == 0  # started by root ...
            assert int(broker.files.pid.read_text()) == broker.proc.pid
            # ... it runs as its account, every id of it
            assert _ids(broker.proc.pid) == {"Uid": [account.pw_uid] * 4,
                                             "Gid": [account.pw_gid] * 4}
            # a worker the boss adds after the drop: a new passwd (the boss's
            # own temporary file, put in place) and a SIGHUP; the broker reads
            # it as its account
            accounts = broker.accounts()
            assert accounts.sync(["w-late"])
            late = wait_for(lambda: _started(Client(broker.url, "w-late", clean_session=True,
                                                    auth=broker.worker_auth("w-late"))),
                            10, "w-late's account to be loaded")
            late.stop()
            passwd = (broker.folder / "passwd").stat()
            assert (passwd.st_gid, stat.S_IMODE(passwd.st_mode)) == (account.pw_gid, 0o640)
            # an account the boss never made is refused, and one it removes goes
            assert "Not authorized" in _refusal(broker, broker.worker_auth("w-nobody"))
            assert accounts.sync([])
            wait_for(lambda: _account_refused(broker, "w-late"), 10, "w-late to be refused")
            with Client(broker.url, "boss", clean_session=True,
                        auth=broker.boss_auth).start(wait=5):
                pass
        finally:
            broker.stop()
        log = broker.log()
        assert log.count("Reloading config.") == 2, log
        # e.g. "Error: Unable to open pwfile" had the boss's new file not been its group's
        # (a client hanging up mid-handshake is logged as an "OpenSSL Error[0]": not this)
        for problem in ("Error: ", "Error opening", "should not be run as root"):
            assert problem not in log, log
        # it owns the folder of its pid file: it removed it on its way out
        assert not broker.files.pid.exists()
        assert (broker.files.pid.parent / "mosquitto.db").stat().st_uid == account.pw_uid


def test_an_unknown_account_is_refused_in_one_line_before_anything_is_written(
        tmp_path: Path) -> None:
    folder = tmp_path / "b"
    init_certs(folder, [HOST], CLUSTER, days=2)
    result = ecloud(tmp_path, "broker", "config", "--dir", str(folder), "--user", "nosuchuser")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line
    assert "'nosuchuser': no such account" in result.stderr
    assert not (folder / "mosquitto.conf").exists() and not (folder / "passwd").exists()
    with pytest.raises(UserError, match="no such account"):
        resolve_broker_user("nosuchuser")


def test_without_an_account_the_broker_runs_as_whoever_starts_it() -> None:
    """No ``mosquitto`` account on the machine (here: another default that
    does not exist) and no --user: no account, and a warning saying so."""
    user, warning = resolve_broker_user(None, default="ecloud-no-such-account")
    assert user is None
    assert warning is not None and "run as whoever starts it" in warning
    assert resolve_broker_user("root")[0] is None  # root is no account of its own either


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@as_root
def test_the_broker_may_read_what_it_needs_and_nothing_else(tmp_path: Path) -> None:
    account = pwd.getpwnam(BROKER_USER)
    folder = tmp_path / "b"
    init_certs(folder, [HOST], CLUSTER, days=2)
    # --user root: no account of its own - a warning, and everything its owner's only
    first = ecloud(tmp_path, "broker", "config", "--dir", str(folder), "--user", "root")
    assert first.returncode == 0, first.stderr
    assert "run as whoever starts it" in first.stderr
    assert "\nuser root\n" in (folder / "mosquitto.conf").read_text()
    assert _mode(folder) == 0o700 and _mode(folder / "data") == 0o700
    assert _mode(folder / "passwd") == 0o600 and _mode(folder / "server.key") == 0o600
    # what that root broker left in its data folder - and links to root's secrets that an
    # account writing there could plant for root to give away
    (folder / "data" / "mosquitto.db").write_bytes(b"persisted")
    (folder / "data" / "soft").symlink_to(folder / "boss-password")
    os.link(folder / "ca.key", folder / "data" / "hard")

    result = ecloud(tmp_path, "broker", "config", "--dir", str(folder))  # mosquitto by default
    assert result.returncode == 0, result.stderr
    conf = (folder / "mosquitto.conf").read_text()
    assert f"\nuser {BROKER_USER}\n" in conf and "user root" not in conf
    assert f"pid_file {folder / 'data' / 'mosquitto.pid'}\n" in conf
    assert f'broker_pid_file = "{folder / "data" / "mosquitto.pid"}"' in (
        folder / "ecloud.toml").read_text()
    # pytest's own folders are root's only: the broker could not get to these
    assert "does not let 'mosquitto' through" in result.stderr, result.stderr
    assert (folder.stat().st_gid, _mode(folder)) == (account.pw_gid, 0o750)
    for name in ("mosquitto.conf", "acl", "passwd", "ca.pem", "server.pem", "server.key"):
        st = (folder / name).stat()
        assert (st.st_uid, st.st_gid, _mode(folder / name)) == (0, account.pw_gid, 0o640), name
    for name in ("ca.key", "client.key", "passwd.static", "boss-password", "worker-secret",
                 "hook-password"):
        st = (folder / name).stat()
        assert (st.st_uid, st.st_gid, _mode(folder / name)) == (0, 0, 0o600), name
    for name, mode in (("data", 0o750), ("mosquitto.log", 0o640)):
        st = (folder / name).stat()
        assert (st.st_uid, st.st_gid, _mode(folder / name)) == (
            account.pw_uid, account.pw_gid, mode), name
    assert (folder / "data" / "mosquitto.db").stat().st_uid == account.pw_uid
    assert (folder / "data" / "soft").lstat().st_uid == 0  # neither link nor what it names


def test_write_passwd_keeps_the_group_and_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_passwd(path, {"a": "$7$one"})
    assert _mode(path) == 0o600  # a new file: its owner's only
    # the broker's group may read it (as root: the broker's account's group)
    group = grp.getgrnam(BROKER_USER).gr_gid if os.geteuid() == 0 else os.getgid()
    os.chown(path, -1, group)
    os.chmod(path, 0o640)
    before = path.stat()
    write_passwd(path, {"a": "$7$one", "b": "$7$two"})
    after = path.stat()
    assert after.st_ino != before.st_ino  # replaced, not rewritten in place
    assert (after.st_gid, _mode(path)) == (group, 0o640)
    assert read_passwd(path) == {"a": "$7$one", "b": "$7$two"}
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]  # no temporary file left
    # a temporary file left behind by a crash does not lend a new file its mode
    fresh = tmp_path / "fresh"
    leftover = tmp_path / f".fresh.{os.getpid()}.tmp"
    leftover.write_text("junk")
    leftover.chmod(0o644)
    write_passwd(fresh, {"a": "$7$one"})
    assert _mode(fresh) == 0o600 and not leftover.exists()
