"""The syntaxes of single submit command values, as ``condor_submit`` reads
them: ``arguments`` and ``environment`` (each in its old and its new,
double-quoted, syntax), ``request_memory`` quantities and ``getenv`` match
lists.

This module exists because these are value grammars, not the submit
language: they take one expanded value and give back its parts, with no
macro, line or file in sight, so the reader
(:mod:`~ecloud.taskfiles.dagman.submitreader`), the model
(:mod:`~ecloud.taskfiles.dagman.submitmodel`) and any caller holding a
single value (the public ``parse_*`` functions here) share them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ecloud.errors import ValidationError

__all__ = [
    "getenv_patterns",
    "getenv_select",
    "parse_arguments",
    "parse_environment",
    "parse_memory_mib",
    "read_arguments",
    "read_environment",
    "read_memory",
]

_MEMORY = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGT]B?)?\s*\Z", re.IGNORECASE)
_MEMORY_FACTOR = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_SPACE = " \t\r\n"


def parse_arguments(value: str) -> list[str]:
    """Split an ``arguments`` value as condor_submit does.

    New syntax (the whole value in double quotes): white space separates
    arguments, single quotes group white space into one (``''`` inside them
    is a single quote), ``""`` is a double quote, a backslash is ordinary.
    Old syntax (no surrounding double quotes): white space separates
    arguments, ``\\"`` is a double quote, nothing else is special.
    """
    args, error = read_arguments(value)
    if error is not None:
        raise ValidationError([f"arguments: {error}"])
    return args


def parse_environment(value: str) -> dict[str, str]:
    """Read an ``environment`` value as condor_submit does.

    New syntax (in double quotes): ``name=value`` entries separated by white
    space, single quotes to hold white space (``''`` for a single quote),
    ``""`` for a double quote. Old syntax: entries separated by ``;``, every
    other character literal (spaces too; quotes mean nothing).
    """
    pairs, error = read_environment(value)
    if error is not None:
        raise ValidationError([f"environment: {error}"])
    return dict(pairs)


def parse_memory_mib(value: str) -> int:
    """A ``request_memory`` quantity in MiB: a number with an optional unit,
    ``K``/``KB`` (KiB), ``M``/``MB`` (MiB, the default), ``G``/``GB`` (GiB) or
    ``T``/``TB`` (TiB), in any case, rounded up to a whole MiB."""
    mib, error = read_memory(value)
    if error is not None or mib is None:
        raise ValidationError([f"request_memory: {error}"])
    return mib


def _split_quoted(inner: str) -> tuple[list[str], str | None]:
    """Words of condor's "new syntax" (the text inside the outer double
    quotes): white space separates, single quotes group (``''`` inside is a
    single quote), ``""`` is a double quote."""
    words: list[str] = []
    current: list[str] = []
    started = False
    quoted = False
    i, size = 0, len(inner)
    while i < size:
        char = inner[i]
        if char == '"':
            if i + 1 < size and inner[i + 1] == '"':
                current.append('"')
                started = True
                i += 2
                continue
            return words, (f"a lone double quote at character {i + 2}: inside the double-quoted "
                           'syntax write "" for one')
        if quoted:
            if char == "'":
                if i + 1 < size and inner[i + 1] == "'":
                    current.append("'")
                    i += 2
                    continue
                quoted = False
            else:
                current.append(char)
            i += 1
            continue
        if char == "'":
            quoted = True
            started = True
        elif char in _SPACE:
            if started:
                words.append("".join(current))
                current = []
                started = False
        else:
            current.append(char)
            started = True
        i += 1
    if quoted:
        return words, "a single quote is not closed"
    if started:
        words.append("".join(current))
    return words, None


def read_arguments(value: str) -> tuple[list[str], str | None]:
    """:func:`parse_arguments` as a value and what is wrong with it (or None)."""
    value = value.strip()
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            return [], "the double-quoted (new) syntax must end with a double quote"
        return _split_quoted(value[1:-1])
    return [word.replace('\\"', '"') for word in value.split()], None


def read_environment(value: str) -> tuple[list[tuple[str, str]], str | None]:
    """:func:`parse_environment` as pairs, in order, and what is wrong (or None)."""
    value = value.strip()
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            return [], "the double-quoted (new) syntax must end with a double quote"
        entries, error = _split_quoted(value[1:-1])
        if error is not None:
            return [], error
    else:
        entries = [e for e in value.split(";") if e]
    pairs: list[tuple[str, str]] = []
    for entry in entries:
        name, equals, setting = entry.partition("=")
        if not equals or not name:
            return pairs, f"{entry!r} is not name=value"
        pairs.append((name, setting))
    return pairs, None


def read_memory(value: str) -> tuple[int | None, str | None]:
    """:func:`parse_memory_mib` as a value and what is wrong with it (or None)."""
    match = _MEMORY.match(value)
    if not match:
        return None, (f"{value!r} is not a quantity like 1024, 512M, 2GB or 4 G (ecloud does "
                      "not evaluate expressions)")
    unit = (match.group(2) or "M")[0].upper()
    mib = math.ceil(float(match.group(1)) * _MEMORY_FACTOR[unit])
    if mib < 1:
        return None, f"{value!r} asks for no memory"
    return mib, None


def getenv_patterns(value: str) -> tuple[str, ...]:
    """A ``getenv`` value as a match list: ``("*",)`` for true, ``()`` for false."""
    lowered = value.strip().lower()
    if lowered == "true":
        return ("*",)
    if lowered in ("false", ""):
        return ()
    return tuple(p for p in re.split(r"[,;\s]+", value.strip()) if p)


def getenv_select(patterns: tuple[str, ...], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a ``getenv`` match list imports: names matching a member
    (any case, ``*`` a wildcard) and no ``!`` member; only ``!`` members
    means everything else."""
    accept = [_wildcard(p) for p in patterns if not p.startswith("!")] or [_wildcard("*")]
    reject = [_wildcard(p[1:]) for p in patterns if p.startswith("!")]
    return {name: value for name, value in environ.items()
            if any(a.fullmatch(name) for a in accept) and not any(r.fullmatch(name) for r in reject)}


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE)

