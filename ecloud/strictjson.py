"""JSON as ecloud reads it from people: UTF-8 only, and no key twice.

Most JSON parsers, Python's and orjson among them, let the last of two
equal keys in an object win (``{"id": "a", "id": "b"}`` is task ``b``):
an edit that duplicated a key would silently change what runs. Here a
duplicate key is an error that names the key and its line, and so is text
that is not UTF-8 (with the line of the first bad byte), a lone surrogate
escape (``"\\ud800"``, which no log can store), and any number beyond the
64 bits a log can hold.

:func:`loads` parses twice - orjson for the checks it does fast (UTF-8,
surrogates, the syntax, with line and column), then the standard library's
parser with a hook that sees each object's pairs before they become a dict -
which for a file of a million tasks costs about a second more. Only on a
duplicate does it look for the line, with a small scanner of its own.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from ecloud import limits


class StrictJSONError(ValueError):
    """Text that strict JSON refuses; the message says what and where."""


def loads(text: bytes | str) -> Any:
    """Parse ``text``, refusing duplicate keys and non-UTF-8 text."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    _check_encoding(text)
    try:
        parsed = orjson.loads(text)  # syntax, surrogates, big integers: with line and column
    except orjson.JSONDecodeError as exc:
        raise StrictJSONError(f"JSON syntax error at line {exc.lineno}, column {exc.colno}: "
                              f"{exc.msg}") from None
    depth = _depth(parsed)
    if depth > limits.JSON_NESTING:  # before Python's own parser recurses that deep
        raise StrictJSONError(f"lists and objects nested more than {limits.JSON_NESTING} "
                              "levels deep (a task needs 4)")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as dup:
        line = duplicate_line(text, dup.key)
        where = f" at line {line}" if line else ""
        raise StrictJSONError(f"duplicate key {json.dumps(dup.key)}{where}: "
                              "each key may appear once in an object") from None


def _depth(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) \
            else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > limits.JSON_NESTING:
            return level  # enough to refuse
        stack.extend((child, level + 1) for child in children)
    return deepest


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


def _check_encoding(data: bytes) -> None:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise StrictJSONError("the file is UTF-16; save it as UTF-8")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise StrictJSONError(f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, "
                              f"column {column} (task files are UTF-8)") from None


def duplicate_line(data: bytes, key: str) -> int | None:
    """The line of the first repeat of ``key`` within one object, by a
    scanner that tracks the keys of every open object (None if none)."""
    stack: list[set[str] | None] = []  # per open container: its keys (None: a list)
    expect_key = False
    line = 1
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x0A:
            line += 1
        elif c == 0x7B:  # {
            stack.append(set())
            expect_key = True
        elif c == 0x5B:  # [
            stack.append(None)
            expect_key = False
        elif c in (0x7D, 0x5D):  # } ]
            stack.pop()
            expect_key = False
        elif c == 0x2C:  # ,
            expect_key = bool(stack) and stack[-1] is not None
        elif c == 0x22:  # a string
            end = _string_end(data, i)
            if expect_key and stack and stack[-1] is not None:
                name = json.loads(data[i:end + 1])
                if name in stack[-1] and name == key:
                    return line
                stack[-1].add(name)
                expect_key = False
            line += data.count(b"\n", i, end)
            i = end
        i += 1
    return None


def _string_end(data: bytes, start: int) -> int:
    """The index of the quote that closes the string opened at ``start``."""
    i = start + 1
    while True:
        i = data.index(b'"', i)
        backslashes = 0
        j = i - 1
        while data[j] == 0x5C:
            backslashes += 1
            j -= 1
        if backslashes % 2 == 0:
            return i
        i += 1
