"""The macros of a task's scripts, as DAGMan defines them.

The boss sends the values it knows with the dispatch (``JOB``, ``RETRY``,
``MAX_RETRIES``, and for a final task ``DAG_STATUS`` and ``FAILED_COUNT``);
the node wrapper (:mod:`ecloud_worker.node`) adds the two only the worker
can know, for the post script: ``RETURN`` (the command's exit status) and
``PRE_SCRIPT_RETURN`` (the pre script's).

A script given as an argv has a macro replaced only where it is a whole
argument, as DAGMan does (docs/automated-workflows/dagman-scripts.rst of
HTCondor: ``SCRIPT POST A stage-out job_status=$RETURN`` passes
``job_status=$RETURN`` as written, ``stage-out job_status $RETURN`` passes
``-1``): an argument that is exactly ``$NAME``, NAME one of DAGMan's script
macros (:data:`SCRIPT_MACROS`) with a value for this script, becomes that
value. Everything else is left as written: a macro inside an argument
(``x$RETRY``, ``--retry=$RETRY``), ``${RETRY}``, ``$RETRYX``, a macro the
script has no value for (``$RETURN`` in a pre script: DAGMan leaves it too),
and any other ``$word`` (``$HOME``, ``$1``, ``$$``). A script given as a
string runs under ``/bin/sh -c`` with the macros in its environment instead,
so ``post.sh $RETURN`` means there what it means in a DAG file (and the
shell's own rules apply: there ``--retry=$RETRY`` is the shell's to expand).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ecloud.wire import SCRIPT_MACROS

#: ``$RETURN`` of a command that did not start (its program or its stdin
#: missing): DAGMan's value for "a job whose batch system submission fails"
NOT_STARTED_RETURN = -1001
#: ``$PRE_SCRIPT_RETURN`` when the task has no pre script (DAGMan's value)
NO_PRE_SCRIPT = -1

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def clean(macros: Mapping[str, str]) -> dict[str, str]:
    """The boss's macros as names and string values: a name given with its
    ``$`` loses it; one that is no name (it could be no environment
    variable either) is dropped."""
    out = {}
    for name, value in macros.items():
        name = name[1:] if name.startswith("$") else name
        if _NAME.fullmatch(name):
            out[name] = str(value)
    return out


def status_macro(code: int | None, signal: int | None) -> str:
    """``$RETURN`` for a command's end: its exit status; minus the signal
    that killed it (DAGMan: SIGKILL is -9); -1001 when it never started."""
    if signal is not None:
        return str(-signal)
    return str(NOT_STARTED_RETURN if code is None else code)


def expand(arg: str, values: Mapping[str, str]) -> str:
    """``arg`` as written, unless it is, whole, ``$NAME`` for a name of
    :data:`SCRIPT_MACROS` that ``values`` has: then that value."""
    if arg[:1] != "$" or arg[1:] not in SCRIPT_MACROS:
        return arg
    return values.get(arg[1:], arg)


def argv_of(command: str | list[str] | tuple[str, ...], values: Mapping[str, str]) -> list[str]:
    """The argv a script runs as: a string under ``/bin/sh -c`` as written
    (the macros reach it through the environment), a list with each argument
    that is a whole macro replaced (:func:`expand`)."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return [expand(arg, values) for arg in command]
