"""A fake OpenNebula ``oned`` speaking the real XML-RPC wire protocol.

OpenNebula cannot be installed here, so the tests run the *unmodified* pyone
client against this server (see docs/opennebula.md for the facts it
follows). It serves what ecloud calls - ``one.template.instantiate``,
``one.vm.action``, ``one.vm.info``, ``one.vmpool.info`` - the way oned does:

- every answer is ``[True, value, 0]`` or ``[False, message, errcode]``;
  the session (``user:password``) is checked first (0x100), then every
  argument's XML-RPC type, strictly: an ``int`` is not a ``boolean`` (0x1000);
- documents are compact XML (root ``VM`` or ``VM_POOL``, integers in integer
  elements, template values in CDATA) that pyone's generateDS bindings parse;
  ``vmpool.info`` gives the short body: NIC but no CONTEXT;
- VMs move PENDING -> ACTIVE/PROLOG -> ACTIVE/BOOT -> ACTIVE/RUNNING (or
  ACTIVE/BOOT_FAILURE, LCM 36) after per-step delays (``delays``; ``None``
  holds a VM in that step until :meth:`FakeOned.advance`). The ticker thread
  moves them; every call also brings them up to date first;
- ``terminate`` is refused during PROLOG/BOOT (0x800), ``terminate-hard``
  works in any state, both are no-ops on a DONE VM; an unknown id is 0x400;
  ``quota`` caps the user's VMs that are not DONE (0x200, oned's message);
- the extra template of instantiate (``KEY="value"`` lines) becomes the VM's
  USER_TEMPLATE, and - as if the worker template's CONTEXT referred to each of
  them (``KEY="$KEY"``) - its context variables, with ``VMID`` (TOKEN=YES) and
  ``ETH0_IP`` (NETWORK=YES). Each VM gets the IP ``10.0.<id / 256>.<id % 256>``.

When a VM reaches RUNNING and ``worker_command`` is set, the fake boots the
"guest": it writes the VM's ``context.sh`` (as OpenNebula's context CD holds
it) into ``<dir>/vm-<id>/`` and starts ``worker_command`` there (placeholders
``{context_file}``, ``{vm_dir}``, ``{vm_id}``) in a session of its own, with
the context variables in its environment - plus, for every ``X_B64``
variable, ``X`` decoded, which is what the worker template's START_SCRIPT
does (:mod:`ecloud.effects.providers.opennebula`). Its output goes to
``<dir>/vm-<id>/worker.log``. ``terminate`` sends SIGTERM to the process
group (ACPI shutdown: ACTIVE/SHUTDOWN until it exits, SIGKILL after
``delays["SHUTDOWN"]``), ``terminate-hard`` and :meth:`FakeOned.close` send
SIGKILL; then the VM goes through EPILOG to DONE.

VMs can be put from outside in STOPPED, SUSPENDED, POWEROFF, UNDEPLOYED
or HOLD (:meth:`set_phase`): the guest's process group is killed (frozen,
for SUSPENDED), they keep counting against ``quota`` (every state but DONE
does), and terminate takes them through EPILOG to DONE. A terminate can be
refused as on a locked VM (:meth:`refuse_next_terminates`); an instantiate
can act and answer nonsense (:meth:`answer_next_instantiates_badly`); with
``token = False`` the guest's context has no VMID (no TOKEN=YES).

State hooks (issue 24). :meth:`FakeOned.create_hook` takes a ``onehook
create`` template (``NAME``, ``TYPE = "state"``, ``RESOURCE = "VM"``, ``ON``,
``STATE``/``LCM_STATE`` for CUSTOM - by name, as oned's
``vm_state_from_str`` reads them: a number is "Wrong STATE" -, ``COMMAND``,
``ARGUMENTS``, ``ARGUMENTS_STDIN``), as oned does; on each state change a
hook names, oned's hook manager runs ``COMMAND`` (relative: in
``hooks_dir``) with ``$TEMPLATE`` in ``ARGUMENTS`` replaced by the VM's XML
(as ``one.vm.info`` gives it) in base64 - the arguments on stdin with
``ARGUMENTS_STDIN = "yes"``, else split on blanks - a real process, one after
another, each run recorded in :attr:`FakeOned.hook_runs` with its exit status
and output. Hooks are no more reliable here than there:
:meth:`lose_next_callbacks` drops runs, :meth:`duplicate_next_callbacks`
runs one twice, ``hook_delay`` (seconds) holds each run back.

Test knobs: ``session``, ``quota``, ``delays``, ``worker_command``, ``token`` (plain
attributes), :meth:`fail_next_boots`, :meth:`hang_next_call`,
:meth:`add_vm`, :meth:`advance`; accessors :meth:`vms`, :meth:`vm`,
:meth:`calls`, :attr:`instantiate_calls`, :meth:`worker_pid`,
:meth:`worker_alive`, :meth:`worker_returncode`, :meth:`worker_log`. The
``fake_oned`` fixture gives a started one.
"""

