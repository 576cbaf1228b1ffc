"""The secured broker of ``ecloud broker config``, against a real Mosquitto
started with exactly that configuration (TLS, no anonymous access, the
password file the boss keeps, the ACL by pattern)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ecloud.effects.messaging.mqtt import Connection, MqttAuth
from ecloud.security.accounts import (
    check_password,
    hash_password,
    read_passwd,
    worker_password,
)
from tests.support.brokers import Client, unique, wait_for
from tests.support.secure_broker import HOST, SecureBroker

CLUSTER = "sec"


def _refusal(broker: SecureBroker, auth: MqttAuth | None, url: str | None = None) -> str:
    conn = Connection(url or broker.url, unique("c"), on_message=lambda t, p: None,
                      clean_session=True, auth=auth)
    with pytest.raises(ConnectionError) as info:
        conn.start(wait=3)
    return str(info.value)


def from_topic(worker: str) -> str:
    return f"ecloud/{CLUSTER}/from/{worker}"


def to_topic(worker: str) -> str:
    return f"ecloud/{CLUSTER}/to/{worker}"


def test_anonymous_clients_and_wrong_passwords_are_refused(secure_broker: SecureBroker) -> None:
    assert "Not authorized" in _refusal(secure_broker, MqttAuth(ca_file=secure_broker.ca))
    wrong = MqttAuth("ecloud-boss", "not-the-password", secure_broker.ca)
    assert "Not authorized" in _refusal(secure_broker, wrong)
    # a worker name the boss never gave an account to
    assert "Not authorized" in _refusal(secure_broker, secure_broker.worker_auth("w-nobody"))
    # the boss's own account works (the control)
    with Client(secure_broker.url, unique("boss"), clean_session=True,
                auth=secure_broker.boss_auth).start(wait=5):
        pass


def test_a_client_without_the_cluster_ca_fails_the_tls_handshake(secure_broker: SecureBroker) -> None:
    no_ca = MqttAuth("ecloud-boss", secure_broker.boss_auth.password, None)  # the system's CAs
    assert "certificate" in _refusal(secure_broker, no_ca)
    # a certificate for 127.0.0.1 does not do for another name of it (host name checked)
    other = secure_broker.url.replace(HOST, "localhost")
    assert "certificate" in _refusal(secure_broker, secure_broker.boss_auth, other)
    # and plain MQTT on the TLS port gets nowhere
    plain = secure_broker.url.replace("mqtts://", "mqtt://")
    _refusal(secure_broker, MqttAuth("ecloud-boss", secure_broker.boss_auth.password), plain)


def test_a_worker_can_neither_speak_for_another_nor_read_its_dispatches(
        secure_broker: SecureBroker) -> None:
    secure_broker.accounts().sync(["w-a", "w-b"])
    boss = Client(secure_broker.url, unique("boss"), (f"ecloud/{CLUSTER}/from/+",),
                  clean_session=True, auth=secure_broker.boss_auth)
    with boss.start():
        # w-a publishes as w-b: Mosquitto drops the message and the connection
        _forge(secure_broker, "w-a", from_topic("w-b"), b"forged report")
        a = wait_for(lambda: _started(Client(
            secure_broker.url, "w-a", (to_topic("w-a"), to_topic("w-b"), f"ecloud/{CLUSTER}/from/+"),
            clean_session=True, auth=secure_broker.worker_auth("w-a"))), 10, "w-a to connect")
        with a:
            a.publish(from_topic("w-a"), b"genuine")
            wait_for(lambda: boss.payloads(from_topic("w-a")), 10, "w-a's own report")
            assert boss.payloads() == [b"genuine"]
            # the boss dispatches to w-b, then to w-a: w-a, subscribed to both
            # (and to every worker's reports), gets only its own dispatch
            boss.publish(to_topic("w-b"), b"for b")
            boss.publish(to_topic("w-a"), b"for a")
            wait_for(lambda: a.payloads(to_topic("w-a")), 10, "w-a's dispatch")
            assert a.payloads() == [b"for a"]
        # nor can a worker forge a dispatch to another: only the boss writes to/<worker>
        b = wait_for(lambda: _started(Client(secure_broker.url, "w-b", (to_topic("w-b"),),
                                             clean_session=True,
                                             auth=secure_broker.worker_auth("w-b"))),
                     10, "w-b to connect")
        with b:
            _forge(secure_broker, "w-a", to_topic("w-b"), b"forged dispatch")
            boss.publish(to_topic("w-b"), b"real dispatch")
            wait_for(lambda: b.payloads(), 10, "w-b's dispatch")
            assert b.payloads() == [b"real dispatch"]


def test_a_worker_hears_the_boss_beat_and_cannot_fake_it(secure_broker: SecureBroker) -> None:
    """Workers stop their attempts when they hear no boss for their grace: the
    ACL must let every worker read the boss's (retained) beat, and no worker
    write it."""
    secure_broker.accounts().sync(["w-a"])
    beat = f"ecloud/{CLUSTER}/boss"
    boss = Client(secure_broker.url, unique("boss"), clean_session=True,
                  auth=secure_broker.boss_auth)
    with boss.start():
        boss.conn.publish(beat, b"the boss is here", retain=True)
        _forge(secure_broker, "w-a", beat, b"a fake beat")
        a = wait_for(lambda: _started(Client(secure_broker.url, "w-a", (beat,), clean_session=True,
                                             auth=secure_broker.worker_auth("w-a"))),
                     10, "w-a to connect")
        with a:
            wait_for(lambda: a.payloads(beat), 10, "the retained beat")
            assert a.payloads() == [b"the boss is here"]


def _forge(broker: SecureBroker, worker: str, topic: str, payload: bytes) -> None:
    """Connect as ``worker``, publish where it may not, and see the broker
    hang up on it."""
    forger = wait_for(lambda: _started(Client(broker.url, unique("forger"), clean_session=True,
                                              auth=broker.worker_auth(worker))),
                      10, f"{worker} to connect")
    try:
        forger.conn.client.publish(topic, payload, qos=1)
        wait_for(lambda: not forger.conn.connected.is_set(), 10,
                 f"the broker to disconnect {worker} for publishing on {topic}")
    finally:
        forger.stop()


def _started(client: Client) -> Client | None:
    """The client, connected and subscribed, or None while the broker does
    not know its account yet (the reload after a sync is asynchronous)."""
    try:
        return client.start(wait=2)
    except ConnectionError:
        return None


def test_a_removed_workers_credentials_stop_working(secure_broker: SecureBroker) -> None:
    accounts = secure_broker.accounts()
    accounts.sync(["w-a", "w-b"])
    a = wait_for(lambda: _started(Client(secure_broker.url, "w-a", (to_topic("w-a"),),
                                         clean_session=True,
                                         auth=secure_broker.worker_auth("w-a"))),
                 10, "w-a's account to be loaded")
    try:
        assert accounts.sync(["w-b"])  # w-a's VM is gone
        # Mosquitto checks connected clients again on reload: w-a is dropped ...
        wait_for(lambda: not a.conn.connected.is_set(), 10, "w-a to be disconnected")
        assert set(read_passwd(secure_broker.folder / "passwd")) == {"ecloud-boss", "ecloud-hook", "w-b"}
    finally:
        a.stop()
    # ... and cannot come back, while w-b still can
    assert "Not authorized" in _refusal(secure_broker, secure_broker.worker_auth("w-a"))
    with Client(secure_broker.url, "w-b", clean_session=True,
                auth=secure_broker.worker_auth("w-b")).start(wait=5):
        pass


def test_the_password_file_holds_hashes_mosquitto_reads() -> None:
    hashed = hash_password("s3cret", salt=b"0123456789ab")
    assert hashed.startswith("$7$101$") and "s3cret" not in hashed
    assert check_password("s3cret", hashed) and not check_password("other", hashed)
    secret = b"k" * 32
    assert worker_password(secret, "c", "w1") == worker_password(secret, "c", "w1")
    assert worker_password(secret, "c", "w1") != worker_password(secret, "c", "w2")
    assert worker_password(secret, "c", "w1") != worker_password(secret, "d", "w1")


def test_the_cli_writes_the_certificates_and_the_broker_configuration(tmp_path) -> None:
    def ecloud(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ecloud.cli.main", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    folder = tmp_path / "b"
    assert ecloud("broker", "config", "--dir", str(folder)).returncode != 0  # no certificates yet
    made = ecloud("certs", "init", "--dir", str(folder), "--host", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    again = ecloud("certs", "init", "--dir", str(folder), "--host", "127.0.0.1")
    assert again.returncode != 0 and "already holds" in again.stderr
    assert "Traceback" not in again.stderr
    config = ecloud("broker", "config", "--dir", str(folder), "--port", "18999")
    assert config.returncode == 0, config.stderr
    for name in ("ca.key", "client.key", "boss-password", "worker-secret", "hook-password",
                 "passwd.static"):
        assert (folder / name).stat().st_mode & 0o077 == 0, name
    # what the broker reads: at most its account's group too (tests/test_broker_user.py)
    for name in ("server.key", "passwd"):
        assert (folder / name).stat().st_mode & 0o037 == 0, name
    password = (folder / "boss-password").read_text().strip()
    # secrets stay in their files: not in what the commands print, not in the config
    for text in (made.stdout, made.stderr, config.stdout, config.stderr,
                 (folder / "mosquitto.conf").read_text(), (folder / "ecloud.toml").read_text()):
        assert password not in text
    # run again: the same passwords (running workers keep working)
    assert ecloud("broker", "config", "--dir", str(folder), "--port", "18999").returncode == 0
    assert (folder / "boss-password").read_text().strip() == password


def test_the_boss_settings_are_checked_at_start(tmp_path) -> None:
    from ecloud.config import load_config
    from ecloud.errors import ConfigError
    from ecloud.security.setup import broker_security

    def security(**env: str):
        return broker_security(load_config({}, {"HOME": str(tmp_path), **env}),
                               env.get("ECLOUD_BROKER", "mqtt://127.0.0.1:1883"))

    assert security().auth is None and security().accounts is None  # the embedded default
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not mqtts://"):
        security(ECLOUD_BROKER_CA=str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        security(ECLOUD_BROKER="mqtts://h:8883", ECLOUD_BROKER_CA=str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match="go together"):
        security(ECLOUD_BROKER_USER="boss")
    with pytest.raises(ConfigError, match="worker_secret"):
        security(ECLOUD_BROKER_PASSWD_FILE=str(tmp_path / "passwd"))
    with pytest.raises(ConfigError, match="broker_pid_file"):
        security(ECLOUD_BROKER_PASSWD_FILE=str(tmp_path / "passwd"), ECLOUD_WORKER_SECRET="s" * 32)
    with pytest.raises(ConfigError, match="passwd.static does not exist"):
        security(ECLOUD_BROKER_PASSWD_FILE=str(tmp_path / "passwd"), ECLOUD_WORKER_SECRET="s" * 32,
                 ECLOUD_BROKER_PID_FILE=str(tmp_path / "pid"))
    (tmp_path / "passwd.static").write_text("")
    with pytest.raises(ConfigError, match="too short"):
        security(ECLOUD_BROKER_PASSWD_FILE=str(tmp_path / "passwd"), ECLOUD_WORKER_SECRET="short",
                 ECLOUD_BROKER_PID_FILE=str(tmp_path / "pid"))
    # secrets are masked wherever the configuration is shown
    config = load_config({}, {"HOME": str(tmp_path), "ECLOUD_BROKER_PASSWORD": "hunter2-boss",
                              "ECLOUD_WORKER_SECRET": "hunter2-workers"})
    shown = repr(config) + repr(config.describe())
    assert "hunter2" not in shown and "*** (set)" in shown


def test_a_worker_cannot_take_over_the_boss_s_session(tmp_path, secure_broker) -> None:
    """A worker's account connects with the client id the boss used to have
    (``ecloud-<cluster>-boss``, persistent) and plants a subscription to
    every worker's dispatches in that session. The boss's id is its start's
    own and its session clean: it never reads that subscription, so it
    neither logs its own dispatches back as rejected input nor shows their
    environment - across a restart too."""
    from tests.support.e2e import Cluster

    cluster = Cluster(f"sqlite:///{tmp_path / 'log.db'}", secure_broker.url, tmp_path / "run",
                      cluster=CLUSTER)
    (tmp_path / "run").mkdir()
    cluster.env.update(secure_broker.settings())
    secure_broker.accounts().sync(["local-1"])
    thief = wait_for(lambda: _started(Client(secure_broker.url, f"ecloud-{CLUSTER}-boss",
                                             clean_session=False,
                                             auth=secure_broker.worker_auth("local-1"))),
                     10, "the thief to connect")
    thief.conn.client.subscribe(f"ecloud/{CLUSTER}/to/+", qos=1)
    thief.stop()  # disconnects; its session - and subscription - would stay for that id
    try:
        secret = "tok-very-secret-789"
        cluster.push([{"id": f"t{i}", "command": "true", "env": {"API_TOKEN": secret}}
                      for i in range(4)])
        cluster.start_boss(workers=1)
        cluster.wait_all(timeout=60)
        assert cluster.stop_boss() == 0
        cluster.push([{"id": "again", "command": "true", "env": {"API_TOKEN": secret}}],
                     name="more.json")
        cluster.start_boss(workers=1)
        cluster.wait_all(timeout=60)
        rejected = [r.event for r in cluster.log() if r.event.TYPE == "input.rejected"]
        assert not [r for r in rejected if "/to/" in r.source], rejected
        assert all(secret not in r.excerpt for r in rejected)
    finally:
        cluster.close()


def hook_auth(broker: SecureBroker) -> MqttAuth:
    return MqttAuth("ecloud-hook", (broker.folder / "hook-password").read_text().strip(), broker.ca)


def test_the_hook_s_account_may_publish_its_callbacks_and_nothing_else(
        secure_broker: SecureBroker) -> None:
    """OpenNebula's state hook has an account of its own (issue 24): it may
    write ``ecloud/<cluster>/hook`` only - no worker's reports, no dispatch,
    no beat - and no worker may write the hook's topic."""
    hook_topic = f"ecloud/{CLUSTER}/hook"
    secure_broker.accounts().sync(["w-a"])
    boss = Client(secure_broker.url, unique("boss"), (hook_topic, from_topic("w-a")),
                  clean_session=True, auth=secure_broker.boss_auth)
    with boss.start():
        hook = Client(secure_broker.url, unique("hook"), clean_session=True,
                      auth=hook_auth(secure_broker)).start(wait=5)
        try:
            hook.conn.client.publish(hook_topic, b"a callback", qos=1)
            wait_for(lambda: boss.payloads(hook_topic), 10, "the hook's callback at the boss")
        finally:
            hook.stop()
        for topic in (from_topic("w-a"), to_topic("w-a"), f"ecloud/{CLUSTER}/boss"):
            forger = Client(secure_broker.url, unique("hook"), clean_session=True,
                            auth=hook_auth(secure_broker)).start(wait=5)
            try:
                forger.conn.client.publish(topic, b"forged by the hook", qos=1)
                wait_for(lambda f=forger: not f.conn.connected.is_set(), 10,
                         f"the broker to hang up on the hook writing {topic}")
            finally:
                forger.stop()
        _forge(secure_broker, "w-a", hook_topic, b"a worker's forged callback")
        assert boss.payloads(hook_topic) == [b"a callback"]
        assert boss.payloads(from_topic("w-a")) == []
