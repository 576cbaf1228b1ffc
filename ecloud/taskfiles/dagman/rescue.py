"""DAGMan rescue files: which one a re-run uses, reading, writing, applying.

What the manual (``dagman-resubmit-failed``) says, and this module does:

* A failed run writes ``<dag>.rescue001``, the next ``.rescue002``, and so on
  (three digits, more past 999 is not allowed: ``DAGMAN_MAX_RESCUE_NUM``, 100
  by default, at most 999, caps the number; at the cap the last file is
  overwritten). :func:`next_rescue_path` gives the name to write.
* Re-running the original DAG uses the rescue file with the largest number
  (:func:`newest_rescue`, :func:`load_dag`); ``-force`` uses none
  (``force=True``); ``-DoRescueFrom N`` uses number N (``rescue_from=N``) and
  DAGMan renames the later ones to ``*.old`` (:func:`retire_rescues_after`).
* Rescue files are *partial* (since HTCondor 7.7.2): a comment header with
  statistics, then ``DONE node`` for each node that finished successfully,
  and ``RETRY`` lines for nodes with retries. They are read *together with*
  the original DAG file, which gives the structure (:func:`apply_rescue`). A
  DONE naming a node the DAG no longer has is an error (DAGMan's default
  ``DAGMAN_USE_STRICT`` makes it one).
* RETRY lines carry the node's full retry count again (DAGMan resets retries
  on rescue by default), so reading them changes nothing and they are skipped.
  A *full* rescue DAG (the pre-7.7.2 kind, with JOB lines) is a DAG file of
  its own: give it to :func:`~ecloud.taskfiles.dagman.dagfile.parse_dag`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import attrs

from ecloud.errors import ValidationError
from ecloud.taskfiles.dagman.dagfile import Dag, parse_dag
from ecloud.taskfiles.dagman.dagmodel import utf8_text

__all__ = [
    "DEFAULT_MAX_RESCUE_NUM",
    "RESCUE_DAG_VERSION",
    "apply_rescue",
    "load_dag",
    "newest_rescue",
    "next_rescue_path",
    "read_rescue",
    "rescue_path",
    "retire_rescues_after",
    "write_rescue",
]

#: ``DAGMAN_MAX_RESCUE_NUM``'s default; the manual allows at most 999.
DEFAULT_MAX_RESCUE_NUM = 100
_LARGEST_MAX_RESCUE_NUM = 999
#: The version DAGMan writes in its rescue files' header.
RESCUE_DAG_VERSION = "2.0.1"


def rescue_path(dag_path: str | Path, number: int) -> Path:
    """The name of rescue file ``number`` of a DAG: ``x.dag.rescue002``."""
    if number < 1:
        raise ValueError(f"rescue files are numbered from 1, not {number}")
    return Path(f"{os.path.abspath(dag_path)}.rescue{number:03d}")


def newest_rescue(dag_path: str | Path, *,
                  max_rescue_num: int = DEFAULT_MAX_RESCUE_NUM) -> Path | None:
    """The rescue file a re-run of ``dag_path`` uses: the one with the largest
    number up to ``max_rescue_num`` (gaps allowed), or None if there is none."""
    number = _newest_number(dag_path, max_rescue_num)
    return rescue_path(dag_path, number) if number else None


def next_rescue_path(dag_path: str | Path, *,
                     max_rescue_num: int = DEFAULT_MAX_RESCUE_NUM) -> Path:
    """The rescue file a failing run of ``dag_path`` writes: one past the
    newest, or the newest itself once ``max_rescue_num`` is reached."""
    _check_max(max_rescue_num)
    number = min(_newest_number(dag_path, max_rescue_num) + 1, max_rescue_num)
    return rescue_path(dag_path, number)


def retire_rescues_after(dag_path: str | Path, number: int, *,
                         max_rescue_num: int = DEFAULT_MAX_RESCUE_NUM) -> list[Path]:
    """What ``-DoRescueFrom number`` does to the later rescue files: renames
    each to ``<name>.old`` (replacing an older ``.old``). Returns the new names."""
    _check_max(max_rescue_num)
    renamed: list[Path] = []
    for later in range(number + 1, max_rescue_num + 1):
        path = rescue_path(dag_path, later)
        if path.exists():
            old = Path(f"{path}.old")
            os.replace(path, old)
            renamed.append(old)
    return renamed


def read_rescue(path: str | Path) -> set[str]:
    """The nodes a partial rescue file marks DONE (full names, ``Splice+Node``
    for spliced ones). Comments, blank lines and RETRY lines are allowed;
    anything else is a :class:`ValidationError` naming ``file:line``."""
    return set(_read(Path(os.path.abspath(path))))


def write_rescue(path: str | Path, dag_path: str | Path, done_nodes: Iterable[str],
                 failed_count: int, *, failed_nodes: Iterable[str] = (),
                 total_nodes: int | None = None,
                 retries: Mapping[str, tuple[int, int | None]] | None = None,
                 created: datetime | None = None) -> Path:
    """Write a partial rescue file in DAGMan's format and return its path.

    ``done_nodes`` are the nodes that finished successfully (written in the
    order given; a set is sorted), ``failed_count`` and ``failed_nodes`` those
    that failed, ``total_nodes`` the DAG's size (default: done + failed).
    ``retries`` maps a node to its ``(RETRY count, UNLESS-EXIT value or None)``
    for the RETRY lines. The file is replaced atomically.
    """
    done = sorted(done_nodes) if isinstance(done_nodes, (set, frozenset)) else list(done_nodes)
    failed = list(failed_nodes)
    total = total_nodes if total_nodes is not None else len(done) + failed_count
    when = (created or datetime.now(UTC)).astimezone(UTC)
    lines = [
        "# Rescue DAG file, created after running",
        f"#   the {os.fspath(dag_path)} DAG file",
        f"# Created {when.month}/{when.day}/{when.year} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} UTC",
        f"# Rescue DAG version: {RESCUE_DAG_VERSION} (partial)",
        "#",
        f"# Total number of Nodes: {total}",
        f"# Nodes premarked DONE: {len(done)}",
        f"# Nodes that failed: {failed_count}",
        "#   " + "".join(f"{name}," for name in failed) + "<ENDLIST>",
        "",
    ]
    lines += [f"DONE {name}" for name in done]
    for name, (count, unless_exit) in (retries or {}).items():
        lines.append(f"RETRY {name} {count}"
                     + (f" UNLESS-EXIT {unless_exit}" if unless_exit is not None else ""))
    target = Path(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def apply_rescue(dag: Dag, rescue_file: str | Path) -> Dag:
    """``dag`` with the nodes ``rescue_file`` marks DONE marked done, as DAGMan
    reads a partial rescue file after the DAG. A DONE for an unknown node, or
    for the FINAL or a SERVICE node, is a :class:`ValidationError`."""
    path = Path(os.path.abspath(rescue_file))
    marked = _read(path)
    problems: list[str] = []
    nodes = dict(dag.nodes)
    for name, line in marked.items():
        node = nodes.get(name)
        if node is None:
            problems.append(f"{path}:{line}: DONE names node {name!r}, which {dag.path} does "
                            "not have (comment the line out if the node was removed)")
        elif node.kind in ("final", "service"):
            problems.append(f"{path}:{line}: the {node.kind.upper()} node {name!r} cannot be "
                            "DONE")
        elif not node.done:
            nodes[name] = attrs.evolve(node, done=True)
    if problems:
        raise ValidationError(problems, source=str(path))
    return attrs.evolve(dag, nodes=nodes)


def load_dag(dag_path: str | Path, *, force: bool = False, rescue_from: int | None = None,
             max_rescue_num: int = DEFAULT_MAX_RESCUE_NUM) -> tuple[Dag, Path | None]:
    """Parse a DAG as a re-run would see it: with its newest rescue file
    applied (or rescue file ``rescue_from``, as ``-DoRescueFrom``; or none with
    ``force``, as ``-force``). Returns the DAG and the rescue file used."""
    dag = parse_dag(dag_path)
    if force:
        return dag, None
    if rescue_from is not None:
        rescue = rescue_path(dag_path, rescue_from)
        if not rescue.is_file():
            raise ValidationError([f"{rescue}: rescue file {rescue_from} does not exist"],
                                  source=str(dag.path))
        return apply_rescue(dag, rescue), rescue
    newest = newest_rescue(dag_path, max_rescue_num=max_rescue_num)
    if newest is None:
        return dag, None
    return apply_rescue(dag, newest), newest


# ---------------------------------------------------------------------- internals


def _check_max(max_rescue_num: int) -> None:
    if not 1 <= max_rescue_num <= _LARGEST_MAX_RESCUE_NUM:
        raise ValueError(f"max_rescue_num must be from 1 to {_LARGEST_MAX_RESCUE_NUM} "
                         f"(DAGMAN_MAX_RESCUE_NUM = 0 means no rescue files), not {max_rescue_num}")


def _newest_number(dag_path: str | Path, max_rescue_num: int) -> int:
    dag = Path(os.path.abspath(dag_path))
    pattern = re.compile(re.escape(dag.name) + r"\.rescue([0-9]{3,})\Z")
    try:
        names = os.listdir(dag.parent)
    except OSError:
        return 0
    newest = 0
    for name in names:
        match = pattern.match(name)
        if match is None:
            continue
        number = int(match.group(1))
        # only the exact names DAGMan makes (rescue007, not rescue0007)
        if f"{number:03d}" == match.group(1) and 1 <= number <= max_rescue_num:
            newest = max(newest, number)
    return newest


def _read(path: Path) -> dict[str, int]:
    """The nodes marked DONE, each with its line, in file order."""
    try:
        text = utf8_text(path.read_bytes(), path)
    except OSError as exc:
        raise ValidationError([f"{path}: cannot read the rescue file: {exc.strerror or exc}"],
                              source=str(path)) from None
    done: dict[str, int] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        keyword = words[0].upper()
        if keyword == "DONE":
            if len(words) != 2:
                problems.append(f"{path}:{number}: DONE takes one node name: DONE NodeName")
            else:
                done.setdefault(words[1], number)
        elif keyword != "RETRY":
            problems.append(f"{path}:{number}: {words[0]!r} has no place in a partial rescue "
                            "file (only DONE and RETRY lines; a full rescue DAG is a DAG file "
                            "of its own)")
    if problems:
        raise ValidationError(problems, source=str(path))
    return done
