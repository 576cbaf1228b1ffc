"""Configuration: defaults, a TOML file, environment variables, flags.

Each setting comes from the first of these that gives it::

    command-line flag  >  environment variable  >  config file  >  default

The config file is ``--config PATH`` (flag ``config``) or ``$ECLOUD_CONFIG``
when given - then it must exist - else ``./ecloud.toml`` if present, else
``~/.config/ecloud/ecloud.toml`` (``$XDG_CONFIG_HOME`` is honoured) if
present. The file holds the settings as top-level keys::

    db = "env:ECLOUD_DB_URL"
    broker = "mqtt://127.0.0.1:1883"
    cluster = "prod"
    resend_after = 5
    snapshot_every = 10000

An empty environment variable counts as not set. ``db`` may be indirect, so
that a password need not sit in the file or the process list:
``env:NAME`` is the value of variable NAME, ``file:PATH`` the content of a
file (a relative PATH is taken from the config file's folder when the value
came from the file); both are stripped of surrounding whitespace.

Settings that name a file (``datastore_key_file``) are paths, not indirect:
``~`` is expanded, and a relative path in the config file is taken from the
config file's folder, like ``file:PATH``. Whether the file can be read is
checked by whoever uses it (``ecloud-boss --provider opennebula`` reads the
datastore key at start), so that a command which does not need it does not
fail for it. Its content is never part of the :class:`Config`.

:func:`load_config` returns a frozen :class:`Config`; ``Config.describe()``
tells where each value came from (``ecloud config show``).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from attrs import field, frozen

from ecloud.errors import ConfigError

__all__ = ["SETTINGS", "Config", "find_config_file", "host_name", "load_config"]

_CLUSTER_RE = re.compile(r"[A-Za-z0-9_.-]+")


# ------------------------------------------------------------------ parsing values


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _cluster(value: Any) -> str:
    value = _string(value)
    if not _CLUSTER_RE.fullmatch(value):
        # It names MQTT topics and VMs: no '/', '+', '#' or spaces.
        raise ValueError(f"{value!r} may only hold letters, digits, '_', '.' and '-'")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number of seconds, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a number of seconds > 0, got {value}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"expected a whole number >= 1, got {value}")
    return value


def _template_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an OpenNebula template id (a whole number >= 0), got {value!r}")
    return value


def _one_url(value: Any) -> str:
    value = _string(value)
    if not value.startswith(("http://", "https://")):
        # pyone takes anything else for a gRPC endpoint, silently
        raise ValueError(f"expected http(s)://host:2633/RPC2, got {value!r}")
    return value


def _float_text(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None


def _int_text(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


_HOST_NAME_RE = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def host_name(text: str) -> str:
    """A host name or IP address as a ``Host`` header names it, in the one
    form it is compared in: lower case, no trailing dot, an IPv6 address
    without brackets and compressed (an IPv4-mapped one as the IPv4 address)."""
    name = text.strip().lower()
    bracketed = name.startswith("[") and name.endswith("]")
    if bracketed:
        name = name[1:-1]
    elif name.endswith("."):
        name = name[:-1]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if bracketed:
            raise ValueError(f"{text.strip()!r} is not an IPv6 address") from None
    else:
        if bracketed and address.version != 6:
            raise ValueError(f"{text.strip()!r}: only IPv6 addresses go in brackets")
        mapped = getattr(address, "ipv4_mapped", None)
        return str(mapped or address)
    if "*" in name:
        raise ValueError(f"{text.strip()!r}: wildcards are not supported, list each name")
    if _HOST_NAME_RE.fullmatch(name):
        return name
    bare, _, port = name.rpartition(":")
    if port.isascii() and port.isdigit() and _HOST_NAME_RE.fullmatch(bare):
        raise ValueError(f"{text.strip()!r}: give the name without a port")
    raise ValueError(f"{text.strip()!r} is not a host name or IP address")


def _host_names(value: Any) -> tuple[str, ...]:
    """Names from a list, or from a comma-separated string; each once."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected host names: a list, or a comma-separated string")
    names = tuple(dict.fromkeys(host_name(v) for v in value if v.strip()))
    if not names:
        raise ValueError("expected at least one host name")
    return names


