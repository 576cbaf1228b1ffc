"""The local provider: "VMs" that are ``ecloud-worker`` processes on this
machine - for one machine, for ``ecloud run`` and for tests.

Each worker's output goes to ``<work root>/<name>.log`` and its pid to
``<work root>/<name>.pid``. It answers the same effects an OpenNebula provider does (``SpawnVM``,
``KillVM``) with the same outcome events (``vm.allocated``,
``vm.state_observed`` with OpenNebula's state codes), so everything above it
is exercised exactly as with real VMs. Spawning is idempotent by name: a
name whose process is alive is not spawned twice. Only processes this
provider started are ever signalled; a VM of the log it does not know (from
an earlier run) is reported DONE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path

from ecloud.events import types as ev
from ecloud.projections.effects import KillVM, SpawnVM

ACTIVE, DONE = 3, 6  # OpenNebula STATE codes
LCM_RUNNING, LCM_INIT = 3, 0


def vm_id_for(name: str) -> int:
    """A stable id for a VM name: its trailing number (``local-7`` -> 7),
    else a checksum of the name. Names are unique in a log, so ids are too."""
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else zlib.crc32(name.encode()) | (1 << 31)


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
    ) -> None:
        self.broker = broker
        self.cluster = cluster
        self.slots = slots
        self.work_root = Path(work_root)
        self.heartbeat = heartbeat
        self.debug = debug
        self.kill_grace = kill_grace
        self._lock = threading.Lock()
        self._procs: dict[int, tuple[str, subprocess.Popen]] = {}
        self._reported_done: set[int] = set()

    def command(self, name: str, vm_id: int) -> list[str]:
        cmd = [
            sys.executable, "-m", "worker.agent",
            "--broker", self.broker, "--cluster", self.cluster, "--worker-id", name,
            "--slots", str(self.slots), "--vm-id", str(vm_id),
            "--work-dir", str(self.work_root / name), "--heartbeat", f"{self.heartbeat:g}",
            # the worker must give up draining before we give up on it
            "--drain-timeout", f"{max(1.0, self.kill_grace - 5):g}",
        ]
        return cmd + (["--debug"] if self.debug else [])

    def spawn(self, effect: SpawnVM) -> list:
        name = effect.vm_name
        vm_id = vm_id_for(name)
        with self._lock:
            known = self._procs.get(vm_id)
            if known is None or known[1].poll() is not None:
                self.work_root.mkdir(parents=True, exist_ok=True)
                logfile = open(self.work_root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
                proc = subprocess.Popen(
                    self.command(name, vm_id), stdin=subprocess.DEVNULL, stdout=logfile,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
                logfile.close()
                (self.work_root / f"{name}.pid").write_text(f"{proc.pid}\n")
                self._procs[vm_id] = (name, proc)
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
            proc = known[1]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.kill_grace)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        with self._lock:
            self._reported_done.add(effect.vm_id)
        return [ev.VMStateObserved(effect.vm_id, DONE, LCM_INIT, None, known[0] if known else "")]

    def observe(self, alive_in_log: list[tuple[str, int]]) -> list:
        """Report DONE for every VM the log thinks alive that has no running
        process here (exited, killed, or from an earlier run)."""
        events = []
        with self._lock:
            for name, vm_id in alive_in_log:
                known = self._procs.get(vm_id)
                running = known is not None and known[1].poll() is None
                if not running and vm_id not in self._reported_done:
                    self._reported_done.add(vm_id)
                    events.append(ev.VMStateObserved(vm_id, DONE, LCM_INIT, None, name))
        return events

    def close(self) -> None:
        """Kill whatever is still running (after a crash of the caller)."""
        with self._lock:
            procs = [p for _, p in self._procs.values()]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(self.kill_grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
