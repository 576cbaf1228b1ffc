"""The macros of a submit description: the table of definitions and their
expansion, as the ``condor_submit`` man page and the configuration chapter of
the HTCondor manual describe them.

``$(name)`` and ``$(name:default)`` are expanded when used, from the table as
it is then; a macro naming itself in its own definition takes the value it
had (:func:`expand_self`, applied when it is defined). ``$(DOLLAR)`` is
``$``; ``$ENV(...)``, ``$RANDOM_CHOICE(...)`` and ``$RANDOM_INTEGER(...)``
work; other function macros and ``$$(attr)`` are problems. An undefined macro
without a default expands to nothing and is remembered.

This module exists so the expansion rules - the subtle part of the language -
can be read on their own: :class:`MacroTable` is the lower layer of the
submit reader (:mod:`~ecloud.taskfiles.dagman.submitreader`), which adds the
lines, the ``if`` blocks and the job.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

__all__ = ["Macro", "MacroTable", "expand_self"]

_FUNCTION = re.compile(
    r"\$(ENV|RANDOM_CHOICE|RANDOM_INTEGER|CHOICE|SUBSTR|INT|REAL|STRING|EVAL|BASENAME|DIRNAME"
    r"|F[fpduwnxbqa]*)\(")
_INT = re.compile(r"[+-]?[0-9]+\Z")


class Macro:
    """One definition: its value, unexpanded, and where it was made."""

    __slots__ = ("value", "where")

    def __init__(self, value: str, where: str) -> None:
        self.value = value
        self.where = where


class MacroTable:
    """The definitions made so far (by lower-case name), what was expanded
    (``used``), what was missing (``undefined``), and the problems met."""

    too_big = False  # the size problem is said once

    def __init__(self, environ: Mapping[str, str] | None) -> None:
        self.environ = environ or {}
        self.problems: list[str] = []
        self.table: dict[str, Macro] = {}
        self.used: set[str] = set()
        self.undefined: dict[str, None] = {}
        #: macro -> what it expands to, while the table stays as it is
        self.expanded: dict[str, str] = {}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def _set(self, name: str, value: str, where: str) -> None:
        lower = name.lower()
        previous = self.table.get(lower)
        value = expand_self(value, lower, previous.value if previous is not None else None)
        self.table[lower] = Macro(value, where)
        self.expanded.clear()  # what a macro expands to may have changed

    def _expand(self, text: str, stack: tuple[str, ...], where: str) -> str:
        """``text`` with its macros expanded (``stack``: the macros being
        expanded around it, to catch a macro defined through itself). A
        value that grows past :data:`MOST_EXPANDED` (macros that nest
        doubling each other grow exponentially) is a problem, found early."""
        if "$" not in text:
            return text
        if self.too_big:
            return ""
        out: list[str] = []
        grown = counted = 0
        i = 0
        size = len(text)
        while i < size:
            grown += sum(len(piece) for piece in out[counted:])
            counted = len(out)
            if grown > MOST_EXPANDED:
                if not self.too_big:
                    self.too_big = True
                    self.problem(where, f"macros expand to more than {MOST_EXPANDED:,} "
                                        "characters")
                return ""
            j = text.find("$", i)
            if j < 0:
                out.append(text[i:])
                break
            out.append(text[i:j])
            if text.startswith("$$(", j):
                end = _close_paren(text, j + 2)
                inner = text[j + 3:end] if end >= 0 else ""
                if inner.upper() == "DOLLARDOLLAR":
                    out.append("$$")
                else:
                    self.problem(where, f"{text[j:end + 1] if end >= 0 else text[j:]} is a "
                                        "machine attribute HTCondor substitutes when it matches "
                                        "the job to a machine; ecloud has no such step")
                i = end + 1 if end >= 0 else size
                continue
            if text.startswith("$(", j):
                end = _close_paren(text, j + 1)
                if end < 0:
                    self.problem(where, f"unclosed macro reference {text[j:]!r}")
                    break
                out.append(self._macro(text[j + 2:end], stack, where))
                i = end + 1
                continue
            function = _FUNCTION.match(text, j)
            if function:
                end = _close_paren(text, function.end() - 1)
                if end < 0:
                    self.problem(where, f"unclosed function macro {text[j:]!r}")
                    break
                out.append(self._function(function.group(1), text[function.end():end], stack,
                                          where))
                i = end + 1
                continue
            out.append("$")
            i = j + 1
        return "".join(out)

    def _macro(self, inner: str, stack: tuple[str, ...], where: str) -> str:
        name, colon, default = inner.partition(":")
        name = name.strip()
        lower = name.lower()
        if lower == "dollar":
            return "$"
        macro = self.table.get(lower)
        if macro is not None:
            if lower in stack:
                chain = " -> ".join((*stack[stack.index(lower):], lower))
                self.problem(where, f"macro {name} is defined through itself ({chain})")
                return ""
            self.used.add(lower)
            if lower not in self.expanded:  # once per definition: a macro used twice in
                # another, nested deep, would otherwise be expanded 2**depth times
                self.expanded[lower] = self._expand(macro.value, (*stack, lower), macro.where)
            return self.expanded[lower]
        if colon:
            return self._expand(default, stack, where)
        self.undefined[name] = None
        return ""

    def _function(self, name: str, inner: str, stack: tuple[str, ...], where: str) -> str:
        argument = self._expand(inner, stack, where)
        if name == "ENV":
            variable, colon, default = argument.partition(":")
            value = self.environ.get(variable.strip())
            if value is not None:
                return value
            if colon:
                return default
            self.undefined[f"ENV({variable.strip()})"] = None
            return ""
        if name == "RANDOM_CHOICE":
            choices = [c.strip() for c in argument.split(",")]
            return random.choice(choices)
        if name == "RANDOM_INTEGER":
            parts = [p.strip() for p in argument.split(",")]
            if len(parts) in (2, 3) and all(_INT.match(p) for p in parts):
                low, high = int(parts[0]), int(parts[1])
                step = int(parts[2]) if len(parts) == 3 else 1
                if low <= high and step > 0:
                    return str(random.randrange(low, high + 1, step))
            self.problem(where, f"$RANDOM_INTEGER({argument}): expected min, max[, step] "
                                "with min <= max and step > 0")
            return ""
        self.problem(where, f"the function macro ${name}() is not supported by ecloud")
        return ""


#: characters a submit value may expand to (a command's limit is 128 KiB)
MOST_EXPANDED = 1 << 20


def _close_paren(text: str, open_index: int) -> int:
    """The index of the ``)`` matching the ``(`` at ``open_index``, or -1."""
    depth = 0
    for i in range(open_index, len(text)):
        char = text[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def expand_self(value: str, lower: str, previous: str | None) -> str:
    """Replace ``$(name)``/``$(name:default)`` naming the macro being defined by
    its value so far (the manual: "invocations of a macro in its own definition
    are immediately expanded"); every other macro stays for later."""
    if "$(" not in value:
        return value
    out: list[str] = []
    i = 0
    while True:
        j = value.find("$(", i)
        if j < 0:
            out.append(value[i:])
            break
        end = _close_paren(value, j + 1)
        if end < 0:
            out.append(value[i:])
            break
        name, colon, default = value[j + 2:end].partition(":")
        out.append(value[i:j])
        if name.strip().lower() == lower and not (j > 0 and value[j - 1] == "$"):
            out.append(previous if previous is not None else (default if colon else ""))
        else:
            out.append(value[j:end + 1])
        i = end + 1
    return "".join(out)