@frozen
class Setting:
    """One setting: its name, environment variable, default and parser.

    ``parse`` checks a typed value (from TOML, or a typed flag); ``text``
    first turns the text of an environment variable or flag into one.
    """

    name: str
    env: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    text: Callable[[str], Any] = str
    indirect: bool = False  # may be given as env:NAME / file:PATH
    secret: bool = False  # never shown
    path: bool = False  # a file's path: ~ expanded, relative to the config file's folder


SETTINGS: tuple[Setting, ...] = (
    Setting("db", "ECLOUD_DB", "sqlite:///ecloud.db", _string,
            "the event log URL (sqlite:///, mysql://, memory://)", indirect=True),
    Setting("broker", "ECLOUD_BROKER", None, _string, "the MQTT broker URL; none: run locally"),
    Setting("cluster", "ECLOUD_CLUSTER", "ecloud", _cluster, "names this cluster's topics and VMs"),
    Setting("resend_after", "ECLOUD_RESEND_AFTER", 5.0, _seconds,
            "seconds before the boss sends an unanswered dispatch or cancel again",
            text=_float_text),
    Setting("snapshot_every", "ECLOUD_SNAPSHOT_EVERY", 10000, _count,
            "events between snapshots of the folded state", text=_int_text),
    Setting("snapshot_interval", "ECLOUD_SNAPSHOT_INTERVAL", 300.0, _seconds,
            "seconds between snapshots while events arrive (fewer than snapshot_every)",
            text=_float_text),
    Setting("boss_address", "ECLOUD_BOSS_ADDRESS", None, _string,
            "the address workers reach the broker at; none: the boss finds it at start"),
    Setting("one_url", "ECLOUD_ONE_URL", None, _one_url,
            "OpenNebula XML-RPC endpoint; set: ecloud-boss --provider opennebula uses it"),
    Setting("one_session", "ECLOUD_ONE_SESSION", None, _string,
            "OpenNebula credentials user:password (best as env:NAME or file:PATH)", indirect=True,
            secret=True),
    Setting("one_template", "ECLOUD_ONE_TEMPLATE", None, _template_id,
            "id of the OpenNebula VM template worker VMs are made from", text=_int_text),
    Setting("one_deadline", "ECLOUD_ONE_DEADLINE", 30.0, _seconds,
            "seconds any one OpenNebula call may take before it counts as failed",
            text=_float_text),
    Setting("one_poll", "ECLOUD_ONE_POLL", 2.0, _seconds,
            "seconds between the boss's looks at OpenNebula's VM pool (a callback of the "
            "state hook asks for one at once)", text=_float_text),
    Setting("one_kill_orphans_after", "ECLOUD_ONE_KILL_ORPHANS_AFTER", None, _seconds,
            "terminate a VM named like this cluster's but unknown to the log this many seconds "
            "after it was first seen; none: only report it", text=_float_text),
    Setting("takeover_after", "ECLOUD_TAKEOVER_AFTER", 10.0, _seconds,
            "seconds of silence from the active boss before a standby takes over (MariaDB)",
            text=_float_text),
    Setting("datastore_key_file", "ECLOUD_DATASTORE_KEY_FILE", None, _string,
            "path of the ssh private key workers use for the datastore; the OpenNebula provider "
            "reads it at boss start and hands its content to new VMs (never logged)", path=True),
    Setting("broker_ca", "ECLOUD_BROKER_CA", None, _string,
            "CA certificate the broker's must chain to (mqtts:// URLs); workers get it too",
            path=True),
    Setting("broker_user", "ECLOUD_BROKER_USER", None, _string,
            "the boss's username at the broker"),
    Setting("broker_password", "ECLOUD_BROKER_PASSWORD", None, _string,
            "the boss's broker password (best as env:NAME or file:PATH)", indirect=True,
            secret=True),
    Setting("broker_passwd_file", "ECLOUD_BROKER_PASSWD_FILE", None, _string,
            "the broker's password file; set: the boss gives each worker VM an account there "
            "(static accounts in <it>.static) and removes it when the VM goes", path=True),
    Setting("broker_pid_file", "ECLOUD_BROKER_PID_FILE", None, _string,
            "the broker's pid file: it is sent SIGHUP to reload the accounts", path=True),
    Setting("worker_secret", "ECLOUD_WORKER_SECRET", None, _string,
            "key the workers' broker passwords are derived from (best as env:NAME or "
            "file:PATH)", indirect=True, secret=True),
    Setting("web_address", "ECLOUD_WEB_ADDRESS", None, _string,
            "host:port where the boss (and ecloud web) serves the status page and /metrics; "
            "none: the boss serves none"),
    Setting("web_hosts", "ECLOUD_WEB_HOSTS", None, _host_names,
            "more names (comma-separated) the status page answers to, besides localhost, "
            "127.0.0.1, ::1 and the address it is bound to (or this machine's names when bound "
            "to 0.0.0.0 or ::); a request naming any other Host gets 421"),
    Setting("local_boss_grace", "ECLOUD_LOCAL_BOSS_GRACE", 120.0, _seconds,
            "seconds ecloud run's local workers go on without hearing a boss (a killed run's "
            "next run takes them over within it) before they stop their attempts and exit",
            text=_float_text),
)
_BY_NAME = {s.name: s for s in SETTINGS}


