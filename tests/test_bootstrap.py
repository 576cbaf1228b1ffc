"""The worker VM's start script (worker/bootstrap/start.sh), run for real in
a scratch root with a recording stand-in for systemctl; and what the agent
makes of the VM's context at start (worker/settings.py), the datastore key
the boss hands out included."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest

from ecloud.errors import UserError
from ecloud_worker.settings import resolve

SCRIPT = Path(__file__).resolve().parent.parent / "worker" / "bootstrap" / "start.sh"
KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\xff\x00\n" \
      b"-----END OPENSSH PRIVATE KEY-----\n"  # not even UTF-8: bytes are kept as they are
KEY_B64 = base64.b64encode(KEY).decode()


def run_script(root: Path, **env: str) -> subprocess.CompletedProcess:
    calls = root / "systemctl.calls"
    systemctl = root / "fake-systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    systemctl.chmod(0o755)
    agent = root / "opt" / "ecloud" / "bin" / "ecloud-worker"
    agent.parent.mkdir(parents=True, exist_ok=True)
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    useradd = root / "fake-useradd"  # never the machine's: it would make a user here
    useradd.write_text(f'#!/bin/sh\necho "$*" >> {root / "useradd.calls"}\n')
    useradd.chmod(0o755)
    base = {"PATH": os.environ["PATH"], "ECLOUD_ROOT": str(root), "SYSTEMCTL": str(systemctl),
            "USERADD": str(useradd)}
    return subprocess.run(["sh", str(SCRIPT)], env={**base, **env}, capture_output=True, text=True,
                          timeout=30, check=False)


def test_it_installs_a_service_that_restarts_the_agent(tmp_path: Path) -> None:
    context = tmp_path / "var" / "run" / "one-context" / "one_env"
    context.parent.mkdir(parents=True)
    context.write_text("BOSS_ADDRESS='10.0.0.1:1883'\nECLOUD_CLUSTER='prod'\n")
    result = run_script(tmp_path, BOSS_ADDRESS="10.0.0.1:1883")
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "etc" / "systemd" / "system" / "ecloud-worker.service").read_text()
    assert f"ExecStart=/opt/ecloud/bin/ecloud-worker --context-file {context} " in unit
    assert "Restart=always" in unit
    assert (tmp_path / "systemctl.calls").read_text().splitlines() == [
        "daemon-reload", "enable --now ecloud-worker.service"]
    # tasks run as an unprivileged user of their own, made by the script
    assert " --run-as ecloud-task\n" in unit
    assert (tmp_path / "useradd.calls").read_text().split()[-1] == "ecloud-task"


def test_the_broker_account_is_kept_only_in_the_private_context_file(tmp_path: Path) -> None:
    password_b64 = base64.b64encode(b"the-vm-password").decode()
    result = run_script(tmp_path, BOSS_ADDRESS="10.0.0.1:8883", ECLOUD_RUN_AS="simuser",
                        ECLOUD_BROKER_PASSWORD_B64=password_b64,
                        ECLOUD_BROKER_CA_PEM_B64=base64.b64encode(b"PEM").decode())
    assert result.returncode == 0, result.stderr
    kept = tmp_path / "etc" / "ecloud" / "context.sh"
    assert f"ECLOUD_BROKER_PASSWORD_B64='{password_b64}'" in kept.read_text()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert password_b64 not in result.stdout + result.stderr
    unit = (tmp_path / "etc" / "systemd" / "system" / "ecloud-worker.service").read_text()
    assert password_b64 not in unit and " --run-as simuser\n" in unit


def test_without_the_context_package_it_keeps_the_variables_it_was_given(tmp_path: Path) -> None:
    result = run_script(tmp_path, BOSS_ADDRESS="10.0.0.1:1883", ECLOUD_WORKER_ID="ecloud-prod-3",
                        VMID="3")
    assert result.returncode == 0, result.stderr
    kept = (tmp_path / "etc" / "ecloud" / "context.sh").read_text()
    assert "BOSS_ADDRESS='10.0.0.1:1883'" in kept and "ECLOUD_WORKER_ID='ecloud-prod-3'" in kept
    assert "VMID='3'" in kept


def test_without_a_boss_address_it_says_so_and_fails(tmp_path: Path) -> None:
    result = run_script(tmp_path)
    assert result.returncode == 1
    assert "BOSS_ADDRESS is not in the VM's context" in result.stderr
    assert not (tmp_path / "etc" / "systemd").exists()


def test_it_decodes_the_base64_address_the_boss_passes(tmp_path: Path) -> None:
    result = run_script(tmp_path, BOSS_ADDRESS_B64="MTAuMC4wLjE6MTg4Mw==", ECLOUD_WORKER_ID="w")
    assert result.returncode == 0, result.stderr
    assert "BOSS_ADDRESS='10.0.0.1:1883'" in (tmp_path / "etc" / "ecloud" / "context.sh").read_text()


def test_the_script_never_shows_the_datastore_key_and_keeps_it_in_a_private_file(
        tmp_path: Path) -> None:
    result = run_script(tmp_path, BOSS_ADDRESS="10.0.0.1:1883", ECLOUD_WORKER_ID="w",
                        ECLOUD_DATASTORE_SSH_KEY_B64=KEY_B64)
    assert result.returncode == 0, result.stderr
    assert KEY_B64 not in result.stdout + result.stderr
    kept = tmp_path / "etc" / "ecloud" / "context.sh"
    assert f"ECLOUD_DATASTORE_SSH_KEY_B64='{KEY_B64}'" in kept.read_text()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    unit = (tmp_path / "etc" / "systemd" / "system" / "ecloud-worker.service").read_text()
    assert KEY_B64 not in unit


# ------------------------------------------------------------- the agent's settings


def settings_from(tmp_path: Path, context: str, **flags):
    """The agent's settings for a context file holding ``context`` (flags as
    click hands them over: None when not given)."""
    path = tmp_path / "context.sh"
    path.write_text(context)
    options = {"broker": None, "cluster": None, "worker_id": None, "slots": None,
               "work_dir": str(tmp_path / "work"), "heartbeat": 5.0, "vm_id": None,
               "context_file": str(path), "drain_timeout": 30.0, "datastore_key": None,
               "journal": None}
    return resolve({**options, **flags})


def test_the_key_in_the_context_becomes_a_private_file_in_the_work_dir(tmp_path: Path,
                                                                        monkeypatch) -> None:
    monkeypatch.setenv("ECLOUD_DATASTORE_SSH_KEY_B64", KEY_B64)  # as the start script had it
    monkeypatch.setenv("ECLOUD_DATASTORE_SSH_KEY", "decoded")  # as tests/support/fake_oned.py has it
    context = f"BOSS_ADDRESS='10.0.0.1:1883'\nECLOUD_DATASTORE_SSH_KEY_B64='{KEY_B64}'\n"
    settings = settings_from(tmp_path, context)
    key = Path(settings.datastore_key)
    assert key == tmp_path / "work" / ".ecloud" / "datastore_key"
    assert key.read_bytes() == KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert os.listdir(key.parent) == ["datastore_key"]  # no temporary file left behind
    assert KEY_B64 not in repr(settings)
    # tasks inherit the agent's environment: the key is not in it
    assert "ECLOUD_DATASTORE_SSH_KEY_B64" not in os.environ
    assert "ECLOUD_DATASTORE_SSH_KEY" not in os.environ

    # the next start writes it anew: a rotated key takes over, still 0600
    key.chmod(0o644)
    rotated = b"another key\n"
    context = ("BOSS_ADDRESS='10.0.0.1:1883'\n"
               f"ECLOUD_DATASTORE_SSH_KEY_B64='{base64.b64encode(rotated).decode()}'\n")
    assert Path(settings_from(tmp_path, context).datastore_key).read_bytes() == rotated
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_key_path_given_anywhere_wins_over_the_key_in_the_context(tmp_path: Path) -> None:
    context = f"BOSS_ADDRESS='10.0.0.1:1883'\nECLOUD_DATASTORE_SSH_KEY_B64='{KEY_B64}'\n"
    # --datastore-key (or $ECLOUD_DATASTORE_KEY: click hands both over the same way)
    assert settings_from(tmp_path, context, datastore_key="/keys/mine").datastore_key == "/keys/mine"
    # ECLOUD_DATASTORE_KEY in the context is a path too, and comes first
    with_path = context + "ECLOUD_DATASTORE_KEY='/keys/from-context'\n"
    assert settings_from(tmp_path, with_path).datastore_key == "/keys/from-context"
    assert not (tmp_path / "work" / ".ecloud").exists()  # nothing written
    # no key anywhere: ssh's own defaults
    assert settings_from(tmp_path, "BOSS_ADDRESS='10.0.0.1:1883'\n").datastore_key is None


def test_a_bad_key_in_the_context_is_a_clear_error_that_does_not_quote_it(tmp_path: Path) -> None:
    bad = "c2VjcmV0!!"
    with pytest.raises(UserError) as info:
        settings_from(tmp_path, f"BOSS_ADDRESS='h'\nECLOUD_DATASTORE_SSH_KEY_B64='{bad}'\n")
    assert str(info.value) == "context variable ECLOUD_DATASTORE_SSH_KEY_B64 is not valid base64"

    # a key folder that is not ours (here: a link elsewhere) is refused, not followed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / ".ecloud").symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"cannot keep the datastore key in .*\.ecloud"):
        settings_from(tmp_path, f"BOSS_ADDRESS='h'\nECLOUD_DATASTORE_SSH_KEY_B64='{KEY_B64}'\n")
    assert os.listdir(elsewhere) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root agent runs tasks as another user")
def test_with_run_as_the_task_user_gets_a_private_copy_of_the_key(tmp_path: Path) -> None:
    """Staging runs as the task's user: the context's key is copied to a
    folder of that user's alone, again at every start (the agent's own copy
    stays root's)."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    context = (f"BOSS_ADDRESS='10.0.0.1:1883'\nECLOUD_DATASTORE_SSH_KEY_B64='{KEY_B64}'\n"
               "ECLOUD_RUN_AS='nobody'\n")
    for _ in range(2):  # a restart finds the folders as the first start left them
        settings = settings_from(tmp_path, context)
        key = Path(settings.datastore_key)
        assert key == tmp_path / "work" / ".ecloud-task" / "datastore_key"
        assert key.read_bytes() == KEY and settings.run_as.uid == nobody.pw_uid
        for path, mode in ((key, 0o600), (key.parent, 0o700)):
            info = path.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, mode)
        own = tmp_path / "work" / ".ecloud" / "datastore_key"
        assert own.stat().st_uid == 0
