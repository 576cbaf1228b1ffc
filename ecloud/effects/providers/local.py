"""The local provider: "VMs" that are ``ecloud-worker`` processes on this
machine - for one machine, for ``ecloud run`` and for tests.

It answers the same effects an OpenNebula provider does (``SpawnVM``,
``KillVM``) with the same outcome events (``vm.allocated``,
``vm.state_observed`` with OpenNebula's state codes), so everything above it
is exercised exactly as with real VMs.

Like VMs, local workers outlive the boss that started them: each one's pid is
kept in ``<work root>/<name>.pid`` (its output in ``<name>.log``), and a new
provider *adopts* the live ones (:meth:`LocalProvider.adopt`, called once the
boss holds the log - never before, so a boss that is refused the log touches
no process of the one that holds it). A worker is recognised by its command
line - ``ecloud_worker.agent`` with ``--work-dir <work root>/<name>`` - from its pid
file or, for one started just before a crash wrote that file, by a look
through ``/proc``; a reused pid is never signalled. A restarted boss
therefore keeps its workers, and the reports they made while it was down
are not wasted. Workers with no boss for their ``--boss-grace`` stop their
attempts and exit on their own.

Spawning is idempotent by name; a VM of the log that has no live process here
(exited, or from a run long gone) is reported DONE - and, when the worker
exited with an error of its own (the broker refused it, say), ``vm.failed``
first, with the last lines of its log as the reason.
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
#: the environment variable that names a local worker's log (and its tasks')
LOG_ID_VARIABLE = "ECLOUD_LOG_ID"
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

    def exit_status(self) -> int | None:
        """The exit status of a worker we started and that ended (None: still
        running, or adopted - not ours to wait for)."""
        if self.popen is None:
            return None
        return self.popen.poll()

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


def _worker_argv(pid: int, name: str | None = None) -> list[str] | None:
    """The command line of ``pid`` if it runs an ecloud worker (called
    ``name``, when given) and is not some process that got a reused pid or
    has already ended (a zombie), else None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    text = [a.decode(errors="replace") for a in argv]
    if "ecloud_worker.agent" not in text or not _Process(pid).alive():
        return None
    if name is not None and _flag(text, "--worker-id") != name:
        return None
    return text


