r"""The OpenNebula provider: worker VMs instantiated from a template through
pyone's XML-RPC client (facts in docs/opennebula.md).

It answers the boss's ``SpawnVM`` and ``KillVM`` effects and its periodic
``observe`` with outcome events, like :mod:`ecloud.effects.providers.local`, and never
raises for a failure of the cloud:

- ``spawn`` first looks for a VM of that name among ours that is not DONE
  (``one.vmpool.info(-3, -1, -1, -1)``, filtered on our side), so a replayed
  spawn never creates a second VM; else ``one.template.instantiate``. Result:
  ``vm.allocated`` (name, id), or ``vm.failed`` with a ``kind``:
  ``authentication``, ``authorization``, ``quota``, ``allocation`` (oned's
  0x4000, e.g. no IP lease left), ``not_found``, ``wrong_state``,
  ``connection`` (refused, timed out, no answer within the deadline, an HTTP
  error), ``invalid`` (a VM name ecloud must not use) or ``error``. After a
  ``connection`` failure of instantiate the VM may exist all the same: it
  then shows up as an orphan (below).
- ``kill`` sends ``terminate-hard`` (works in any state). A VM that is DONE
  by then, or that oned does not know, is reported DONE
  (``vm.state_observed``); one still tearing down is left to ``observe``. A
  failure becomes ``input.rejected`` (source ``opennebula``) for the log.
- ``observe(alive_in_log)`` makes one ``vmpool.info`` call and reports, for
  each VM the log holds alive, its (STATE, LCM_STATE, IP) when it changed
  since this provider last reported it (the first sight always reports; the
  codes are raw data, unknown ones included); a VM gone from the pool is
  reported DONE. A failed call becomes one ``input.rejected`` - repeated only
  when the error changes, so an oned that is down for an hour is one line.
- VMs of ours whose name has this cluster's prefix but which the log does
  not hold alive: one named like a VM the log asked for but holds no id for
  (``unallocated``: an instantiate whose answer was lost, late or nonsense)
  is reported ``vm.allocated``; any other (left by a boss of another log of
  this cluster, made by hand, or one the log took for gone) is reported
  ``vm.discovered`` with its states, once, and the log takes it in
  (:mod:`ecloud.projections.reconcile` decides its fate). One still not
  held alive after that is an *orphan*: reported once as ``input.rejected``
  naming the id, the name, the states and the command that terminates it,
  and terminated by policy (``kill_orphans_after``);
  :meth:`OpenNebulaProvider.orphans` lists the VMs the log does not hold on
  demand. VMs being spawned or allocated by this provider are never orphans.

Deadlines: pyone's ``timeout=`` bounds nothing (it sets the process-wide
socket default, and requests gets none). Every call therefore runs in a
thread of its own and the caller stops waiting after ``deadline`` seconds
(kind ``connection``); a spawn makes at most two calls. So that abandoned
calls do not pile up threads while oned hangs, the client's transport is
also given requests timeouts of twice ``deadline`` (connect and each read):
long enough that the deadline, not the transport, ends every wait (CI saw
the two race when they were equal).

The worker template. ``instantiate`` passes ``ECLOUD_WORKER_ID="<VM name>"``
and, for every ``context`` variable, ``<KEY>_B64="<base64 of the value>"``
(nothing escapes quotes in those lines, and the values are configuration:
base64 keeps them intact). The template's CONTEXT refers to them; the
agent decodes ``X_B64`` context variables itself (``worker/settings.py``) and
``worker/bootstrap/start.sh`` installs it as a service, e.g.::

    CONTEXT = [ NETWORK = "YES", TOKEN = "YES",
      ECLOUD_WORKER_ID = "$ECLOUD_WORKER_ID",
      BOSS_ADDRESS_B64 = "$BOSS_ADDRESS_B64",
      ECLOUD_CLUSTER_B64 = "$ECLOUD_CLUSTER_B64",
      ECLOUD_SLOTS_B64 = "$ECLOUD_SLOTS_B64",
      START_SCRIPT_BASE64 = "<base64 of worker/bootstrap/start.sh>" ]

(``tests/support/fake_oned.py`` boots its VMs the same way.) Context values are
readable by anyone who may use the VM: give workers their own credentials.

The datastore key. With ``datastore_key_file`` (the boss's setting of that
name), every instantiate also passes ``ECLOUD_DATASTORE_SSH_KEY_B64``: the
base64 of that file's bytes, an ssh private key the workers use for the
datastore. The template's CONTEXT must refer to it too
(``ECLOUD_DATASTORE_SSH_KEY_B64 = "$ECLOUD_DATASTORE_SSH_KEY_B64"``); the
agent writes it to a file of mode 0600 and uses it, unless it was given a
key path (``worker/settings.py``). The name differs from
``ECLOUD_DATASTORE_KEY``, which gives the worker a *path*. The key material
never passes through the log: the provider reads the file itself and adds
the line when it instantiates, outside the ``SpawnVM`` effect's context
(which comes from the logged state); the name is reserved, so neither the
provider's nor a spawn's context can set it, and an error message from oned
is stripped of any piece of it before it becomes a ``vm.failed``.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pyone
import requests
from attrs import frozen
from pyone.server_xrpc import RequestsTransport

from ecloud.errors import ConfigError, EcloudError
from ecloud.events import types as ev
from ecloud.projections.effects import KillVM, SpawnVM

if TYPE_CHECKING:
    from ecloud.security.setup import WorkerCredentials

log = logging.getLogger(__name__)

DONE, LCM_INIT = 6, 0  # OpenNebula STATE / LCM_STATE codes
MINE, ALL_IDS, NOT_DONE = -3, -1, -1  # vmpool.info: filter, start/end, state
SOURCE = "opennebula"  # input.rejected source

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_KEY = re.compile(r"[A-Z][A-Z0-9_]*")
#: the context variable (``<it>_B64``) that carries the datastore's ssh private key
DATASTORE_SSH_KEY = "ECLOUD_DATASTORE_SSH_KEY"
#: the worker's broker password and the CA's PEM (``<it>_B64`` in the context; worker/settings.py)
BROKER_PASSWORD, BROKER_CA_PEM = "ECLOUD_BROKER_PASSWORD", "ECLOUD_BROKER_CA_PEM"
RESERVED_KEYS = frozenset({"ECLOUD_WORKER_ID", DATASTORE_SSH_KEY, BROKER_PASSWORD, BROKER_CA_PEM})
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{8,}")  # what may be a piece of base64


class OpenNebulaError(EcloudError):
    """A call to oned failed; ``kind`` classifies it like ``vm.failed``."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class DatastoreKeyError(ConfigError):
    """The datastore key file cannot be used (names the file, never its content)."""


