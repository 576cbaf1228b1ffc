"""The local provider: "VMs" that are ``ecloud-worker`` processes on this
machine - for one machine, for ``ecloud run`` and for tests.

It answers the same effects an OpenNebula provider does (``SpawnVM``,
``KillVM``) with the same outcome events (``vm.allocated``,
``vm.state_observed`` with OpenNebula's state codes), so everything above it
is exercised exactly as with real VMs.

Like VMs, local workers outlive the boss that started them: each one's pid is
kept in ``<work root>/<name>.pid`` (its output in ``<name>.log``), and a new
provider *adopts* the live ones it finds there - after checking the process
really is that worker, so a reused pid is never signalled. A restarted boss
therefore keeps its workers, and the reports they made while it was down
(queued by the broker for the boss's persistent session) are not wasted.
Spawning is idempotent by name; a VM of the log that has no live process here
(exited, or from a run long gone) is reported DONE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from ecloud.events import types as ev
from ecloud.projections.effects import KillVM, SpawnVM

if TYPE_CHECKING:
    from ecloud.security.setup import WorkerCredentials

ACTIVE, DONE = 3, 6  # OpenNebula STATE codes
#: the boss's own variables besides its settings' (ecloud.config.SETTINGS)
_BOSS_VARIABLES = frozenset({"ECLOUD_CONFIG"})
LCM_RUNNING, LCM_INIT = 3, 0


def vm_id_for(name: str) -> int:
    """A stable id for a VM name: its trailing number (``local-7`` -> 7),
    else a checksum of the name. Names are unique in a log, so ids are too."""
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else zlib.crc32(name.encode()) | (1 << 31)


class _Process:
    """A worker process: one we started (a Popen) or one we adopted (a pid)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self.popen = popen

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> bool:
        """True when the process ended within ``timeout`` seconds."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # not our child: nothing to block on
        return True


def _worker_argv(pid: int, name: str) -> list[str] | None:
    """The command line of ``pid`` if it runs the ecloud worker called
    ``name`` (and is not some process that got a reused pid), else None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    text = [a.decode(errors="replace") for a in argv]
    if "worker.agent" in text and _flag(text, "--worker-id") == name:
        return text
    return None


def _flag(argv: list[str], flag: str) -> str | None:
    try:
        return argv[argv.index(flag) + 1]
    except (ValueError, IndexError):
        return None


