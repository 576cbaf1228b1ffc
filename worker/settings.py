"""The agent's settings: flag > environment > OpenNebula context file > default.

Click already merges a flag with its environment variable (an option left
unset arrives as None); :func:`resolve` fills what is still missing from the
context file, then from the defaults, and checks the result.

The datastore key (``datastore_key``, a path) follows the same rule, with
one more source at the end::

    --datastore-key PATH  >  $ECLOUD_DATASTORE_KEY  >  ECLOUD_DATASTORE_KEY (a path)
    in the context file  >  ECLOUD_DATASTORE_SSH_KEY_B64 (the key itself) in the
    context file  >  none (ssh's own defaults)

``ECLOUD_DATASTORE_SSH_KEY_B64`` is how the boss's OpenNebula provider hands
out its ``datastore_key_file``: the key's bytes, base64-encoded. When it is
the source, :func:`resolve` writes the bytes to
``<work dir>/.ecloud/datastore_key`` (mode 0600, in a folder of mode 0700;
written anew at every start, so a rotated key takes over) and uses that
path; given a path by any earlier source it writes nothing. It also removes
the key from the agent's environment (where OpenNebula's start script may
have put it), so that tasks - which inherit that environment and whose
output tails are logged - never see it.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import socket
import stat
from pathlib import Path
from typing import Any

from attrs import frozen

from ecloud.effects.messaging.mqtt import MqttAuth, parse_broker_url
from ecloud.errors import UserError
from ecloud_worker.runas import RunAs, resolve_run_as

#: context-file variable -> setting (BOSS_ADDRESS is turned into a broker URL)
CONTEXT_KEYS = {
    "BOSS_ADDRESS": "broker",
    "ECLOUD_CLUSTER": "cluster",
    "ECLOUD_WORKER_ID": "worker_id",
    "ECLOUD_SLOTS": "slots",
    "VMID": "vm_id",
    "ECLOUD_DATASTORE_KEY": "datastore_key",
    "ECLOUD_BROKER_CA": "broker_ca",
    "ECLOUD_BROKER_USER": "broker_user",
    "ECLOUD_RUN_AS": "run_as",
}
#: the worker's broker password: in the environment, or ``<it>_B64`` in the
#: context (how the boss hands it to a VM); never a flag (process listings)
BROKER_PASSWORD = "ECLOUD_BROKER_PASSWORD"
#: the cluster CA's certificate itself (PEM), ``<it>_B64`` in the context;
#: written to <work dir>/.ecloud/ca.pem
BROKER_CA_PEM = "ECLOUD_BROKER_CA_PEM"
#: what tasks must not inherit (OpenNebula's start script exports the context)
SECRET_VARIABLES = ("ECLOUD_DATASTORE_SSH_KEY", "ECLOUD_DATASTORE_SSH_KEY_B64", BROKER_PASSWORD,
                    f"{BROKER_PASSWORD}_B64")
#: the context variable holding the datastore's ssh private key (not a path):
#: ``<it>_B64`` in the context, bytes, never decoded to text
DATASTORE_SSH_KEY = "ECLOUD_DATASTORE_SSH_KEY"
#: where the agent keeps that key, under its work dir
KEY_DIR, KEY_NAME = ".ecloud", "datastore_key"
#: where the task user's copy of the datastore key goes (``--run-as``)
TASK_KEY_DIR = ".ecloud-task"


@frozen
class Settings:
    broker: str
    cluster: str
    worker_id: str
    slots: int
    work_dir: Path
    heartbeat: float
    vm_id: int | None
    drain_timeout: float
    journal: str | None = None
    datastore_key: str | None = None
    #: TLS and credentials for a secured broker (None: plain, anonymous)
    broker_auth: MqttAuth | None = None
    #: the user tasks run as when the agent is root (None: the agent's own)
    run_as: RunAs | None = None
    #: seconds without a word from a boss after which the agent stops its
    #: attempts and exits (see worker/agent.py)
    boss_grace: float = 900.0


def read_context(path: str) -> dict[str, str]:
    """``KEY=VALUE`` / ``KEY='VALUE'`` lines as OpenNebula's context.sh writes
    them (shell quoting, ``export`` and comments allowed)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read the context file {path}: {exc.strerror or exc}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, raw = line.partition("=")
        if not sep or line.startswith("#") or not key.isidentifier():
            continue
        try:
            values[key] = " ".join(shlex.split(raw))
        except ValueError:  # unbalanced quotes: take it as written
            values[key] = raw.strip().strip("'\"")
    return _decoded(values)


def _decoded(values: dict[str, str]) -> dict[str, str]:
    """``KEY_B64`` variables (how the boss passes values through OpenNebula's
    context, where nothing escapes quotes) also give ``KEY``, decoded; a
    plain ``KEY`` given beside it wins."""
    out = dict(values)
    for key, value in values.items():
        if key == f"{DATASTORE_SSH_KEY}_B64":
            continue  # bytes, not text: see datastore_key_material
        if key.endswith("_B64") and key[:-4] not in values:
            try:
                out[key[:-4]] = base64.b64decode(value, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"context variable {key} is not valid base64") from None
    return out


