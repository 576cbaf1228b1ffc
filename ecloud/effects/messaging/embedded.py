"""The embedded broker of ``ecloud run``, kept by a keeper process so that it
outlives a run that is killed.

    python -m ecloud.effects.messaging.embedded --dir DIR --kind mosquitto|python [--port N] [--idle-exit S]

Why a keeper: ``ecloud run`` may die at any instant (SIGKILL, a closed
terminal, power). Its local workers hold attempts that must not run twice,
and they report on the run's broker. If the broker died with the run, the
next run would have to start the workers' tasks again; so the broker lives
in a process of its own - the keeper, in its own session, the broker its
child (it dies with the keeper) - and the next ``ecloud run`` on the same
work directory *reuses* it: its workers are still connected, the reports
they made meanwhile wait in the boss's session, and the new boss adopts
them (see :mod:`ecloud.effects.providers.local`). Nothing lingers either: the keeper
stops its broker and removes its directory when no client has been
connected for ``--idle-exit`` seconds (the workers of a killed run stop
themselves after their ``--boss-grace``), and a run that ends normally
stops the keeper it started or reused.

A keeper belongs to one log: its command line names the log's id
(``--log-id``, :meth:`ecloud.log.store.LogStore.log_id`). A run looks
first for a live keeper of its own log, wherever it is (a run killed in
another work directory, or started from another folder with ``--db``
naming the same file), and reuses it. In its own folder it trusts a record,
``DIR/keeper.json`` (``keeper_pid``, ``broker_pid``, ``port``, ``url``,
``kind``, ``log_id``), only when the keeper's pid is alive *and* its command
line names this very directory (a pid reused by another program is never
signalled); a live keeper there of *another* log means another run's work
directory: the run is refused, nothing is touched. Otherwise it stops
whatever still runs with this directory on its command line, removes the
directory, and starts a keeper afresh - on the recorded port when it is
free, so that workers of the killed run reconnect to the new broker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ecloud.effects.messaging.broker import (
    HOST,
    Broker,
    Kind,
    choose_kind,
    mqtt_ping,
    mqtt_port_free,
)
from ecloud.errors import EcloudError

RECORD = "keeper.json"
KEEPER_LOG = "keeper.log"
START_DEADLINE = 15.0  # seconds for the keeper to report its broker up
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL of a keeper
IDLE_EXIT = 60.0  # seconds without a client before the keeper stops
MODULE = "ecloud.effects.messaging.embedded"


# ------------------------------------------------------------------ the run


class EmbeddedBroker:
    """A keeper's broker as ``ecloud run`` uses it: ``url``, ``kind``,
    whether it was ``reused`` from a run before, and :meth:`stop`."""

    def __init__(self, folder: Path, record: dict, proc: subprocess.Popen | None,
                 reused: bool) -> None:
        self.folder = folder
        self.url: str = record["url"]
        self.kind: Kind = record["kind"]
        self.port: int = record["port"]
        self.keeper_pid: int = record["keeper_pid"]
        self._proc = proc
        self.reused = reused

    def alive(self) -> bool:
        """Whether the keeper (and so its broker) still runs."""
        return _keeper_alive({"keeper_pid": self.keeper_pid}, self.folder)

    def revive(self, log_id: str, idle_exit: float = IDLE_EXIT) -> bool:
        """The keeper died (killed, say): start a new one on the same port,
        so that the boss and the workers reconnect where they were. False if
        the port was taken meanwhile."""
        _clear(self.folder)
        if not mqtt_port_free(self.port):
            return False
        fresh = _start_keeper(self.folder, self.port, idle_exit, log_id)
        if fresh.port != self.port:
            fresh.stop()
            return False
        self.keeper_pid, self._proc = fresh.keeper_pid, fresh._proc
        return True

    def stop(self) -> None:
        """Stop the keeper (it stops its broker and removes its folder) and
        wait for it; SIGKILL after :data:`STOP_GRACE` seconds."""
        if _signal_keeper(self.keeper_pid, self.folder, signal.SIGTERM):
            if not self._wait(STOP_GRACE):
                _signal_keeper(self.keeper_pid, self.folder, signal.SIGKILL)
                self._wait(5.0)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _wait(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while _alive(self.keeper_pid):  # not our child: poll
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def open_embedded(folder: Path, log_id: str, *, idle_exit: float = IDLE_EXIT) -> EmbeddedBroker:
    """The run's broker: a live keeper of this log's, wherever it is (a run
    before this one was killed), else a new keeper's in ``folder``.
    :class:`~ecloud.errors.LogHeldError` if ``folder`` is the live
    keeper's of another log."""
    from ecloud.errors import LogHeldError

    folder = folder.resolve()
    for pid, where in keepers_of(log_id):
        record = read_record(where)
        if record is not None and record["keeper_pid"] == pid \
                and mqtt_ping(HOST, int(record["port"]), timeout=2.0):
            return EmbeddedBroker(where, record, None, reused=True)
    record = read_record(folder)
    if record is not None and _keeper_alive(record, folder):
        raise LogHeldError(
            f"{folder.parent} is the work directory of another log's run: its embedded broker "
            f"(keeper pid {record['keeper_pid']}) still runs - a run killed less than a few "
            "minutes ago, or one still running; give this run another --work-dir")
    port = record.get("port") if record else None
    _clear(folder)
    return _start_keeper(folder, port, idle_exit, log_id)


