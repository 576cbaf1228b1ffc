"""Read an HTCondor submit description (``condor_submit`` syntax) into a
:class:`SubmitDescription`: the one job a DAG node runs, in ecloud's terms.

The language is the one the ``condor_submit`` man page and the configuration
chapter of the HTCondor manual document:

* ``key = value`` lines, keys in any case; ``+Attr = v`` is ``MY.Attr = v``;
  ``#`` comment lines; a trailing backslash continues a line (comment lines
  inside a continuation are skipped); ``key @=tag`` ... ``@tag`` multi-line
  values; ``if``/``elif``/``else``/``endif`` with ``[!] defined name``, a
  literal ``true``/``yes``/``1``/``false``/``no``/``0`` or a ``$(macro)``
  holding one; ``include : file``; ``error : text`` and ``warning : text``.
* ``$(name)`` and ``$(name:default)`` macros, expanded when the job is queued,
  so a later definition counts - except a macro naming itself in its own
  definition (``A = $(A) more``), which takes the value it had. An undefined
  macro without a default expands to nothing (and is listed in
  :attr:`SubmitDescription.undefined_macros`); ``$(DOLLAR)`` is ``$``;
  ``$ENV(name[:default])``, ``$RANDOM_CHOICE(a,b,...)`` and
  ``$RANDOM_INTEGER(min,max[,step])`` work. Other function macros (``$INT``,
  ``$Fnx``, ``$EVAL``, ...) and ``$$(attr)`` (a machine attribute HTCondor fills
  in at match time - ecloud has no such step) are refused.
* Macro sources, first to last (a later one overrides): the DAGMan macros
  passed in (``JOB``, ``RETRY``, ... and submit's own ``ClusterId``, ``ProcId``
  ...), the node's VARS placed PREPEND, the file, then VARS placed APPEND
  (those are set right before ``queue``).

What ecloud uses: ``executable``, ``arguments`` (both syntaxes),
``environment`` (both syntaxes), ``getenv``, ``initialdir``, ``input``,
``output``, ``error``, ``request_cpus``, ``request_memory`` (in MiB) and
``queue`` - which must queue exactly one job (``queue`` or ``queue 1``): ecloud
runs one job per node. Every other command (``universe``, ``log``,
``requirements``, ``transfer_*``, ``MY.*``, ...) is kept in
:attr:`SubmitDescription.ignored` with its line, unless the value of a command
ecloud uses refers to it (then it is a macro doing its job). Paths follow
``condor_submit``: ``executable`` and ``initialdir`` are relative to the
directory the job is submitted from (a DAG node's DIR), ``input``, ``output``
and ``error`` to ``initialdir``.

This module holds the entry points; the work is in layers, one module each:
:mod:`~ecloud.taskfiles.dagman.submitmodel` (the result),
:mod:`~ecloud.taskfiles.dagman.submitvalues` (the syntaxes of single values:
``arguments``, ``environment``, ``request_memory``, ``getenv``),
:mod:`~ecloud.taskfiles.dagman.submitmacros` (the macro table and its
expansion) and :mod:`~ecloud.taskfiles.dagman.submitreader` (the lines, the
``if`` blocks, the job). Their public names are importable from here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ecloud.errors import ValidationError
from ecloud.taskfiles.dagman.dagmodel import utf8_text
from ecloud.taskfiles.dagman.submitmodel import USED_COMMANDS as USED_COMMANDS  # was defined here
from ecloud.taskfiles.dagman.submitmodel import IgnoredCommand, MacroVar, SubmitDescription
from ecloud.taskfiles.dagman.submitreader import SubmitReader
from ecloud.taskfiles.dagman.submitvalues import (
    parse_arguments,
    parse_environment,
    parse_memory_mib,
)

if TYPE_CHECKING:
    from ecloud.taskfiles.dagman.dagmodel import Node

__all__ = [
    "IgnoredCommand",
    "SubmitDescription",
    "parse_arguments",
    "parse_environment",
    "parse_memory_mib",
    "parse_node_submit",
    "parse_submit_file",
    "parse_submit_text",
]


def parse_submit_file(path: str | Path, *, cwd: str | Path | None = None,
                      vars: Iterable[MacroVar | tuple[str, str]] = (),
                      dagman_macros: Mapping[str, object] | None = None,
                      environ: Mapping[str, str] | None = None,
                      default_append: bool = False) -> SubmitDescription:
    """Read a submit description file.

    ``cwd`` is the directory the job is submitted from (a DAG node's ``dir``;
    default: the file's folder). ``vars`` are the node's VARS (:class:`NodeVar`
    objects, or ``(name, value)`` pairs placed by ``default_append``);
    ``dagman_macros`` the macros DAGMan defines (``JOB``, ``RETRY``,
    ``FAILED_COUNT``, ``DAG_STATUS``) and any of submit's automatic ones the
    caller knows (``ClusterId``...). ``environ`` is what ``$ENV()`` reads
    (default: none). Raises :class:`ValidationError` listing every problem.
    """
    file = Path(os.path.abspath(path))
    try:
        text = utf8_text(file.read_bytes(), file)
    except OSError as exc:
        raise ValidationError([f"{file}: cannot read the submit file: {exc.strerror or exc}"],
                              source=str(file)) from None
    return SubmitReader(str(file), Path(os.path.abspath(cwd)) if cwd is not None else file.parent,
                        vars, dagman_macros, environ, default_append, inline=False,
                        submit_file=file).run(text, file, 1)


def parse_submit_text(text: str, *, source: str, cwd: str | Path, file: str | Path | None = None,
                      first_line: int = 1,
                      vars: Iterable[MacroVar | tuple[str, str]] = (),
                      dagman_macros: Mapping[str, object] | None = None,
                      environ: Mapping[str, str] | None = None,
                      default_append: bool = False, inline: bool = True) -> SubmitDescription:
    """Read submit commands from ``text`` - an inline description of a DAG
    file (``inline``: no ``queue`` needed) or any other text. ``file`` and
    ``first_line`` place its lines for messages; the rest is as for
    :func:`parse_submit_file`."""
    where = Path(file) if file is not None else Path(source)
    reader = SubmitReader(source, Path(os.path.abspath(cwd)), vars, dagman_macros, environ,
                          default_append, inline=inline, submit_file=None)
    return reader.run(text, where, first_line)


def parse_node_submit(node: Node, *, dagman_macros: Mapping[str, object] | None = None,
                      environ: Mapping[str, str] | None = None,
                      default_append: bool = False) -> SubmitDescription:
    """The submit description of a DAG node - its file or its inline block -
    read from the node's DIR with its VARS, and ``JOB`` (the node's full name),
    ``RETRY``, ``FAILED_COUNT`` and ``DAG_STATUS`` (0 unless ``dagman_macros``
    says otherwise) defined as DAGMan does."""
    macros: dict[str, object] = {"JOB": node.name, "RETRY": 0, "FAILED_COUNT": 0,
                                 "DAG_STATUS": 0}
    macros.update(dagman_macros or {})
    if node.inline_submit is not None:
        block = node.inline_submit
        return parse_submit_text(block.text, source=f"{block.file} (submit description "
                                                    f"{block.name!r})",
                                 cwd=node.dir, file=block.file, first_line=block.first_line,
                                 vars=node.vars, dagman_macros=macros, environ=environ,
                                 default_append=default_append, inline=True)
    if node.submit is None:
        raise ValidationError([f"{node.file}:{node.line}: node {node.name!r} is a "
                               f"{node.kind} node and has no submit description"],
                              source=str(node.file))
    return parse_submit_file(node.submit, cwd=node.dir, vars=node.vars, dagman_macros=macros,
                             environ=environ, default_append=default_append)

