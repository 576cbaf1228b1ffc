"""What a DAG file says, as :func:`~ecloud.taskfiles.dagman.dagfile.parse_dag`
returns it: the :class:`Dag`, its :class:`Node` objects and what hangs on them
(:class:`Script`, :class:`NodeVar`, :class:`AbortDagOn`,
:class:`InlineSubmit`), and the directives kept unacted on (:class:`Ignored`).

This module exists so the result of a parse can be read, built and handed
around (by the rescue files, the submit reader, any caller) apart from the
parser: it holds only frozen values and DAGMan's script macro rule, no
reading. Everything here is importable from
:mod:`ecloud.taskfiles.dagman.dagfile` and from the package as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from attrs import field, frozen

from ecloud.wire import SCRIPT_MACROS

__all__ = [
    "SCRIPT_MACROS",
    "AbortDagOn",
    "Dag",
    "Ignored",
    "InlineSubmit",
    "Node",
    "NodeVar",
    "Script",
    "expand_script_macros",
    "utf8_text",
]

#: The macros DAGMan substitutes in SCRIPT arguments, each only as a whole
#: argument (``$RETURN`` alone between spaces is replaced, ``status=$RETURN``
#: is not): the protocol's list, which the worker uses too.
_SCRIPT_MACRO = re.compile(r"(?<!\S)\$([A-Z_]+)(?!\S)")


@frozen
class Script:
    """A node's PRE, POST or HOLD script, as the SCRIPT line gave it.

    ``command`` is the whole command line after the node name, unchanged: the
    executable and its arguments, with DAGMan's ``$JOB``-style macros still in
    it (see :func:`expand_script_macros` and :meth:`argv`). ``defer_status`` and
    ``defer_seconds`` are DEFER's: rerun the script after that many seconds if
    it exits with that status. ``debug_file``/``debug_streams`` are DEBUG's
    (``STDOUT``, ``STDERR`` or ``ALL``).
    """

    kind: str  # "pre", "post" or "hold"
    command: str
    file: Path
    line: int
    defer_status: int | None = None
    defer_seconds: int | None = None
    debug_file: str | None = None
    debug_streams: str | None = None

    @property
    def executable(self) -> str:
        """The script's program, the command's first word (it may not hold spaces)."""
        return self.command.split(None, 1)[0]

    def argv(self, values: Mapping[str, object] | None = None) -> list[str]:
        """The command split on white space, as DAGMan runs it, after
        :func:`expand_script_macros` with ``values`` (no quoting: DAGMan has none)."""
        return expand_script_macros(self.command, values or {}).split()


@frozen
class NodeVar:
    """One ``name="value"`` of a VARS line: a submit macro for the node's job.

    ``placement`` is ``"prepend"`` (defined before the submit description is
    read, so the file can test or override it), ``"append"`` (after: it
    overrides the file), or None when the line said neither - then DAGMan's
    ``DAGMAN_DEFAULT_APPEND_VARS`` decides, prepend by default. A ``+name`` is
    stored as ``My.name``, as DAGMan does. The same name may appear more than
    once; the last one wins.
    """

    name: str
    value: str
    placement: str | None = None


@frozen
class AbortDagOn:
    """ABORT-DAG-ON: abort the whole DAG when the node exits with
    ``exit_value``; DAGMan then exits with ``dag_return`` (0-255) if given,
    else with the node's exit value."""

    exit_value: int
    dag_return: int | None = None


@frozen
class InlineSubmit:
    """A submit description written inside the DAG file, between ``{`` and
    ``}``: a ``JOB name {`` block, or a ``SUBMIT-DESCRIPTION name {`` block that
    JOB lines name in place of a file. ``text`` is the block's lines, for
    :func:`~ecloud.taskfiles.dagman.submitfile.parse_submit_text`;
    ``first_line`` is the line number of its first line in ``file``."""

    name: str
    text: str
    file: Path
    first_line: int


@frozen
class Ignored:
    """A DAG directive ecloud reads but does not act on (CONFIG, DOT, ENV,
    REJECT, CONNECT, ...), kept whole so nothing disappears unseen."""

    keyword: str
    file: Path
    line: int
    text: str


