"""A secured Mosquitto for a cluster (``ecloud broker config``).

Writes, into one folder (beside the certificates of ``ecloud certs init``)::

    mosquitto.conf     TLS listener, no anonymous access, the files below,
                       and the account the broker runs as (``user``)
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
    data/              what the broker writes: its persistence and its pid file
    mosquitto.log      the broker's log

The broker's account (``--user``, default ``mosquitto`` when this machine
has it): Mosquitto 2, started as root, switches to it *right after reading
mosquitto.conf* - before it writes its pid file, opens its log and its
persistence, reads the password file and the ACL, and loads the
certificates - and on SIGHUP it reads all of these again as that account.
So what the broker reads (mosquitto.conf, acl, passwd, ca.pem, server.pem,
server.key) is given to the account's primary group, mode 0640, the folder
0750 with that group; what it writes (data/, mosquitto.log) is the
account's own. The CA's key, the client key, passwd.static and the
passwords and secret stay 0600, its owner's only: the broker needs none of
them. The boss replaces passwd keeping its group and mode
(:func:`ecloud.security.accounts.write_passwd`), so the broker still reads
it after a reload. Without an account the broker runs as whoever starts
it (``user root``: Mosquitto's default would be to switch to ``mosquitto``)
and the folder, passwd and server.key stay their owner's only (0700, 0600).

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
import pwd
import secrets
import stat
from pathlib import Path

from attrs import frozen

from ecloud.effects.messaging.broker import MOSQUITTO_TUNING, mosquitto_logging
from ecloud.errors import UserError
from ecloud.security.accounts import hash_password, read_passwd, write_passwd
from ecloud.wire import BOSS_USER, HOOK_USER
from onehook.hook import hook_topic

NEEDED_CERTS = ("ca.pem", "server.pem", "server.key")

#: the account the broker runs as when none is given, if this machine has it
#: (Debian's and most packages' own)
DEFAULT_BROKER_USER = "mosquitto"
#: what the broker reads, at start and again on SIGHUP: its account's group may read them
BROKER_READS = ("mosquitto.conf", "acl", "passwd", "ca.pem", "server.pem", "server.key")
#: what the broker never needs: its owner's only, whoever the broker runs as
OWNER_ONLY = ("ca.key", "client.key", "passwd.static", "boss-password", "hook-password",
              "worker-secret")
DATA_DIR = "data"
LOG_FILE = "mosquitto.log"
PID_FILE = "mosquitto.pid"  # in DATA_DIR: Mosquitto writes (and removes) it as its account


@frozen
class BrokerAccount:
    """The account the broker runs as, and its primary group."""

    name: str
    uid: int
    gid: int


def broker_account(name: str) -> BrokerAccount:
    """The account ``name`` of this machine; :class:`UserError` if there is none."""
    try:
        entry = pwd.getpwnam(name) if name and not any(c.isspace() for c in name) else None
    except (KeyError, ValueError):  # none; a NUL in the name
        entry = None
    if entry is None:
        raise UserError(f"--user {name!r}: no such account on this machine (the broker would "
                        "refuse to start); create it or name another")
    return BrokerAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _can_hand_over(account: BrokerAccount) -> bool:
    """Whether we may give files to ``account`` (root may; anyone may to itself)."""
    return os.geteuid() == 0 or account.uid == os.geteuid()


def resolve_broker_user(requested: str | None,
                        default: str = DEFAULT_BROKER_USER) -> tuple[str | None, str | None]:
    """The account the broker is to run as (None: whoever starts it) and a
    warning for the operator when that is not a dedicated account.

    ``requested`` (``--user``) must exist, and only root can hand the
    broker's files to another account than its own; without it, ``default``
    if this machine has it and we may hand the files over."""
    anyone = ("the broker will run as whoever starts it - as root if root starts it, "
              "which Mosquitto warns against")
    if requested is not None:
        account = broker_account(requested)
        if account.uid == 0:
            return None, f"--user {requested}: {anyone}"
        if not _can_hand_over(account):
            raise UserError(f"--user {requested}: only root can give the broker's files to "
                            "another account; run this as root")
        return account.name, None
    try:
        account = broker_account(default)
    except UserError:
        return None, (f"this machine has no {default!r} account and no --user was given: "
                      f"{anyone}; create the account or pass --user NAME")
    if not _can_hand_over(account):
        return None, (f"not root, so the broker's files cannot be given to {default!r}: "
                      f"{anyone}; run this as root (or pass --user with your own name)")
    return account.name, None


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


def mosquitto_conf(folder: Path, port: int, bind: str, cluster: str,
                   user: str | None = None) -> str:
    if user is None:
        who = ["# no account of its own: the broker keeps the one that starts it (without this",
               "# line Mosquitto, started as root, would switch to 'mosquitto')",
               "user root"]
    else:
        who = ["# started as root, Mosquitto switches to this account right after reading this",
               "# file: all the files below are read and written as it (see ecloud broker config)",
               f"user {user}"]
    lines = [
        f"# written by ecloud broker config for cluster {cluster}",
        "# TLS only, no anonymous clients; accounts in passwd (kept by the boss), ACL in acl",
        *who,
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {folder / 'passwd'}",
        f"acl_file {folder / 'acl'}",
        f"pid_file {folder / DATA_DIR / PID_FILE}",
        f"listener {port} {bind}",
        f"cafile {folder / 'ca.pem'}",
        f"certfile {folder / 'server.pem'}",
        f"keyfile {folder / 'server.key'}",
        "tls_version tlsv1.2",
        "require_certificate false",
        *MOSQUITTO_TUNING,  # explained in ecloud.effects.messaging.broker
        f"persistence_location {folder / DATA_DIR}/",
        # the embedded broker's logging, less its `user root`: the account is set above
        *(line for line in mosquitto_logging(folder / LOG_FILE) if not line.startswith("user ")),
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


def _searchable_by(path: Path, account: BrokerAccount, groups: set[int]) -> bool:
    """Whether ``account`` may pass through the directory ``path`` (its
    mode bits; access control lists are not looked at)."""
    st = path.stat()
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _unreachable(target: Path, account: BrokerAccount) -> list[str]:
    """Warnings for the folders above ``target`` the account cannot pass."""
    try:
        groups = {account.gid, *os.getgrouplist(account.name, account.gid)}
    except OSError:
        groups = {account.gid}
    return [f"{parent} (mode {stat.S_IMODE(parent.stat().st_mode):04o}) does not let "
            f"{account.name!r} through: the broker cannot reach {target} and will not start; "
            f"choose another --dir or let it pass (chmod o+x {parent})"
            for parent in reversed(target.parents) if not _searchable_by(parent, account, groups)]


def _set(path: Path, mode: int, uid: int = -1, gid: int = -1) -> None:
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def _owner_only(target: Path) -> None:
    for name in OWNER_ONLY:
        if (target / name).exists():  # ca.key may well be kept elsewhere
            _set(target / name, 0o600)


def _give_data_file(path: Path, account: BrokerAccount) -> None:
    """Give ``path``, in a folder the broker's account may write, to that
    account: only a plain file with no other name, checked and changed
    through one descriptor - never a link the account may have put there to
    have root give it another file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # a symbolic link, or gone
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid != account.uid:
            os.fchown(fd, account.uid, account.gid)
    finally:
        os.close(fd)


