"""A private Mosquitto tuned to hold 10,000+ connections, for the benchmarks.

    with tuned_mosquitto() as url:          # mqtt://127.0.0.1:<free port>
        ...

What differs from :mod:`ecloud.effects.messaging.broker` (the broker for tests and
``ecloud run``), and why (``docs/services.md`` has the measurements):

- the file-descriptor limit of the broker process is raised before it execs
  (``RLIMIT_NOFILE`` to ``max_fds``, 65,536 by default; as root the hard
  limit is raised too, else the soft limit goes up to the hard one).
  Mosquitto does not raise it itself and refuses connections past it;
- ``set_tcp_nodelay true`` (Nagle costs 40-90 ms per request/response),
  ``max_queued_messages 0`` and ``max_queued_bytes 0`` (the default of 1000
  queued messages per client *silently drops* QoS 1 messages for a
  subscriber that falls behind - the boss, under 10,000 workers),
  ``max_inflight_messages 1000`` so that the window is not what limits the
  boss's intake;
- ``persistence false`` by default: with 10,000 persistent sessions an
  autosave every second would cost the broker more CPU than the boss it is
  meant to serve on this 2-core machine (pass ``persistence=True`` to
  measure with it);
- no connection messages in the log (10,000 connects would fill it), only
  errors, warnings and notices;
- ``user root`` when started as root: otherwise Mosquitto drops to user
  ``mosquitto``, which cannot write the temporary directory root made (it
  then runs without a log, saying so only on stderr).

The broker runs in the foreground in a session of its own, is sent SIGTERM
by the kernel if the thread that started it dies (``PR_SET_PDEATHSIG``), and
is stopped (SIGTERM, then SIGKILL after a grace) when the context ends.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from ecloud.effects.messaging.broker import die_with_parent, free_port, mqtt_ping

HOST = "127.0.0.1"
MOSQUITTO = "/usr/sbin/mosquitto"
MAX_FDS = 65_536
START_DEADLINE = 10.0  # seconds for the broker to answer an MQTT CONNECT
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def raise_fd_limit(wanted: int = MAX_FDS) -> int:
    """Raise this process's ``RLIMIT_NOFILE`` towards ``wanted`` (the hard
    limit too when allowed, i.e. as root); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup(max_fds: int) -> None:  # runs in the child between fork and exec
    raise_fd_limit(max_fds)
    die_with_parent()


def tuned_config(port: int, data_dir: Path, *, persistence: bool = False,
                 max_inflight: int = 1000) -> str:
    lines = [
        "# written by bench.tuned_broker",
        f"listener {port} {HOST}",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        "max_connections -1",
        "max_queued_messages 0",
        "max_queued_bytes 0",
        f"max_inflight_messages {max_inflight}",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {data_dir}/",
        "autosave_interval 30",
        f"log_dest file {data_dir / 'broker.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages false",
        "log_timestamp true",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.append("user root")
    return "\n".join(lines) + "\n"


def _fd_limit_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


class TunedMosquitto:
    """The broker process; :func:`tuned_mosquitto` is the usual way in."""

    def __init__(self, *, max_fds: int = MAX_FDS, persistence: bool = False,
                 max_inflight: int = 1000, port: int | None = None) -> None:
        self.max_fds = max_fds
        self.persistence = persistence
        self.max_inflight = max_inflight
        self.port = port or free_port(HOST)
        self._tmp = tempfile.TemporaryDirectory(prefix="ecloud-bench-mosquitto-")
        self.data_dir = Path(self._tmp.name)
        self.log_path = self.data_dir / "broker.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def fd_limit(self) -> int | None:
        """The open-files limit the running broker got."""
        return None if self.proc is None else _fd_limit_of(self.proc.pid)

    def start(self, deadline: float = START_DEADLINE) -> TunedMosquitto:
        binary = MOSQUITTO if os.path.exists(MOSQUITTO) else shutil.which("mosquitto")
        if not binary:
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(tuned_config(self.port, self.data_dir, persistence=self.persistence,
                                     max_inflight=self.max_inflight))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)], cwd=self.data_dir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
                # the child only calls setrlimit and prctl: no lock a thread could hold
                preexec_fn=lambda: _child_setup(self.max_fds),  # noqa: PLW1509
            )
        until = time.monotonic() + deadline
        while not mqtt_ping(HOST, self.port, timeout=0.5):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"mosquitto exited with status {code} while starting; "
                                   f"its log:\n{self._log_tail()}")
            if time.monotonic() > until:
                self.stop()
                raise RuntimeError(f"mosquitto did not answer an MQTT CONNECT on port {self.port}"
                                   f" within {deadline:g}s; its log:\n{self._log_tail()}")
            time.sleep(0.05)
        return self

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return "(no log)"
        return text[-limit:] or "(log is empty)"

    def stop(self, grace: float = STOP_GRACE) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def tuned_mosquitto(*, max_fds: int = MAX_FDS, persistence: bool = False,
                    max_inflight: int = 1000, broker: list | None = None) -> Iterator[str]:
    """Start a tuned private Mosquitto and yield its URL; stop it at the end.
    Pass a list as ``broker`` to get the :class:`TunedMosquitto` appended to
    it (for its pid, log and fd limit)."""
    mosq = TunedMosquitto(max_fds=max_fds, persistence=persistence, max_inflight=max_inflight)
    try:
        mosq.start()
        if broker is not None:
            broker.append(mosq)
        yield mosq.url
    finally:
        mosq.close()


if __name__ == "__main__":  # pragma: no cover - a manual check
    holder: list = []
    with tuned_mosquitto(broker=holder) as url:
        print(url, "pid", holder[0].pid, "fd limit", holder[0].fd_limit())
