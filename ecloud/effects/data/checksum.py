"""Streaming sha256 of staged files and directories, chunked copies, and the
local file operations of staging (removing a tree, renaming over a result).

Nothing here ever holds a whole file in memory: files are read in
:data:`CHUNK`-sized pieces.

The digest of a directory is the sha256 of the lines
``"<sha256>  <relative path>\\n"`` of the regular files under it (``/``
separators, no ``./`` prefix; empty directories do not count), the lines
sorted as strings - i.e. by code point, the same as ``LC_ALL=C sort`` on their
UTF-8 bytes. Symbolic links are followed, as the movers copy what they point
to - but only within the directory: a link that leads out of it, or back
into a directory already on the way down (a loop, which would otherwise be
walked about 2^depth times), is refused with :class:`OSError` naming it.
:func:`tree_digest` is the one place this is defined.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["CHUNK", "copy_file", "copy_path", "file_sha256", "parse_sha256sum", "path_sha256",
           "remove_path", "replace_path", "tree_digest", "tree_files"]

CHUNK = 1 << 20


def file_sha256(path: Path) -> tuple[str, int]:
    """The hex sha256 and the size in bytes of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def copy_file(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to the new file ``dst`` in chunks, hashing what is written;
    the copy is flushed to disk before returning its (sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest(), size


def tree_files(root: Path) -> Iterator[str]:
    """The relative paths (``/``-separated) of the regular files under the
    directory ``root``, following symbolic links that stay inside it, in
    sorted order; :class:`OSError` for a link out of it or a loop."""
    top = os.path.realpath(root)
    found: list[str] = []
    # (device, inode) of the directories on the way down from ``root``
    stack: list[tuple[str, tuple[int, int]]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        info = os.stat(dirpath)
        here = (info.st_dev, info.st_ino)
        while stack and not _below(dirpath, stack[-1][0]):
            stack.pop()
        if any(key == here for _, key in stack):
            raise OSError(f"symbolic link loop at {dirpath}: it leads back to a directory above")
        stack.append((dirpath, here))
        dirnames.sort()
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if target != top and not target.startswith(top + os.sep):
                    raise OSError(f"symbolic link {path} points out of {root} (to {target})")
        base = Path(dirpath).relative_to(root)
        for name in filenames:
            found.append((base / name).as_posix())
    return iter(sorted(found))


def _below(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def tree_digest(files: Mapping[str, str]) -> str:
    """The digest of a directory, from ``{relative path: sha256}`` of its files."""
    lines = sorted(f"{sha}  {rel}\n" for rel, sha in files.items())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def path_sha256(path: Path) -> tuple[str, int]:
    """(digest, total bytes) of a file or of a directory (see the module doc)."""
    if not path.is_dir():
        return file_sha256(path)
    files: dict[str, str] = {}
    total = 0
    for rel in tree_files(path):
        files[rel], size = file_sha256(path / rel)
        total += size
    return tree_digest(files), total


def copy_path(src: Path, dst: Path) -> tuple[str, int]:
    """Copy the file or directory ``src`` to the new path ``dst`` in chunks,
    returning the (digest, total bytes) of what was written. Anything that is
    neither a regular file nor a directory (after following links) is refused
    with :class:`OSError`, as is a link with no target."""
    if not src.is_dir():
        if not src.is_file():
            raise OSError(f"not a regular file: {src}")
        return copy_file(src, dst)
    dst.mkdir()
    files: dict[str, str] = {}
    total = 0
    for rel in tree_files(src):
        if not (src / rel).is_file():
            raise OSError(f"not a regular file: {src / rel}")
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        files[rel], size = copy_file(src / rel, dst / rel)
        total += size
    return tree_digest(files), total


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), name)


def parse_sha256sum(out: str, is_dir: bool) -> dict[str, str]:
    """``sha256sum`` output as {relative path: sha256} (one "" entry for a file)."""
    sums: dict[str, str] = {}
    for line in out.splitlines():
        escaped = line.startswith("\\")
        sha, _, name = line[escaped:].partition("  ")
        name = _unescape(name) if escaped else name
        sums[name.removeprefix("./") if is_dir else ""] = sha
    return sums


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def replace_path(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``: atomically for a file over a file; when a
    directory is involved the old one is moved aside first and put back if
    the rename fails, so ``final`` is never a mixture of both."""
    if not new.is_dir() and not (final.is_dir() and not final.is_symlink()):
        os.replace(new, final)
        return
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.ecloud-old-{secrets.token_hex(4)}")
        os.rename(final, old)
    try:
        os.rename(new, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        remove_path(old)