from __future__ import annotations

import base64
import binascii
import os
import queue
import re
import shlex
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self
from xml.sax.saxutils import escape
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest
from attrs import frozen

REPO_ROOT = Path(__file__).resolve().parents[2]

# oned's error codes (docs/opennebula.md)
AUTHENTICATION, AUTHORIZATION, NO_EXISTS, ACTION, API, INTERNAL, LOCKED = (
    0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000, 0x8000)

#: phase -> (STATE, LCM_STATE)
PHASES = {
    "PENDING": (1, 0),
    "HOLD": (2, 0),
    "PROLOG": (3, 1),
    "BOOT": (3, 2),
    "RUNNING": (3, 3),
    "EPILOG": (3, 11),
    "SHUTDOWN": (3, 12),
    "BOOT_FAILURE": (3, 36),
    "DONE": (6, 0),
    # put there from outside (an admin, a host failure, oned itself): they hold
    # quota and run nothing
    "STOPPED": (4, 0),
    "SUSPENDED": (5, 0),
    "POWEROFF": (8, 0),
    "UNDEPLOYED": (9, 0),
}
#: phases a VM can be put in from outside (:meth:`FakeOned.set_phase`), and
#: what happens to its guest: killed with it (powered off, undeployed,
#: stopped: its memory saved and the VM off the host), or frozen
OUTSIDE = {"STOPPED": signal.SIGKILL, "POWEROFF": signal.SIGKILL, "UNDEPLOYED": signal.SIGKILL,
           "SUSPENDED": signal.SIGSTOP, "HOLD": None}
#: a state hook's ON -> the (STATE, LCM_STATE) it fires on (CUSTOM names its own)
HOOK_ON = {"RUNNING": (3, 3), "STOP": (4, 0), "DONE": (6, 0), "UNKNOWN": (3, 16)}
#: the names oned reads in a CUSTOM hook's STATE and LCM_STATE (some of them)
STATE_NAMES = {"INIT": 0, "PENDING": 1, "HOLD": 2, "ACTIVE": 3, "STOPPED": 4, "SUSPENDED": 5,
               "DONE": 6, "POWEROFF": 8, "UNDEPLOYED": 9, "CLONING": 10, "CLONING_FAILURE": 11}
LCM_NAMES = {"LCM_INIT": 0, "PROLOG": 1, "BOOT": 2, "RUNNING": 3, "EPILOG": 11, "SHUTDOWN": 12,
             "UNKNOWN": 16, "BOOT_FAILURE": 36, "PROLOG_FAILURE": 39, "EPILOG_FAILURE": 40}


@frozen
class HookRun:
    """One run of a state hook's command by the fake hook manager."""

    hook: str
    vm_id: int
    phase: str
    returncode: int
    output: str


def parse_hook(text: str) -> dict[str, str]:
    """A ``onehook create`` template (``KEY = "VALUE"`` lines) as a dict;
    ValueError for what oned would refuse."""
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r'([A-Z_]+)\s*=\s*"((?:[^"\\]|\\.)*)"', line)
        if match is None:
            raise ValueError(f"not a template line: {line!r}")
        fields[match.group(1)] = match.group(2).replace('\\"', '"')
    for key in ("NAME", "TYPE", "COMMAND", "ON"):
        if key not in fields:
            raise ValueError(f"a hook needs {key}")
    if fields["TYPE"] != "state" or fields.get("RESOURCE") != "VM":
        raise ValueError("only VM state hooks (TYPE = state, RESOURCE = VM) are faked")
    if fields["ON"] != "CUSTOM" and fields["ON"] not in HOOK_ON:
        raise ValueError(f"unknown ON {fields['ON']!r}")
    if fields["ON"] == "CUSTOM":
        if fields.get("STATE", "").upper() not in STATE_NAMES:
            raise ValueError(f"Wrong STATE: {fields.get('STATE', '')}")
        if fields.get("LCM_STATE", "").upper() not in LCM_NAMES:
            raise ValueError(f"Wrong LCM_STATE: {fields.get('LCM_STATE', '')}")
    return fields