class LocalProvider:
    def __init__(
        self,
        broker: str,
        cluster: str,
        *,
        slots: int = 1,
        work_root: str | os.PathLike = ".ecloud-workers",
        heartbeat: float = 2.0,
        debug: bool = False,
        kill_grace: float = 20.0,
        credentials: WorkerCredentials | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.broker = broker
        self.cluster = cluster
        self.slots = slots
        self.work_root = Path(work_root)
        self.heartbeat = heartbeat
        self.debug = debug
        self.kill_grace = kill_grace
        #: each worker's broker account: its password goes in its environment
        #: (never its command line), the CA's path on its command line
        self.credentials = credentials
        self.ca_file = ca_file
        self._lock = threading.Lock()
        self._procs: dict[int, tuple[str, _Process]] = {}
        self._reported_done: set[int] = set()
        self._adopt()

    def _adopt(self) -> None:
        for pidfile in sorted(self.work_root.glob("*.pid")):
            name = pidfile.stem
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            argv = _worker_argv(pid, name)
            if argv is None:
                continue
            if _flag(argv, "--broker") == self.broker:
                self._procs[vm_id_for(name)] = (name, _Process(pid))
            else:
                # left by a run whose (embedded) broker is gone: of no use to anyone
                _Process(pid).signal(signal.SIGTERM)

    def running(self) -> list[str]:
        """Names of the worker processes alive now."""
        with self._lock:
            return sorted(name for name, proc in self._procs.values() if proc.alive())

    def command(self, name: str, vm_id: int) -> list[str]:
        cmd = [
            sys.executable, "-m", "worker.agent",
            "--broker", self.broker, "--cluster", self.cluster, "--worker-id", name,
            "--slots", str(self.slots), "--vm-id", str(vm_id),
            "--work-dir", str(self.work_root / name), "--heartbeat", f"{self.heartbeat:g}",
            # the worker must give up draining before we give up on it
            "--drain-timeout", f"{max(1.0, self.kill_grace - 5):g}",
        ]
        if self.ca_file is not None:
            cmd += ["--broker-ca", self.ca_file]
        return cmd + (["--debug"] if self.debug else [])

    def environment(self, name: str) -> dict[str, str]:
        """The worker's environment: ours without the boss's settings (its
        database URL, OpenNebula session, broker account and worker secret
        are not for workers, nor for the tasks that inherit their
        environment), plus the worker's own broker password if it has an
        account."""
        from ecloud.config import SETTINGS

        env = {k: v for k, v in os.environ.items() if k not in _BOSS_VARIABLES}
        for setting in SETTINGS:
            env.pop(setting.env, None)
        if self.credentials is not None:
            env["ECLOUD_BROKER_PASSWORD"] = self.credentials.password_for(name)
        return env

    def spawn(self, effect: SpawnVM) -> list:
        name = effect.vm_name
        vm_id = vm_id_for(name)
        with self._lock:
            known = self._procs.get(vm_id)
            if known is None or not known[1].alive():
                self.work_root.mkdir(parents=True, exist_ok=True)
                logfile = open(self.work_root / f"{name}.log", "ab")  # noqa: SIM115 - the child's
                popen = subprocess.Popen(
                    self.command(name, vm_id), stdin=subprocess.DEVNULL, stdout=logfile,
                    stderr=subprocess.STDOUT, start_new_session=True, env=self.environment(name),
                )
                logfile.close()
                (self.work_root / f"{name}.pid").write_text(f"{popen.pid}\n")
                self._procs[vm_id] = (name, _Process(popen.pid, popen))
                self._reported_done.discard(vm_id)
        return [
            ev.VMAllocated(name, vm_id),
            ev.VMStateObserved(vm_id, ACTIVE, LCM_RUNNING, "127.0.0.1", name),
        ]

    def kill(self, effect: KillVM) -> list:
        """SIGTERM (the worker drains and says goodbye), SIGKILL after the grace."""
        with self._lock:
            known = self._procs.get(effect.vm_id)
        if known is not None:
            self._stop(known[1])
        with self._lock:
            self._reported_done.add(effect.vm_id)
        return [ev.VMStateObserved(effect.vm_id, DONE, LCM_INIT, None, known[0] if known else "")]

    def _stop(self, proc: _Process) -> None:
        if proc.alive():
            proc.signal(signal.SIGTERM)
            if not proc.wait(self.kill_grace):
                # the worker hung; tasks it started run in sessions of their own
                proc.signal(signal.SIGKILL)
                proc.wait(5)

    def observe(self, alive_in_log: list[tuple[str, int]]) -> list:
        """Report DONE for every VM the log thinks alive that has no running
        process here (exited, killed, or from an earlier run)."""
        events = []
        with self._lock:
            for name, vm_id in alive_in_log:
                known = self._procs.get(vm_id)
                running = known is not None and known[1].alive()
                if not running and vm_id not in self._reported_done:
                    self._reported_done.add(vm_id)
                    events.append(ev.VMStateObserved(vm_id, DONE, LCM_INIT, None, name))
        return events

    def close(self, stop_workers: bool = False) -> None:
        """Let go of the workers - they keep running, like VMs, for the next
        boss to adopt - or, with ``stop_workers``, stop them all first."""
        if not stop_workers:
            return
        with self._lock:
            procs = [p for _, p in self._procs.values()]
        for proc in procs:
            if proc.alive():
                proc.signal(signal.SIGTERM)
        for proc in procs:
            self._stop(proc)
