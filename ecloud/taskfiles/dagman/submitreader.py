"""The reader of the submit language, line by line: continuations, ``@=``
multi-line values, ``if``/``elif``/``else``/``endif``, ``include :``,
``error :``/``warning :``, assignments and ``queue``, then the one queued job
built into a :class:`~ecloud.taskfiles.dagman.submitmodel.SubmitDescription`.

This module exists as the working part behind the entry points of
:mod:`~ecloud.taskfiles.dagman.submitfile`: :class:`SubmitReader` is the
upper layer over the macro table
(:mod:`~ecloud.taskfiles.dagman.submitmacros`), and hands single values to
their syntaxes (:mod:`~ecloud.taskfiles.dagman.submitvalues`). Every problem
is collected with its ``file:line:`` and raised at the end as one
:class:`~ecloud.errors.ValidationError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from ecloud.errors import ValidationError
from ecloud.taskfiles.dagman.dagmodel import utf8_text
from ecloud.taskfiles.dagman.submitmacros import Macro, MacroTable
from ecloud.taskfiles.dagman.submitmodel import (
    USED_COMMANDS,
    IgnoredCommand,
    MacroVar,
    SubmitDescription,
)
from ecloud.taskfiles.dagman.submitvalues import (
    getenv_patterns,
    read_arguments,
    read_environment,
    read_memory,
)

__all__ = ["SubmitReader"]

_LINE_COMMENT = "#"
_ASSIGN = re.compile(r"(\+?[A-Za-z_][A-Za-z0-9_.]*)\s*=(.*)\Z", re.DOTALL)
_MULTILINE = re.compile(r"(\+?[A-Za-z_][A-Za-z0-9_.]*)\s*@=\s*(\S+)\s*\Z")
_QUEUE = re.compile(r"queue(?:\s+(.*))?\Z", re.IGNORECASE | re.DOTALL)
_IF = re.compile(r"(if|elif)\s+(.*)\Z", re.IGNORECASE | re.DOTALL)
_ELSE = re.compile(r"(else|endif)\Z", re.IGNORECASE)
_INCLUDE = re.compile(r"@?include\b\s*([^:=]*):\s*(.*)\Z", re.IGNORECASE | re.DOTALL)
_MESSAGE = re.compile(r"(error|warning)\s*:\s*(.*)\Z", re.IGNORECASE | re.DOTALL)
_DEFINED = re.compile(r"defined\s+(\S+)\Z", re.IGNORECASE)
_INT = re.compile(r"[+-]?[0-9]+\Z")
_MAX_INCLUDE_DEPTH = 20


class _Frame:
    """One open ``if``: whether the enclosing text is live, whether a branch
    was taken already, whether the current branch is live, and whether ``else``
    was seen."""

    __slots__ = ("done", "live", "outer", "seen_else", "where")

    def __init__(self, outer: bool, live: bool, where: str) -> None:
        self.outer = outer
        self.live = outer and live
        self.done = self.live
        self.seen_else = False
        self.where = where


class SubmitReader(MacroTable):
    """One submit description read: :meth:`run` gives its job."""

    def __init__(self, source: str, cwd: Path, variables: Iterable[MacroVar | tuple[str, str]],
                 dagman_macros: Mapping[str, object] | None, environ: Mapping[str, str] | None,
                 default_append: bool, *, inline: bool, submit_file: Path | None) -> None:
        super().__init__(environ)
        self.source = source
        self.cwd = cwd
        self.inline = inline
        self.assigned: list[IgnoredCommand] = []   # every assignment line of the file
        self.after_queue: list[IgnoredCommand] = []
        self.warnings: list[IgnoredCommand] = []
        self.frames: list[_Frame] = []
        self.queued = False
        self.snapshot: dict[str, tuple[str, str]] | None = None
        self.include_stack: list[Path] = []
        automatic = {"ProcId": "0", "Process": "$(ProcId)", "Step": "0", "ItemIndex": "0",
                     "Row": "$(ItemIndex)", "Node": "", "Cluster": "$(ClusterId)",
                     "JobId": "$(ClusterId).$(ProcId)"}
        if submit_file is not None:
            automatic["SUBMIT_FILE"] = str(submit_file)
        for name, value in automatic.items():
            self.table[name.lower()] = Macro(value, "condor_submit's automatic macros")
        for name, value in (dagman_macros or {}).items():
            self.table[name.lower()] = Macro(str(value), "the DAGMan macros")
        self.appended: list[tuple[str, str]] = []
        for var in variables:
            if isinstance(var, tuple):
                name, value, placement = var[0], var[1], None
            else:
                name, value, placement = var.name, var.value, var.placement
            append = placement == "append" or (placement is None and default_append)
            if append:
                self.appended.append((name, value))
            else:
                self._set(name, value, "the node's VARS (PREPEND)")

    @property
    def live(self) -> bool:
        return not self.frames or self.frames[-1].live

    def run(self, text: str, file: Path, first_line: int) -> SubmitDescription:
        self.include_stack.append(file)
        self._lines(text, file, first_line)
        for frame in self.frames:
            self.problem(frame.where, "this if has no endif")
        if self.snapshot is None:
            if not self.inline:
                self.problem(self.source, "no queue statement: condor_submit would queue no job "
                                          "(end the file with queue)")
            self._take_snapshot()
        description = self._build()
        if self.problems:
            raise ValidationError(self.problems, source=self.source)
        return description

    # ------------------------------------------------------------------ lines

    def _lines(self, text: str, file: Path, first_line: int) -> None:
        lines = text.split("\n")
        count = len(lines)
        i = 0
        while i < count:
            number = first_line + i
            stripped = lines[i].strip()
            i += 1
            if not stripped or stripped.startswith(_LINE_COMMENT):
                continue
            while stripped.endswith("\\"):
                stripped = stripped[:-1]
                while i < count and lines[i].strip().startswith(_LINE_COMMENT):
                    i += 1
                if i >= count:
                    break
                stripped += lines[i].strip()
                i += 1
            where = f"{file}:{number}"
            multi = _MULTILINE.match(stripped)
            if multi:
                tag = "@" + multi.group(2)
                start = i
                while i < count and lines[i].strip() != tag:
                    i += 1
                if i >= count:
                    self.problem(where, f"the multi-line value of {multi.group(1)!r} has no "
                                        f"closing {tag} line")
                value = "\n".join(line.rstrip() for line in lines[start:i])
                i += 1
                if self.live:
                    self._assign(multi.group(1), value, where, number)
                continue
            self._statement(stripped, where, number, file)

    def _statement(self, line: str, where: str, number: int, file: Path) -> None:
        branch = _IF.match(line)
        if branch:
            self._branch(branch.group(1).lower(), branch.group(2), where)
            return
        closing = _ELSE.match(line)
        if closing:
            self._close(closing.group(1).lower(), where)
            return
        if not self.live:
            return
        assignment = _ASSIGN.match(line)
        queue = _QUEUE.match(line)
        if queue and not (assignment and assignment.group(1).lower() != "queue"):
            self._queue(queue.group(1) or "", where)
            return
        if assignment:
            self._assign(assignment.group(1), assignment.group(2).strip(), where, number)
            return
        include = _INCLUDE.match(line)
        if include:
            self._include(include.group(1), include.group(2), where, file)
            return
        message = _MESSAGE.match(line)
        if message:
            text = self._expand(message.group(2), (), where)
            if message.group(1).lower() == "error":
                self.problem(where, f"the submit file says: error : {text}")
            else:
                self.warnings.append(IgnoredCommand("warning", number, text, "a warning line"))
            return
        self.problem(where, f"cannot read {line!r}: expected key = value, queue, if/elif/else/"
                            "endif, include : file, error : or warning :")

    # ------------------------------------------------------------------ if / else

    def _branch(self, word: str, condition: str, where: str) -> None:
        if word == "if":
            outer = self.live
            value = self._condition(condition, where) if outer else False
            self.frames.append(_Frame(outer, value, where))
            return
        if not self.frames or self.frames[-1].seen_else:
            self.problem(where, "elif without an open if")
            return
        frame = self.frames[-1]
        if frame.outer and not frame.done:
            frame.live = self._condition(condition, where)
            frame.done = frame.live
        else:
            frame.live = False

    def _close(self, word: str, where: str) -> None:
        if not self.frames:
            self.problem(where, f"{word} without an open if")
            return
        frame = self.frames[-1]
        if word == "endif":
            self.frames.pop()
            return
        if frame.seen_else:
            self.problem(where, "a second else for one if")
        frame.seen_else = True
        frame.live = frame.outer and not frame.done
        frame.done = True

    def _condition(self, text: str, where: str) -> bool:
        condition = text.strip()
        negate = condition.startswith("!")
        if negate:
            condition = condition[1:].strip()
        defined = _DEFINED.match(condition)
        if defined:
            result = defined.group(1).lower() in self.table
        elif condition.lower().startswith("version"):
            self.problem(where, "if version ... is not supported (ecloud is not an HTCondor "
                                "version)")
            return False
        else:
            value = self._expand(condition, (), where).strip().lower()
            if value in ("true", "yes", "1"):
                result = True
            elif value in ("false", "no", "0", ""):
                result = False
            else:
                self.problem(where, f"if {text.strip()}: {value!r} is not a simple boolean "
                                    "(true, yes, 1, false, no, 0) nor 'defined name'")
                return False
        return result != negate

    # ------------------------------------------------------------------ commands

    def _assign(self, key: str, value: str, where: str, number: int) -> None:
        name = "MY." + key[1:] if key.startswith("+") else key
        entry = IgnoredCommand(key, number, value)
        if self.queued:
            self.after_queue.append(IgnoredCommand(key, number, value,
                                                   "after queue: it applies to no job"))
            return
        self.assigned.append(entry)
        self._set(name, value, where)

    def _queue(self, arguments: str, where: str) -> None:
        if self.queued:
            self.problem(where, "a second queue statement: ecloud runs one job per node")
            return
        count = self._expand(arguments, (), where).strip()
        if count and not (_INT.match(count) and int(count) == 1):
            self.problem(where, f"queue {count}: ecloud runs one job per node, so only "
                                "'queue' or 'queue 1' is supported")
        self._take_snapshot()
        self.queued = True

    def _include(self, options: str, target: str, where: str, file: Path) -> None:
        words = options.lower().split()
        name = self._expand(target, (), where).strip()
        if "command" in words or "into" in words or name.endswith("|"):
            self.problem(where, "include of a command's output is not supported")
            return
        if not name:
            self.problem(where, "include : needs a file name")
            return
        path = Path(os.path.normpath(os.path.join(self.cwd, name)))
        if path in self.include_stack or len(self.include_stack) >= _MAX_INCLUDE_DEPTH:
            self.problem(where, f"include of {path} nests too deep (does it include itself?)")
            return
        try:
            text = utf8_text(path.read_bytes(), path)
        except ValidationError as exc:
            self.problems += exc.problems
            return
        except OSError as exc:
            if "ifexist" in words and not path.exists():
                return
            self.problem(where, f"cannot read the included file {path}: {exc.strerror or exc}")
            return
        self.include_stack.append(path)
        self._lines(text, path, 1)
        self.include_stack.pop()

    # ------------------------------------------------------------------ the job

    def _take_snapshot(self) -> None:
        """The values the queued job gets: APPEND VARS first set, then each
        command ecloud uses expanded."""
        for name, value in self.appended:
            self._set(name, value, "the node's VARS (APPEND)")
        self.snapshot = {}
        for key in sorted(USED_COMMANDS):
            macro = self.table.get(key)
            if macro is not None:
                self.used.add(key)
                self.snapshot[key] = (self._expand(macro.value, (key,), macro.where).strip(),
                                      macro.where)

    def _build(self) -> SubmitDescription:
        values = self.snapshot or {}

        def get(key: str) -> tuple[str, str] | None:
            return values.get(key)

        executable = get("executable")
        if executable is None or not executable[0]:
            self.problem(self.source, "no executable: the submit description must name the "
                                      "program to run")
        arguments: list[str] = []
        if (found := get("arguments")) is not None:
            parsed, error = read_arguments(found[0])
            if error is not None:
                self.problem(found[1], f"arguments: {error}")
            arguments = parsed
        environment: list[tuple[str, str]] = []
        if (found := get("environment")) is not None:
            pairs, error = read_environment(found[0])
            if error is not None:
                self.problem(found[1], f"environment: {error}")
            environment = pairs
        getenv: tuple[str, ...] = ()
        if (found := get("getenv")) is not None:
            getenv = getenv_patterns(found[0])
        initialdir = self.cwd
        if (found := get("initialdir")) is not None and found[0]:
            initialdir = _join(self.cwd, found[0])
        streams: dict[str, Path | None] = {}
        for key in ("input", "output", "error"):
            found = get(key)
            streams[key] = _join(initialdir, found[0]) if found is not None and found[0] else None
        cpus = None
        if (found := get("request_cpus")) is not None:
            if _INT.match(found[0]) and int(found[0]) >= 1:
                cpus = int(found[0])
            else:
                self.problem(found[1], f"request_cpus: {found[0]!r} is not a whole number >= 1 "
                                       "(ecloud does not evaluate expressions)")
        memory = None
        if (found := get("request_memory")) is not None:
            memory, error = read_memory(found[0])
            if error is not None:
                self.problem(found[1], f"request_memory: {error}")
        ignored = [entry for entry in self.assigned
                   if _key_name(entry.key) not in self.used]
        ignored += self.after_queue
        ignored += self.warnings
        ignored.sort(key=lambda e: e.line)
        return SubmitDescription(
            source=self.source, cwd=self.cwd,
            executable=executable[0] if executable is not None else "",
            arguments=tuple(arguments), environment=tuple(environment), getenv=getenv,
            initialdir=initialdir, input=streams["input"], output=streams["output"],
            error=streams["error"], request_cpus=cpus, request_memory_mib=memory,
            ignored=tuple(ignored), undefined_macros=tuple(self.undefined),
        )


def _join(base: Path, name: str) -> Path:
    return Path(os.path.normpath(os.path.join(base, name)))


def _key_name(key: str) -> str:
    return ("MY." + key[1:] if key.startswith("+") else key).lower()