def _log_tail(path: Path, lines: int = 3, limit: int = 600) -> str:
    """The last lines of a worker's log, for a failure's reason."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
    return tail[-limit:]


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
        boss_grace: float = 900.0,
        log_id: str = "",
    ) -> None:
        self.broker = broker
        #: the log whose workers these are: in every worker's environment (and
        #: so its tasks'), how they are told from another log's
        self.log_id = log_id
        self.cluster = cluster
        self.slots = slots
        self.work_root = Path(work_root).resolve()
        self.boss_grace = boss_grace
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

    def adopt(self) -> list[str]:
        """Take over the live workers of an earlier boss of this log - they
        carry its id in their environment, whatever their work directory -
        and returns their names. Workers of another log are never touched.
        One of this log's with a broker other than ours can never report
        again: it is told to stop (SIGTERM: it drains and exits)."""
        found: dict[str, int] = {}
        for pid, argv in _workers_of(self.log_id, self.work_root):
            found.setdefault(_flag(argv, "--worker-id") or "", pid)
        adopted = []
        with self._lock:
            for name, pid in sorted(found.items()):
                argv = _worker_argv(pid, name)
                if argv is None:
                    continue
                if _flag(argv, "--broker") == self.broker:
                    self._procs[vm_id_for(name)] = (name, _Process(pid))
                    adopted.append(name)
                else:
                    # left by a run whose (embedded) broker is gone: of no use to anyone
                    _Process(pid).signal(signal.SIGTERM)
        return adopted

    def running(self) -> list[str]:
        """Names of the worker processes alive now."""
        with self._lock:
            return sorted(name for name, proc in self._procs.values() if proc.alive())

    def command(self, name: str, vm_id: int) -> list[str]:
        cmd = [
            sys.executable, "-m", "ecloud_worker.agent",
            "--broker", self.broker, "--cluster", self.cluster, "--worker-id", name,
            "--slots", str(self.slots), "--vm-id", str(vm_id),
            "--work-dir", str(self.work_root / name), "--heartbeat", f"{self.heartbeat:g}",
            # the worker must give up draining before we give up on it
            "--drain-timeout", f"{max(1.0, self.kill_grace - 5):g}",
            "--boss-grace", f"{self.boss_grace:g}",
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
        if self.log_id:
            env[LOG_ID_VARIABLE] = self.log_id
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
            _forget_pid_file(self.work_root, known[0])
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

    def sweep_orphans(self) -> list[int]:
        """Kill what a worker of this log that died without stopping its
        attempts (SIGKILL, a crash) left running: every process carrying the
        log's id in its environment that no live worker of ours has among its
        ancestors. Returns their pids. Orphans re-parented to this process
        (a child subreaper, see :func:`become_subreaper`) are reaped."""
        if not self.log_id:
            return []
        with self._lock:
            agents = {proc.pid for _, proc in self._procs.values() if proc.alive()}
            known = {proc.pid for _, proc in self._procs.values()}
        parents: dict[int, int] = {}
        ours: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            parents[pid] = int(fields[1])
            if pid not in known and _log_of(pid) == self.log_id \
                    and _worker_argv(pid) is None:
                ours.append(pid)
        orphans = [pid for pid in ours if not _under(pid, agents, parents)]
        for pid in orphans:
            _Process(pid).signal(signal.SIGKILL)
        _reap_adopted(known)
        return orphans

    def observe(self, alive_in_log: list[tuple[str, int]], unallocated: list[str] = ()) -> list:
        """Report DONE for every VM the log thinks alive that has no running
        process here (exited, killed, or from an earlier run) - after a
        ``vm.failed`` saying why when the worker we started exited with an
        error of its own. A worker of ours found dead may have left attempts
        running (SIGKILL): they are killed first (:meth:`sweep_orphans`)."""
        events = []
        died = False
        with self._lock:
            for name, vm_id in alive_in_log:
                known = self._procs.get(vm_id)
                running = known is not None and known[1].alive()
                if not running and vm_id not in self._reported_done:
                    self._reported_done.add(vm_id)
                    died = died or known is not None
                    _forget_pid_file(self.work_root, name)
                    status = known[1].exit_status() if known is not None else None
                    if status:
                        tail = _log_tail(self.work_root / f"{name}.log")
                        events.append(ev.VMFailed(
                            name, f"worker exited with status {status}"
                                  + (f": {tail}" if tail else ""), "worker exited", vm_id))
                    events.append(ev.VMStateObserved(vm_id, DONE, LCM_INIT, None, name))
        if died:
            self.sweep_orphans()
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
        self.sweep_orphans()  # what a worker killed along the way may have left


def _workers_of(log_id: str, work_root: Path) -> list[tuple[int, list[str]]]:
    """Every live ecloud worker process of the log ``log_id`` (its
    environment says so); without a log id, those working in ``work_root``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _worker_argv(int(entry))
        if argv is None:
            continue
        if log_id:
            if _log_of(int(entry)) == log_id:
                found.append((int(entry), argv))
        elif Path(_flag(argv, "--work-dir") or "").parent == work_root:
            found.append((int(entry), argv))
    return found


def _log_of(pid: int) -> str | None:
    """The log id in a process's environment, if it has one (and we may read it)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    needle = b"\0" + LOG_ID_VARIABLE.encode() + b"="
    data = b"\0" + env
    at = data.find(needle)
    if at < 0:
        return None
    start = at + len(needle)
    end = data.find(b"\0", start)
    return data[start:end if end >= 0 else len(data)].decode(errors="replace")


def _under(pid: int, agents: set[int], parents: dict[int, int]) -> bool:
    """Whether a live agent of ours is an ancestor of ``pid``."""
    seen = 0
    while pid in parents and seen < 10_000:
        pid = parents[pid]
        if pid in agents:
            return True
        seen += 1
    return False


def _reap_adopted(known: set[int]) -> None:
    """Reap the exited children of this process that are no worker of ours
    (``Popen`` waits for those): orphans re-parented to us."""
    me = os.getpid()
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return
    for tid in tasks:
        try:
            children = Path(f"/proc/{me}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            if child in known:
                continue
            try:
                os.waitpid(child, os.WNOHANG)
            except ChildProcessError:
                pass


def become_subreaper() -> bool:
    """Have orphans of this process's descendants re-parented to it (Linux):
    the boss of local workers then finds, and reaps, what a worker that died
    left behind. False where that cannot be done."""
    from ecloud.effects.messaging.broker import _PRCTL

    return _PRCTL is not None and _PRCTL(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


def _forget_pid_file(work_root: Path, name: str) -> None:
    """The worker is gone: its pid file names nobody any more."""
    try:
        (work_root / f"{name}.pid").unlink()
    except OSError:
        pass