#: the environment variable that marks every process of a guest: a VM's
#: death kills them all, also those that left the worker's process group
#: (tasks run in sessions of their own), as a real VM's death does
GUEST_VAR = "FAKE_ONED_GUEST"


def guest_pids(marker: bytes) -> list[int]:
    """Live processes whose environment holds ``marker`` (never this one)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            status = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if marker in environ.split(b"\0") and status.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(int(entry))
    return found


#: phases a VM leaves by itself after ``delays[phase]`` seconds
TIMED = ("PENDING", "PROLOG", "BOOT", "SHUTDOWN", "EPILOG")
#: where ``terminate`` (not hard) is refused with ACTION (wrong state)
NO_TERMINATE = ("PROLOG", "BOOT", "SHUTDOWN", "EPILOG")


def ecloud_worker_command(heartbeat: float = 0.5) -> list[str]:
    """The guest's start script for an ecloud worker VM: the real agent,
    reading the VM's context file."""
    return [sys.executable, "-m", "ecloud_worker.agent", "--context-file", "{context_file}",
            "--work-dir", "{vm_dir}/work", "--heartbeat", f"{heartbeat:g}",
            "--drain-timeout", "2"]


@frozen
class VMView:
    """What a test sees of a fake VM."""

    id: int
    name: str
    uid: int
    phase: str
    state: int
    lcm_state: int
    ip: str
    user_template: dict
    context: dict
    pid: int | None


class _VM:
    def __init__(self, vm_id: int, name: str, uid: int, template_id: int,
                 user_template: dict[str, str], fail_boot: bool, hold: bool) -> None:
        self.id = vm_id
        self.name = name
        self.uid = uid
        self.template_id = template_id
        self.user_template = user_template
        self.fail_boot = fail_boot
        self.ip = f"10.0.{vm_id // 256}.{vm_id % 256}"
        self.context = {**user_template, "NETWORK": "YES", "ETH0_IP": self.ip,
                        "VMID": str(vm_id), "TARGET": "hda", "DISK_ID": "1"}
        self.phase = "HOLD" if hold else "PENDING"
        self.prev_phase = self.phase
        self.since = time.monotonic()
        self.stime = int(time.time())
        self.etime = 0
        self.process: subprocess.Popen | None = None
        #: in the environment of every process of the guest (see guest_pids)
        self.marker = f"{GUEST_VAR}={os.getpid()}-{vm_id}-{id(self):x}".encode()

    @property
    def state(self) -> int:
        return PHASES[self.phase][0]

    @property
    def lcm_state(self) -> int:
        return PHASES[self.phase][1]


