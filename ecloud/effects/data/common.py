"""What every data mover shares: the transfer record, the error kinds, the
datastore's identity marker, and the helpers that stage a fetched file under
a temporary name before it takes its own (README, "Data staging";
:mod:`ecloud.effects.data.movers` has the whole story)."""

from __future__ import annotations

import re
import time
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Protocol, Self

import attrs

from ecloud.effects.data.checksum import (
    remove_path,
    replace_path,
)
from ecloud.errors import EcloudError

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
