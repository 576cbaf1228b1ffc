"""A worker VM's own broker account, end to end through OpenNebula: the
boss makes the account before the spawn, the VM gets its password and the
cluster's CA through the context (base64), its worker connects over TLS as
itself and runs a task, and once the VM is killed its account is gone and
its password opens nothing. The unmodified pyone client talks to the fake
oned (tests/support/fake_oned.py), which starts a real ``ecloud-worker``."""

from __future__ import annotations

import base64
import threading
import uuid

from ecloud.boss.loop import Boss
from ecloud.cli.boss import make_provider
from ecloud.config import load_config
from ecloud.effects.messaging.mqtt import Connection
from ecloud.events import types as ev
from ecloud.log.url import open_store
from ecloud.security.accounts import read_passwd, worker_password
from ecloud.security.setup import broker_security
from ecloud.taskfiles.taskfile import parse_tasks
from tests.support import fake_oned as oned
from tests.support.brokers import wait_for
from tests.support.fake_oned import ecloud_worker_command
from tests.support.secure_broker import SecureBroker

fake_oned = oned.fake_oned  # the fixture


def test_a_vm_gets_its_own_account_through_the_context_and_loses_it_when_killed(
        fake_oned, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./ecloud.toml of anyone's
    cluster = f"acc{uuid.uuid4().hex[:8]}"
    broker = SecureBroker(tmp_path / "broker", cluster).start()
    db = tmp_path / "events.db"
    config = load_config({}, {
        "HOME": str(tmp_path), "ECLOUD_DB": f"sqlite:///{db}", "ECLOUD_CLUSTER": cluster,
        "ECLOUD_ONE_URL": fake_oned.url, "ECLOUD_ONE_SESSION": fake_oned.session,
        "ECLOUD_ONE_TEMPLATE": str(fake_oned.template_id), "ECLOUD_ONE_DEADLINE": "5",
        **broker.settings()})
    security = broker_security(config, broker.url)
    prov = make_provider("opennebula", config, broker.url, 1, security)
    fake_oned.worker_command = ecloud_worker_command(heartbeat=0.5)
    boss = Boss(config.db, broker.url, provider=prov, cluster=cluster, poll=0.05,
                observe_every=0.2, auth=security.auth, accounts=security.accounts)
    thread = threading.Thread(target=boss.run, daemon=True)
    thread.start()
    name = f"ecloud-{cluster}-1"
    password = worker_password((broker.folder / "worker-secret").read_text().strip().encode(),
                               cluster, name)

    def logged(tag: str) -> list:
        with open_store(config.db, create=False) as store:
            return [r.event for r in store.read(1) if r.event.TYPE == tag]

    try:
        wait_for(boss.ready.is_set, 20, "the boss to start")
        (task,) = parse_tasks([{"id": "t", "command": "env"}])
        boss.submit([ev.TasksSubmitted("b1", (task,), "test"), ev.VMRequested(name, "test")])
        (done,) = wait_for(lambda: logged("task.finished"), 60,
                           "the task to finish on the VM's worker")
        assert done.exit_code == 0, (done.reason, done.stderr_tail)
        assert password not in done.stdout_tail  # the task's environment lacks it
        assert f"u'{name}'" in broker.log()  # the worker logged in as itself
        (allocated,) = logged("vm.allocated")
        context = fake_oned.vm(allocated.vm_id).context
        assert base64.b64decode(context["ECLOUD_BROKER_PASSWORD_B64"]).decode() == password
        assert base64.b64decode(context["ECLOUD_BROKER_CA_PEM_B64"]) == \
            (broker.folder / "ca.pem").read_bytes()
        assert name in read_passwd(broker.folder / "passwd")

        boss.submit([ev.VMKillRequested(allocated.vm_id, "test")])
        wait_for(lambda: name not in read_passwd(broker.folder / "passwd"), 60,
                 "the VM's account to be removed")
    finally:
        boss.stop()
        thread.join(30)
        try:
            assert not thread.is_alive() and boss.error is None
            conn = Connection(broker.url, "after", on_message=lambda t, p: None,
                              clean_session=True, auth=broker.worker_auth(name, password))
            refused = wait_for(lambda: _refused(conn), 10, "the killed VM's password to fail")
            assert "Not authorized" in refused
            with open_store(config.db, create=False) as store:
                bodies = b"".join(body for *_, body in store.read_raw(1))
            assert password.encode() not in bodies
            assert base64.b64encode(password.encode()) not in bodies
        finally:
            broker.stop()


def _refused(conn: Connection) -> str | None:
    try:
        conn.start(wait=3)
    except ConnectionError as exc:
        return str(exc)
    conn.stop()
    return None
