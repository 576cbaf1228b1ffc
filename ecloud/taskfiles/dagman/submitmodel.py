"""What a submit description says, as the ``parse_*submit*`` functions of
:mod:`~ecloud.taskfiles.dagman.submitfile` return it: the
:class:`SubmitDescription` of one job and the :class:`IgnoredCommand` entries
it keeps for what ecloud does not act on.

This module exists so the result can be read and handed around without the
reader that builds it (:mod:`~ecloud.taskfiles.dagman.submitreader`): frozen
values, the list of the commands ecloud uses, and the little they compute
(the executable's path, the argv, the job's environment). Everything here is
importable from :mod:`ecloud.taskfiles.dagman.submitfile` and from the
package as well.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from attrs import frozen

from ecloud.taskfiles.dagman.submitvalues import getenv_select

__all__ = ["USED_COMMANDS", "IgnoredCommand", "MacroVar", "SubmitDescription"]

#: The submit commands ecloud acts on (lower case).
USED_COMMANDS = frozenset({
    "executable", "arguments", "environment", "getenv", "initialdir", "input", "output",
    "error", "request_cpus", "request_memory",
})


class MacroVar(Protocol):
    """A VARS definition as :class:`~ecloud.taskfiles.dagman.dagfile.NodeVar` has it."""

    name: str
    value: str
    placement: str | None


@frozen
class IgnoredCommand:
    """A submit command ecloud does not act on: its key as written, the line,
    and its value as written (macros unexpanded). ``line`` 0 means it did not
    come from a line of the file."""

    key: str
    line: int
    value: str
    note: str = ""


@frozen(kw_only=True)
class SubmitDescription:
    """The job of one submit description, macros expanded.

    * ``executable`` - as written; :attr:`executable_path` resolves it against
      ``cwd`` (the directory the job is submitted from; not ``initialdir``).
    * ``arguments`` - the argument list, either syntax already parsed.
    * ``environment`` - ``(name, value)`` pairs, in order, from ``environment``.
    * ``getenv`` - the submitter's variables to import: ``()`` for false,
      ``("*",)`` for true, else the match list (``*`` wildcards, ``!`` rejects,
      names matched in any case); see :meth:`environment_dict`.
    * ``initialdir`` - absolute; ``input``, ``output``, ``error`` are absolute
      paths under it, or None when not given (HTCondor's /dev/null).
    * ``request_cpus`` / ``request_memory_mib`` - None when not given.
    * ``ignored`` - every command ecloud does not use, in file order.
    * ``undefined_macros`` - macros that expanded to nothing for lack of a
      definition (``ClusterId`` when the caller gave none, a misspelling...).
    """

    source: str
    cwd: Path
    executable: str
    arguments: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    getenv: tuple[str, ...] = ()
    initialdir: Path
    input: Path | None = None
    output: Path | None = None
    error: Path | None = None
    request_cpus: int | None = None
    request_memory_mib: int | None = None
    ignored: tuple[IgnoredCommand, ...] = ()
    undefined_macros: tuple[str, ...] = ()

    @property
    def executable_path(self) -> Path:
        """The executable, absolute: relative to ``cwd``, as condor_submit does."""
        return Path(os.path.normpath(os.path.join(self.cwd, self.executable)))

    def argv(self) -> list[str]:
        """The command line: the absolute executable, then the arguments."""
        return [str(self.executable_path), *self.arguments]

    def environment_dict(self, submitter_environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The job's environment: the variables of ``submitter_environ`` that
        ``getenv`` selects (none when it is not given), then ``environment``,
        which wins over them whatever the order of the two commands."""
        result: dict[str, str] = {}
        if submitter_environ is not None and self.getenv:
            result.update(getenv_select(self.getenv, submitter_environ))
        result.update(self.environment)
        return result