# ------------------------------------------------------------------ the result


def mask_password(value: str) -> str:
    """Hide the password of a URL like ``mysql://user:secret@host/db``."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def hidden(value: str | None) -> str:
    """The repr of a secret: whether it is set, never what it is."""
    return "None" if value is None else "'***'"


def _masked_repr(value: str | None) -> str:
    return repr(value if value is None else mask_password(value))


@frozen
class Config:
    """The settings in force, and where each came from."""

    db: str = field(default="sqlite:///ecloud.db", repr=_masked_repr)
    broker: str | None = field(default=None, repr=_masked_repr)
    cluster: str = "ecloud"
    resend_after: float = 5.0
    snapshot_every: int = 10000
    snapshot_interval: float = 300.0
    boss_address: str | None = None
    one_url: str | None = None
    one_session: str | None = field(default=None, repr=hidden)
    one_template: int | None = None
    one_deadline: float = 30.0
    one_poll: float = 2.0
    one_kill_orphans_after: float | None = None
    takeover_after: float = 10.0
    datastore_key_file: str | None = None
    """A path; the key itself is read by the OpenNebula provider, never kept here."""
    broker_ca: str | None = None
    broker_user: str | None = None
    broker_password: str | None = field(default=None, repr=hidden)
    broker_passwd_file: str | None = None
    broker_pid_file: str | None = None
    worker_secret: str | None = field(default=None, repr=hidden)
    web_address: str | None = None
    web_hosts: tuple[str, ...] | None = None
    """Lower case, no port, IPv6 without brackets (see :func:`host_name`)."""
    local_boss_grace: float = 120.0
    file: str | None = None
    """The config file that was read, if any."""
    origins: dict[str, str] = field(factory=dict, eq=False, hash=False)
    """Setting name -> where its value came from, e.g. ``"env ECLOUD_DB"``."""

    def describe(self) -> list[tuple[str, str, str]]:
        """``(setting, value as shown, origin)`` for every setting, in order.

        Passwords in URLs are masked: this is meant to be printed.
        """
        rows = []
        for s in SETTINGS:
            value = getattr(self, s.name)
            if value is None:
                shown = "(none)"
            elif isinstance(value, tuple):
                shown = ", ".join(value)
            else:
                shown = "*** (set)" if s.secret else mask_password(str(value))
            rows.append((s.name, shown, self.origins.get(s.name, "default")))
        return rows


# ------------------------------------------------------------------ loading


def find_config_file(flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Path | None, str]:
    """The config file to read and why: ``(path or None, origin)``.

    A file named by ``--config`` or ``$ECLOUD_CONFIG`` must exist; the
    default places are used only when a file is there.
    """
    if flags.get("config"):
        return Path(flags["config"]).expanduser(), "flag --config"
    if env.get("ECLOUD_CONFIG"):
        return Path(env["ECLOUD_CONFIG"]).expanduser(), "env ECLOUD_CONFIG"
    local = Path("ecloud.toml")
    if local.is_file():
        return local, "./ecloud.toml"
    if env.get("XDG_CONFIG_HOME"):
        base = Path(env["XDG_CONFIG_HOME"])
    elif env.get("HOME"):
        base = Path(env["HOME"]) / ".config"
    else:
        base = Path.home() / ".config"
    user = base / "ecloud" / "ecloud.toml"
    if user.is_file():
        return user, str(user)
    return None, ""


def load_config(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Settle every setting from flags, environment, config file and defaults.

    ``flags`` maps setting names (and ``config``) to values as the CLI parsed
    them; ``None`` means "flag not given". Raises :class:`ConfigError` naming
    the file, variable or flag and the setting when a value is unusable.
    """
    flags = dict(flags or {})
    unknown = set(flags) - set(_BY_NAME) - {"config"}
    if unknown:  # a bug in the caller, not the operator's mistake
        raise ValueError(f"load_config got unknown flags: {sorted(unknown)}")
    path, _why = find_config_file(flags, env)
    from_file = _read_file(path) if path is not None else {}

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for s in SETTINGS:
        if flags.get(s.name) is not None:
            raw, origin, where = flags[s.name], f"flag --{s.name.replace('_', '-')}", None
        elif env.get(s.env):
            raw, origin, where = env[s.env], f"env {s.env}", None
        elif s.name in from_file:
            raw, origin, where = from_file[s.name], f"file {path}", path
        else:
            values[s.name] = s.default
            origins[s.name] = "default"
            continue
        if s.indirect and isinstance(raw, str):
            raw, origin = _resolve_secret(raw, origin, s.name, env, where)
        try:
            if where is None and isinstance(raw, str):
                raw = s.text(raw)
            values[s.name] = s.parse(raw)
            if s.path:
                values[s.name] = _path(values[s.name], where, env)
        except ValueError as exc:
            key = f"{path}: key {s.name!r}" if where else f"{origin} ({s.name})"
            raise ConfigError(f"{key}: {exc}") from None
        origins[s.name] = origin
    return Config(**values, file=str(path) if path else None, origins=origins)