def keepers_of(log_id: str) -> list[tuple[int, Path]]:
    """(pid, folder) of every live keeper of the log ``log_id``."""
    if not log_id:
        return []
    found = []
    for pid, argv in _processes():
        if MODULE.encode() in argv and _arg(argv, b"--log-id") == log_id.encode():
            folder = _arg(argv, b"--dir")
            if folder:
                found.append((pid, Path(folder.decode(errors="replace"))))
    return found


def _processes() -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every live process but this one."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _alive(int(entry)):
            found.append((int(entry), argv))
    return found


def _arg(argv: list[bytes], flag: bytes) -> bytes | None:
    try:
        return argv[argv.index(flag) + 1]
    except (ValueError, IndexError):
        return None


def read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    fields = {"keeper_pid": int, "broker_pid": int, "port": int, "url": str, "kind": str}
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t)
                                           for k, t in fields.items()):
        return None
    return record


def _start_keeper(folder: Path, port: int | None, idle_exit: float,
                  log_id: str = "") -> EmbeddedBroker:
    kind = choose_kind()  # raises with the reason when neither flavour can run
    folder.mkdir(parents=True, exist_ok=True)
    if port is not None and not mqtt_port_free(port):
        port = None  # taken meanwhile: workers of a killed run cannot come back
    cmd = [sys.executable, "-m", MODULE, "--dir", str(folder), "--kind", kind,
           "--idle-exit", f"{idle_exit:g}", "--log-id", log_id or "-"]
    if port is not None:
        cmd += ["--port", str(port)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])  # the keeper imports ecloud as we do
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with open(folder / KEEPER_LOG, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=folder, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + START_DEADLINE
    while True:
        record = read_record(folder)
        if record is not None and record["keeper_pid"] == proc.pid:
            return EmbeddedBroker(folder, record, proc, reused=False)
        if proc.poll() is not None:
            raise EcloudError(f"the embedded broker's keeper exited with status "
                              f"{proc.returncode} while starting; {folder / KEEPER_LOG} ends:\n"
                              f"{_tail(folder / KEEPER_LOG)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise EcloudError(f"the embedded broker did not start within {START_DEADLINE:g}s; "
                              f"{folder / KEEPER_LOG} ends:\n{_tail(folder / KEEPER_LOG)}")
        time.sleep(0.05)


def _clear(folder: Path) -> None:
    """Stop whatever still runs with ``folder`` on its command line (a
    keeper that no longer answers, a broker whose keeper died before it)
    and remove the folder."""
    for pid in processes_naming(str(folder)):
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while processes_naming(str(folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in processes_naming(str(folder)):
        _kill(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------- processes


def processes_naming(path: str) -> list[int]:
    """Live processes (not zombies) with ``path`` on their command line, as
    an argument or as the folder of one (``path/x``); never this process."""
    exact = path.rstrip("/").encode()
    inside = exact + b"/"
    found = [pid for pid, argv in _processes()
             if any(arg == exact or inside in arg for arg in argv)]
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie has ended, it only waits for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _keeper_alive(record: dict, folder: Path) -> bool:
    pid = record["keeper_pid"]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _alive(pid) and MODULE.encode() in argv and str(folder).encode() in argv


def _signal_keeper(pid: int, folder: Path, sig: int) -> bool:
    """Signal the keeper if it is still the keeper of ``folder``."""
    if not _keeper_alive({"keeper_pid": pid}, folder):
        return False
    return _kill(pid, sig)


def _kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return text[-limit:] if text else "(log is empty)"


def connections(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (IPv4 and 6),
    from ``/proc/net/tcp*``: how many clients the broker has."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


# --------------------------------------------------------------- the keeper


def keep(folder: Path, kind: Kind, port: int | None, idle_exit: float) -> int:
    """The keeper's life: start the broker, record it, watch it; stop when
    told (SIGTERM, SIGINT) or when no client came for ``idle_exit`` s."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    broker = _start_broker(kind, port, folder)
    record = {"keeper_pid": os.getpid(), "broker_pid": broker.pid, "port": broker.port,
              "url": broker.url, "kind": broker.kind, "started": time.time()}
    temp = folder / f".{RECORD}.{os.getpid()}"
    temp.write_text(json.dumps(record))
    os.replace(temp, folder / RECORD)
    print(f"keeper {os.getpid()}: {broker.kind} broker pid {broker.pid} at {broker.url}",
          flush=True)
    idle_since = time.monotonic()
    try:
        while not stop.wait(1.0):
            if not broker.running():
                print("the broker exited: restarting it", flush=True)
                broker.restart()
            if connections(broker.port):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_exit:
                print(f"no client for {idle_exit:g}s: stopping", flush=True)
                break
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _start_broker(kind: Kind, port: int | None, folder: Path) -> Broker:
    data = folder / "broker"
    if port is not None:
        try:
            return Broker(kind, port=port, data_dir=data).start()
        except EcloudError as exc:
            print(f"port {port}: {exc}; taking a free port", flush=True)
    return Broker(kind, data_dir=data).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="Keep ecloud run's embedded MQTT broker.")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--kind", required=True, choices=["mosquitto", "python"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT)
    parser.add_argument("--log-id", default="-", help="the log whose run this broker serves")
    args = parser.parse_args(argv)
    return keep(args.dir.resolve(), args.kind, args.port, args.idle_exit)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
