"""A Mosquitto of its own with the configuration ``ecloud broker config``
writes: TLS on a free port of 127.0.0.1, no anonymous access, the password
file the boss keeps, the ACL by pattern - for the security tests and the
end-to-end suite run over TLS with per-worker accounts.

The fixture ``secure_broker`` starts it in the test's temporary folder and
stops it afterwards; a missing ``mosquitto`` fails the test (never skips).
It runs as whoever runs the tests (``user=None``: pytest's temporary
folders are private to their owner, out of reach of any other account); a
broker that drops to an account of its own (``user="mosquitto"``) needs a
folder that account can reach: :func:`reachable_folder`.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ecloud.effects.messaging.broker import die_with_parent, free_port
from ecloud.effects.messaging.mqtt import MqttAuth
from ecloud.security.accounts import BrokerAccounts, reload_by_pid_file
from ecloud.security.broker_config import BOSS_USER, write_broker_config
from ecloud.security.certs import init_certs

HOST = "127.0.0.1"


class SecureBroker:
    def __init__(self, folder: Path, cluster: str, user: str | None = None) -> None:
        self.folder = folder
        self.cluster = cluster
        self.port = free_port(HOST)
        init_certs(folder, [HOST], cluster, days=2)
        self.files = write_broker_config(folder, cluster, self.port, HOST, HOST, user=user)
        self.url = self.files.url
        self.ca = str(folder / "ca.pem")
        self.proc: subprocess.Popen | None = None

    @property
    def boss_auth(self) -> MqttAuth:
        return MqttAuth(BOSS_USER, (self.folder / "boss-password").read_text().strip(), self.ca)

    def accounts(self) -> BrokerAccounts:
        secret = (self.folder / "worker-secret").read_text().strip().encode()
        return BrokerAccounts(self.folder / "passwd", self.folder / "passwd.static", secret,
                              self.cluster, reload_by_pid_file(self.files.pid))

    def worker_auth(self, worker_id: str, password: str | None = None) -> MqttAuth:
        return MqttAuth(worker_id, password or self.accounts().password_for(worker_id), self.ca)

    def settings(self) -> dict[str, str]:
        """The boss's settings, as environment variables."""
        return {"ECLOUD_BROKER": self.url, "ECLOUD_BROKER_CA": self.ca,
                "ECLOUD_BROKER_USER": BOSS_USER,
                "ECLOUD_BROKER_PASSWORD": f"file:{self.folder / 'boss-password'}",
                "ECLOUD_BROKER_PASSWD_FILE": str(self.folder / "passwd"),
                "ECLOUD_BROKER_PID_FILE": str(self.files.pid),
                "ECLOUD_WORKER_SECRET": f"file:{self.folder / 'worker-secret'}"}

    def start(self, deadline: float = 10.0) -> SecureBroker:
        mosquitto = shutil.which("mosquitto")
        if mosquitto is None:
            pytest.fail("mosquitto is not on PATH: the broker security tests need it")
        with open(self.folder / "stdout.log", "ab") as log:
            self.proc = subprocess.Popen([mosquitto, "-c", str(self.files.conf)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True,
                                         preexec_fn=die_with_parent)  # noqa: PLW1509 - prctl only, as ecloud.effects.messaging.broker
        context = ssl.create_default_context(cafile=self.ca)
        until = time.monotonic() + deadline
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.proc.returncode}: "
                            f"{(self.folder / 'mosquitto.log').read_text(errors='replace')[-2000:]}")
            try:  # a TLS handshake: the listener is up and has its certificate
                with socket.create_connection((HOST, self.port), timeout=1) as raw, \
                        context.wrap_socket(raw, server_hostname=HOST):
                    pass
                if self.files.pid.exists():
                    return self
            except OSError:
                pass
            if time.monotonic() > until:
                pytest.fail(f"mosquitto did not take TLS connections within {deadline:g}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        return (self.folder / "mosquitto.log").read_text(errors="replace")


@contextmanager
def reachable_folder() -> Iterator[Path]:
    """A fresh folder under the system's temporary folder that any account
    may pass through (mode 0711: only its maker may list or change it), for
    a broker that runs as an account of its own; removed after."""
    base = Path(tempfile.mkdtemp(prefix="ecloud-broker-"))
    try:
        os.chmod(base, 0o711)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    broker = SecureBroker(tmp_path / "broker", "sec").start()
    try:
        yield broker
    finally:
        broker.stop()