@frozen(kw_only=True)
class Node:
    """One node of the DAG, with everything the DAG file says about it.

    * ``name`` - the full name: spliced nodes carry their splice names,
      ``Splice+Node``.
    * ``kind`` - ``"job"`` (JOB or NODE), ``"subdag"`` (SUBDAG EXTERNAL: the
      work is the nested DAG ``dag_file``), ``"final"`` (runs last, whatever
      happened), ``"provisioner"`` or ``"service"`` (both start first).
    * ``dir`` - the absolute folder the job is submitted from and the scripts
      run in (DIR, else the DAG's folder).
    * ``submit`` - the absolute submit description file, resolved against
      ``dir``; None for a SUBDAG, or when the description is written in the
      DAG file (``inline_submit``).
    * ``noop`` - the job is not run (its scripts are); ``done`` - nothing of the
      node is run (JOB ... DONE, a DONE line, or a rescue file).
    * ``retry`` / ``retry_unless_exit`` - RETRY: rerun the whole node up to
      ``retry`` times, unless it exits with ``retry_unless_exit``.
    * ``abort_on`` - ABORT-DAG-ON; ``pre_skip`` - PRE_SKIP: a PRE script exit
      status that skips the rest of the node and counts it a success.
    * ``priority`` (default 0, larger first), ``category`` (for MAXJOBS; spliced
      nodes' categories are scoped like their names unless they start with +).
    * ``vars`` - every VARS definition in file order (last one wins).
    * ``file``/``line`` - where the node was defined.
    """

    name: str
    kind: str
    dir: Path
    file: Path
    line: int
    submit: Path | None = None
    inline_submit: InlineSubmit | None = None
    dag_file: Path | None = None
    noop: bool = False
    done: bool = False
    pre: Script | None = None
    post: Script | None = None
    hold: Script | None = None
    retry: int = 0
    retry_unless_exit: int | None = None
    abort_on: AbortDagOn | None = None
    pre_skip: int | None = None
    priority: int = 0
    category: str | None = None
    vars: tuple[NodeVar, ...] = ()


@frozen
class Dag:
    """A parsed DAG: its nodes in file order (splices' where their SPLICE line
    is), the edges ``(parent, child)`` without duplicates in the order first
    met, the FINAL node's name, the MAXJOBS throttles by category, the
    directives ecloud does not act on, and the splices by full name (each with
    the file it came from)."""

    path: Path
    nodes: dict[str, Node]
    edges: tuple[tuple[str, str], ...]
    final: str | None = None
    maxjobs: dict[str, int] = field(factory=dict)
    ignored: tuple[Ignored, ...] = ()
    splices: dict[str, Path] = field(factory=dict)

    @property
    def rejected(self) -> Ignored | None:
        """The first REJECT line, if any: DAGMan refuses to run such a file
        (it marks the incomplete rescue DAG written after a parse failure)."""
        return next((i for i in self.ignored if i.keyword == "REJECT"), None)


def utf8_text(data: bytes, path: Path) -> str:
    """A file's bytes as text: UTF-8 (a leading byte order mark dropped), or
    :class:`~ecloud.errors.ValidationError` naming the line of the first byte
    that is not - such a byte could not be stored in the log, and a file
    half-read is worse than one refused."""
    from ecloud.errors import ValidationError

    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValidationError([f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); "
                               "save the file as UTF-8"], source=str(path)) from None


def expand_script_macros(text: str, values: Mapping[str, object]) -> str:
    """Replace DAGMan's script macros in a SCRIPT command line, as DAGMan does.

    Only the documented macros (:data:`SCRIPT_MACROS`: ``$JOB``, ``$RETRY``,
    ``$MAX_RETRIES``, ``$DAG_STATUS``, ``$FAILED_COUNT``, ``$JOBID``,
    ``$RETURN``, ``$PRE_SCRIPT_RETURN``) and only as whole arguments, surrounded
    by white space or the ends of the line: ``stage-out $RETURN`` becomes
    ``stage-out -1`` but ``status=$RETURN`` stays as it is. ``values`` maps a
    macro name (``"RETURN"`` or ``"$RETURN"``) to its value; a macro missing
    from it, and any other ``$WORD``, is left untouched. White space is kept.
    """
    table = {k.lstrip("$"): str(v) for k, v in values.items()}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in SCRIPT_MACROS and name in table:
            return table[name]
        return match.group(0)

    return _SCRIPT_MACRO.sub(replace, text)