def _path(value: str, config_path: Path | None, env: Mapping[str, str]) -> str:
    """A file's path: ``~`` expanded (``$HOME`` from ``env``); relative to the
    config file's folder when it came from the config file (else to the
    working directory)."""
    if (value == "~" or value.startswith("~/")) and env.get("HOME"):
        value = env["HOME"] + value[1:]
    target = Path(value).expanduser()
    if config_path is not None and not target.is_absolute():
        target = config_path.parent / target
    return str(target)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    problems = []
    for key in data:
        if key not in _BY_NAME:
            close = difflib.get_close_matches(key, list(_BY_NAME), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return data


def _resolve_secret(
    raw: str, origin: str, name: str, env: Mapping[str, str], config_path: Path | None
) -> tuple[str, str]:
    """Follow ``env:NAME`` or ``file:PATH``; return the value and its origin."""
    where = f"{config_path}: key {name!r}" if config_path else f"{origin} ({name})"
    if raw.startswith("env:"):
        var = raw[4:]
        value = env.get(var, "").strip()
        if not value:
            raise ConfigError(f"{where}: refers to environment variable {var}, which is not set")
        return value, f"{origin} via env {var}"
    if raw.startswith("file:"):
        target = Path(raw[5:]).expanduser()
        if config_path is not None and not target.is_absolute():
            target = config_path.parent / target
        try:
            value = target.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"{where}: cannot read {target}: {reason}") from None
        if not value:
            raise ConfigError(f"{where}: {target} is empty")
        return value, f"{origin} via file {target}"
    return raw, origin
