"""From the settings to the boss's broker security: its own TLS and
credentials, the worker accounts it keeps, and what it hands to new workers.

Everything secret is read here, once, at boss start, so that a bad file or
variable stops the boss with a clear message before it touches anything;
none of it goes into an event, a log line or a command line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from attrs import field, frozen

from ecloud.config import Config
from ecloud.effects.messaging.mqtt import MqttAuth, parse_broker
from ecloud.errors import ConfigError
from ecloud.security.accounts import BrokerAccounts, reload_by_pid_file

log = logging.getLogger(__name__)


@frozen
class WorkerCredentials:
    """What a provider gives each new worker: its password (derived from the
    worker secret, see :mod:`ecloud.security.accounts`) and the CA's PEM."""

    accounts: BrokerAccounts = field(repr=False)
    ca_pem: bytes | None = field(default=None, repr=False)

    def password_for(self, worker_id: str) -> str:
        return self.accounts.password_for(worker_id)


@frozen
class BrokerSecurity:
    auth: MqttAuth | None = None
    accounts: BrokerAccounts | None = None
    workers: WorkerCredentials | None = None


def _origin(config: Config, name: str) -> str:
    return f"setting {name} ({config.origins.get(name, 'default')})"


def broker_security(config: Config, broker_url: str) -> BrokerSecurity:
    """The boss's :class:`BrokerSecurity` for ``broker_url``; empty for a
    plain broker without accounts (the embedded default on loopback)."""
    host, _port, tls = parse_broker(broker_url)
    ca_pem = None
    if config.broker_ca is not None:
        if not tls:
            raise ConfigError(f"{_origin(config, 'broker_ca')} is set but the broker URL "
                              f"{broker_url} is not mqtts://: the connection would not be "
                              "encrypted")
        try:
            ca_pem = Path(config.broker_ca).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{_origin(config, 'broker_ca')}: cannot read {config.broker_ca}: "
                              f"{exc.strerror or exc}") from None
        if b"BEGIN CERTIFICATE" not in ca_pem:
            raise ConfigError(f"{_origin(config, 'broker_ca')}: {config.broker_ca} holds no PEM "
                              "certificate")
    if (config.broker_user is None) != (config.broker_password is None):
        raise ConfigError("broker_user and broker_password go together: set both or neither")
    auth = None
    if tls or config.broker_user is not None:
        auth = MqttAuth(username=config.broker_user, password=config.broker_password,
                        ca_file=config.broker_ca)
    accounts = workers = None
    if config.broker_passwd_file is not None:
        if config.worker_secret is None:
            raise ConfigError(f"{_origin(config, 'broker_passwd_file')} is set: the worker "
                              "accounts need worker_secret too (best as file:PATH)")
        if config.broker_pid_file is None:
            raise ConfigError(f"{_origin(config, 'broker_passwd_file')} is set: the broker must "
                              "be told to reload it; set broker_pid_file")
        passwd = Path(config.broker_passwd_file)
        static = passwd.with_name(passwd.name + ".static")
        if not static.is_file():
            raise ConfigError(f"{static} does not exist: it holds the accounts other than the "
                              "workers' (ecloud broker config writes it)")
        accounts = BrokerAccounts(passwd, static, config.worker_secret.encode(), config.cluster,
                                  reload_by_pid_file(config.broker_pid_file))
        workers = WorkerCredentials(accounts, ca_pem)
    elif config.worker_secret is not None:
        log.warning("worker_secret is set but broker_passwd_file is not: workers get no "
                    "accounts of their own")
    if not tls and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the broker %s is plain MQTT: no TLS (fine on loopback, not across machines)",
                    broker_url)
    return BrokerSecurity(auth, accounts, workers)
