"""Per-worker broker accounts: each worker VM its own username and password.

A worker's username is its worker id (its VM's name), and the broker's ACL
(:func:`ecloud.security.broker_config.acl_text`) lets a user publish only on
``ecloud/<cluster>/from/<its name>`` and read only ``.../to/<its name>``: a
worker can neither speak for another nor read another's dispatches.

Passwords are never stored anywhere ecloud writes: a worker's password is
``HMAC-SHA256(worker secret, cluster + worker id)``, derived again whenever it
is needed. That keeps the effects idempotent across a boss crash (a spawn
re-issued after a restart hands the VM the same password) and keeps every
secret out of the event log: the log holds VM names, the broker's password
file holds salted PBKDF2 hashes, and only the boss (which reads the worker
secret from a file or variable) and the VM itself know the password.

The broker's password file is a *projection of the state*:
:meth:`BrokerAccounts.sync` writes it as the static entries (the boss's own
user, made by ``ecloud broker config``) plus one entry for every VM the
state holds open, and asks the broker to reload it (SIGHUP to the pid in its
pid file) when that set changed. A killed VM's entry goes at the next sync;
Mosquitto checks connected clients again on reload and drops those whose
account is gone. The boss must therefore run on the broker's machine (it
writes the broker's password file); the workers need not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import signal
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from ecloud.errors import ConfigError

log = logging.getLogger(__name__)

#: Mosquitto's ``$7$`` format: PBKDF2-HMAC-SHA512, 101 rounds (what
#: ``mosquitto_passwd`` writes), a 12-byte salt
HASH_ROUNDS = 101
SALT_BYTES = 12


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A password-file hash Mosquitto 2 accepts (``$7$rounds$salt$hash``)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, HASH_ROUNDS)
    return f"$7${HASH_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (for tests and checks)."""
    try:
        _, kind, rounds, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        again = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(rounds))
    except ValueError:
        return False
    return hmac.compare_digest(base64.b64encode(again).decode(), digest)


def worker_password(secret: bytes, cluster: str, worker_id: str) -> str:
    """The password of ``worker_id``: 43 URL-safe characters (256 bits)."""
    mac = hmac.new(secret, f"ecloud-worker\0{cluster}\0{worker_id}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def read_passwd(path: Path) -> dict[str, str]:
    """``user -> hash`` of a Mosquitto password file (missing file: empty)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            user, hashed = line.split(":", 1)
            entries[user] = hashed
    return entries


def write_passwd(path: Path, entries: dict[str, str]) -> None:
    """Replace the password file at once (a reader never sees half of it).

    A new file is mode 0600 - hashes are still worth guarding. A file
    replaced keeps its group and mode: the broker, once it has dropped root
    (``ecloud broker config --user``), reads it through its group, and must
    still be able to when it reloads the file after this. The new file gets
    them before it takes the old one's place; a boss that may not give it
    that group (not root, not in the group) leaves the old file alone and
    raises :class:`OSError` (the boss logs it and tries again)."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if old is not None and os.fstat(f.fileno()).st_gid != old.st_gid:
                try:
                    os.fchown(f.fileno(), -1, old.st_gid)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot give the new {path.name} the group "
                                  f"({old.st_gid}) of the old one, which the broker may read it "
                                  f"by: {exc.strerror}", str(path)) from None
            # set, not left to os.open: a leftover temporary file keeps its mode
            os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode) if old is not None else 0o600)
            f.writelines(f"{user}:{hashed}\n" for user, hashed in entries.items())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def reload_by_pid_file(pid_file: str | os.PathLike) -> Callable[[], None]:
    """A reload: SIGHUP to the broker whose pid is in ``pid_file``."""
    def reload() -> None:
        try:
            pid = int(Path(pid_file).read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            # the accounts are written; the broker picks them up when it
            # next starts or reloads - say so, loudly, but do not stop the boss
            log.error("cannot ask the broker to reload its accounts (pid file %s): %s",
                      pid_file, exc)
    return reload


class BrokerAccounts:
    """The broker's password file, kept to the static users plus the open VMs."""

    def __init__(self, passwd_file: str | os.PathLike, static_file: str | os.PathLike,
                 secret: bytes, cluster: str, reload: Callable[[], None]) -> None:
        if len(secret) < 16:
            raise ConfigError("the worker secret is too short: want at least 16 bytes")
        self.passwd_file = Path(passwd_file)
        self.static_file = Path(static_file)
        self.cluster = cluster
        self._secret = secret
        self._reload = reload
        self._synced: frozenset[str] | None = None
        self._hashes: dict[str, str] = {}

    def __repr__(self) -> str:  # never the secret
        return f"BrokerAccounts({str(self.passwd_file)!r}, cluster={self.cluster!r})"

    def password_for(self, worker_id: str) -> str:
        return worker_password(self._secret, self.cluster, worker_id)

    def sync(self, workers: Iterable[str]) -> bool:
        """Make the password file hold exactly the static users and
        ``workers``; reload the broker if anything changed. Cheap when
        nothing did (the boss calls it every turn)."""
        wanted = frozenset(workers)
        if wanted == self._synced:
            return False
        static = read_passwd(self.static_file)
        clash = wanted & static.keys()
        if clash:
            raise ConfigError(f"worker name(s) {sorted(clash)} clash with users of "
                              f"{self.static_file}")
        current = read_passwd(self.passwd_file)
        entries = dict(static)
        for worker_id in sorted(wanted):
            hashed = self._hashes.get(worker_id) or current.get(worker_id)
            if hashed is None or not check_password(self.password_for(worker_id), hashed):
                hashed = hash_password(self.password_for(worker_id))
            self._hashes[worker_id] = hashed
            entries[worker_id] = hashed
        for gone in set(self._hashes) - wanted:
            del self._hashes[gone]
        changed = entries != current
        if changed:
            write_passwd(self.passwd_file, entries)
            self._reload()
            log.info("broker accounts: %d worker(s) (%+d)", len(wanted),
                     len(wanted) - len(set(current) - set(static)))
        self._synced = wanted
        return changed