class _NoAnswer(Exception):
    """oned did not answer within the deadline."""


@frozen
class Orphan:
    """A VM named like ours that the log does not hold alive."""

    vm_id: int
    name: str
    state: int
    lcm_state: int


class _TimeoutTransport(RequestsTransport):
    """pyone's transport with requests timeouts (pyone passes none)."""

    def __init__(self, timeout: float, https: bool, verify: bool | str) -> None:
        super().__init__()
        self.timeout = timeout
        self.set_https(https)
        self.set_https_verify(verify)

    def request(self, host, handler, request_body, verbose=False):
        url = self._build_url(host, handler)
        resp = requests.post(url, data=request_body, headers=self.headers,
                             verify=self.https_verify, timeout=self.timeout)
        if not resp.ok:
            raise xmlrpc.client.ProtocolError(url, resp.status_code, resp.reason, resp.headers)
        return self.parse_response(resp)


def classify(exc: BaseException, endpoint: str = "oned") -> tuple[str, str]:
    """(kind, reason) for an exception raised by a pyone call."""
    if isinstance(exc, pyone.OneAuthenticationException):
        return "authentication", str(exc)
    if isinstance(exc, pyone.OneAuthorizationException):
        return ("quota" if "quota" in str(exc).lower() else "authorization"), str(exc)
    if isinstance(exc, pyone.OneNoExistsException):
        return "not_found", str(exc)
    if isinstance(exc, pyone.OneActionException):
        return "wrong_state", str(exc)
    if isinstance(exc, _NoAnswer):
        return "connection", str(exc)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return "connection", f"cannot reach {endpoint}: {exc}"
    if isinstance(exc, xmlrpc.client.ProtocolError):
        return "connection", f"{endpoint} answered HTTP {exc.errcode} {exc.errmsg}"
    if type(exc) is pyone.OneException and "allocat" in str(exc).lower():
        return "allocation", str(exc)  # 0x4000 comes as a plain OneException
    if isinstance(exc, pyone.OneException):  # API, internal, locked errors
        return "error", str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


