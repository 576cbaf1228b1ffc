"""The worker VM's start script (worker/bootstrap/start.sh), run for real in
a scratch root with a recording stand-in for systemctl."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "worker" / "bootstrap" / "start.sh"


def run_script(root: Path, **env: str) -> subprocess.CompletedProcess:
    calls = root / "systemctl.calls"
    systemctl = root / "fake-systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    systemctl.chmod(0o755)
    agent = root / "opt" / "ecloud" / "bin" / "ecloud-worker"
    agent.parent.mkdir(parents=True, exist_ok=True)
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    base = {"PATH": os.environ["PATH"], "ECLOUD_ROOT": str(root), "SYSTEMCTL": str(systemctl)}
    return subprocess.run(["sh", str(SCRIPT)], env={**base, **env}, capture_output=True, text=True,
                          timeout=30)


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