def datastore_key_material(context: dict[str, str]) -> bytes | None:
    """The datastore key's bytes from ``ECLOUD_DATASTORE_SSH_KEY_B64`` in
    the context, or None. The error never quotes the value."""
    value = context.get(f"{DATASTORE_SSH_KEY}_B64", "")
    if not value:
        return None
    try:
        material = base64.b64decode(value, validate=True)
    except ValueError:
        raise UserError(f"context variable {DATASTORE_SSH_KEY}_B64 is not valid base64") from None
    return material or None


def write_datastore_key(work_dir: Path, material: bytes) -> Path:
    """The datastore key, see :func:`write_private`."""
    return write_private(work_dir, KEY_NAME, material, "the datastore key")


def write_private(work_dir: Path, name: str, material: bytes, what: str) -> Path:
    """Write ``material`` to ``<work_dir>/.ecloud/<name>``, mode 0600, and
    return that path.

    The folder is made 0700 and must be ours (not a symlink, not another
    user's: ``/tmp`` is shared). The key goes to a new temporary file,
    created 0600 with ``O_EXCL`` (so it is never readable by others, not even
    for an instant, and no planted file or link is followed), which then
    replaces the old key in one rename.
    """
    folder = work_dir / KEY_DIR
    target = folder / name
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise UserError(f"cannot keep {what} in {folder}: it is not a folder of "
                            "this user's (remove it, or give another --work-dir)")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(folder, 0o700)
        temp = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(temp, flags, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)  # exactly: a strict umask must not make it unreadable
                view = memoryview(material)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise UserError(f"cannot write {what} to {target}: "
                        f"{exc.strerror or exc}") from None
    return target


def _broker_from_boss_address(address: str, tls: bool) -> str:
    if "://" in address:
        return address
    return f"mqtts://{address}" if tls else f"mqtt://{address}"


def broker_auth(given: dict[str, Any], context: dict[str, str], password: str | None,
                work_dir: Path, worker_id: str) -> MqttAuth | None:
    """TLS and credentials: the CA from ``--broker-ca`` (a path) or the
    context's PEM (written under the work dir); the username from
    ``--broker-user``, else the worker id - the broker's ACL knows a worker
    by its username, so it must be its id."""
    ca = given.get("broker_ca") or None
    if ca is None and context.get(BROKER_CA_PEM):
        ca = str(write_private(work_dir, "ca.pem", context[BROKER_CA_PEM].encode(),
                               "the broker's CA certificate"))
    if ca is None and password is None:
        return None
    user = given.get("broker_user") or (worker_id if password is not None else None)
    return MqttAuth(username=user, password=password, ca_file=ca)


def _int(value: Any, what: str, minimum: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise UserError(f"{what} must be at least {minimum}, got {number}")
    return number


def _name(value: str, what: str) -> str:
    if not value or any(c in value for c in "/+#\0"):
        raise UserError(f"{what} {value!r} must be non-empty without '/', '+', '#'")
    return value


def resolve(options: dict[str, Any]) -> Settings:
    """Settings from the click options (flag or environment, else None)."""
    given = dict(options)
    context_file = given.pop("context_file", None)
    key_material = None
    password = os.environ.get(BROKER_PASSWORD) or None
    # not for tasks to inherit (OpenNebula's start script exports the context)
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    context: dict[str, str] = {}
    if context_file:
        context = read_context(context_file)
        tls = bool(given.get("broker_ca") or context.get("ECLOUD_BROKER_CA")
                   or context.get(BROKER_CA_PEM))
        for key, name in CONTEXT_KEYS.items():
            if given.get(name) is None and context.get(key):
                value = context[key]
                given[name] = _broker_from_boss_address(value, tls) if name == "broker" else value
        key_material = datastore_key_material(context)
        password = password or context.get(BROKER_PASSWORD) or None
    if not given.get("broker"):
        raise UserError(
            "no broker address: give --broker mqtt://host:port, set ECLOUD_BROKER, "
            "or BOSS_ADDRESS in the --context-file"
        )
    parse_broker_url(given["broker"])  # a bad URL is the operator's error, now
    worker_id = _name(given.get("worker_id") or socket.gethostname(), "worker id")
    vm_id = given.get("vm_id")
    cluster = _name(given.get("cluster") or "ecloud", "cluster name")
    slots = _int(given.get("slots") or os.cpu_count() or 1, "slots", minimum=1)
    work_dir = Path(given.get("work_dir") or f"/tmp/ecloud-worker-{worker_id}")
    datastore_key = given.get("datastore_key") or None
    if datastore_key is None and key_material is not None:  # the last source, after a path
        datastore_key = str(write_datastore_key(work_dir, key_material))
    auth = broker_auth(given, context, password, work_dir, worker_id)
    run_as = resolve_run_as(given.get("run_as") or None)
    if run_as is not None and key_material is not None and not given.get("datastore_key"):
        # staging runs as the task's user: it gets a copy of the context's key of its own
        datastore_key = str(run_as.private_copy(work_dir / TASK_KEY_DIR, KEY_NAME, key_material))
    return Settings(
        broker=given["broker"],
        cluster=cluster,
        worker_id=worker_id,
        slots=slots,
        work_dir=work_dir,
        heartbeat=float(given["heartbeat"]),
        vm_id=None if vm_id is None else _int(vm_id, "VM id"),
        drain_timeout=float(given["drain_timeout"]),
        journal=given.get("journal") or None,
        datastore_key=datastore_key,
        broker_auth=auth,
        run_as=run_as,
        boss_grace=float(given.get("boss_grace") or 900.0),
    )
