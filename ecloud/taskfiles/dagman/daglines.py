"""The lines of a DAG file, as the parser of :mod:`~ecloud.taskfiles.dagman.dagfile`
meets them: one :class:`Stmt` per command line, INCLUDEs replaced by the lines
of their files and inline ``{ }`` submit blocks attached to the line that opens
them.

This module exists to keep the text apart from the meaning: the first layer of
the parser (:class:`LineReader`) reads files, splits lines into words, follows
INCLUDEs (textually, with a guard against an INCLUDE of itself) and records
problems with their ``file:line:``; the layers above it
(:mod:`~ecloud.taskfiles.dagman.dagnodes`,
:mod:`~ecloud.taskfiles.dagman.dagcommands`) only interpret statements.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ecloud.errors import ValidationError
from ecloud.taskfiles.dagman.dagmodel import InlineSubmit, utf8_text

__all__ = ["LineReader", "Stmt"]

_INLINE_KEYWORDS = frozenset({"JOB", "NODE", "FINAL", "SUBMIT-DESCRIPTION"})
_TOKEN = re.compile(r"\S+")


class Stmt:
    """One command line of a DAG file, INCLUDEs already replaced by their lines."""

    __slots__ = ("body", "file", "keyword", "line", "text", "tokens")

    def __init__(self, keyword: str, tokens: list[str], text: str, file: Path, line: int,
                 body: InlineSubmit | None) -> None:
        self.keyword = keyword
        self.tokens = tokens
        self.text = text
        self.file = file
        self.line = line
        self.body = body

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def rest_after(self, count: int) -> str:
        """The line's text after its first ``count`` words, stripped."""
        end = 0
        for n, match in enumerate(_TOKEN.finditer(self.text)):
            if n == count:
                break
            end = match.end()
        return self.text[end:].strip()


class LineReader:
    """The parser's first layer: files read, lines made statements, problems
    listed, paths joined (and remembered)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.paths: dict[tuple[Path, str], Path] = {}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def join(self, base: Path, name: str) -> Path:
        """:func:`_join`, remembered: thousands of nodes share a few paths."""
        key = (base, name)
        path = self.paths.get(key)
        if path is None:
            path = self.paths[key] = _join(base, name)
        return path

    # ------------------------------------------------------------------ reading

    def _load(self, path: Path, where: str | None, what: str) -> str | None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if where is None:
                self.problems.append(f"{path}: cannot read the {what} file: {reason}")
            else:
                self.problem(where, f"cannot read the {what} file {path}: {reason}")
            return None
        try:
            return utf8_text(data, path)
        except ValidationError as exc:
            self.problems += exc.problems
            return None

    def _read(self, path: Path, text: str, base: Path, stack: tuple[Path, ...],
              out: list[Stmt]) -> None:
        """Append the command lines of ``text`` (the file ``path``) to ``out``,
        INCLUDEs replaced by their files' lines and inline ``{ }`` blocks
        attached to the line that opens them."""
        lines = text.split("\n")
        count = len(lines)
        i = 0
        while i < count:
            number = i + 1
            stripped = lines[i].strip()
            i += 1
            if not stripped or stripped[0] == "#":
                continue
            tokens = stripped.split()
            keyword = tokens[0].upper()
            if keyword == "INCLUDE":
                self._include(path, number, tokens, base, stack, out)
                continue
            body = None
            if keyword in _INLINE_KEYWORDS and len(tokens) > 2 and tokens[2].startswith("{"):
                where = f"{path}:{number}"
                if tokens[2] != "{":
                    self.problem(where, "an inline submit description starts with { alone; "
                                        "its commands go on the lines below")
                start = i
                while i < count and not lines[i].lstrip().startswith("}"):
                    i += 1
                if i >= count:
                    self.problem(where, f"the inline submit description of {tokens[1]!r} "
                                        "has no closing } line")
                body = InlineSubmit(tokens[1], "\n".join(lines[start:i]), path, start + 1)
                i += 1
            out.append(Stmt(keyword, tokens, stripped, path, number, body))

    def _include(self, path: Path, number: int, tokens: list[str], base: Path,
                 stack: tuple[Path, ...], out: list[Stmt]) -> None:
        where = f"{path}:{number}"
        if len(tokens) != 2:
            self.problem(where, "INCLUDE takes one file name: INCLUDE FileName"
                         if len(tokens) < 2 else f"extra word {tokens[2]!r} after INCLUDE FileName")
            return
        target = self.join(base, tokens[1])
        if target in stack:
            self.problem(where, f"INCLUDE of {target} includes itself (through "
                                f"{' -> '.join(str(p) for p in (*stack, target))})")
            return
        text = self._load(target, where, "INCLUDE")
        if text is not None:
            self._read(target, text, base, (*stack, target), out)


def _join(base: Path, name: str) -> Path:
    """``name`` taken relative to the absolute folder ``base`` (an absolute
    ``name`` stays as it is), with ``.`` and ``..`` folded away."""
    return Path(os.path.normpath(os.path.join(base, name)))
