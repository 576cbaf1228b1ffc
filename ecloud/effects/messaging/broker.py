"""An MQTT broker of our own, run as a child process: for tests, and for
trying ecloud on one machine without setting up a broker.

    with start_broker() as broker:          # Mosquitto if installed, else amqtt
        conn = Connection(broker.url, "boss", on_message=...).start(wait=5)

Two flavours:

- ``mosquitto``: the ``mosquitto`` binary from PATH, in the foreground (we own
  its pid), with a config file written into the broker's directory;
- ``python``: the pure-Python amqtt broker, ``python -m
  ecloud.effects.messaging.pybroker`` (needs the ``amqtt`` package; persistence across
  restarts also needs ``sqlalchemy[asyncio]`` and ``aiosqlite``).

``prefer="auto"`` takes Mosquitto when it is on PATH, else amqtt; the
environment variable ``ECLOUD_EMBEDDED_BROKER=python|mosquitto`` overrides
"auto" (and only "auto").

Either way the broker listens on 127.0.0.1 only, on a free port unless one is
given, and keeps its persistence (sessions with ``clean_session=False``, their
subscriptions and queued QoS 1 messages) in its directory - a temporary one
unless ``data_dir`` is given - so that :meth:`Broker.restart` loses nothing a
client was promised. Its log is ``broker.log`` in that directory; when it
fails to start, :class:`~ecloud.errors.EcloudError` carries the log's tail.

Mosquitto's configuration, and why (docs/services.md has the measurements):

- ``set_tcp_nodelay true``: Nagle costs 40-90 ms per request/response;
- ``max_queued_messages 0``: no limit. The default 1000 *silently drops*
  QoS 1 messages for a subscriber that falls behind or is offline;
  ``max_queued_bytes`` already defaults to 0 (no limit) and is set anyway;
- ``max_inflight_messages 100`` (QoS 1/2 messages sent to one client and not
  yet acknowledged): on loopback 20, 100 and 1000 measured the same
  (~3,000-5,000 msg/s QoS 1 end to end; the Python clients are the limit),
  but the window caps a client's rate at window / round-trip time - with
  20, a worker 50 ms away gets at most 400 msg/s, with 100 at most 2,000 -
  while a small window bounds what is redelivered after a reconnect;
- ``persistence true``, ``autosave_interval 1``: Mosquitto saves its
  in-memory state on a clean exit and every ``autosave_interval`` seconds,
  so even after a SIGKILL at most about a second of queued state is lost;
- ``user root`` when started as root: otherwise Mosquitto drops to user
  ``mosquitto``, which cannot write a directory root created (it then runs
  without a log and without persistence, saying so only on stderr);
- no ``pid_file``: the child's pid is known to us.

The child is started in a session of its own (a Ctrl-C at the terminal goes
to our process, which then stops the broker in order) and, on Linux, is sent
SIGTERM by the kernel if the thread that started it dies, so a crashed test
run leaves no broker behind. Start brokers from a thread that lives as long
as they should.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from ecloud.errors import ConfigError, EcloudError

Kind = Literal["mosquitto", "python"]
Prefer = Literal["auto", "mosquitto", "python"]

ENV_FLAVOUR = "ECLOUD_EMBEDDED_BROKER"
HOST = "127.0.0.1"
START_DEADLINE = 10.0  # seconds for the broker to answer an MQTT CONNECT
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
LOG_FILE = "broker.log"
CONF_FILE = "mosquitto.conf"
LOG_TAIL = 2000  # characters of the log quoted in errors


# ------------------------------------------------------------------ helpers


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def mqtt_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an MQTT 3.1.1 CONNECT (clean session) at ``host:port`` is
    answered with an accepting CONNACK; False when nothing (or something
    else) answers."""
    client_id = f"ecloud-probe-{os.getpid()}-{secrets.token_hex(4)}".encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02]) + struct.pack("!H", 10)
    payload = struct.pack("!H", len(client_id)) + client_id
    body = variable + payload
    packet = bytes([0x10, len(body)]) + body  # len(body) < 128: one length byte
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(packet)
            answer = b""
            while len(answer) < 4:
                chunk = s.recv(4 - len(answer))
                if not chunk:
                    return False
                answer += chunk
            ok = answer[0] == 0x20 and answer[1] == 2 and answer[3] == 0
            if ok:
                s.sendall(b"\xe0\x00")  # DISCONNECT
            return ok
    except OSError:
        return False


def _tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    text = text.strip()
    if not text:
        return "(log is empty)"
    return text if len(text) <= limit else "..." + text[-limit:]


def _load_prctl():  # loaded here: the child between fork and exec must not dlopen
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


PYTHON_BROKER_NEEDS = {"amqtt": "amqtt", "sqlalchemy": "sqlalchemy[asyncio]",
                       "greenlet": "sqlalchemy[asyncio]", "aiosqlite": "aiosqlite"}


def python_broker_missing() -> list[str]:
    """The packages the pure-Python broker (with persistence) needs that are
    not installed here (pip names)."""
    missing = [pip for module, pip in PYTHON_BROKER_NEEDS.items()
               if importlib.util.find_spec(module) is None]
    return sorted(set(missing))


