"""The remote datastore: rsync over ssh (one ssh master connection per mover),
with small shell scripts run on the datastore's host for what rsync does not
do (check, prepare, mark, hash, commit). :mod:`ecloud.effects.data.movers`
has the whole story."""

from __future__ import annotations

import math
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ecloud.effects.data.checksum import (
    parse_sha256sum,
    path_sha256,
    remove_path,
    tree_digest,
)
from ecloud.effects.data.common import (
    _AUTH_DENIED,
    _MARKER_ID,
    _MUX_NOISE,
    MARKER,
    PARTIAL_DIR,
    TRANSIENT_RSYNC,
    StagingError,
    Transfer,
    _Closing,
    _finish_fetch,
    _gone,
    _stage_dir,
    relative,
)
from ecloud.effects.data.ssh_master import SshMaster

_CHECK = r"""root=$1; probe=$1/$2
if [ ! -e "$root" ]; then echo "no such directory: $root" >&2; exit 3; fi
if [ ! -d "$root" ]; then echo "not a directory: $root" >&2; exit 3; fi
if ! err=$( (: > "$probe") 2>&1 ); then echo "no write access to $root: ${err##*: }" >&2; exit 3; fi
rm -f -- "$probe"
for tool in rsync sha256sum; do
  command -v $tool >/dev/null 2>&1 || { echo "$tool is not installed on the datastore host" >&2; exit 3; }
done"""
# $1 parent, $2 temporary name, $3 "dir" or "file": a temporary of the wrong type is dropped;
# $4 the root, $5 the id its marker must hold ("": not checked): the root is never created
_PREPARE = (
    r"""if [ -n "$5" ]; then
  if [ ! -d "$4" ]; then echo "ecloud-gone: does not exist" >&2; exit 3; fi
  found=$(cat -- "$4/.ecloud-datastore" 2>/dev/null)"""
    r""" || { echo "ecloud-gone: has no .ecloud-datastore marker" >&2; exit 3; }
  [ "$found" = "$5" ]"""
    r""" || { echo "ecloud-gone: is another datastore (its .ecloud-datastore does not hold $5)" >&2; exit 3; }
  case "$1/" in "$4"/*) ;; *) echo "$1 is not under $4" >&2; exit 3;; esac
fi
mkdir -p -- "$1" || exit 3
if [ "$3" = dir ] && [ -e "$2" ] && [ ! -d "$2" ]; then rm -f -- "$2"; fi
if [ "$3" = file ] && [ -d "$2" ]; then rm -rf -- "$2"; fi"""
)
# $1 the root: print the id in its marker, made now if there is none (the root is never created)
_MARK = (
    r"""root=$1; m=$1/.ecloud-datastore
if [ ! -d "$root" ]; then echo "no such directory: $root" >&2; exit 3; fi
if [ ! -e "$m" ]; then
  tmp=$root/.ecloud-datastore.$$
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp" && echo >> "$tmp" \
    && { ln -- "$tmp" "$m" 2>/dev/null; rm -f -- "$tmp"; }"""
    r""" || { rm -f -- "$tmp"; echo "cannot write $m" >&2; exit 3; }
fi
cat -- "$m"
"""
)
# $1 the root, $2 the id: fail with the reason unless the marker holds it
_IDENTIFY = (
    r"""if [ ! -d "$1" ]; then echo "ecloud-gone: does not exist" >&2; exit 3; fi
found=$(cat -- "$1/.ecloud-datastore" 2>/dev/null)"""
    r""" || { echo "ecloud-gone: has no .ecloud-datastore marker" >&2; exit 3; }
[ "$found" = "$2" ]"""
    r""" || { echo "ecloud-gone: is another datastore (its .ecloud-datastore does not hold $2)" >&2;"""
    r""" exit 3; }"""
)
_HASH = r"""if [ -d "$1" ]; then cd -- "$1" && find -L . -type f -print0 | xargs -0r sha256sum --
else sha256sum -- "$1"; fi"""
_COMMIT = r"""tmp=$1; final=$2; old=$3
if [ ! -d "$tmp" ] && { [ ! -d "$final" ] || [ -L "$final" ]; }; then exec mv -fT -- "$tmp" "$final"; fi
if [ -e "$final" ] || [ -L "$final" ]; then mv -T -- "$final" "$old" || exit 3; fi
if ! mv -T -- "$tmp" "$final"; then [ -e "$old" ] && mv -T -- "$old" "$final"; exit 3; fi
rm -rf -- "$old"
"""
_DROP = 'rm -rf -- "$1"'