def _hand_over(target: Path, account: BrokerAccount) -> None:
    """Give the broker's account what it reads (its group, 0640) and what it
    writes (its own: the data folder, the log); everything else stays its
    owner's only."""
    _set(target, 0o750, gid=account.gid)
    for name in BROKER_READS:
        _set(target / name, 0o640, gid=account.gid)
    _owner_only(target)
    data = target / DATA_DIR
    _set(data, 0o750, account.uid, account.gid)  # the pid file: the boss reads it
    for entry in data.iterdir():  # the persistence of a broker that ran as another
        _give_data_file(entry, account)
    log = target / LOG_FILE
    os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640))
    _set(log, 0o640, account.uid, account.gid)


def _keep_private(target: Path) -> None:
    """No account of its own: everything stays its owner's only (as
    ``ecloud certs init`` made it), also after a configuration with one."""
    _set(target, 0o700)
    for name in ("passwd", "server.key"):
        _set(target / name, 0o600)
    _owner_only(target)
    _set(target / DATA_DIR, 0o700)


def _old_pid_file(conf: Path) -> str | None:
    """The pid file of the configuration written before, if any."""
    try:
        text = conf.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("pid_file "):
            return line.removeprefix("pid_file ").strip()
    return None


@frozen
class BrokerFiles:
    folder: Path
    conf: Path
    toml: Path
    url: str
    pid: Path
    #: the account the broker runs as (None: whoever starts it)
    user: str | None = None
    #: what the operator should know (printed by the CLI)
    warnings: tuple[str, ...] = ()


def write_broker_config(folder: str | os.PathLike, cluster: str, port: int = 8883,
                        bind: str = "0.0.0.0", host: str | None = None,
                        user: str | None = None) -> BrokerFiles:
    """Write the files above; ``host`` is the name workers reach the broker
    by (it must be in the server certificate), for the URL in ecloud.toml;
    ``user`` the account the broker runs as (None: whoever starts it; see
    :func:`resolve_broker_user` for the CLI's default)."""
    account = broker_account(user) if user is not None else None
    if account is not None and account.uid == 0:
        account = None  # root: no account of its own
    if account is not None and not _can_hand_over(account):
        raise UserError(f"--user {user}: only root can give the broker's files to another "
                        "account; run this as root")
    target = Path(folder).resolve()
    missing = [name for name in NEEDED_CERTS if not (target / name).is_file()]
    if missing:
        raise UserError(f"{target} lacks {', '.join(missing)}: run `ecloud certs init --dir "
                        f"{folder} --host <broker host>` first")
    (target / DATA_DIR).mkdir(mode=0o700, exist_ok=True)
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
    pid = target / DATA_DIR / PID_FILE
    warnings = []
    old_pid = _old_pid_file(conf)
    if old_pid is not None and old_pid != str(pid):
        warnings.append(f"the broker's pid file is now {pid} (was {old_pid}): set "
                        f"broker_pid_file to it in the boss's settings and restart the broker")
    conf.write_text(mosquitto_conf(target, port, bind, cluster,
                                   account.name if account else None), encoding="utf-8")
    try:
        if account is None:
            _keep_private(target)
        else:
            _hand_over(target, account)
            warnings += _unreachable(target, account)
    except OSError as exc:
        raise UserError(f"cannot set the owners and modes of {target}'s files: "
                        f"{exc.strerror or exc} ({exc.filename})") from None
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
        f'broker_pid_file = "{pid}"',
        f'worker_secret = "file:{target / "worker-secret"}"',
        "",
    ]), encoding="utf-8")
    return BrokerFiles(target, conf, toml, url, pid, account.name if account else None,
                       tuple(warnings))
