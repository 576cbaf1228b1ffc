"""No secret of a secured cluster shows anywhere an operator, a task or
another user of the machine can read: an end-to-end run over the broker of
``ecloud broker config`` (TLS, the boss's account, an account per worker),
then every place is scanned for the boss's password, the worker secret and
every worker's password - the event log (the database file itself and
``ecloud log``), what the CLI prints, the boss's, the workers' and the
broker's log files, the environment tasks see, and the command lines of the
running boss and workers."""

from __future__ import annotations

import uuid
from pathlib import Path

from ecloud.security.accounts import worker_password
from tests.support.e2e import Cluster
from tests.support.secure_broker import SecureBroker
from tests.support.worker_helpers import TAG


def _command_lines(name: str) -> list[str]:
    """The command lines of the processes of cluster ``name`` (tagged)."""
    marker = f"{TAG}={name}".encode()
    lines = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if marker not in environ.split(b"\0"):
                continue
            lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return lines


def test_no_secret_in_the_log_the_cli_output_the_log_files_or_process_listings(
        tmp_path: Path, sqlite_url: str) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    broker = SecureBroker(tmp_path / "broker", name).start()
    cluster = Cluster(sqlite_url, broker.url, tmp_path / "run", cluster=name)
    (tmp_path / "run").mkdir()
    cluster.env.update(broker.settings())
    try:
        # tasks that print their whole environment: nothing secret may be in it
        cluster.push([{"id": f"env{i}", "command": "env; echo done"} for i in range(4)])
        cluster.start_boss(workers=2)
        state = cluster.wait_all()
        listings = _command_lines(name)
        assert any("ecloud_worker.agent" in line for line in listings), listings  # the scan saw them
        outputs = []
        for args in (("status",), ("status", "--json"), ("log",), ("log", "--json"),
                     ("config", "show"), ("context", "show"), ("workers", "list")):
            result = cluster.ecloud(*args)
            outputs.append(result.stdout + result.stderr)
        cluster.stop_boss()
        secrets = {
            "the boss's broker password": (broker.folder / "boss-password").read_text().strip(),
            "the worker secret": (broker.folder / "worker-secret").read_text().strip(),
        }
        key = secrets["the worker secret"].encode()
        # every VM the boss started got an account (its worker may not have
        # announced itself before the four short tasks were done: seen in CI)
        for vm_name in state.vms:
            secrets[f"{vm_name}'s password"] = worker_password(key, name, vm_name)
        assert len(secrets) == 4, sorted(state.vms)  # two workers had accounts
        tails = "".join(e.event.stdout_tail for e in cluster.log()
                        if e.event.TYPE == "task.finished")
        assert "ECLOUD_BROKER_PASSWORD" not in tails and "done" in tails  # tasks ran `env`
        places = {
            "the log database": Path(sqlite_url.removeprefix("sqlite:///")).read_bytes()
            .decode(errors="replace"),
            "task output": tails,
            "CLI output": "\n".join(outputs),
            "process listings": "\n".join(listings),
        }
        for log in [*(tmp_path / "run").rglob("*.log"), broker.folder / "mosquitto.log"]:
            places[str(log)] = log.read_text(errors="replace")
        assert len(places) >= 7, sorted(places)  # boss.log, the workers' logs, the broker's
        for what, secret in secrets.items():
            for where, text in places.items():
                assert secret not in text, f"{what} found in {where}"
    finally:
        cluster.close()
        broker.stop()