class _Server(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _Quiet(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)

    def log_message(self, *args: Any) -> None:
        pass


# ------------------------------------------------------------- templates & XML


_ATTR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s"\[\]]+))\s*')


def parse_template(text: str) -> dict[str, str]:
    """oned's template syntax, as far as ecloud uses it: ``KEY="value"`` or
    ``KEY=value`` attributes, one per line, ``#`` comments. Names are
    upper-cased, like oned does. Anything else raises ValueError."""
    attrs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ATTR.fullmatch(line)
        if match is None:
            raise ValueError(f"syntax error, line {number}: {line.strip()[:40]!r}")
        key, quoted, bare = match.groups()
        value = bare if quoted is None else re.sub(r"\\(.)", r"\1", quoted)
        attrs[key.upper()] = value
    return attrs


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _elements(values: dict[str, str]) -> str:
    return "".join(f"<{k}>{_cdata(v)}</{k}>" for k, v in sorted(values.items()))


def _nic(vm: _VM) -> str:
    return ("<NIC>" + _elements({"AR_ID": "0", "IP": vm.ip, "MAC": f"02:00:0a:00:{vm.id // 256:02x}:"
            f"{vm.id % 256:02x}", "NETWORK": "private", "NETWORK_ID": "0", "NIC_ID": "0"}) + "</NIC>")


def _head(vm: _VM, uname: str) -> str:
    return (f"<ID>{vm.id}</ID><UID>{vm.uid}</UID><GID>1</GID><UNAME>{escape(uname)}</UNAME>"
            f"<GNAME>users</GNAME><NAME>{escape(vm.name)}</NAME>")


def _times(vm: _VM) -> str:
    return (f"<LAST_POLL>0</LAST_POLL><STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm_state}</LCM_STATE>"
            f"<PREV_STATE>{PHASES[vm.prev_phase][0]}</PREV_STATE>"
            f"<PREV_LCM_STATE>{PHASES[vm.prev_phase][1]}</PREV_LCM_STATE>"
            f"<RESCHED>0</RESCHED><STIME>{vm.stime}</STIME><ETIME>{vm.etime}</ETIME>"
            f"<DEPLOY_ID>{f'one-{vm.id}' if vm.state == 3 else ''}</DEPLOY_ID>")


def vm_xml(vm: _VM, uname: str) -> str:
    """``one.vm.info``'s document: the full VM, CONTEXT included."""
    perms = "".join(f"<{k}>{v}</{k}>" for k, v in (
        ("OWNER_U", 1), ("OWNER_M", 1), ("OWNER_A", 0), ("GROUP_U", 0), ("GROUP_M", 0),
        ("GROUP_A", 0), ("OTHER_U", 0), ("OTHER_M", 0), ("OTHER_A", 0)))
    template = ("<TEMPLATE><CONTEXT>" + _elements(vm.context) + "</CONTEXT>"
                + _elements({"CPU": "1", "MEMORY": "512"}) + _nic(vm)
                + _elements({"TEMPLATE_ID": str(vm.template_id), "VMID": str(vm.id)})
                + "</TEMPLATE>")
    return (f"<VM>{_head(vm, uname)}<PERMISSIONS>{perms}</PERMISSIONS>{_times(vm)}"
            f"<MONITORING/>{template}<USER_TEMPLATE>{_elements(vm.user_template)}</USER_TEMPLATE>"
            f"<HISTORY_RECORDS/></VM>")


def pool_xml(vms: list[_VM], unames: dict[int, str]) -> str:
    """``one.vmpool.info``'s short body: TEMPLATE has NIC but no CONTEXT."""
    body = "".join(
        f"<VM>{_head(vm, unames.get(vm.uid, 'user'))}{_times(vm)}"
        f"<TEMPLATE>{_nic(vm)}{_elements({'TEMPLATE_ID': str(vm.template_id)})}</TEMPLATE>"
        f"<MONITORING/><USER_TEMPLATE/></VM>"
        for vm in vms)
    return f"<VM_POOL>{body}</VM_POOL>"


def context_sh(values: dict[str, str]) -> str:
    """A context.sh as OpenNebula's context CD holds it."""
    lines = ["# Context variables generated by OpenNebula"]
    for key, value in sorted(values.items()):
        quoted = value.replace("'", "'\\''")
        lines.append(f"{key}='{quoted}'")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the server


_TYPE_NAMES = {int: "int", str: "string", bool: "boolean"}


class FakeOned:
    def __init__(self, directory: str | os.PathLike, *, session: str = "ecloud:secret",
                 uid: int = 5, uname: str = "ecloud", template_id: int = 7,
                 quota: int | None = None, delays: dict[str, float | None] | None = None,
                 worker_command: list[str] | None = None, first_id: int = 100,
                 tick: float = 0.01) -> None:
        self.dir = Path(directory)
        self.session = session
        self.uid = uid
        self.uname = uname
        self.template_id = template_id
        self.quota = quota
        self.delays: dict[str, float | None] = {
            "PENDING": 0.02, "PROLOG": 0.02, "BOOT": 0.02, "SHUTDOWN": 5.0, "EPILOG": 0.0}
        self.delays.update(delays or {})
        self.worker_command = worker_command
        self.tick = tick
        self._lock = threading.RLock()
        self._vms: dict[int, _VM] = {}
        self._next_id = first_id
        self._calls: list[tuple[str, tuple]] = []
        self._fail_boots = 0
        self._hangs = 0
        self._refuse_terminates = 0
        self._bad_answers = 0
        #: the worker template has TOKEN=YES: the guest knows its VMID
        self.token = True
        #: method -> seconds to wait before answering, after the call took effect
        self.answer_delays: dict[str, float] = {}
        #: state hooks (:meth:`create_hook`), the runs made, and their faults
        self.hooks: list[dict[str, str]] = []
        self.hook_runs: list[HookRun] = []
        self.hook_delay = 0.0
        #: oned's hooks folder: a relative COMMAND is found there
        self.hooks_dir = self.dir / "remotes" / "hooks"
        self._lose_callbacks = 0
        self._duplicate_callbacks = 0
        self._hook_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._released = threading.Event()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self.url = ""

    # ------------------------------------------------------------- life

    def start(self) -> Self:
        self.dir.mkdir(parents=True, exist_ok=True)
        server = _Server(("127.0.0.1", 0), requestHandler=_Quiet, logRequests=False,
                         allow_none=False)
        methods = {
            "one.template.instantiate": ((int, str), (bool, str, bool), self._instantiate),
            "one.vm.action": ((str, int), (), self._action),
            "one.vm.info": ((int,), (bool,), self._info),
            "one.vmpool.info": ((int, int, int, int), (str,), self._pool),
        }
        for name, (required, optional, impl) in methods.items():
            server.register_function(self._method(name, required, optional, impl), name)
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}/RPC2"
        for target, name in ((lambda: server.serve_forever(poll_interval=0.02), "fake-oned"),
                             (self._ticker, "fake-oned-ticker"),
                             (self._hook_manager, "fake-oned-hooks")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        """Stop serving (hung calls are let go) and power off every VM:
        worker processes are killed with their process groups."""
        self._stop.set()
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(5)
        with self._lock:
            for vm in self._vms.values():
                if vm.phase != "DONE":
                    self._kill_guest(vm, signal.SIGKILL)
                    self._enter(vm, "DONE")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- knobs

    def fail_next_boots(self, n: int = 1) -> None:
        """The next ``n`` VMs instantiated end their BOOT in BOOT_FAILURE."""
        with self._lock:
            self._fail_boots += n

    def hang_next_call(self, n: int = 1) -> None:
        """The next ``n`` calls (any method) never answer until
        :meth:`release_hangs` or :meth:`close`."""
        with self._lock:
            self._hangs += n

    def refuse_next_terminates(self, n: int = 1) -> None:
        """The next ``n`` terminate (or terminate-hard) calls are refused as
        on a locked VM (0x8000, a plain OneException in pyone), doing nothing."""
        with self._lock:
            self._refuse_terminates += n

    def answer_next_instantiates_badly(self, n: int = 1) -> None:
        """The next ``n`` instantiates create their VM but answer with its id
        as a string: the call acted, and its answer is of no use."""
        with self._lock:
            self._bad_answers += n

    def set_phase(self, vm_id: int, phase: str) -> None:
        """Put a VM in ``phase`` from outside the boss (one of
        :data:`OUTSIDE`): its guest is killed or frozen as a real one is."""
        with self._lock:
            vm = self._vms[vm_id]
            sig = OUTSIDE[phase]
            if sig is not None:
                self._kill_guest(vm, sig, wait=sig == signal.SIGKILL)
            self._enter(vm, phase)

    def create_hook(self, template: str) -> None:
        """``onehook create``: from now on, run this state hook on each
        change it names."""
        with self._lock:
            self.hooks.append(parse_hook(template))

    def install_hooks(self, folder: Path) -> int:
        """What an admin does with what `ecloud opennebula hook --dir folder`
        wrote: each ``*-hook`` script into the hooks folder (mode 0755), each
        ``*.hook`` template created. Returns how many templates."""
        self.hooks_dir.mkdir(parents=True, exist_ok=True)
        for script in folder.glob("*-hook"):
            installed = self.hooks_dir / script.name
            installed.write_bytes(script.read_bytes())
            installed.chmod(0o755)
        templates = sorted(folder.glob("*.hook"))
        for template in templates:
            self.create_hook(template.read_text())
        return len(templates)

    def lose_next_callbacks(self, n: int = 1) -> None:
        """The next ``n`` hook runs never happen (oned's hook manager can
        lose them: a restart, a full queue)."""
        with self._lock:
            self._lose_callbacks += n

    def duplicate_next_callbacks(self, n: int = 1) -> None:
        """The next ``n`` hook runs happen twice."""
        with self._lock:
            self._duplicate_callbacks += n

    def release_hangs(self) -> None:
        """Let the hung calls go on (later ones hang again when asked to)."""
        self._released.set()
        if not self._stop.is_set():
            self._released.clear()  # the current waiters are woken all the same

    def add_vm(self, name: str, *, uid: int | None = None, phase: str = "RUNNING") -> int:
        """A VM created behind ecloud's back (another user's, or one made
        before a crash), already in ``phase``; no guest process."""
        with self._lock:
            vm = self._new_vm(name, self.uid if uid is None else uid, {}, hold=False)
            vm.phase = phase
            return vm.id

    def advance(self, vm_id: int) -> str:
        """Move a VM to its next step now (for steps whose delay is None)."""
        with self._lock:
            vm = self._vms[vm_id]
            self._next(vm)
            return vm.phase

    # ------------------------------------------------------------- accessors

    def vms(self) -> list[VMView]:
        with self._lock:
            self._advance_all()
            return [self._view(vm) for _, vm in sorted(self._vms.items())]

    def vm(self, vm_id: int) -> VMView:
        with self._lock:
            self._advance_all()
            return self._view(self._vms[vm_id])

    def calls(self, method: str | None = None) -> list[tuple[str, tuple]]:
        """(method, arguments without the session), in arrival order."""
        with self._lock:
            return [c for c in self._calls if method is None or c[0] == method]

    @property
    def instantiate_calls(self) -> int:
        return len(self.calls("one.template.instantiate"))

    def worker_pid(self, vm_id: int) -> int | None:
        with self._lock:
            proc = self._vms[vm_id].process
            return None if proc is None else proc.pid

    def worker_alive(self, vm_id: int) -> bool:
        with self._lock:
            proc = self._vms[vm_id].process
            return proc is not None and proc.poll() is None

    def worker_returncode(self, vm_id: int) -> int | None:
        """The guest process's exit status (negative: killed by that signal)."""
        with self._lock:
            proc = self._vms[vm_id].process
            return None if proc is None else proc.poll()

    def guest_processes(self, vm_id: int) -> list[int]:
        """Every live process of the VM's guest: the worker and whatever it
        started, wherever they went (sessions of their own included)."""
        with self._lock:
            marker = self._vms[vm_id].marker
        return guest_pids(marker)

    def worker_log(self, vm_id: int) -> Path:
        return self.dir / f"vm-{vm_id}" / "worker.log"

    def _view(self, vm: _VM) -> VMView:
        pid = vm.process.pid if vm.process is not None else None
        return VMView(vm.id, vm.name, vm.uid, vm.phase, vm.state, vm.lcm_state, vm.ip,
                      dict(vm.user_template), dict(vm.context), pid)

    # ------------------------------------------------------------- dispatch

    def _method(self, name: str, required: tuple, optional: tuple, impl):
        def handler(*params: Any) -> list:
            with self._lock:
                self._calls.append((name, params[1:]))
                hang = self._hangs > 0
                self._hangs -= hang
            if hang:
                self._released.wait()
            if not params or type(params[0]) is not str:
                return [False, f"[{name}] Parameter 0 (session) must be a string", API]
            if params[0] != self.session:
                return [False, f"[{name}] User couldn't be authenticated, aborting call.",
                        AUTHENTICATION]
            args = params[1:]
            problem = _check_types(args, required, optional)
            if problem:
                return [False, f"[{name}] {problem}", API]
            with self._lock:
                self._advance_all()
                try:
                    answer = impl(name, *args)
                except Exception as exc:  # noqa: BLE001 - oned answers, never drops a call
                    answer = [False, f"[{name}] Internal error: {exc}", INTERNAL]
            late = self.answer_delays.get(name)
            if late:  # the work is done, the answer is slow: a crash can fall in between
                self._stop.wait(late)
            return answer
        return handler

    def _instantiate(self, method: str, template_id: int, name: str, hold: bool = False,
                     extra: str = "", persistent: bool = False) -> list:
        if template_id != self.template_id:
            return [False, f"[{method}] Error getting template [{template_id}].", NO_EXISTS]
        try:
            user_template = parse_template(extra)
        except ValueError as exc:
            return [False, f"[{method}] Error parsing user template: {exc}", INTERNAL]
        if self.quota is not None:
            used = sum(1 for vm in self._vms.values() if vm.uid == self.uid and vm.phase != "DONE")
            if used + 1 > self.quota:
                message = (f"[{method}] User [{self.uid}] : limit of {self.quota} reached for VMS "
                           "quota defined for user.")
                return [False, message, AUTHORIZATION]
        vm = self._new_vm(name, self.uid, user_template, hold)
        self._advance(vm)
        bad = self._bad_answers > 0
        self._bad_answers -= bad
        return [True, str(vm.id) if bad else vm.id, 0]

    def _new_vm(self, name: str, uid: int, user_template: dict[str, str], hold: bool) -> _VM:
        vm_id = self._next_id
        self._next_id += 1
        fail = self._fail_boots > 0
        self._fail_boots -= fail
        vm = _VM(vm_id, name or f"worker-{vm_id}", uid, self.template_id, user_template, fail,
                 hold)
        if not self.token:  # no TOKEN=YES in the template: the guest has no VMID
            del vm.context["VMID"]
        self._vms[vm_id] = vm
        return vm

    def _find(self, method: str, vm_id: int, operation: str) -> _VM | list:
        vm = self._vms.get(vm_id)
        if vm is None:
            return [False, f"[{method}] Error getting virtual machine [{vm_id}].", NO_EXISTS]
        if vm.uid != self.uid:
            message = (f"[{method}] User [{self.uid}] : Not authorized to perform {operation} "
                       f"VM [{vm_id}].")
            return [False, message, AUTHORIZATION]
        return vm

    def _action(self, method: str, action: str, vm_id: int) -> list:
        vm = self._find(method, vm_id, "MANAGE")
        if isinstance(vm, list):
            return vm
        if action not in ("terminate", "terminate-hard"):
            return [False, f'[{method}] Virtual machine action "{action}" is not supported', API]
        if vm.phase == "DONE":
            return [True, vm_id, 0]
        if self._refuse_terminates > 0:
            self._refuse_terminates -= 1
            return [False, f"[{method}] Virtual machine {vm_id} is locked", LOCKED]
        if action == "terminate" and vm.phase in NO_TERMINATE:
            return [False, f"[{method}] This action is not available for state {vm.phase}",
                    ACTION]
        if vm.phase in ("PENDING", "HOLD"):  # nothing deployed yet: freed at once
            self._enter(vm, "DONE")
        elif vm.phase in OUTSIDE:  # off, stopped, suspended: nothing to shut down
            self._kill_guest(vm, signal.SIGKILL)
            self._enter(vm, "EPILOG")
        elif action == "terminate" and vm.process is not None and vm.process.poll() is None:
            self._enter(vm, "SHUTDOWN")
            self._kill_guest(vm, signal.SIGTERM, wait=False)
        else:
            self._kill_guest(vm, signal.SIGKILL)
            if vm.phase != "EPILOG":
                self._enter(vm, "EPILOG")
        self._advance(vm)
        return [True, vm_id, 0]

    def _info(self, method: str, vm_id: int, decrypt: bool = False) -> list:
        vm = self._find(method, vm_id, "USE")
        if isinstance(vm, list):
            return vm
        return [True, vm_xml(vm, self.uname), 0]

    def _pool(self, method: str, who: int, start: int, end: int, state: int,
              query: str = "") -> list:
        # who: -3 mine, -2 all, -1 mine and my groups', >= 0 that user
        # state: -2 any, -1 any but DONE, >= 0 that STATE
        chosen = []
        for vm_id, vm in sorted(self._vms.items()):
            if (who in (-3, -1) and vm.uid != self.uid) or (who >= 0 and vm.uid != who):
                continue
            if (start >= 0 and vm_id < start) or (end >= 0 and vm_id > end):
                continue
            if (state == -1 and vm.phase == "DONE") or (state >= 0 and vm.state != state):
                continue
            chosen.append(vm)
        return [True, pool_xml(chosen, {self.uid: self.uname}), 0]

    # ------------------------------------------------------------- life of a VM

    def _ticker(self) -> None:
        while not self._stop.wait(self.tick):
            with self._lock:
                self._advance_all()

    def _advance_all(self) -> None:
        for vm in self._vms.values():
            self._advance(vm)

    def _advance(self, vm: _VM) -> None:
        """Take every step whose time has come (several at once when delays are 0)."""
        while vm.phase in TIMED:
            if vm.phase == "SHUTDOWN" and (vm.process is None or vm.process.poll() is not None):
                self._next(vm)
                continue
            delay = self.delays.get(vm.phase)
            if delay is None or time.monotonic() - vm.since < delay:
                return
            self._next(vm)

    def _next(self, vm: _VM) -> None:
        following = {"PENDING": "PROLOG", "PROLOG": "BOOT", "SHUTDOWN": "EPILOG",
                     "EPILOG": "DONE", "HOLD": "PENDING",
                     "BOOT": "BOOT_FAILURE" if vm.fail_boot else "RUNNING"}.get(vm.phase)
        if following is None:
            return
        if vm.phase == "SHUTDOWN":
            self._kill_guest(vm, signal.SIGKILL)  # no-op when it already exited
        self._enter(vm, following)

    def _enter(self, vm: _VM, phase: str) -> None:
        vm.prev_phase, vm.phase, vm.since = vm.phase, phase, time.monotonic()
        if phase == "RUNNING" and self.worker_command:
            self._boot_guest(vm)
        elif phase == "DONE":
            self._kill_guest(vm, signal.SIGKILL)
            vm.etime = int(time.time())
        self._fire_hooks(vm)

    # ------------------------------------------------------------- state hooks

    def _fire_hooks(self, vm: _VM) -> None:
        """Queue a run of each hook this change names, with the VM's XML of
        this moment (the caller holds the lock)."""
        now = (vm.state, vm.lcm_state)
        for hook in self.hooks:
            on = hook["ON"]
            fires = (now == (STATE_NAMES[hook["STATE"].upper()], LCM_NAMES[hook["LCM_STATE"].upper()])
                     if on == "CUSTOM" else now == HOOK_ON[on])
            if not fires:
                continue
            if self._lose_callbacks > 0:
                self._lose_callbacks -= 1
                continue
            uname = self.uname if vm.uid == self.uid else f"user{vm.uid}"
            template = base64.b64encode(vm_xml(vm, uname).encode()).decode()
            runs = 1
            if self._duplicate_callbacks > 0:
                self._duplicate_callbacks -= 1
                runs = 2
            for _ in range(runs):
                self._hook_queue.put((time.monotonic() + self.hook_delay, hook, vm.id, vm.phase,
                                      template))

    def _hook_manager(self) -> None:
        """oned's hook execution manager: runs the queued hooks one by one."""
        while not self._stop.is_set():
            try:
                due, hook, vm_id, phase, template = self._hook_queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            command = hook["COMMAND"]
            if not command.startswith("/"):
                command = str(self.hooks_dir / command)
            arguments = hook.get("ARGUMENTS", "").replace("$TEMPLATE", template)
            stdin = hook.get("ARGUMENTS_STDIN", "").lower() in ("yes", "true")
            argv = [command] if stdin else [command, *shlex.split(arguments)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("ECLOUD_")}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                                      cwd=self.dir, input=arguments if stdin else "")
                code, output = done.returncode, done.stdout + done.stderr
            except (OSError, subprocess.TimeoutExpired) as exc:
                code, output = -1, str(exc)
            with self._lock:
                self.hook_runs.append(HookRun(hook["NAME"], vm_id, phase, code, output))

    def _boot_guest(self, vm: _VM) -> None:
        vm_dir = self.dir / f"vm-{vm.id}"
        vm_dir.mkdir(parents=True, exist_ok=True)
        context_file = vm_dir / "context.sh"
        context_file.write_text(context_sh(vm.context))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECLOUD_")}
        env.update(vm.context)
        for key, value in vm.context.items():  # the START_SCRIPT's decoding
            if key.endswith("_B64"):
                try:
                    env[key[:-4]] = base64.b64decode(value, validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    pass
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env[GUEST_VAR] = vm.marker.decode().split("=", 1)[1]
        argv = [a.format(context_file=context_file, vm_dir=vm_dir, vm_id=vm.id)
                for a in self.worker_command or ()]
        with open(vm_dir / "worker.log", "ab") as log:
            vm.process = subprocess.Popen(argv, cwd=vm_dir, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    def _kill_guest(self, vm: _VM, sig: int, wait: bool = True) -> None:
        proc = vm.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)  # its own session: the pgid is its pid
            except ProcessLookupError:
                pass
        if sig in (signal.SIGKILL, signal.SIGSTOP):  # the machine stops: all of it
            for pid in guest_pids(vm.marker):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if wait:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


def _check_types(args: tuple, required: tuple, optional: tuple) -> str:
    """oned reads each parameter with its type: a wrong one is an error."""
    if len(args) < len(required):
        return f"Not enough parameters: {len(args) + 1} given, {len(required) + 1} required"
    if len(args) > len(required) + len(optional):
        return f"Too many parameters: {len(args) + 1} given"
    for index, (value, expected) in enumerate(zip(args, required + optional, strict=False), 1):
        if type(value) is not expected:
            got = _TYPE_NAMES.get(type(value), type(value).__name__)
            return f"Type mismatch: parameter {index} must be {_TYPE_NAMES[expected]}, got {got}"
    return ""


@pytest.fixture
def fake_oned(tmp_path: Path) -> Iterator[FakeOned]:
    """A started :class:`FakeOned` with small delays, closed afterwards
    (its worker processes killed). Change its knobs as the test needs."""
    fake = FakeOned(tmp_path / "oned").start()
    try:
        yield fake
    finally:
        fake.close()
