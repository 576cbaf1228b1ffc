"""A secured Mosquitto for a cluster (``ecloud broker config``).

Writes, into one folder (beside the certificates of ``ecloud certs init``)::

    mosquitto.conf     TLS listener, no anonymous access, the files below
    acl                who may read and write which topics (by pattern)
    passwd.static      the boss's own account (a PBKDF2 hash)
    passwd             what Mosquitto reads: the static accounts plus one
                       per worker VM, kept so by the boss (security.accounts)
    boss-password      the boss's password (mode 0600)
    hook-password      the password of OpenNebula's state hook (mode 0600): it
                       may publish to ``ecloud/<cluster>/hook`` only; copy it
                       to the front-end (``ecloud opennebula hook``)
    worker-secret      the key worker passwords are derived from (mode 0600)
    ecloud.toml        the boss's settings for all of the above

The ACL (docs/design.md, "MQTT"): the boss reads and writes the whole cluster
tree; any other user - a worker, whose username is its worker id - may
publish only on ``ecloud/<cluster>/from/<its name>`` and read only
``ecloud/<cluster>/to/<its name>``. So no worker can speak for another nor
read another's dispatches, and a dispatch can come only from the boss: only
the boss can write a worker's ``to`` topic.

Run again, it rewrites the configuration and ACL but keeps the passwords and
the secret (so running workers keep working). The embedded broker of
``ecloud run`` and of ``ecloud-boss`` tests is not this: it listens on
127.0.0.1 only, without TLS or accounts.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from attrs import frozen

from ecloud.effects.messaging.broker import MOSQUITTO_TUNING, mosquitto_logging
from ecloud.errors import UserError
from ecloud.security.accounts import hash_password, read_passwd, write_passwd
from ecloud.wire import BOSS_USER, HOOK_USER
from onehook.hook import hook_topic

NEEDED_CERTS = ("ca.pem", "server.pem", "server.key")


def acl_text(cluster: str, boss_user: str = BOSS_USER) -> str:
    return "\n".join([
        f"# written by ecloud broker config for cluster {cluster}",
        "# the boss: the whole cluster",
        f"user {boss_user}",
        f"topic readwrite ecloud/{cluster}/#",
        "",
        "# OpenNebula's state hook (onehook.hook, on the front-end): its callback topic only",
        f"user {HOOK_USER}",
        f"topic write {hook_topic(cluster)}",
        "",
        "# everyone (a worker's username is its worker id): its own topics only",
        f"pattern write ecloud/{cluster}/from/%u",
        f"pattern read ecloud/{cluster}/to/%u",
        "# and answers ecloud logs (run with the boss's account) under its own name",
        f"pattern write ecloud/{cluster}/logs/%u/#",
        "# and hears the boss's beat (without it a worker stops after --boss-grace)",
        f"pattern read ecloud/{cluster}/boss",
        "",
    ])


def mosquitto_conf(folder: Path, port: int, bind: str, cluster: str) -> str:
    lines = [
        f"# written by ecloud broker config for cluster {cluster}",
        "# TLS only, no anonymous clients; accounts in passwd (kept by the boss), ACL in acl",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {folder / 'passwd'}",
        f"acl_file {folder / 'acl'}",
        f"pid_file {folder / 'mosquitto.pid'}",
        f"listener {port} {bind}",
        f"cafile {folder / 'ca.pem'}",
        f"certfile {folder / 'server.pem'}",
        f"keyfile {folder / 'server.key'}",
        "tls_version tlsv1.2",
        "require_certificate false",
        *MOSQUITTO_TUNING,  # explained in ecloud.effects.messaging.broker
        f"persistence_location {folder / 'data'}/",
        *mosquitto_logging(folder / "mosquitto.log"),
    ]
    return "\n".join(lines) + "\n"


def _secret_file(path: Path, make: callable) -> str:
    """The secret in ``path``, made (mode 0600) if the file does not exist."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise UserError(f"{path} is empty: remove it to make a new one")
        return value
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    return value


@frozen
class BrokerFiles:
    folder: Path
    conf: Path
    toml: Path
    url: str


def write_broker_config(folder: str | os.PathLike, cluster: str, port: int = 8883,
                        bind: str = "0.0.0.0", host: str | None = None) -> BrokerFiles:
    """Write the files above; ``host`` is the name workers reach the broker
    by (it must be in the server certificate), for the URL in ecloud.toml."""
    target = Path(folder).resolve()
    missing = [name for name in NEEDED_CERTS if not (target / name).is_file()]
    if missing:
        raise UserError(f"{target} lacks {', '.join(missing)}: run `ecloud certs init --dir "
                        f"{folder} --host <broker host>` first")
    (target / "data").mkdir(mode=0o700, exist_ok=True)
    password = _secret_file(target / "boss-password", lambda: secrets.token_urlsafe(32))
    hook_password = _secret_file(target / "hook-password", lambda: secrets.token_urlsafe(32))
    _secret_file(target / "worker-secret", lambda: secrets.token_urlsafe(32))
    static = target / "passwd.static"
    entries = read_passwd(static)
    if BOSS_USER not in entries or HOOK_USER not in entries:
        entries.setdefault(BOSS_USER, hash_password(password))
        entries.setdefault(HOOK_USER, hash_password(hook_password))
        write_passwd(static, entries)
    passwd = target / "passwd"
    if not passwd.exists():  # the boss adds the workers' entries when it runs
        write_passwd(passwd, entries)
    else:  # written before: the static accounts it lacks (the hook's, new) join it
        current = read_passwd(passwd)
        if entries.keys() - current.keys():
            write_passwd(passwd, {**current, **{k: v for k, v in entries.items()
                                                if k not in current}})
    (target / "acl").write_text(acl_text(cluster), encoding="utf-8")
    conf = target / "mosquitto.conf"
    conf.write_text(mosquitto_conf(target, port, bind, cluster), encoding="utf-8")
    url = f"mqtts://{host or '127.0.0.1'}:{port}"
    toml = target / "ecloud.toml"
    toml.write_text("\n".join([
        f"# the boss's settings for the broker of {conf}; merge them into your ecloud.toml",
        f'cluster = "{cluster}"',
        f'broker = "{url}"',
        f'broker_ca = "{target / "ca.pem"}"',
        f'broker_user = "{BOSS_USER}"',
        f'broker_password = "file:{target / "boss-password"}"',
        f'broker_passwd_file = "{passwd}"',
        f'broker_pid_file = "{target / "mosquitto.pid"}"',
        f'worker_secret = "file:{target / "worker-secret"}"',
        "",
    ]), encoding="utf-8")
    return BrokerFiles(target, conf, toml, url)
