"""A private MariaDB server for tests that stop, kill and restart it.

The chaos tests must take the database away mid-run without touching the
machine's shared server (127.0.0.1:3306). :class:`PrivateMariaDB` runs its own
``mariadbd`` on a free port of 127.0.0.1, with its own data dir, socket, pid
file and log under a base directory (pytest's ``tmp_path``)::

    with PrivateMariaDB(tmp_path / "mariadb") as db:   # started
        store = open_store(db.url("events"))
        db.stop()     # clean shutdown (SIGTERM)
        db.start()    # same data dir, same port: clients reconnect to the same address
        db.kill()     # SIGKILL; the next start() runs InnoDB crash recovery
        db.start()
    # closed: nothing left running

The first :meth:`~PrivateMariaDB.start` makes the data dir with
``mariadb-install-db`` (user ``root``, empty password). Every start waits, up to
a deadline, until a real connection succeeds and reports this server's data
dir; a server that does not come up is an error quoting the end of its log.

The ``private_mariadb`` fixture yields a started instance and always closes it;
``tests/chaos/conftest.py`` registers it for the chaos tests. Closing also
kills any server whose pid file still names a live ``mariadbd`` on this data
dir, and an ``atexit`` hook closes instances a test forgot. A process killed
with SIGKILL runs neither, so a server can outlive *that*.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pymysql
import pytest

__all__ = ["PrivateMariaDB", "PrivateMariaDBError", "private_mariadb"]

INSTALL_DB = "/usr/bin/mariadb-install-db"
MARIADBD = "/usr/sbin/mariadbd"
HOST = "127.0.0.1"
USER = "root"

# Small buffers: the server starts in about a second and uses ~100 MB.
_SMALL = ["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M"]
_SOCKET_MAX = 100  # sun_path holds 108 bytes; stay clear of it
_LOG_TAIL_LINES = 40
_POLL = 0.05

_live: weakref.WeakSet[PrivateMariaDB] = weakref.WeakSet()


class PrivateMariaDBError(Exception):
    """The private server could not be set up, started or stopped."""


class _PortTaken(PrivateMariaDBError):
    """Someone else got the port between our probe and the server's bind."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PrivateMariaDB:
    """One ``mariadbd`` of our own; see the module docstring.

    ``base_dir`` holds ``data/`` (data dir, socket, pid file), ``mariadbd.log``
    (server output, appended across restarts) and ``install.log``.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.datadir = self.base_dir / "data"
        self.log_path = self.base_dir / "mariadbd.log"
        self.install_log_path = self.base_dir / "install.log"
        self.pid_path = self.datadir / "mysqld.pid"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port: int | None = None  # chosen by the first start, then kept
        self.install_seconds: float | None = None
        self.last_start_seconds: float | None = None  # mariadbd launch -> first connection
        self._socket_dir: Path | None = None  # a short dir when datadir's path is too long
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def socket_path(self) -> Path:
        path = self.datadir / "mysqld.sock"
        if len(str(path)) <= _SOCKET_MAX:
            return path
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="pmdb-"))
        return self._socket_dir / "mysqld.sock"

    def url(self, db: str) -> str:
        """The event log URL of database ``db`` on this server."""
        return f"mysql://{USER}@{HOST}:{self._port()}/{db}"

    def connect(self, db: str | None = None, **kwargs) -> pymysql.connections.Connection:
        """A new PyMySQL connection as root (``autocommit`` off, as pymysql's default)."""
        kwargs.setdefault("connect_timeout", 5)
        return pymysql.connect(
            host=HOST, port=self._port(), user=USER, password="", database=db, **kwargs
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def _port(self) -> int:
        if self.port is None:
            raise PrivateMariaDBError("the private MariaDB has not been started yet")
        return self.port

    # ----------------------------------------------------------------- start

    def start(self) -> None:
        """Start the server (installing the data dir the first time) and wait
        until it accepts connections. Restarts keep the data dir and the port."""
        if self.running:
            raise PrivateMariaDBError(f"already running (pid {self._proc.pid})")
        self._kill_stale()
        if not (self.datadir / "mysql").is_dir():
            self._install()
        if self.port is not None:
            self._launch(self.port)
            return
        for attempt in range(3):  # a fresh port can be taken between probe and bind
            port = free_port()
            try:
                self._launch(port)
            except _PortTaken:
                if attempt == 2:
                    raise
                continue
            self.port = port
            return

    def _install(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        staging = self.base_dir / "data.installing"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            INSTALL_DB,
            "--no-defaults",
            f"--datadir={staging}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            *self._user_flag(),
            *_SMALL,  # passed on to the bootstrap server: ib_logfile0 is made small
        ]
        began = time.monotonic()
        with open(self.install_log_path, "wb") as log:
            try:
                done = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=self.start_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                done = None
        if done is None or done.returncode != 0:
            why = "timed out" if done is None else f"exited with {done.returncode}"
            raise PrivateMariaDBError(
                f"mariadb-install-db {why}; end of {self.install_log_path}:\n"
                + _tail(self.install_log_path)
            )
        staging.rename(self.datadir)  # only a complete data dir counts as installed
        self.install_seconds = time.monotonic() - began

    def _command(self, port: int) -> list[str]:
        return [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_path}",
            f"--tmpdir={self.base_dir}",
            f"--port={port}",
            f"--bind-address={HOST}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--innodb-flush-log-at-trx-commit=1",  # a committed row survives SIGKILL
            *_SMALL,
            *self._user_flag(),
        ]

    def _launch(self, port: int) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {' '.join(self._command(port))}\n".encode())
            log.flush()
            began = time.monotonic()
            self._proc = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal goes to pytest only
            )
        _live.add(self)
        try:
            self._wait_ready(port)
        except BaseException:
            self._force_kill()
            raise
        self.last_start_seconds = time.monotonic() - began

    def _wait_ready(self, port: int) -> None:
        """Poll with real connections until one works and talks to *our* server."""
        deadline = time.monotonic() + self.start_timeout
        last = "no attempt"
        while True:
            code = self._proc.poll()
            if code is not None:
                kind = _PortTaken if "Address already in use" in self.log_tail(10) else None
                raise self._failed(f"mariadbd exited with {code} while starting", kind)
            try:
                conn = pymysql.connect(
                    host=HOST, port=port, user=USER, password="", connect_timeout=2
                )
            except (pymysql.MySQLError, OSError) as exc:
                last = str(exc)
            else:
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT @@datadir")
                        (datadir,) = cur.fetchone()
                finally:
                    conn.close()
                if Path(datadir).resolve() != self.datadir:
                    raise self._failed(
                        f"port {port} is served by another server ({datadir})", _PortTaken
                    )
                return
            if time.monotonic() > deadline:
                raise self._failed(
                    f"mariadbd did not accept connections on {HOST}:{port}"
                    f" within {self.start_timeout:g}s (last error: {last})"
                )
            time.sleep(_POLL)

    def _failed(self, what: str, kind: type[PrivateMariaDBError] | None = None) -> Exception:
        kind = kind or PrivateMariaDBError
        return kind(f"{what}; end of {self.log_path}:\n{self.log_tail()}")

    @staticmethod
    def _user_flag() -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Clean shutdown: SIGTERM, then wait for the exit (up to ``stop_timeout``).
        A server that does not exit in time is killed, and that is an error."""
        proc = self._require_running("stop")
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._force_kill()
            raise self._failed(
                f"mariadbd (pid {proc.pid}) ignored SIGTERM for {self.stop_timeout:g}s; killed it"
            ) from None
        if code != 0:
            raise self._failed(f"mariadbd (pid {proc.pid}) exited with {code} on SIGTERM")

    def kill(self) -> None:
        """SIGKILL, as a crash would; wait until the process is gone."""
        self._require_running("kill")
        self._force_kill()

    def close(self) -> None:
        """Stop the server if it runs and leave nothing running. Idempotent."""
        try:
            if self.running:
                try:
                    self.stop()
                except PrivateMariaDBError:
                    self._force_kill()
        finally:
            self._kill_stale()
            _live.discard(self)
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None

    def _require_running(self, what: str) -> subprocess.Popen[bytes]:
        if not self.running:
            raise PrivateMariaDBError(f"cannot {what}: the private MariaDB is not running")
        return self._proc

    def _force_kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            raise PrivateMariaDBError(
                f"mariadbd (pid {proc.pid}) still alive {self.stop_timeout:g}s after SIGKILL"
            ) from None

    def _kill_stale(self) -> None:
        """SIGKILL a live ``mariadbd`` on our data dir that the pid file names but
        we do not hold (e.g. left by an earlier process using this base dir)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        if self._proc is not None and self._proc.pid == pid and self._proc.poll() is None:
            return  # ours, running: stop()/kill() handle it
        if not _pid_alive(pid) or not self._is_our_server(pid):
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + self.stop_timeout
        while _pid_alive(pid) and self._is_our_server(pid):  # not our child: cannot wait()
            if time.monotonic() > deadline:
                raise PrivateMariaDBError(f"stale mariadbd (pid {pid}) survives SIGKILL")
            time.sleep(_POLL)

    def _is_our_server(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return (
            bool(argv)
            and os.path.basename(argv[0]) == b"mariadbd"
            and f"--datadir={self.datadir}".encode() in argv
        )

    # -------------------------------------------------------- context manager

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{HOST}:{self.port}" if self.port else "no port yet"
        return f"<PrivateMariaDB {where} {self.datadir} pid={self.pid}>"


@atexit.register
def _close_forgotten() -> None:
    for db in list(_live):
        db.close()


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A started private MariaDB under ``tmp_path / "mariadb"``; always closed."""
    db = PrivateMariaDB(tmp_path / "mariadb")
    try:
        db.start()
        yield db
    finally:
        db.close()
