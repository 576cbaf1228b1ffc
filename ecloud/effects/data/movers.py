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
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ecloud.effects.data.checksum import (
    copy_path,
    path_sha256,
    remove_path,
    replace_path,
)
from ecloud.effects.data.common import (
    _MARKER_ID,
    MARKER,
    Mover,
    StagingError,
    Transfer,
    _Closing,
    _finish_fetch,
    _gone,
    _marker_text,
    _stage_dir,
    relative,
)
from ecloud.effects.data.rsync import RsyncMover


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