def _run(argv: list[str], deadline: float) -> tuple[int | None, str, str]:
    """Run ``argv`` in its own process group; (returncode or None when the
    deadline passed and the group was stopped, stdout, stderr)."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except FileNotFoundError as e:
        raise StagingError("error", f"{argv[0]} is not installed") from e
    try:
        out, err = proc.communicate(timeout=deadline)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGTERM)  # rsync keeps its partial file on SIGTERM
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return None, out, err
    except BaseException:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class RsyncMover(_Closing):
    """A datastore directory on another machine, reached with rsync over ssh.

    ``timeout`` bounds connecting and any stall of a transfer (ssh
    ``ConnectTimeout`` and keep-alives, rsync ``--timeout``) and each control
    command; ``attempt_deadline`` bounds the whole of one transfer attempt.
    Host keys are learnt on first contact (``accept-new``) into
    ``known_hosts`` (default ``$ECLOUD_SSH_KNOWN_HOSTS`` or
    ``~/.ecloud/known_hosts``), never into the user's own file. Every command
    goes through one shared ssh connection, ``master``
    (:class:`~ecloud.effects.data.ssh_master.SshMaster`), while it is up (see the
    module doc); :meth:`close` ends it."""

    def __init__(self, address: str, host: str, root: str, *, user: str | None = None,
                 port: int | None = None, key_file: str | None = None, timeout: float = 30.0,
                 retries: int = 2, attempt_deadline: float = 3600.0,
                 known_hosts: str | None = None, identity: str | None = None) -> None:
        self.address, self.host, self.user, self.port = address, host, user, port
        self.root = root.rstrip("/") or "/"
        self.key_file, self.timeout, self.retries = key_file, timeout, retries
        self.attempt_deadline = attempt_deadline
        self.known_hosts = known_hosts or os.environ.get("ECLOUD_SSH_KNOWN_HOSTS") or str(
            Path.home() / ".ecloud" / "known_hosts")
        self.target = f"{user}@{host}" if user else host
        self.where = f"{self.target}:{port}" if port else self.target
        self.master = SshMaster(self._ssh(), self.target, timeout)
        self.identity = identity

    def mark(self) -> str:
        """The id in the root's marker, made now if there is none (the root
        is never created)."""
        Path(self.known_hosts).parent.mkdir(parents=True, exist_ok=True)
        try:
            found = self._script(_MARK, self.root, path=self.root).strip()
        except StagingError as e:
            if "no such directory" in e.reason:
                raise StagingError("missing", e.reason.removeprefix(f"{self.root}: ")) from None
            raise
        if not _MARKER_ID.fullmatch(found):
            raise StagingError("error", f"{self.where}:{self.root}/{MARKER} holds no datastore id "
                               "(remove it to start afresh)")
        return found

    def identify(self) -> None:
        """Raise "datastore root gone" unless the root's marker holds
        :attr:`identity` (nothing to check without one)."""
        if self.identity is not None:
            Path(self.known_hosts).parent.mkdir(parents=True, exist_ok=True)
            self._script(_IDENTIFY, self.root, self.identity, path=self.root)

    def close(self) -> None:
        """Stop the shared ssh connection; the mover may still be used (a new
        one is made then)."""
        self.master.close()

    def _ssh(self) -> list[str]:
        seconds = max(1, math.ceil(self.timeout))
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", f"ConnectTimeout={seconds}",
                "-o", f"ServerAliveInterval={max(1, seconds // 3)}", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.key_file:
            argv += ["-i", self.key_file, "-o", "IdentitiesOnly=yes"]
        return argv

    def _remote_path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def _failure(self, rc: int | None, err: str, path: str) -> tuple[StagingError, bool]:
        """The error for a failed command, and whether trying again may help."""
        lines = [ln.strip() for ln in err.splitlines()
                 if ln.strip() and not ln.lstrip().startswith(_MUX_NOISE)]
        if rc is None:
            return StagingError("unreachable", f"{self.where}: no progress within the deadline"), True
        for line in lines:
            if _AUTH_DENIED.search(line) or "Host key verification failed" in line:
                return StagingError("unreachable", f"cannot log in to {self.where}: "
                                    f"{line.rpartition(': ')[2]}"), False
            if "Could not resolve hostname" in line:
                return StagingError("unreachable", f"cannot reach {self.where}: "
                                    f"{line.rpartition(': ')[2]}"), False
            if line.startswith("ssh: connect to host"):
                return StagingError("unreachable", f"cannot reach {self.where}: "
                                    f"{line.rpartition(': ')[2]}"), True
        for line in lines:
            if line.startswith("ecloud-gone: "):
                return _gone(f"{self.where}:{self.root}", line.removeprefix("ecloud-gone: ")), False
        if rc == 23 and any("No such file or directory" in ln for ln in lines):
            return StagingError("missing", f"no such file in the datastore: {path}"), False
        detail = next((ln for ln in lines if not ln.startswith("rsync error:")), f"exit status {rc}")
        if rc in TRANSIENT_RSYNC:
            return StagingError("unreachable", f"transfer with {self.where} broke: {detail}"), True
        return StagingError("error", f"{path}: {detail}"), False

    def _attempt(self, command: Callable[[list[str]], list[str]], path: str,
                 deadline: float) -> str:
        """Run ``command(ssh argv)``, retrying transient failures; its stdout,
        or raise. Each attempt goes through the shared connection if it is up
        (or can be started), else connects on its own."""
        for attempt in range(self.retries + 1):
            shared = self.master.options()
            rc, out, err = _run(command([*self._ssh(), *shared]), deadline)
            if rc == 0:
                if not shared:
                    self.master.direct_success()
                return out
            error, transient = self._failure(rc, err or out, path)
            if not transient or attempt == self.retries:
                raise error
            time.sleep(min(0.5 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable code")

    def _script(self, script: str, *args: str, path: str, deadline: float | None = None) -> str:
        command = " ".join(["sh", "-c", shlex.quote(script), "sh", *map(shlex.quote, args)])
        return self._attempt(lambda ssh: [*ssh, self.target, "--", command], path,
                             deadline or 2 * self.timeout + 5)

    def _rsync(self, args: list[str], path: str) -> None:
        self._attempt(lambda ssh: ["rsync", "-s", f"--partial-dir={PARTIAL_DIR}",
                                   f"--timeout={max(1, math.ceil(self.timeout))}",
                                   "-e", " ".join(map(shlex.quote, ssh)), *args],
                      path, self.attempt_deadline)

    def fetch(self, path: str, dest: Path, expected_sha256: str | None = None) -> Transfer:
        started = time.monotonic()
        rel, dest = relative(path), Path(dest)
        Path(self.known_hosts).parent.mkdir(parents=True, exist_ok=True)
        stage = _stage_dir(dest)
        stage.mkdir(parents=True, exist_ok=True)  # kept after a broken attempt: resumed
        source = f"{self.target}:{self._remote_path(rel)}"
        try:
            self._rsync(["-rtL", "--", source, f"{stage}/"], path)
        except StagingError as e:
            if e.kind != "unreachable":
                remove_path(stage)
            raise
        staged = stage / PurePosixPath(rel).name
        if not staged.exists():
            remove_path(stage)
            raise StagingError("error", f"{path}: not a regular file or directory")
        return _finish_fetch(path, staged, stage, dest, expected_sha256, path_sha256(staged),
                             started)

    def push(self, src: Path, path: str) -> Transfer:
        started = time.monotonic()
        rel, src = relative(path), Path(src)
        if not src.exists():
            raise StagingError("missing", f"nothing to push at {src}")
        Path(self.known_hosts).parent.mkdir(parents=True, exist_ok=True)
        is_dir = src.is_dir()
        try:
            sha, size = path_sha256(src)
        except OSError as e:
            raise StagingError("error", f"cannot read {src}: {e}") from e
        final = PurePosixPath(self._remote_path(rel))
        tmp = str(final.with_name(f".{final.name}.ecloud-push"))
        self._script(_PREPARE, str(final.parent), tmp, "dir" if is_dir else "file", self.root,
                     self.identity or "", path=path)
        if is_dir:
            self._rsync(["-rtL", "--delete", "--", f"{src}/", f"{self.target}:{tmp}/"], path)
        else:
            self._rsync(["-tL", "--", str(src), f"{self.target}:{tmp}"], path)
        sums = parse_sha256sum(self._script(_HASH, tmp, path=path, deadline=self.attempt_deadline),
                           is_dir)
        remote = tree_digest(sums) if is_dir else sums.get("", "")
        if remote != sha:
            self._script(_DROP, tmp, path=path)
            raise StagingError("checksum", f"{path}: sent sha256 {sha}, the datastore has {remote}")
        old = str(final.with_name(f".{final.name}.ecloud-old-{secrets.token_hex(4)}"))
        self._script(_COMMIT, tmp, str(final), old, path=path)
        return Transfer(path=path, sha256=sha, bytes=size, seconds=time.monotonic() - started)

    def check(self) -> list[str]:
        probe = f".ecloud-probe-{secrets.token_hex(4)}"
        try:
            Path(self.known_hosts).parent.mkdir(parents=True, exist_ok=True)
            self.identify()  # first: a root gone is the one problem to tell
            self._script(_CHECK, self.root, probe, path=self.root)
        except StagingError as e:
            return [e.reason.removeprefix(f"{self.root}: ")]
        return []


# ---------------------------------------------------------------- addresses
