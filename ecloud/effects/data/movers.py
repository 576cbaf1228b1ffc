"""Data movers: copy task inputs from the datastore and results back to it.

A datastore is a directory, here (``/abs/dir``, ``file:///abs/dir``:
:class:`LocalDirMover`) or on another machine reached over ssh
(``user@host:/abs/dir``, ``ssh://user@host:port/abs/dir``:
:class:`RsyncMover`, the system ``rsync`` over ``ssh``). :func:`mover_for`
picks one from an address.

Both keep the same promises:

- paths are relative to the datastore root; an absolute path or one whose
  ``..`` climbs out of the root is refused (:class:`StagingError` "error");
- nothing ever appears under a final name before it is complete and
  verified: a fetch lands in ``.<dest name>.ecloud-fetch/`` next to ``dest``,
  is hashed there and renamed into place; a push goes to
  ``.<name>.ecloud-push`` next to its target on the datastore and is renamed
  over the old result only once its sha256 matches what was sent, so a failed
  push never damages an existing result;
- the datastore proves it is the datastore: its root holds a marker,
  ``.ecloud-datastore``, with a random id, made when it is set up
  (:meth:`mark`, ``ecloud datastore set``); a mover given that ``identity``
  checks the marker before every push and never creates the root, so a root
  that went away (unmounted, renamed) fails the push with "datastore root
  gone" rather than leaving the results on the disk beneath it; a pushed
  copy is hashed again where it lies before it takes its final name;
- files are hashed and copied in chunks (:mod:`ecloud.effects.data.checksum`
  defines the digest of a directory), never read whole into memory.

Over ssh, a push is verified by ``sha256sum`` run on the datastore host over
the same ssh options (the bytes rsync wrote are read back there, not
re-downloaded). rsync's ``--partial-dir`` keeps what an interrupted transfer
got, and the next attempt - a retry here or a later fetch or push of the same
path - resumes from it. Attempts that fail for network reasons (ssh or rsync
exit 255, rsync 10/12/30/35, a stall past ``timeout``, the per-attempt
deadline) are retried ``retries`` times with a short backoff; exit 23
("partial transfer due to error": a missing file, a permission) is not
transient and is not retried. Every command is an argv list; remote scripts
are constants and their arguments are quoted for the remote shell.

All the commands of one :class:`RsyncMover` - the scripts that prepare,
hash and commit a push, and rsync itself - share one ssh connection, an
OpenSSH control master (:mod:`ecloud.effects.data.ssh_master`) started on the
first remote operation, so that a push costs one login, not four. The master
runs in the caller's process group (killing the group kills it) and its socket
lives in a private directory. When it cannot start or has died, commands
connect on their own, so its failures are reported as any other; one that died
after having been up is started again for the next command.

A mover is a context manager: :meth:`close` (or leaving the ``with``) stops
the master and removes its directory; a forgotten mover's master is stopped
when the mover is garbage-collected or the interpreter exits.
:class:`LocalDirMover`'s ``close`` does nothing.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import unquote, urlsplit

import attrs

from ecloud.effects.data.checksum import (
    copy_path,
    parse_sha256sum,
    path_sha256,
    remove_path,
    replace_path,
    tree_digest,
)
from ecloud.effects.data.ssh_master import SshMaster
from ecloud.errors import EcloudError

__all__ = ["LocalDirMover", "Mover", "RsyncMover", "StagingError", "Transfer", "mover_for"]

KINDS = frozenset({"missing", "checksum", "unreachable", "error"})
MARKER = ".ecloud-datastore"  # in the root: the datastore's id (see the module doc)
_MARKER_ID = re.compile(r"[0-9a-f]{32}")
PARTIAL_DIR = ".ecloud-partial"
_MUX_NOISE = ("Control socket connect(", "mux_client_")  # ssh's words about its master
_AUTH_DENIED = re.compile(r": Permission denied \([a-z,-]+\)\.?$")  # ssh's, not a file's (13)
TRANSIENT_RSYNC = frozenset({10, 12, 30, 35, 255})  # socket, stream, timeouts, ssh


@attrs.frozen
class Transfer:
    path: str  # datastore-relative path, as given
    sha256: str  # hex digest (of a directory: see ecloud.effects.data.checksum)
    bytes: int  # total bytes
    seconds: float


class StagingError(EcloudError):
    """A fetch or push failed; ``kind`` is one of :data:`KINDS`."""

    def __init__(self, kind: str, reason: str) -> None:
        assert kind in KINDS, kind
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


class Mover(Protocol):
    address: str
    #: the id the root's marker must hold before a push (None: not checked)
    identity: str | None

    def mark(self) -> str: ...

    def identify(self) -> None: ...

    def fetch(self, path: str, dest: Path, expected_sha256: str | None = None) -> Transfer: ...

    def push(self, src: Path, path: str) -> Transfer: ...

    def check(self) -> list[str]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class _Closing:
    """``with mover:`` closes it."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------- shared