def read_datastore_key(path: str | os.PathLike) -> bytes:
    """The bytes of the datastore key file; :class:`DatastoreKeyError` (one
    clear line, naming the file but nothing of its content) when it cannot be
    read or is empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DatastoreKeyError(f"cannot read the datastore key file {os.fspath(path)}: "
                                f"{exc.strerror or exc}") from None
    if not data.strip():
        raise DatastoreKeyError(f"the datastore key file {os.fspath(path)} is empty")
    return data


def ip_of(vm: Any) -> str | None:
    """The VM's address: its first NIC's IP, else the context's ETH0_IP
    (``TEMPLATE['NIC']`` is a dict for one NIC, a list for several)."""
    template = vm.TEMPLATE if isinstance(getattr(vm, "TEMPLATE", None), dict) else {}
    nics = template.get("NIC")
    for nic in nics if isinstance(nics, list) else [nics]:
        if isinstance(nic, dict) and nic.get("IP"):
            return str(nic["IP"])
    context = template.get("CONTEXT")
    if isinstance(context, dict) and context.get("ETH0_IP"):
        return str(context["ETH0_IP"])
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class OpenNebulaProvider:
    """Worker VMs on OpenNebula.

    ``endpoint`` is oned's XML-RPC URL (``http(s)://host:2633/RPC2``),
    ``session`` ``user:password``, ``template_id`` the worker template,
    ``name_prefix`` what every VM name of this cluster starts with (e.g.
    ``ecloud-<cluster>-``), ``context`` the variables every worker gets
    (e.g. ``{"ECLOUD_BROKER": url, "ECLOUD_CLUSTER": cluster}``), and
    ``deadline`` the seconds any one call may take.

    ``datastore_key_file``, when given, is the ssh private key every new VM
    gets as ``ECLOUD_DATASTORE_SSH_KEY_B64``. It is read here, once, when the
    provider is made - not at each spawn - because:

    - a missing or unreadable key is the operator's mistake and shows at
      ``ecloud-boss`` start as one clear :class:`ConfigError`, not as a
      ``vm.failed`` per spawn hours later (or as VMs whose workers cannot
      reach the data);
    - every VM of one boss run gets the same key, whatever happens to the
      file meanwhile (a half-written file is never sent);
    - a spawn does no file I/O on the provider's threads.

    The price: a rotated key reaches new VMs after the boss restarts (which
    loses nothing: the log holds the state). The key is held in memory only,
    base64-encoded, apart from ``context``, and is never put in an event.
    """

    def __init__(self, endpoint: str, session: str, template_id: int, name_prefix: str,
                 context: Mapping[str, str], *, deadline: float = 10.0,
                 https_verify: bool | str = True, kill_orphans_after: float | None = None,
                 datastore_key_file: str | os.PathLike | None = None,
                 credentials: WorkerCredentials | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            # pyone would silently switch to gRPC for anything else
            raise ConfigError(f"OpenNebula endpoint {endpoint!r} must be an http:// or https:// "
                              "XML-RPC URL, e.g. http://frontend:2633/RPC2")
        if not session:
            raise ConfigError("OpenNebula session must be user:password")
        if type(template_id) is not int or template_id < 0:
            raise ConfigError(f"OpenNebula template id must be a number >= 0, got {template_id!r}")
        if not _NAME.fullmatch(name_prefix or ""):
            raise ConfigError(f"VM name prefix {name_prefix!r} must be letters, digits, '.', '_'"
                              " or '-'")
        for key, value in context.items():
            if not _KEY.fullmatch(key) or key in RESERVED_KEYS or not isinstance(value, str):
                raise ConfigError(f"context variable {key!r}: want an upper-case name (not "
                                  f"{', '.join(sorted(RESERVED_KEYS))}) with a string value")
        if not deadline > 0:
            raise ConfigError(f"OpenNebula deadline must be positive, got {deadline!r}")
        self._datastore_key_b64: str | None = None
        if datastore_key_file is not None:
            key = read_datastore_key(datastore_key_file)
            self._datastore_key_b64 = base64.b64encode(key).decode()
        #: each new VM's broker account (password, CA), see ecloud.security
        self.credentials = credentials
        self.endpoint = endpoint
        self.template_id = template_id
        self.name_prefix = name_prefix
        self.context = dict(context)
        self.deadline = float(deadline)
        self._one = pyone.OneServer(endpoint, session=session, https_verify=https_verify)
        if "_ServerProxy__transport" in vars(self._one):  # xmlrpc.client.ServerProxy's
            # twice the deadline: the deadline (ours) always ends the wait
            # first, with its own message; these only end abandoned calls
            self._one._ServerProxy__transport = _TimeoutTransport(
                2 * self.deadline, endpoint.startswith("https"), https_verify)
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._spawning: set[str] = set()
        self._names: dict[int, str] = {}  # VM ids this provider allocated -> names
        self._unlogged: set[int] = set()  # ... that no observe has had alive in the log yet
        self._last: dict[int, tuple[tuple, int]] = {}  # id -> (observation, stamp)
        self._stamp = 0
        self._orphans_reported: set[int] = set()
        self._found: dict[str, int] = {}  # unallocated names found in the pool (reported)
        self._discovered: set[int] = set()  # orphans reported as vm.discovered
        self._absent: set[str] = set()  # unallocated names reported not in the pool
        self._observe_error: str | None = None
        # policy: an orphan still an orphan this long after it was first seen
        # is terminated (long enough for a re-issued spawn to adopt its VM)
        self.kill_orphans_after = kill_orphans_after
        self._clock = clock
        self._orphan_since: dict[int, float] = {}

    # ------------------------------------------------------------- calls

    def _call(self, method: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a thread of its own; give up after the deadline."""
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name=f"opennebula-call {method}", daemon=True).start()
        if not done.wait(self.deadline):
            raise _NoAnswer(f"no answer from {self.endpoint} to {method} within "
                            f"{self.deadline:g}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def _pool(self) -> list:
        pool = self._call("one.vmpool.info", self._one.vmpool.info, MINE, ALL_IDS, ALL_IDS,
                          NOT_DONE)
        return sorted(pool.VM, key=lambda vm: vm.ID)

    # ------------------------------------------------------------- spawn

    def extra_template(self, name: str, context: Iterable[tuple[str, str]] = ()) -> str:
        """The ``KEY="value"`` lines instantiate passes for VM ``name``: the
        provider's own context, overridden by the spawn's (from the state),
        then the datastore key, if any (only the provider may set it).

        The result may hold the key: it goes to oned and nowhere else."""
        values = {**self.context, **dict(context)}
        for key in RESERVED_KEYS:
            values.pop(key, None)
        lines = [f'ECLOUD_WORKER_ID="{name}"']
        lines += [f'{key}_B64="{_b64(value.encode())}"' for key, value in sorted(values.items())]
        if self._datastore_key_b64 is not None:
            lines.append(f'{DATASTORE_SSH_KEY}_B64="{self._datastore_key_b64}"')
        if self.credentials is not None:
            # the VM's own broker account: its username is its name (the ACL's %u)
            lines.append(f'{BROKER_PASSWORD}_B64="{self._password_b64(name)}"')
            if self.credentials.ca_pem is not None:
                lines.append(f'{BROKER_CA_PEM}_B64="{_b64(self.credentials.ca_pem)}"')
        return "\n".join(lines) + "\n"

    def _password_b64(self, name: str) -> str:
        assert self.credentials is not None
        return _b64(self.credentials.password_for(name).encode())

    def _scrub(self, reason: str, name: str | None = None) -> str:
        """``reason`` without any piece of the datastore key or of VM
        ``name``'s broker password (oned may quote the template it could not
        parse); it is about to be logged."""
        secrets = [(self._datastore_key_b64, "<datastore key>")]
        if name and self.credentials is not None:
            secrets += [(self._password_b64(name), "<broker password>"),
                        (self.credentials.password_for(name), "<broker password>")]
        for secret, label in secrets:
            if not secret:
                continue
            reason = reason.replace(secret, label)
            reason = _BASE64_RUN.sub(lambda m, s=secret, lb=label: lb if m.group() in s
                                     else m.group(), reason)
        return reason

    def spawn(self, effect: SpawnVM) -> list:
        """``[vm.allocated]`` for the VM of that name (found, else created),
        or ``[vm.failed]``."""
        name = effect.vm_name
        if not _NAME.fullmatch(name) or not name.startswith(self.name_prefix):
            return [ev.VMFailed(name, f"VM name {name!r} must start with {self.name_prefix!r} and "
                                "hold only letters, digits, '.', '_' or '-'", "invalid")]
        with self._lock:
            name_lock = self._name_locks.setdefault(name, threading.Lock())
        with name_lock:  # two spawns of one name: the second finds the first's VM
            with self._lock:
                self._spawning.add(name)
            try:
                found = [vm.ID for vm in self._pool() if vm.NAME == name and vm.STATE != DONE]
                if found:
                    vm_id = found[0]
                    log.info("VM %s exists already as %d", name, vm_id)
                    with self._lock:
                        reported = self._found.get(name) == vm_id
                    if reported:  # observe found it by its name and said so
                        with self._lock:
                            self._names[vm_id] = name
                            self._spawning.discard(name)
                        return []
                else:
                    extra = self.extra_template(name, effect.context)
                    vm_id = self._call("one.template.instantiate", self._one.template.instantiate,
                                       self.template_id, name, False, extra, False)
                    if type(vm_id) is not int:
                        raise TypeError(f"instantiate returned {vm_id!r}, not a VM id")
            except Exception as exc:  # noqa: BLE001 - every failure becomes an event
                kind, reason = classify(exc, self.endpoint)
                with self._lock:
                    self._spawning.discard(name)
                return [ev.VMFailed(name, self._scrub(reason, name), kind)]
            with self._lock:
                self._names[vm_id] = name
                self._unlogged.add(vm_id)
                self._spawning.discard(name)
        return [ev.VMAllocated(name, vm_id)]

    # ------------------------------------------------------------- kill

    def kill(self, effect: KillVM) -> list:
        """``terminate-hard``: ``[vm.state_observed DONE]`` when it is (or
        oned does not know it), ``[]`` while it tears down, else
        ``[input.rejected]``."""
        vm_id = effect.vm_id
        try:
            self._call("one.vm.action", self._one.vm.action, "terminate-hard", vm_id)
        except pyone.OneNoExistsException:
            return [self._gone(vm_id, "")]
        except Exception as exc:  # noqa: BLE001 - every failure becomes an event
            kind, reason = classify(exc, self.endpoint)
            return [ev.InputRejected(SOURCE, f"terminate-hard of VM {vm_id} failed ({kind}): "
                                     f"{reason}")]
        try:
            vm = self._call("one.vm.info", self._one.vm.info, vm_id)
        except pyone.OneNoExistsException:
            return [self._gone(vm_id, "")]
        except Exception:  # noqa: BLE001 - the kill was accepted: observe will tell
            return []
        if vm.STATE == DONE:
            return [self._gone(vm_id, vm.NAME or "")]
        return []  # accepted and tearing down: observe reports it until it is DONE

    def _gone(self, vm_id: int, name: str) -> ev.VMStateObserved:
        observation = (DONE, LCM_INIT, None)
        with self._lock:
            self._stamp += 1
            self._last[vm_id] = (observation, self._stamp)
            name = name or self._names.get(vm_id, "")
        return ev.VMStateObserved(vm_id, DONE, LCM_INIT, None, name)

    # ------------------------------------------------------------- observe

    def observe(self, alive_in_log: list[tuple[str, int]], unallocated: Iterable[str] = ()) -> list:
        """Changes of the VMs the log holds alive, as (name, vm id); a VM
        named like one the log requested but holds no id for
        (``unallocated``: an instantiate whose answer was lost, malformed
        or late) as ``vm.allocated`` - found by its name, it is that VM; a
        new orphan or a (new) failure to ask as ``input.rejected``."""
        alive = {int(vm_id): name for name, vm_id in alive_in_log}
        unallocated = set(unallocated)
        wanted_names = set(unallocated)
        with self._lock:
            started = self._stamp
        try:
            pool = self._pool()
        except Exception as exc:  # noqa: BLE001 - every failure becomes an event
            kind, reason = classify(exc, self.endpoint)
            message = f"vmpool.info failed ({kind}): {reason}"
            with self._lock:
                repeated, self._observe_error = message == self._observe_error, message
            return [] if repeated else [ev.InputRejected(SOURCE, message)]
        events: list = []
        with self._lock:
            self._observe_error = None
            self._unlogged -= set(alive)
            in_pool = {vm.ID for vm in pool}
            for vm in pool:
                if (vm.ID not in alive and vm.NAME in wanted_names and vm.STATE != DONE
                        and vm.NAME not in self._spawning and vm.ID not in self._names):
                    # (one this provider is spawning or allocated is reported by spawn)
                    wanted_names.discard(vm.NAME)  # one VM per name: the first found
                    self._orphan_since.pop(vm.ID, None)
                    if self._found.get(vm.NAME) != vm.ID:
                        self._found[vm.NAME] = vm.ID
                        events.append(ev.VMAllocated(vm.NAME, vm.ID))
                elif vm.ID in alive:
                    self._orphan_since.pop(vm.ID, None)  # claimed
                    ip = None if vm.STATE == DONE else ip_of(vm)
                    self._note(vm.ID, (vm.STATE, vm.LCM_STATE, ip), vm.NAME or alive[vm.ID],
                               started, events)
                elif self._orphan(vm):
                    # one of ours by its name that the log does not hold: the
                    # log takes it in (it holds quota like ours); one it will
                    # not take stays an orphan, reported (and, by policy, killed)
                    self._orphan_since.setdefault(vm.ID, self._clock())
                    if vm.ID not in self._discovered:
                        self._discovered.add(vm.ID)
                        ip = ip_of(vm)
                        events.append(ev.VMDiscovered(vm.ID, vm.NAME, vm.STATE, vm.LCM_STATE, ip))
                    elif vm.ID not in self._orphans_reported:
                        self._orphans_reported.add(vm.ID)
                        events.append(ev.InputRejected(SOURCE, self._orphan_message(vm)))
                else:
                    self._orphan_since.pop(vm.ID, None)  # done, or not ours
            named = {vm.NAME for vm in pool if vm.STATE != DONE}
            # a name this provider allocated is no absence, even when the pool
            # was read before its instantiate acted: the spawn's answer came
            # meanwhile (CI saw the new VM failed and terminated for it)
            allocated = set(self._names.values())
            for name in sorted(unallocated - named - self._spawning - allocated - self._absent):
                self._absent.add(name)  # a failed spawn made nothing: the log need not wait
                events.append(ev.VMFailed(name, "not in the cloud's pool: its instantiate made "
                                          "no VM", "absent"))
            self._absent &= unallocated
            for vm_id in sorted(set(alive) - in_pool):
                self._note(vm_id, (DONE, LCM_INIT, None), alive[vm_id], started, events)
            self._last = {k: v for k, v in self._last.items() if k in alive}
            self._orphans_reported &= in_pool
            self._discovered &= in_pool - set(alive)
            self._found = {n: i for n, i in self._found.items() if n in unallocated}
            self._orphan_since = {k: t for k, t in self._orphan_since.items() if k in in_pool}
            doomed = self._doomed_orphans()
        for vm_id in doomed:
            events.append(self._kill_orphan(vm_id))
        return events

    def _doomed_orphans(self) -> list[int]:
        """Orphans past ``kill_orphans_after`` (caller holds the lock)."""
        if self.kill_orphans_after is None:
            return []
        now = self._clock()
        doomed = sorted(i for i, t in self._orphan_since.items() if now - t >= self.kill_orphans_after)
        for vm_id in doomed:
            del self._orphan_since[vm_id]
        return doomed

    def _kill_orphan(self, vm_id: int) -> Any:
        try:
            self._call("one.vm.action", self._one.vm.action, "terminate-hard", vm_id)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an event
            kind, reason = classify(exc, self.endpoint)
            return ev.InputRejected(SOURCE, f"orphan VM {vm_id}: terminate-hard failed ({kind}): "
                                            f"{reason}")
        return ev.InputRejected(SOURCE, f"orphan VM {vm_id} terminated: still nobody's "
                                        f"{self.kill_orphans_after:g}s after it was first seen")

    def _note(self, vm_id: int, observation: tuple, name: str, started: int, out: list) -> None:
        """Report ``observation`` if it is news (caller holds the lock)."""
        last = self._last.get(vm_id)
        if last is not None and (last[1] > started or last[0] == observation):
            return  # unchanged, or a kill reported something newer meanwhile
        self._stamp += 1
        self._last[vm_id] = (observation, self._stamp)
        state, lcm_state, ip = observation
        out.append(ev.VMStateObserved(vm_id, state, lcm_state, ip, name))

    # ------------------------------------------------------------- orphans

    def _orphan(self, vm: Any, known: Iterable[int] = ()) -> bool:
        return (bool(vm.NAME) and vm.NAME.startswith(self.name_prefix) and vm.STATE != DONE
                and vm.ID not in self._unlogged and vm.NAME not in self._spawning
                and vm.ID not in known)

    def _orphan_message(self, vm: Any) -> str:
        return (f"orphan VM {vm.ID} {vm.NAME!r} (STATE {vm.STATE}, LCM_STATE {vm.LCM_STATE}): "
                f"named like this cluster's VMs ({self.name_prefix}*) but not among the VMs the "
                f"log holds alive; unless something claims it, `onevm terminate --hard {vm.ID}`")

    def orphans(self, known_ids: Iterable[int]) -> list[Orphan]:
        """VMs of ours named with the prefix, not DONE, whose id is not in
        ``known_ids`` (and that this provider is not spawning). Raises
        :class:`OpenNebulaError` when oned cannot be asked."""
        known = set(known_ids)
        with self._lock:
            self._unlogged -= known
        try:
            pool = self._pool()
        except Exception as exc:  # noqa: BLE001 - one error type for the caller
            raise OpenNebulaError(*classify(exc, self.endpoint)) from None
        with self._lock:
            return [Orphan(vm.ID, vm.NAME, vm.STATE, vm.LCM_STATE) for vm in pool
                    if self._orphan(vm, known)]

    def close(self) -> None:
        """Nothing to release: every call opens its own connection, and VMs
        outlive the boss by design."""