def choose_kind(prefer: Prefer = "auto") -> Kind:
    """Which flavour ``start_broker(prefer)`` runs (raises if it cannot)."""
    if prefer == "auto":
        forced = os.environ.get(ENV_FLAVOUR, "").strip().lower()
        if forced:
            if forced not in ("mosquitto", "python"):
                raise ConfigError(f"{ENV_FLAVOUR}={forced!r}: expected 'python' or 'mosquitto'")
            prefer = forced  # type: ignore[assignment]
        else:
            return "mosquitto" if shutil.which("mosquitto") else "python"
    if prefer == "mosquitto":
        if not shutil.which("mosquitto"):
            raise EcloudError("mosquitto is not on PATH; install it (Debian: apt-get install"
                              " mosquitto) or use the pure-Python broker (prefer='python')")
        return "mosquitto"
    if prefer == "python":
        missing = python_broker_missing()
        if missing:
            names = " ".join(f"'{m}'" for m in missing)
            raise EcloudError(f"the pure-Python broker needs {', '.join(missing)}:"
                              f" {sys.executable} -m pip install {names}")
        return "python"
    raise ValueError(f"prefer must be 'auto', 'mosquitto' or 'python', not {prefer!r}")


#: the tuning above, for every Mosquitto ecloud configures (also the secured one)
MOSQUITTO_TUNING = ("set_tcp_nodelay true", "max_queued_messages 0", "max_queued_bytes 0",
                    "max_inflight_messages 100", "persistence true", "autosave_interval 1")


def mosquitto_logging(log_path: Path) -> list[str]:
    """Log lines (connections included) to ``log_path``; ``user root`` when
    we are root (see above)."""
    lines = [f"log_dest file {log_path}", "log_type error", "log_type warning",
             "log_type notice", "log_type information", "connection_messages true",
             "log_timestamp true"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.append("user root")
    return lines


def mosquitto_config(port: int, data_dir: Path) -> str:
    lines = [
        "# written by ecloud.effects.messaging.broker",
        f"listener {port} {HOST}",
        "allow_anonymous true",
        *MOSQUITTO_TUNING,
        f"persistence_location {data_dir}/",
        "persistence_file mosquitto.db",
        *mosquitto_logging(data_dir / LOG_FILE),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------- broker


class Broker:
    """A broker child process. ``url``/``port`` stay the same across
    :meth:`restart` and :meth:`start` after :meth:`stop` or :meth:`kill`."""

    def __init__(self, kind: Kind, port: int | None = None,
                 data_dir: str | os.PathLike | None = None) -> None:
        self.kind: Kind = kind
        self._pick_port = port is None
        self.port: int = port if port is not None else free_port()
        self._tmp: tempfile.TemporaryDirectory | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"ecloud-broker-{kind}-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / LOG_FILE
        self.proc: subprocess.Popen | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running() else "stopped"
        return f"<Broker {self.kind} {self.url} {state}>"

    # ------------------------------------------------------------ control

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.data_dir / CONF_FILE
            conf.write_text(mosquitto_config(self.port, self.data_dir))
            return [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]
        return [sys.executable, "-m", "ecloud.effects.messaging.pybroker", "--port", str(self.port),
                "--host", HOST, "--data-dir", str(self.data_dir)]

    def start(self, deadline: float = START_DEADLINE) -> Broker:
        """Start the process and wait until it answers MQTT; raise
        :class:`EcloudError` (with the log's tail) if it dies or stays mute.
        A broker already running is left alone."""
        if self._closed:
            raise EcloudError(f"{self!r} was closed; start a new one")
        if self.running():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._pick_port else 1
        for attempt in range(attempts):
            try:
                self._start_once(deadline)
                return self
            except _PortTaken:
                if attempt + 1 == attempts:
                    raise EcloudError(f"{self.kind} broker: port {self.port} is taken") from None
                self.port = free_port()
        return self  # not reached

    def _start_once(self, deadline: float) -> None:
        if not mqtt_port_free(self.port):
            raise _PortTaken() if self._pick_port else EcloudError(
                f"{self.kind} broker: something already listens on {HOST}:{self.port}")
        cmd = self._command()
        env = dict(os.environ)
        if self.kind == "python":  # the child must import ecloud as we do
            root = str(Path(__file__).resolve().parents[3])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # mosquitto logs to the file itself; its stderr (and amqtt's) go there too
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        until = time.monotonic() + deadline
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                tail = _tail(self.log_path)
                if self._pick_port and ("in use" in tail.lower() or "errno 98" in tail.lower()):
                    raise _PortTaken()
                raise EcloudError(f"{self.kind} broker on port {self.port} exited with status {code}"
                                  f" while starting; its log ({self.log_path}) ends:\n{tail}")
            if mqtt_ping(HOST, self.port, timeout=0.5):
                return
            if time.monotonic() > until:
                self.kill()
                raise EcloudError(f"{self.kind} broker on port {self.port} did not answer an MQTT"
                                  f" CONNECT within {deadline:g}s; its log ({self.log_path}) ends:\n"
                                  f"{_tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_GRACE) -> None:
        """SIGTERM, wait up to ``timeout`` seconds for a clean exit (Mosquitto
        saves its state then), then SIGKILL. Does nothing if not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: a broker crash, for tests. Unsaved state is lost (at most
        ``autosave_interval`` of it for Mosquitto)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        proc.wait()

    def restart(self, deadline: float = START_DEADLINE) -> Broker:
        """:meth:`stop`, then :meth:`start` on the same port with the same
        directory, so persistent sessions and queued messages survive."""
        self.stop()
        self._pick_port = False  # same port, or fail
        return self.start(deadline)

    def close(self) -> None:
        """:meth:`stop`, and remove the directory if it was a temporary one."""
        self.stop()
        self._closed = True
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave an orphan broker
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass


class _PortTaken(Exception):
    """The port we picked was taken before our broker could bind it."""


def mqtt_port_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound (nobody listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def start_broker(prefer: Prefer = "auto", port: int | None = None,
                 data_dir: str | os.PathLike | None = None) -> Broker:
    """Start a broker child process (see the module docstring) and return it
    once it answers MQTT on ``127.0.0.1:port`` (a free port if None)."""
    broker = Broker(choose_kind(prefer), port=port, data_dir=data_dir)
    try:
        return broker.start()
    except BaseException:
        broker.close()
        raise