def relative(path: str) -> str:
    """``path`` normalised, or "error" if it is absolute or leaves the root."""
    if not path or path.startswith("/"):
        raise StagingError("error", f"datastore paths are relative to its root: {path!r}")
    parts: list[str] = []
    for part in PurePosixPath(path).parts:
        if part == "..":
            if not parts:
                raise StagingError("error", f"{path!r} climbs out of the datastore root")
            parts.pop()
        elif part != ".":
            parts.append(part)
    if not parts:
        raise StagingError("error", f"{path!r} names the datastore root itself")
    return "/".join(parts)


def _gone(where: str, why: str) -> StagingError:
    return StagingError("error", f"datastore root gone: {where} {why} (unmounted, moved, or "
                        "another directory?); nothing was written there. If the datastore "
                        "moved, run `ecloud datastore set ADDRESS` with its new address")


def _marker_text(identity: str) -> str:
    return identity + "\n"


def _stage_dir(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.ecloud-fetch"


def _finish_fetch(path: str, staged: Path, stage: Path, dest: Path, expected: str | None,
                  digest: tuple[str, int], started: float) -> Transfer:
    sha, size = digest
    if expected is not None and sha != expected.lower():
        remove_path(stage)
        raise StagingError("checksum", f"{path}: expected sha256 {expected}, got {sha}")
    replace_path(staged, dest)
    remove_path(stage)
    return Transfer(path=path, sha256=sha, bytes=size, seconds=time.monotonic() - started)


# ---------------------------------------------------------------- local


class LocalDirMover(_Closing):
    """A datastore that is a directory of this machine (``close`` does nothing)."""

    def __init__(self, root: str | Path, address: str | None = None,
                 identity: str | None = None) -> None:
        self.root = Path(root)
        self.address = address if address is not None else str(root)
        self.identity = identity

    def mark(self) -> str:
        """The id in the root's marker, made now if there is none. The root
        must exist: it is never created."""
        if not self.root.is_dir():
            what = "not a directory" if self.root.exists() else "no such directory"
            raise StagingError("missing", f"{what}: {self.root}")
        marker = self.root / MARKER
        try:
            found = marker.read_text().strip()
        except FileNotFoundError:
            found = None
        except OSError as e:
            raise StagingError("error", f"cannot read {marker}: {e.strerror or e}") from e
        if found is not None:
            if not _MARKER_ID.fullmatch(found):
                raise StagingError("error", f"{marker} holds no datastore id (remove it to "
                                   "start afresh)")
            return found
        identity = secrets.token_hex(16)
        tmp = self.root / f".{MARKER}.{secrets.token_hex(4)}"
        try:
            tmp.write_text(_marker_text(identity))
            os.link(tmp, marker)  # never over a marker made meanwhile
        except FileExistsError:
            tmp.unlink()
            return self.mark()
        except OSError as e:
            raise StagingError("error", f"cannot write {marker}: {e.strerror or e}") from e
        tmp.unlink()
        return identity

    def identify(self) -> None:
        """Raise "datastore root gone" unless the root's marker holds
        :attr:`identity` (nothing to check without one)."""
        if self.identity is None:
            return
        try:
            found = (self.root / MARKER).read_text().strip()
        except FileNotFoundError:
            what = "does not exist" if not self.root.exists() else f"has no {MARKER} marker"
            raise _gone(str(self.root), what) from None
        except OSError as e:
            raise _gone(str(self.root), f"cannot be read ({e.strerror or e})") from None
        if found != self.identity:
            raise _gone(str(self.root), f"is another datastore (its {MARKER} holds {found[:32]!r}, "
                        f"not {self.identity!r})")

    def fetch(self, path: str, dest: Path, expected_sha256: str | None = None) -> Transfer:
        started = time.monotonic()
        src, dest = self.root / relative(path), Path(dest)
        if not (src.exists() or src.is_symlink()):
            raise StagingError("missing", f"no such file in the datastore: {path}")
        stage = _stage_dir(dest)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            remove_path(stage)
            stage.mkdir()
            digest = copy_path(src, stage / src.name)
        except OSError as e:
            remove_path(stage)
            raise StagingError("error", f"cannot fetch {path}: {e}") from e
        return _finish_fetch(path, stage / src.name, stage, dest, expected_sha256, digest, started)

    def push(self, src: Path, path: str) -> Transfer:
        started = time.monotonic()
        final, src = self.root / relative(path), Path(src)
        if not src.exists():
            raise StagingError("missing", f"nothing to push at {src}")
        self.identify()
        tmp = final.with_name(f".{final.name}.ecloud-push-{secrets.token_hex(4)}")
        made: list[Path] = []
        try:
            made = self._parents(final.parent)
            sha, size = copy_path(src, tmp)
            stored = path_sha256(tmp)  # read back where it lies, before it takes its name
            if stored != (sha, size):
                remove_path(tmp)
                raise StagingError("checksum", f"{path}: sent sha256 {sha} ({size} bytes), the "
                                   f"datastore has {stored[0]} ({stored[1]} bytes)")
            replace_path(tmp, final)
        except (OSError, StagingError) as e:
            remove_path(tmp)
            for folder in made:  # the folders made for it, if still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
            if isinstance(e, StagingError):
                raise
            raise StagingError("error", f"cannot push {src} to {path}: {e}") from e
        return Transfer(path=path, sha256=sha, bytes=size, seconds=time.monotonic() - started)

    def _parents(self, folder: Path) -> list[Path]:
        """Make ``folder`` and the folders between it and the root - never
        the root itself. Returns those it made, deepest first."""
        if not self.root.is_dir():
            raise _gone(str(self.root), "does not exist")
        missing = []
        while folder != self.root and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        made = []
        for one in reversed(missing):
            try:
                one.mkdir()
            except FileExistsError:  # another push made it this instant: not ours to remove
                continue
            made.insert(0, one)
        return made

    def check(self) -> list[str]:
        try:
            self.identify()  # first: a root gone is the one problem to tell
        except StagingError as e:
            return [e.reason]
        if not self.root.is_dir():
            what = "not a directory" if self.root.exists() else "no such directory"
            return [f"{what}: {self.root}"]
        probe = self.root / f".ecloud-probe-{secrets.token_hex(4)}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            return [f"no write access to {self.root}: {e.strerror or e}"]
        return []


# ---------------------------------------------------------------- rsync over ssh

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

_SCP_LIKE = re.compile(r"(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:]+):(?P<path>/(?!/).*)")


def is_remote(address: str) -> bool:
    """Whether ``address`` names a datastore on another machine (ssh)."""
    return address.startswith("ssh://") or _SCP_LIKE.fullmatch(address) is not None


def mover_for(address: str, *, key_file: str | None = None, timeout: float = 30.0,
              retries: int = 2, attempt_deadline: float = 3600.0,
              known_hosts: str | None = None, identity: str | None = None) -> Mover:
    """The mover for a datastore address (see the module doc), checking the
    root's marker against ``identity`` before every push when given; a
    malformed address raises :class:`StagingError` "error"."""
    if address.startswith("/"):
        return LocalDirMover(address, identity=identity)
    if address.startswith("file://"):
        url = urlsplit(address)
        if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
            raise StagingError("error", f"a file:// datastore must be file:///absolute/dir: {address!r}")
        return LocalDirMover(unquote(url.path), address, identity)
    options = {"key_file": key_file, "timeout": timeout, "retries": retries,
               "attempt_deadline": attempt_deadline, "known_hosts": known_hosts,
               "identity": identity}
    if address.startswith("ssh://"):
        url = urlsplit(address)
        try:
            port = url.port
        except ValueError as e:
            raise StagingError("error", f"bad port in datastore address {address!r}") from e
        if not url.hostname or not url.path.startswith("/"):
            raise StagingError("error", f"expected ssh://user@host:port/absolute/dir: {address!r}")
        return RsyncMover(address, url.hostname, unquote(url.path),
                          user=unquote(url.username) if url.username else None, port=port, **options)
    if m := _SCP_LIKE.fullmatch(address):
        return RsyncMover(address, m["host"], m["path"], user=m["user"], **options)
    raise StagingError("error", f"unknown datastore address {address!r}: expected /dir, "
                       "file:///dir, user@host:/dir or ssh://user@host:port/dir")
