"""Task files around every limit: accepted and runnable, or refused at push
with exit status 2 - never accepted and stranded (ecloud/limits.py).

A hypothesis strategy (:func:`task_files`) writes task files whose fields are
drawn just under, at and just over their limits: command bytes in 1-4 byte
UTF-8, argv length and item size, env count / name charset and length /
value size, ids of allowed and refused charsets and lengths with
``/``-segments, depends_on/inputs/outputs counts, paths with ``..``, ``.``,
empty parts, absolute, NUL or too long, numbers at and beyond their ranges,
wrong types, floats for integers, booleans, a whole task near 1 MiB, lists
and objects nested (up to 5,000 deep) where a string belongs, duplicate keys,
bytes that are not UTF-8, UTF-16, a BOM, files of the wrong shape. A third
of the files put task 0 at exactly limit - 1, limit or limit + 1 of up to
three limits (:data:`EDGES`). Each file is pushed in-process by ``ecloud
push`` itself (click's runner on :data:`ecloud.cli.main.cli`) into a copy of
a small log, and:

* the exit status is 0 or 2, never a traceback;
* on 2 the message names the file, and each task at fault (``tasks[i]``, its
  id when well-formed) with every field at fault (or the JSON's flaw); the
  log gained exactly one ``input.rejected`` event naming the file, and its
  folded state is otherwise unchanged;
* on 0 every task of the file is in the log as written, its dispatch - built
  as the boss builds it (:func:`dispatch_effect`, :func:`dispatch_message`) -
  fits in a boss message a worker parses (``wire.parse_boss_payload``), its
  argv and environment - built as ``worker/runner.py`` builds them - fit the
  kernel's limits and really ``execve`` (``/bin/true`` with the very same
  strings), and its working directory can be made.

Each draw knows whether it is within the documented limits ("ok"), beyond
one ("bad") or on the 1 MiB whole-task boundary ("either"): an "ok" file must
be accepted, a "bad" one refused. :func:`test_each_limit_one_within_at_and_one_beyond`
runs every edge of the table, each time; :func:`test_tasks_accepted_at_the_edges_really_run`
runs harmless tasks at the edges with ``ecloud run FILE --local 2``.

It found six inputs accepted at push that could then never run (the
``BUG_*`` texts; fixed in 41b8aac): each has a minimal reproducer here, a
plain regression test now (each failed at 76182e0, before the fix, for the
reason its text gives; each passes at 41b8aac).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis import note as _note
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from ecloud import limits, wire
from ecloud.cli.main import cli
from ecloud.effects.messaging.outbox import dispatch_message
from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store
from ecloud.projections.snapshot import canonical
from ecloud.projections.tasks import dispatch_effect
from ecloud.taskfiles.taskgraph import ID_RE
from ecloud_worker.reaper import TOKEN_VAR
from ecloud_worker.runner import attempt_path

ROOT = Path(__file__).resolve().parent.parent

#: Linux: one argv or environment string, its terminating NUL included
#: (MAX_ARG_STRLEN, 32 pages); all of them, with their pointers, fit ARG_MAX
MAX_ARG_STRLEN = 32 * 4096
ARG_MAX = os.sysconf("SC_ARG_MAX")
NAME_MAX = 255
#: what an operator's ``ecloud datastore set`` might record: the dispatch carries it
DATASTORE = "ssh://ecloud@datastore.example.org:2222/srv/ecloud/datastore"

#: the six bugs this found (fixed in 41b8aac); the reproducers below keep them fixed
BUG_EXEC = ("a command string, argv item or env value of exactly the documented 128 KiB was "
            "accepted at push, and execve refused it (E2BIG): the kernel's MAX_ARG_STRLEN "
            "(131,072) counts the terminating NUL, and an env string is NAME=VALUE")
BUG_WORKDIR = ("an id of up to 200 characters with many '/' was accepted, and the worker's "
               "working directory escaped each '/' as '%2F' (worker/runner.py attempt_path), "
               "making a name longer than NAME_MAX (255): 'cannot prepare the work directory: "
               "File name too long'")
BUG_RECURSION = ("lists/objects nested ~950-1023 deep passed orjson's depth limit (1024) and "
                 "exceeded Python's recursion limit in strictjson's second parse (json.loads): "
                 "`ecloud push` died with a RecursionError traceback, exit 1")
BUG_SOURCES = ("a task taking inputs `from` ~1,000 dependencies with long `results` folders "
               "was accepted (the task itself is small), and its dispatch - carrying every "
               "upstream results folder (`sources`) - was over the 4 MiB a worker accepts: "
               "never started")
BUG_REPORT = ("a task with 100 datastore inputs at 2,900-byte paths ran, and the worker's "
              "`finished` report, listing every staged file (303,791 bytes), was over the "
              "256 KiB the boss accepts: rejected at every resend, the task running for ever")
BUG_DATASTORE_PATH = ("`results` and an output of 2,500 bytes each (then within 4,096 each) "
                      "made a datastore path over PATH_MAX: the staging wrapper died with an "
                      "OSError traceback, the attempt failing 'exit code 1' - a task that could "
                      "never succeed was accepted")

OK, EITHER, BAD = 0, 1, 2
#: the order problems are found in: a file's JSON, its shape, its tasks, the log
JSON, SHAPE, TASK, PLAN = 0, 1, 2, 3
FILLER = "f."  # prefix of the tasks a file has only to be depended on


def event(text: str) -> None:
    """hypothesis's ``event`` and ``note``, and nothing outside a hypothesis test."""
    with contextlib.suppress(InvalidArgument):
        _event(text)


def note(text: str) -> None:
    with contextlib.suppress(InvalidArgument):
        _note(text)


class Raw(str):
    """JSON text written as it is (a lone surrogate stands for one raw
    byte: ``\\udcXX`` is written as the byte ``XX``)."""


class Pairs(list):
    """A JSON object as (key, value) pairs: a key may repeat."""


SELF = object()  # in depends_on: the task's own id


@dataclass
class Part:
    """One drawn field (or a flaw of the file): what it sets, whether it is
    within the limits, and what a refusal must name."""

    what: str  # shown by hypothesis
    verdict: int
    keys: tuple[str, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    stage: int = TASK
    #: a refusal names one of these (on the task's line, for a task's part)
    says: tuple[str, ...] = ()
    dup: tuple[str, Any] | None = None  # a key written twice
    alone: bool = False  # no other part on its task
    big: bool = False  # about a whole task's worth: one per file
    #: checked only when nothing else is wrong with the task (its whole size,
    #: its datastore paths): then named, else perhaps not
    last: bool = False
    fillers: int = 0  # tasks f.0.. the file needs
    depth: int = 0  # nesting written into the file


def finish(p: Part) -> Part:
    p.keys = tuple(p.values)
    return p


def part(what: str, verdict: int, says: tuple[str, ...] = (), stage: int = TASK, **values: Any
         ) -> Part:
    keys = tuple(values)
    return Part(what, verdict, keys, values, stage=stage, says=says or keys)


def judged(what: str, ok: bool, says: tuple[str, ...] = (), **values: Any) -> Part:
    return part(what, OK if ok else BAD, says, **values)


# ---------------------------------------------------------------- strings


WIDE = {1: "x", 2: "é", 3: "€", 4: "😀"}


def text_of(size: int, width: int) -> str:
    """Exactly ``size`` bytes of UTF-8: ``width``-byte characters, ASCII for the rest."""
    return WIDE[width] * (size // width) + "x" * (size % width)


def utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


widths = st.sampled_from([1, 2, 3, 4])


def near(limit: int, small: int = 64) -> st.SearchStrategy[int]:
    """Sizes just under, at and just over ``limit`` - or small ones."""
    edge = st.sampled_from([limit - 1, limit, limit + 1])
    return st.one_of(edge, edge, edge, st.integers(limit - 8, limit + 8), st.integers(1, small))


def nested(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


#: depths a task-level check refuses, around the recursion limit (1000: Python's
#: json, deeper in a command's stack), and beyond orjson's limit (1024)
SHALLOW = [1, 2, 3, 50, 500]
WINDOW = [950, 980, 1000, 1010, 1020, 1022]
DEEP = [1024, 1025, 5000]


@st.composite
def nesting(draw, field_name: str) -> Part:
    """A list or object nested ``depth`` deep where a string belongs: refused
    by the field's check, or as JSON too deep for a log."""
    depth = draw(st.sampled_from(SHALLOW + WINDOW + DEEP))
    raw = nested(depth, draw(st.sampled_from(["list", "object"])))
    # the file's own containers: the list, the task, perhaps the env object
    shallow = depth in SHALLOW and depth + 3 <= limits.JSON_NESTING
    says = (field_name,) if shallow else (field_name, "line", "nested") if depth in WINDOW \
        else ("line", "nested")
    p = Part(f"{field_name} nested {depth}", BAD, says=says, stage=TASK if shallow else JSON,
             depth=depth)
    p.values[field_name] = raw
    return p


WRONG_SCALARS = [0, 7, -1, 1.5, True, False, None, [], {}, ["x"], {"a": "b"}]


# ------------------------------------------------------------------ paths



@st.composite
def path_values(draw, field_name: str, allow_null: bool = False) -> tuple[Any, int, str]:
    """(value, verdict, shown) of a path: relative and normalized within
    PATH_BYTES bytes, or not."""
    kind = draw(st.sampled_from(["near", "near", "small", "bad", "type"]))
    if kind in ("near", "small"):
        size = draw(near(limits.PATH_BYTES)) if kind == "near" else draw(st.integers(1, 40))
        width = draw(widths)
        seg = draw(st.integers(1, 300))  # NAME_MAX is the filesystem's business, not push's
        text = text_of(size, width)
        parts, at = [], 0
        while at < len(text):
            parts.append(text[at:at + seg])
            at += seg
        # a part of only dots is '.' or '..' (or fine): keep this draw within "normalized"
        parts = [p if p.strip(".") else "d" + p[1:] for p in parts]
        path = "/".join(parts)
        # each '/' costs a byte: trim back to the drawn size (the last part is never empty)
        while utf8(path) > size and len(path) > 1:
            path = path[:-1].rstrip("/")
        if path.endswith("."):
            path = path[:-1] + "x"
        if draw(st.booleans()) and field_name == "outputs" and utf8(path) < size:
            path = path[:-1] + "*"  # a glob, as outputs may be
        ok = 0 < utf8(path) <= limits.PATH_BYTES
        return path, OK if ok else BAD, f"{utf8(path)} bytes"
    if kind == "bad":
        bad = draw(st.sampled_from([
            "..", "a/..", "../a", "a/../b", ".", "./a", "a/.", "a/./b", "", "/abs", "/",
            "a//b", "a/", "a\0b", "\0", "x" * (limits.PATH_BYTES * 25)]))
        return bad, BAD, repr(bad[:20])
    value = draw(st.sampled_from(WRONG_SCALARS))
    if value is None and allow_null:
        return value, OK, "null"
    return value, BAD, repr(value)


# ------------------------------------------------------------------ fields


@st.composite
def command_parts(draw) -> Part:
    kind = draw(st.sampled_from(["text", "text", "text", "argc", "arg", "arg", "nul", "empty",
                                 "type", "argv-type", "nested"]))
    if kind == "text":
        size, width = max(draw(near(limits.COMMAND_BYTES)), 2), draw(widths)
        command = ": " + text_of(size - 2, width)
        return judged(f"command of {size} bytes, width {width}",
                      size <= limits.COMMAND_BYTES, command=command)
    if kind == "argc":
        n = draw(st.sampled_from([1, 2, limits.COMMAND_ARGS - 1, limits.COMMAND_ARGS,
                                  limits.COMMAND_ARGS + 1]))
        return judged(f"argv of {n}", n <= limits.COMMAND_ARGS, command=["true"] + ["x"] * (n - 1))
    if kind == "arg":
        size, width = draw(near(limits.COMMAND_BYTES)), draw(widths)
        return judged(f"argv item of {size} bytes, width {width}", size <= limits.COMMAND_BYTES,
                      command=["true", text_of(size, width)])
    if kind == "nul":
        command = draw(st.sampled_from(["echo a\0b", "\0", ["echo", "a\0"], ["tr\0ue"]]))
        return part(f"NUL in {command!r}", BAD, ("NUL",), command=command)
    if kind == "empty":
        command = draw(st.sampled_from(["", " ", "\n\t ", [], ["", "x"]]))
        return part(f"empty {command!r}", BAD, ("command",), command=command)
    if kind == "type":
        value = draw(st.sampled_from([0, 1.5, True, None, {"sh": "true"}]))
        return part(f"command {value!r}", BAD, command=value)
    if kind == "argv-type":
        value = draw(st.sampled_from(WRONG_SCALARS))
        return part(f"argv item {value!r}", BAD, ("command[1]",), command=["true", value])
    return finish(draw(nesting("command")))


def env_name(length: int) -> str:
    return ("E_" + "N" * length)[:length]


@st.composite
def env_parts(draw) -> Part:
    kind = draw(st.sampled_from(["count", "name", "badname", "value", "value", "value",
                                 "valuetype", "nul", "type", "nested", "dup"]))
    if kind == "count":
        n = draw(st.sampled_from([0, 1, limits.ENV_VARS - 1, limits.ENV_VARS,
                                  limits.ENV_VARS + 1]))
        return judged(f"{n} variables", n <= limits.ENV_VARS,
                      env={f"V{i}": str(i) for i in range(n)})
    if kind == "name":
        n = draw(near(limits.ENV_NAME_LENGTH, small=8))
        first = draw(st.sampled_from(["A", "z", "_"]))
        name = first + draw(st.sampled_from(["B", "9", "_"])) * (n - 1)
        return judged(f"name of {n}", n <= limits.ENV_NAME_LENGTH, env={name: "v"})
    if kind == "badname":
        name = draw(st.sampled_from(["", "1A", "A-B", "A=B", "A B", "É", "A.B", "A\0B", "$A",
                                     "A" * (limits.ENV_NAME_LENGTH * 10)]))
        return part(f"env name {name[:12]!r}", BAD, ("env",), env={name: "v"})
    if kind == "value":
        size, width = draw(near(limits.ENV_VALUE_BYTES)), draw(widths)
        name = env_name(draw(st.sampled_from([1, 5, limits.ENV_NAME_LENGTH])))
        return judged(f"value of {size} bytes, width {width}, name of {len(name)}",
                      size <= limits.ENV_VALUE_BYTES, env={name: text_of(size, width)})
    if kind == "valuetype":
        value = draw(st.sampled_from(WRONG_SCALARS))
        return part(f"env value {value!r}", BAD, ("env[",), env={"A": value})
    if kind == "nul":
        return part("NUL in an env value", BAD, ("NUL",), env={"A": "x\0y"})
    if kind == "type":
        value = draw(st.sampled_from([[], ["A=1"], "A=1", 5, True, None]))
        return part(f"env {value!r}", BAD, env=value)
    if kind == "dup":
        p = part("env key twice", BAD, ('duplicate key "A"',), JSON,
                 env=Pairs([("A", "1"), ("B", "2"), ("A", "3")]))
        return p
    p = draw(nesting("env"))
    p.values["env"] = Pairs([("A", p.values["env"])])
    return finish(p)


ID_HEAD = "AZaz09_"
ID_TAIL = "AZaz09_.:@+-"


@st.composite
def id_parts(draw) -> Part:
    kind = draw(st.sampled_from(["near", "near", "slashes", "bad", "type", "missing",
                                 "nested"]))
    if kind in ("near", "slashes"):
        n = draw(near(limits.ID_LENGTH, small=12))
        segment = draw(st.integers(1, 6)) if kind == "slashes" else draw(st.integers(1, 400))
        head = draw(st.sampled_from(ID_HEAD))
        tail = draw(st.sampled_from(ID_TAIL))
        chars = []
        for k in range(n):
            at_head = k == 0 or chars[-1] == "/"
            if not at_head and k % (segment + 1) == segment and k < n - 1:
                chars.append("/")
            else:
                chars.append(head if at_head else tail)
        tid = "".join(chars)
        assert ID_RE.fullmatch(tid), tid
        return judged(f"id of {n}, {tid.count('/')} slashes", n <= limits.ID_LENGTH, id=tid)
    if kind == "bad":
        tid = draw(st.sampled_from(["", "-x", ".x", "a/.b", "a/..", "a//b", "/a", "a/", "a b",
                                    "é", "a\0b", "a%b", "a\\b", "a/-b", "a#b", "a*b",
                                    "x" * (limits.ID_LENGTH * 50)]))
        return part(f"id {tid[:12]!r}", BAD, ("id",), id=tid)
    if kind == "type":
        value = draw(st.sampled_from(WRONG_SCALARS))
        return part(f"id {value!r}", BAD, id=value)
    if kind == "missing":
        return Part("no id", BAD, ("id",), drop=("id",), says=('missing "id"',))
    return finish(draw(nesting("id")))


def list_count(limit: int) -> st.SearchStrategy[int]:
    return st.sampled_from([0, 1, 3, limit, limit + 1])


@st.composite
def depends_parts(draw) -> Part:
    kind = draw(st.sampled_from(["count", "known", "unknown", "self", "twice", "type",
                                 "nested"]))
    if kind == "count":
        n = draw(list_count(limits.LIST_ENTRIES))
        ok = n <= limits.LIST_ENTRIES
        p = judged(f"{n} dependencies", ok, depends_on=[f"{FILLER}{k}" for k in range(n)])
        p.fillers = n if ok else 0  # over the limit: no entry is looked at
        return p
    if kind == "known":
        return judged("depends on the log's seed", True, depends_on=["seed"])
    if kind == "unknown":
        return part("unknown dependency", BAD, ("depends_on[0]",), depends_on=["nope"])
    if kind == "self":
        return part("depends on itself", BAD, ("depends_on[0]",), depends_on=[SELF])
    if kind == "twice":
        return part("seed twice", BAD, ("depends_on[1]",), depends_on=["seed", "seed"])
    if kind == "type":
        value = draw(st.sampled_from(["seed", 1, True, {"a": "seed"}, [1], [None], [["seed"]]]))
        return part(f"depends_on {value!r}", BAD, depends_on=value)
    p = draw(nesting("depends_on"))
    p.values["depends_on"] = Raw(f"[{p.values['depends_on']}]")
    return finish(p)


SHA = "0123456789abcdef" * 4


@st.composite
def inputs_parts(draw) -> Part:
    kind = draw(st.sampled_from(["count", "path", "path", "object", "from", "type"]))
    if kind == "count":
        n = draw(list_count(limits.LIST_ENTRIES))
        return judged(f"{n} inputs", n <= limits.LIST_ENTRIES,
                      inputs=[f"in/{k}" for k in range(n)])
    if kind == "path":
        value, verdict, shown = draw(path_values("inputs"))
        return part(f"input path {shown}", verdict, ("inputs[0]",), inputs=[value])
    if kind == "object":
        value, verdict, shown = draw(path_values("inputs"))
        name, nverdict, nshown = draw(path_values("inputs", allow_null=True))
        sha = draw(st.sampled_from([None, SHA, SHA.upper(), SHA[:-1], SHA + "0", "g" * 64, 64]))
        sverdict = OK if sha in (None, SHA, SHA.upper()) else BAD
        extra = draw(st.sampled_from([{}, {}, {"size": 1}, {"from": None}]))
        everdict = BAD if extra else OK
        obj = {"path": value, "name": name, "sha256": sha, **extra}
        return part(f"input object path {shown} name {nshown} sha {str(sha)[:8]} {extra}",
                    max(verdict, nverdict, sverdict, everdict), ("inputs[0]",), inputs=[obj])
    if kind == "from":
        variant = draw(st.sampled_from(["ok", "ok", "sha", "notdep", "self", "type"]))
        deps = [] if variant == "notdep" else ["seed"]
        src: Any = {"self": SELF, "type": 5}.get(variant, "seed")
        obj = {"from": src, "path": draw(st.sampled_from(["out.txt", "any/path"]))}
        if variant == "sha":
            obj["sha256"] = SHA
        if src is SELF:
            p = part("input from itself", BAD, ("inputs[0]",), depends_on=deps, inputs=[obj])
        else:
            p = part(f"input from seed ({variant})", OK if variant == "ok" else BAD,
                     ("inputs[0]",), depends_on=deps, inputs=[obj])
        return p
    value = draw(st.sampled_from(["in.txt", 1, None, {"path": "a"}, [1], [["a"]],
                                  [{"paht": "a"}], [{}]]))
    return part(f"inputs {value!r}", BAD, ("inputs",), inputs=value)


@st.composite
def outputs_parts(draw) -> Part:
    kind = draw(st.sampled_from(["count", "path", "path", "type"]))
    if kind == "count":
        n = draw(list_count(limits.LIST_ENTRIES))
        return judged(f"{n} outputs", n <= limits.LIST_ENTRIES,
                      outputs=[f"out/{k}" for k in range(n)])
    if kind == "path":
        value, verdict, shown = draw(path_values("outputs"))
        return part(f"output {shown}", verdict, ("outputs[0]",), outputs=[value])
    value = draw(st.sampled_from(["o.txt", 1, None, {"a": "b"}, [1], [None], [["o"]]]))
    return part(f"outputs {value!r}", BAD, ("outputs",), outputs=value)


@st.composite
def results_parts(draw) -> Part:
    value, verdict, shown = draw(path_values("results", allow_null=True))
    return part(f"results {shown}", verdict, ("results",), results=value)


def number_part(name: str, low: float, high: float, integer: bool, null_ok: bool = False,
                low_open: bool = False) -> st.SearchStrategy[Part]:
    """A number at, inside and beyond its range; floats for integers and
    integers for floats; booleans, strings, null; JSON spellings."""
    step = 1 if integer else 1e-6 * max(1.0, abs(high))
    values: list[tuple[Any, bool, int]] = [
        (low, not low_open, TASK), (high, True, TASK), (low - step, False, TASK),
        (high + step, False, TASK), (True, False, TASK), (False, False, TASK),
        ("1", False, TASK), (None, null_ok, TASK), ([1], False, TASK), ({"n": 1}, False, TASK)]
    if integer:
        values += [(int(low) + 1, True, TASK), (float(high), False, TASK), (1.0, False, TASK),
                   (Raw("1e2"), False, TASK), (Raw("-0"), low <= 0 <= high, TASK),
                   (Raw("9223372036854775808"), False, TASK),
                   (Raw("-9223372036854775809"), False, TASK), (2**63 - 1, False, TASK),
                   (Raw("1" * 300), False, TASK), (Raw("1" * 400), False, JSON)]
    else:
        values += [(int(high), True, TASK), (int(high) + 1, False, TASK),
                   (Raw("-0.0"), not low_open, TASK), (5e-324, True, TASK),
                   (Raw("1e400"), False, JSON), (Raw("1E3"), low <= 1000 <= high, TASK),
                   (high / 3, True, TASK), (Raw("-1e-320"), False, TASK),
                   (Raw("1e-99999"), not low_open, TASK)]

    def make(entry: tuple[Any, bool, int]) -> Part:
        value, ok, stage = entry
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:40] + "..."
        return part(f"{name} {shown}", OK if ok else BAD, (name,) if stage == TASK else ("line",),
                    stage, **{name: value})

    return st.sampled_from(values).map(make)


SCALAR_PARTS = [
    number_part("retries", 0, limits.RETRIES, True),
    number_part("priority", -limits.PRIORITY, limits.PRIORITY, True),
    number_part("slots", 1, limits.SLOTS, True),
    number_part("retry_backoff", 0.0, limits.RETRY_BACKOFF, False),
    number_part("timeout", 0.0, limits.TIMEOUT, False, null_ok=True, low_open=True),
]


@st.composite
def other_parts(draw) -> Part:
    kind = draw(st.sampled_from(["unknown", "dupkey", "nocommand", "seedsame", "seedchanged"]))
    if kind == "unknown":
        key = draw(st.sampled_from(["depend_on", "ID", "", "commands", "x" * 300]))
        return part(f"unknown key {key[:10]!r}", BAD, ("unknown key",), **{key: 1})
    if kind == "dupkey":
        key = draw(st.sampled_from(["id", "command", "retries"]))
        first, again = {"id": ("d", "dup"), "command": ("true", "false"), "retries": (0, 1)}[key]
        p = part(f"{key} twice", BAD, (f'duplicate key "{key}"',), JSON, **{key: first})
        p.dup = (key, again)
        return p
    if kind == "nocommand":
        return Part("no command", BAD, drop=("command",), says=('missing "command"',))
    # the seed pushed again: the same (nothing new), or changed (refused without --replace)
    if kind == "seedsame":
        p = part("the seed, same", OK, id="seed", command="true", outputs=SEED_OUTPUTS)
    else:
        p = part("the seed, changed", BAD, ("differ from the log",), PLAN, id="seed",
                 command="false")
    p.alone = True
    return p


@st.composite
def whole_task_parts(draw) -> Part:
    """Values that each fit, adding up to about a whole task's 1 MiB."""
    target = draw(st.integers(limits.TASK_BYTES - 20_000, limits.TASK_BYTES + 20_000))
    width = draw(st.sampled_from([1, 2]))
    each = limits.ENV_VALUE_BYTES // 2 + draw(st.integers(0, 1000))
    n, rest = divmod(target, each)
    # the values alone are over: refused; under, the keys and defaults may tip it
    verdict = BAD if target > limits.TASK_BYTES else EITHER
    if draw(st.booleans()):
        env = {f"W{i}": text_of(each, width) for i in range(n)}
        env["WLAST"] = text_of(rest, width)
        p = part(f"env of {target} bytes", verdict, ("the task is",), env=env)
    else:
        argv = ["true"] + [text_of(each, width)] * n + [text_of(rest, width)]
        p = part(f"argv of {target} bytes", verdict, ("the task is",), command=argv)
    p.big = p.last = True
    return p


def sized_path(size: int, width: int) -> str:
    """A relative path of exactly ``size`` bytes: parts of 200 bytes (a
    filesystem's NAME_MAX is 255), the last of ``width``-byte characters."""
    k = max(0, (size - 100) // 200)
    head = ("p" * 199 + "/") * k
    return head + text_of(size - len(head), width)


def whole_task(size: int, width: int, tid: str = "t0") -> dict:
    """The env of task ``tid`` (command ``true``) that makes it exactly
    ``size`` bytes as the log stores it - the JSON the whole-task limit is
    measured on - in values an ``execve`` takes (each well under 128 KiB)."""
    from ecloud.events.codec import converter
    from ecloud.events.types import TaskSpec

    def stored(env: dict) -> int:
        return len(orjson.dumps(converter.unstructure(TaskSpec(tid, "true", env=env), TaskSpec)))

    env = {f"W{i}": text_of(100_000, width) for i in range(size // 100_000)}
    env["WLAST"] = ""
    env["WLAST"] = text_of(size - stored(env), 1)
    assert stored(env) == size
    return {"env": env}


@dataclass(frozen=True)
class Edge:
    """One limit of the table, by the value a task's field takes there."""

    name: str
    limit: float
    make: Any  # (value, width) -> the fields of the task
    says: tuple[str, ...] = ()
    low: bool = False  # the low end of a range
    scale: float = 1  # a step of one is this much (seconds: a millisecond)
    last: bool = False  # see Part.last

    def part(self, offset: int, width: int) -> Part:
        """``offset`` +1: one beyond the limit, 0: at it, -1: one within
        (above a high end, below a ``low`` one)."""
        step = offset * self.scale
        value = self.limit - step if self.low else self.limit + step
        if self.scale == 1:
            value = int(value)
        p = judged(f"edge {self.name} {value:,}", offset <= 0, self.says,
                   **self.make(value, width))
        if self.name == "depends_on entries":  # beyond too: refused for the count alone
            p.fillers = int(value)
        p.last = self.last
        return p


EDGES = [
    Edge("command bytes", limits.COMMAND_BYTES, lambda n, w: {"command": ": " + text_of(n - 2, w)}),
    Edge("argv item bytes", limits.COMMAND_BYTES,
         lambda n, w: {"command": ["true", text_of(n, w)]}, ("command[1]",)),
    Edge("argv items", limits.COMMAND_ARGS, lambda n, w: {"command": ["true"] * n}),
    Edge("env variables", limits.ENV_VARS, lambda n, w: {"env": {f"V{i}": "" for i in range(n)}}),
    Edge("env name", limits.ENV_NAME_LENGTH, lambda n, w: {"env": {"_" * n: "v"}}),
    Edge("env value bytes", limits.ENV_VALUE_BYTES, lambda n, w: {"env": {"V": text_of(n, w)}},
         ('env["V"]',)),
    Edge("id length", limits.ID_LENGTH, lambda n, w: {"id": ("ab.cd-" * 50)[:n - 1] + "z"}),
    Edge("depends_on entries", limits.LIST_ENTRIES,
         lambda n, w: {"depends_on": [f"{FILLER}{k}" for k in range(n)]}),
    Edge("inputs entries", limits.LIST_ENTRIES,
         lambda n, w: {"inputs": [f"in/{k}" for k in range(n)]}),
    Edge("outputs entries", limits.LIST_ENTRIES,
         lambda n, w: {"outputs": [f"out/{k}" for k in range(n)]}),
    Edge("input path bytes", limits.PATH_BYTES, lambda n, w: {"inputs": [sized_path(n, w)]},
         ("inputs[0]",)),
    Edge("input name bytes", limits.PATH_BYTES,
         lambda n, w: {"inputs": [{"path": "a", "name": sized_path(n, w)}]}, ("inputs[0].name",)),
    Edge("output path bytes", limits.PATH_BYTES, lambda n, w: {"outputs": [sized_path(n, w)]},
         ("outputs[0]",)),
    Edge("results bytes", limits.PATH_BYTES, lambda n, w: {"results": sized_path(n, w)}),
    Edge("retries", limits.RETRIES, lambda n, w: {"retries": n}),
    Edge("retries low", 0, lambda n, w: {"retries": n}, low=True),
    Edge("priority", limits.PRIORITY, lambda n, w: {"priority": n}),
    Edge("priority low", -limits.PRIORITY, lambda n, w: {"priority": n}, low=True),
    Edge("slots", limits.SLOTS, lambda n, w: {"slots": n}),
    Edge("slots low", 1, lambda n, w: {"slots": n}, low=True),
    Edge("retry_backoff", limits.RETRY_BACKOFF, lambda n, w: {"retry_backoff": n}, scale=1e-3),
    Edge("retry_backoff low", 0.0, lambda n, w: {"retry_backoff": n}, low=True, scale=1e-3),
    Edge("timeout", limits.TIMEOUT, lambda n, w: {"timeout": n}, scale=1e-3),
    Edge("timeout low", 1e-3, lambda n, w: {"timeout": n}, low=True, scale=1e-3),
]
#: the whole task, exactly: one part on its own (any other field changes the size)
WHOLE = Edge("whole task bytes", limits.TASK_BYTES, whole_task, ("the task is",), last=True)


#: a path on the datastore - an input; a results folder, '/' and an output -
#: leaves room for the datastore's root
DATASTORE_PATH = limits.DATASTORE_PATH_BYTES
EDGES += [
    Edge("datastore input bytes", DATASTORE_PATH, lambda n, w: {"inputs": [sized_path(n, w)]},
         ("inputs[0]",), last=True),
    Edge("datastore output bytes", DATASTORE_PATH,
         lambda n, w: {"outputs": [sized_path(n - len("results/t0/"), w)]}, ("outputs[0]",),
         last=True),
    Edge("datastore results and output bytes", DATASTORE_PATH,
         lambda n, w: {"results": "r/" + "q" * 1500, "outputs": [sized_path(n - 1503, w)]},
         ("outputs[0]",), last=True),
]


def datastore_parts(pairs: Pairs, tid: str | None) -> list[Part]:
    """The datastore paths of an assembled task over DATASTORE_PATH: refused
    (once nothing else is wrong with the task)."""
    if tid is None:
        return []
    task = dict(pairs)
    found = []
    inputs = task.get("inputs")
    for k, item in enumerate(inputs if isinstance(inputs, list) else []):
        path = item if isinstance(item, str) else item.get("path") if isinstance(
            item, dict) and "from" not in item else None
        if isinstance(path, str) and utf8(path) > DATASTORE_PATH:
            found.append(Part(f"datastore input of {utf8(path)} bytes", BAD,
                              says=(f"inputs[{k}]",), last=True))
    results = task.get("results")
    folder = utf8(results) if isinstance(results, str) else utf8(f"results/{tid}")
    outputs = task.get("outputs")
    for k, out in enumerate(outputs if isinstance(outputs, list) else []):
        if isinstance(out, str) and folder + 1 + utf8(out) > DATASTORE_PATH:
            found.append(Part(f"datastore output of {folder + 1 + utf8(out)} bytes", BAD,
                              says=(f"outputs[{k}]",), last=True))
    return found


@st.composite
def edge_parts(draw) -> Part:
    """One limit of the table at exactly limit - 1, limit or limit + 1."""
    edge = draw(st.sampled_from(EDGES))
    return edge.part(draw(st.sampled_from([0, 1, -1])), draw(widths))


#: what a task's parts are drawn from, weighted towards the sizes and counts
#: (the one near 1 MiB last: one task of a file at most draws it)
BIG_PARTS = [*[edge_parts()] * 4, *[command_parts()] * 4, *[env_parts()] * 4,
             *[id_parts()] * 2, depends_parts(), *[inputs_parts()] * 2, outputs_parts(),
             results_parts(), *[st.one_of(SCALAR_PARTS)] * 2, other_parts(), whole_task_parts()]
SEED_OUTPUTS = ["out.txt", "data/part-1.csv"]


# ------------------------------------------------------------------- files


@dataclass
class TaskFile:
    data: bytes
    verdict: int
    stage: int  # the stage a refusal happens at (the earliest with a bad part)
    #: per task: (position, id if well-formed, parts)
    tasks: list[tuple[int, str | None, list[Part]]]
    says: tuple[str, ...]  # a file's flaw: what the refusal names
    depth: int
    fillers: int
    written: list[Any] = field(repr=False)  # the tasks as written, to compare with the log

    def __repr__(self) -> str:  # the reproducer: the file itself, when it is short
        data = self.data if len(self.data) <= 3000 else (
            self.data[:1500] + b"..." + self.data[-500:])
        return (f"TaskFile({len(self.data):,} bytes: {data!r}, verdict "
                f"{['ok', 'either', 'bad'][self.verdict]}, parts "
                f"{[(i, [q.what for q in parts]) for i, _, parts in self.tasks]})")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def encode(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=ascii_only)}: "
                               f"{encode(v, ascii_only)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return encode(Pairs(value.items()), ascii_only)
    if isinstance(value, list):
        return "[" + ", ".join(encode(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


FILE_FLAWS = [
    ("list", OK, SHAPE, ()), ("wrapped", OK, SHAPE, ()), ("bom", OK, JSON, ()),
    ("pretty", OK, JSON, ()),
    ("extra top key", BAD, SHAPE, ('unknown key "extra"',)),
    ("tasks missing", BAD, SHAPE, ('missing key "tasks"',)),
    ("tasks not a list", BAD, SHAPE, ("tasks: expected a list",)),
    ("top scalar", BAD, SHAPE, ("top level: expected a list",)),
    ("no tasks", BAD, SHAPE, ("no tasks",)),
    ("task not an object", BAD, TASK, ("expected a task object",)),
    ("utf-16", BAD, JSON, ("UTF-16",)),
    ("bad byte", BAD, JSON, ("not UTF-8",)),
    ("lone surrogate", BAD, JSON, ("JSON syntax error",)),
    ("control char", BAD, JSON, ("JSON syntax error",)),
    ("trailing garbage", BAD, JSON, ("JSON syntax error",)),
    ("truncated", BAD, JSON, ("JSON syntax error",)),
    ("empty", BAD, JSON, ("empty",)),
    ("blank", BAD, JSON, ("empty",)),
]
BAD_BYTES = [b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]


def assemble(i: int, parts: list[Part]) -> tuple[Pairs, str | None]:
    """Task ``i`` (``t<i>``, command ``true``) with ``parts`` applied; and its
    id when that is well-formed (a refusal then names it)."""
    pairs = Pairs([("id", f"t{i}"), ("command", "true")])
    for p in parts:
        pairs = Pairs([(k, v) for k, v in pairs if k not in p.drop and k not in p.keys])
        pairs += [(k, v) for k, v in p.values.items()]
        if p.dup:
            pairs.append(p.dup)
    tid = dict(pairs).get("id")
    for k, (key, value) in enumerate(pairs):
        if key == "depends_on" and isinstance(value, list):
            pairs[k] = (key, [tid if d is SELF else d for d in value])
        if key == "inputs" and isinstance(value, list):
            pairs[k] = (key, [{**x, "from": tid} if isinstance(x, dict) and x.get("from")
                              is SELF else x for x in value])
    well_formed = tid if isinstance(tid, str) and not isinstance(tid, Raw) and len(
        tid) <= limits.ID_LENGTH and ID_RE.fullmatch(tid) else None
    return pairs, well_formed


def one_part_file(p: Part) -> TaskFile:
    """A file of one task with one part (and the tasks it depends on)."""
    pairs, tid = assemble(0, [p])
    parts = [p, *datastore_parts(pairs, tid)]
    verdict = max(q.verdict for q in parts)
    fillers = [{"id": f"{FILLER}{k}", "command": "true"} for k in range(p.fillers)]
    data = ("[" + ",\n".join(encode(t, False) for t in [pairs, *fillers]) + "]").encode()
    return TaskFile(data, verdict, p.stage, [(0, tid, parts)], (), p.depth, p.fillers, [pairs])


@st.composite
def task_files(draw) -> TaskFile:
    count = draw(st.integers(1, 3))
    # a third of the files: limits at exactly -1/0/+1 (task 0); a third drawn
    # within the limits (accepted: then they must run); a third anything
    mode = draw(st.sampled_from(["edge", "ok", "any"]))
    aim_ok = mode == "ok"
    tasks, written = [], []
    budget_used = False
    fillers = depth = 0
    for i in range(count):
        pool = BIG_PARTS if i == 0 else BIG_PARTS[:-1]  # one task near 1 MiB at most
        if mode == "edge" and i == 0:
            drawn = draw(st.lists(edge_parts(), min_size=1, max_size=3))
        else:
            drawn = draw(st.lists(st.one_of(pool), min_size=1 if i == 0 else 0,
                                  max_size=3 if i == 0 else 2))
        if aim_ok:
            drawn = [q for q in drawn if q.verdict != BAD]
        parts: list[Part] = []
        for p in drawn:
            taken = {k for q in parts for k in (*q.keys, *q.drop)}
            taken |= {q.dup[0] for q in parts if q.dup}
            mine = {*p.keys, *p.drop} | ({p.dup[0]} if p.dup else set())
            if mine & taken or (parts and (p.alone or parts[0].alone)):
                continue
            if p.big:
                if budget_used:
                    continue
                budget_used = True
            parts.append(p)
        pairs, well_formed = assemble(i, parts)
        parts += datastore_parts(pairs, well_formed)
        fillers = max([fillers, *(q.fillers for q in parts)])
        depth = max([depth, *(q.depth for q in parts)])
        tasks.append((i, well_formed, parts))
        written.append(pairs)
    filler_tasks = [{"id": f"{FILLER}{k}", "command": "true"} for k in range(fillers)]
    good_flaws = [f for f in FILE_FLAWS if f[1] == OK]
    flaw, fverdict, fstage, fsays = draw(st.sampled_from(good_flaws) if mode != "any" or draw(
        st.booleans()) else st.sampled_from(FILE_FLAWS))
    ascii_only = draw(st.booleans())
    items: list[Any] = [*written, *filler_tasks]
    if flaw == "task not an object":
        items.append(draw(st.sampled_from(["x", 1, None, [], [{"id": "a"}]])))
    body = "[" + ",\n".join(encode(t, ascii_only) for t in items) + "]"
    if flaw == "pretty":
        body = "[\n  " + ",\n  ".join(encode(t, ascii_only) for t in items) + "\n]\n"
    top = {
        "wrapped": '{"tasks": ' + body + "}",
        "extra top key": '{"tasks": ' + body + ', "extra": 1}',
        "tasks missing": '{"task": ' + body + "}",
        "tasks not a list": '{"tasks": {"a": ' + body + "}}",
        "top scalar": json.dumps(draw(st.sampled_from(["tasks", 1, None, True]))),
        "no tasks": draw(st.sampled_from(["[]", '{"tasks": []}'])),
        "trailing garbage": body + " ]",
        "truncated": body[:-1],
        "empty": "",
        "blank": " \n\t ",
    }.get(flaw, body)
    if flaw == "control char":
        top = top.replace('"true"', '"tr\x01ue"', 1) if '"true"' in top else top + "\x01"
    if flaw == "lone surrogate":
        top = top.replace('"true"', '"tr\\ud800ue"', 1) if '"true"' in top else "[\"\\udc00\"]"
    if flaw == "bad byte":
        bad = draw(st.sampled_from(BAD_BYTES))
        insert = "".join(chr(0xDC00 + b) for b in bad)
        top = (top.replace('"true"', f'"tr{insert}ue"', 1) if '"true"' in top
               else f'["{insert}"]')
    data = top.encode("utf-8", "surrogateescape")
    if flaw == "bom":
        data = b"\xef\xbb\xbf" + data
    if flaw == "utf-16":
        data = top.encode("utf-16")
    if flaw in ("top scalar", "no tasks", "empty", "blank"):
        tasks, depth = [], 0  # none of the drawn tasks is in the file
    # the verdict: the earliest stage with a bad part decides what is refused
    every = [p for _, _, parts in tasks for p in parts]
    verdict = max([fverdict, *(p.verdict for p in every)], default=fverdict)
    ids = [t for _, t, _ in tasks if t is not None]
    if len(ids) != len(set(ids)):
        verdict = BAD  # two tasks of the file drew one id
        every.append(part("two tasks, one id", BAD, ("duplicate id",)))
    folders = [dict(w).get("results") for w in written]
    if any(isinstance(f, str) for f in folders):
        verdict = max(verdict, EITHER)  # a results folder may be another's
    stages = [s for s, v in [(fstage, fverdict)] + [(p.stage, p.verdict) for p in every]
              if v == BAD]
    stage = min(stages, default=TASK)
    note(f"flaw {flaw!r}, tasks: {[(i, t and t[:30], [p.what for p in ps]) for i, t, ps in tasks]}"
         f", {fillers} fillers, {len(data):,} bytes, verdict {verdict}, stage {stage}")
    return TaskFile(data, verdict, stage, tasks, fsays if fverdict == BAD else (), depth,
                    fillers, written if flaw not in ("top scalar", "no tasks", "empty", "blank")
                    else [])


# -------------------------------------------------------------- the checks


@dataclass
class BaseLog:
    """A log holding one task (``seed``, which others may depend on, take
    inputs from, or push again), copied for every example."""

    root: Path
    db: Path
    rows: list[tuple] = field(repr=False)
    state: dict = field(repr=False)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's reports
        printer.text(f"BaseLog({self.db})")


def _rows(url: str) -> list[tuple]:
    with open_store(url, create=False) as store:
        return list(store.read_raw(1))


def _state(url: str) -> Any:
    with open_store(url, create=False) as store:
        return load_state(store, use_snapshot=False)


@pytest.fixture(scope="module")
def base_log(tmp_path_factory: pytest.TempPathFactory) -> BaseLog:
    root = tmp_path_factory.mktemp("limits-property")
    seed = root / "seed.json"
    seed.write_text(json.dumps([{"id": "seed", "command": "true", "outputs": SEED_OUTPUTS}]))
    db = root / "base.db"
    result = CliRunner().invoke(cli, ["push", str(seed), "--db", f"sqlite:///{db}"])
    assert result.exit_code == 0, result.output
    url = f"sqlite:///{db}"
    return BaseLog(root, db, _rows(url), canonical(_state(url)))


@contextlib.contextmanager
def copy_of(base: BaseLog) -> Iterator[tuple[Path, str]]:
    where = Path(tempfile.mkdtemp(dir=base.root))
    try:
        for f in base.root.glob(base.db.name + "*"):
            shutil.copy(f, where / f.name)
        yield where, f"sqlite:///{where / base.db.name}"
    finally:
        shutil.rmtree(where, ignore_errors=True)


@dataclass
class Pushed:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    file: Path
    url: str
    where: Path


@contextlib.contextmanager
def pushed(base: BaseLog, data: bytes) -> Iterator[Pushed]:
    with copy_of(base) as (where, url):
        path = where / "tasks.json"
        path.write_bytes(data)
        result = CliRunner().invoke(cli, ["push", str(path), "--db", url])
        exc = result.exception
        if isinstance(exc, SystemExit):
            exc = None
        yield Pushed(result.exit_code, result.stdout, result.stderr, exc, path, url, where)


def exec_strings(msg: wire.DispatchMsg) -> tuple[list[str], dict[str, str]]:
    """The argv and environment the worker starts the attempt with
    (worker/runner.py; worker/stage.py runs the command alike)."""
    cmd = msg.command
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    env = {**os.environ, **msg.env, "ECLOUD_TASK_ID": msg.task_id,
           "ECLOUD_ATTEMPT": str(msg.attempt), TOKEN_VAR: "0" * 32}
    return argv, env


@dataclass
class Problem:
    kind: str  # "dispatch", "exec", "workdir"
    text: str


def exec_problems(msg: wire.DispatchMsg, argv: list[str], env: dict[str, str]) -> list[Problem]:
    """Whether the attempt's argv and environment fit the kernel's limits
    (computed, to say which string), and really ``execve`` (``/bin/true``
    in place of the program, with the very same strings)."""
    problems: list[Problem] = []
    strings = [*argv, *(f"{k}={v}" for k, v in env.items())]
    sizes = [len(os.fsencode(s)) + 1 for s in strings]  # each with its NUL
    over = [(s, n) for s, n in zip(strings, sizes, strict=True) if n > MAX_ARG_STRLEN]
    for s, n in over:
        problems.append(Problem("exec", f"a {n:,}-byte argv/env string {s[:30]!r}... is over "
                                f"MAX_ARG_STRLEN ({MAX_ARG_STRLEN:,})"))
    total = sum(sizes) + 8 * (len(sizes) + 2)  # the strings and their pointers
    if total > ARG_MAX:
        problems.append(Problem("exec", f"argv and env take {total:,} bytes, over ARG_MAX "
                                f"({ARG_MAX:,})"))
    try:
        subprocess.run(argv, executable="/bin/true", env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                       check=False)
    except OSError as exc:
        if not over or exc.errno != errno.E2BIG:  # else: said above
            problems.append(Problem("exec", f"execve fails: {exc}"))
    return problems


def runnable_problems(state: Any, tid: str, workdir: Path, execed: set) -> list[Problem]:
    """Why the accepted task ``tid`` could not be dispatched and started."""
    problems: list[Problem] = []
    task = state.tasks[tid]
    effect = dispatch_effect(state, state.seq, attrs.evolve(task, attempt=max(task.attempt, 1)),
                             "worker-1")
    effect = attrs.evolve(effect, datastore=DATASTORE)
    msg = dispatch_message(effect)
    payload = wire.dumps(wire.BossPayload(dispatch=[msg], to="i" * 32))
    if len(payload) > limits.BOSS_MESSAGE_BYTES:
        problems.append(Problem("dispatch", f"the dispatch of {tid[:40]!r} is {len(payload):,} "
                                f"bytes, over the {limits.BOSS_MESSAGE_BYTES:,} a worker takes"))
    else:
        try:
            back = wire.parse_boss_payload(payload)
        except wire.WireError as exc:
            problems.append(Problem("dispatch", f"a worker refuses the dispatch: {exc}"))
        else:
            if wire.dumps(back) != payload:
                problems.append(Problem("dispatch", "the dispatch does not survive the wire"))
    argv, env = exec_strings(msg)
    key = (msg.command, tuple(sorted(msg.env.items())))
    if key not in execed:  # a file of many like tasks: each shape once
        execed.add(key)
        problems += exec_problems(msg, argv, env)
    path = Path(attempt_path(str(workdir), tid, 1))
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        name = path.parent.name
        problems.append(Problem("workdir", f"the working directory {name[:40]!r}... cannot "
                                f"be made: {exc}"))
    return problems


def canonical_without_rejections(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ("seq", "clock", "rejected")}


def check_push(base: BaseLog, tf: TaskFile) -> None:
    """The property, for one file."""
    with pushed(base, tf.data) as p:
        event(f"exit {p.code}, drawn {['ok', 'either', 'bad'][tf.verdict]}"
              + (f" at stage {['json', 'shape', 'task', 'plan'][tf.stage]}" if tf.verdict == BAD
                 else ""))
        note(f"exit {p.code}; stdout {p.stdout[-300:]!r}; stderr {p.stderr[-1500:]!r}")
        if p.exception is not None:
            raise AssertionError(f"`ecloud push` crashed: {p.exception!r}") from p.exception
        assert "Traceback" not in p.stdout + p.stderr
        assert p.code in (0, 2), (p.code, p.stderr)
        if tf.verdict == OK:
            assert p.code == 0, f"a file within every limit was refused:\n{p.stderr}"
        elif tf.verdict == BAD:
            assert p.code == 2, "a file beyond a limit was accepted"
        if p.code == 2:
            check_refusal(base, tf, p)
        else:
            check_accepted(tf, p)


def check_refusal(base: BaseLog, tf: TaskFile, p: Pushed) -> None:
    err = p.stderr
    assert str(p.file) in err, f"the refusal does not name the file:\n{err}"
    if tf.verdict == BAD:
        if tf.stage in (JSON, SHAPE):
            says = tf.says + tuple(s for _, _, parts in tf.tasks for q in parts
                                   if q.verdict == BAD and q.stage == tf.stage for s in q.says)
            assert any(s in err for s in says), f"expected one of {says}:\n{err}"
        elif tf.stage == TASK:
            for i, tid, parts in tf.tasks:
                bad = [q for q in parts if q.verdict == BAD and q.stage == TASK]
                if not bad:
                    continue
                where = f'tasks[{i}] (id "{tid}")' if tid else f"tasks[{i}]"
                lines = [line for line in err.splitlines() if where in line]
                assert lines, f"no problem names {where}:\n{err}"
                # every problem is reported at once; the task's size and its
                # datastore paths are measured only when nothing else is wrong
                first = [q for q in bad if not q.last]
                for q in first:
                    assert any(s in line for s in q.says for line in lines), (
                        f"{where}: {q.what}: expected one of {q.says}:\n{err}")
                if not first:
                    says = [s for q in bad for s in q.says]
                    assert any(s in line for s in says for line in lines), (
                        f"{where}: expected one of {says}:\n{err}")
            if tf.says:
                assert any(s in err for s in tf.says), (tf.says, err)
        else:  # refused against the log: a changed task, a dispatch too big
            says = [s for _, _, parts in tf.tasks for q in parts
                    if q.verdict == BAD and q.stage == PLAN for s in q.says]
            assert any(s in err for s in says), f"expected one of {says}:\n{err}"
    rows = _rows(p.url)
    assert rows[:len(base.rows)] == base.rows, "a refusal changed the log's events"
    added = rows[len(base.rows):]
    assert len(added) == 1 and added[0][2] == "input.rejected", [r[2] for r in added]
    reason = json.loads(added[0][4])["reason"]
    assert str(p.file)[:200] in reason, reason[:300]
    after = canonical(_state(p.url))
    assert canonical_without_rejections(after) == canonical_without_rejections(base.state), (
        "a refusal changed the log's state")


def check_accepted(tf: TaskFile, p: Pushed) -> None:
    state = _state(p.url)
    problems: list[Problem] = []
    fresh = p.where / "work"
    execed: set = set()
    for pairs in tf.written:
        written = dict(pairs)
        tid = written["id"]
        assert tid in state.tasks, f"task {tid!r} of an accepted file is not in the log"
        spec = state.tasks[tid].spec
        command = written["command"]
        assert spec.command == (tuple(command) if isinstance(command, list) else command)
        if isinstance(written.get("env"), dict):
            assert spec.env == written["env"]
        problems += runnable_problems(state, tid, fresh, execed)
    for k in range(tf.fillers):
        assert f"{FILLER}{k}" in state.tasks
    assert not problems, "accepted, but cannot run:\n" + "\n".join(
        f"{q.kind}: {q.text}" for q in problems)


# ------------------------------------------------------------- the tests


def _file(tasks: list[dict]) -> TaskFile:
    """A reproducer: within the documented limits, so accepted and runnable -
    or refused at push, cleanly, when a limit is what fixes it."""
    return TaskFile(json.dumps(tasks).encode(), EITHER, TASK, [], (), 0, 0,
                    [Pairs(t.items()) for t in tasks])


SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


@SETTINGS
@given(tf=task_files())
def test_a_task_file_around_the_limits_is_runnable_or_refused(base_log: BaseLog,
                                                              tf: TaskFile) -> None:
    """The property (see the module's docstring). Checked to fail: at
    76182e0 (before the fix of the BUG_ texts) it fails within a run or two,
    on the E2BIG of a command or env value at 128 KiB, a slashed id's
    working directory, or the RecursionError of nesting 950-1023 deep. And
    in a scratch copy with push's view of one limit moved by one, one run
    each failed it for 14 of 17 such changes ("a file beyond a limit was
    accepted", "a file within every limit was refused", a refusal no longer
    naming the task and field), and with the whole-task check removed;
    ENV_VARS, RETRIES, PRIORITY and RETRY_BACKOFF +1 slipped through that
    run (and failed it in others): random draws do not hit every edge every
    time - the edge test below does."""
    check_push(base_log, tf)


EDGE_CASES = [(edge, offset) for edge in [*EDGES, WHOLE] for offset in (-1, 0, 1)]


@pytest.mark.parametrize("edge, offset", EDGE_CASES,
                         ids=[f"{e.name}{['-1', '', '+1'][o + 1]}" for e, o in EDGE_CASES])
def test_each_limit_one_within_at_and_one_beyond(base_log: BaseLog, edge: Edge,
                                                 offset: int) -> None:
    """Every limit of the table, exactly: one within and at it accepted and
    runnable, one beyond refused naming task and field (3-byte characters
    for the byte limits). The property draws these too, among others, but
    not surely each in every run; this does. Checked to fail: with any one
    of COMMAND_BYTES, COMMAND_ARGS, ENV_VARS, ENV_NAME_LENGTH,
    ENV_VALUE_BYTES, ID_LENGTH, LIST_ENTRIES, PATH_BYTES,
    DATASTORE_PATH_BYTES, RETRIES, PRIORITY, SLOTS, RETRY_BACKOFF, TIMEOUT,
    TASK_BYTES moved by one (a second, for durations) either way in a
    scratch copy of the limits as push sees them, or the whole-task check
    removed, some case here fails (31 of 31 changes; JSON_NESTING and
    SOURCES_BYTES likewise fail the two tests after this one)."""
    width = 3 if "bytes" in edge.name and edge is not WHOLE else 1
    check_push(base_log, one_part_file(edge.part(offset, width)))


def sources_file(folders: int) -> TaskFile:
    """300 tasks whose ``results`` folders add up to ``folders`` bytes (each
    under the datastore's limit), and a task ``down`` taking an input from
    each: its dispatch carries all 300 folders."""
    n = 300
    each, rest = divmod(folders, n)
    ups = [{"id": f"u{k:03d}", "command": "true", "outputs": ["o"],
            "results": f"c/{k:03d}/" + sized_path(each + (k < rest) - 6, 1)}
           for k in range(n)]
    down = {"id": "down", "command": "true", "depends_on": [u["id"] for u in ups],
            "inputs": [{"from": u["id"], "path": "o"} for u in ups]}
    assert sum(utf8(u["results"]) for u in ups) == folders
    over = folders > limits.SOURCES_BYTES
    says = Part("sources", BAD if over else OK, says=("down",), stage=PLAN)
    return TaskFile(json.dumps([*ups, down]).encode(), BAD if over else OK, PLAN,
                    [(n, "down", [says])], (), 0, 0,
                    [Pairs(t.items()) for t in [ups[0], ups[-1], down]])


@pytest.mark.parametrize("folders", [limits.SOURCES_BYTES - 4096, limits.SOURCES_BYTES + 1],
                         ids=["within", "beyond"])
def test_the_results_folders_a_dispatch_carries(base_log: BaseLog, folders: int) -> None:
    """The results folders of the tasks one task's inputs come from (the
    table: 1 MiB together): just within - accepted, and the dispatch fits
    what a worker takes; just beyond (the folders alone) - refused at push
    naming the task. Before 41b8aac there was no such limit, and 1,300
    folders of 3,500 bytes made a dispatch of 4.5 MB (see BUG_SOURCES:
    that test failed at 76182e0 on "the dispatch of 'down' is 4,524,921
    bytes")."""
    check_push(base_log, sources_file(folders))


@pytest.mark.parametrize("depth", [limits.JSON_NESTING - 2, limits.JSON_NESTING - 1, 1000])
def test_nesting_at_and_past_its_limit_is_refused_naming_what(base_log: BaseLog,
                                                              depth: int) -> None:
    """A command nested so that the file's lists and objects go exactly
    JSON_NESTING deep (the list of tasks, the task, then ``depth``): refused
    as a command of the wrong type; one deeper, or 1,000 deep, as nesting
    past the limit - never a traceback (BUG_RECURSION: at 76182e0 the
    1,000-deep file ended `ecloud push` with a RecursionError, exit 1)."""
    data = ('[{"id": "a", "command": ' + "[" * depth + "]" * depth + "}]").encode()
    if depth + 2 <= limits.JSON_NESTING:
        tf = TaskFile(data, BAD, TASK, [(0, "a", [Part("nested", BAD, says=("command",))])],
                      (), depth, 0, [])
    else:
        tf = TaskFile(data, BAD, JSON, [], ("nested more than",), depth, 0, [])
    check_push(base_log, tf)


# ------------------------------------------------- the bugs, one file each


def sources_bug() -> list[dict]:
    ups = [{"id": f"u{k}", "command": "true", "outputs": ["o"],
            "results": f"campaign/{k}/" + sized_path(3500, 1)} for k in range(1300)]
    return [*ups, {"id": "down", "command": "true", "depends_on": [u["id"] for u in ups],
                   "inputs": [{"from": u["id"], "path": "o"} for u in ups]}]


EDGE_BUGS = {
    "command at its documented limit": (
        [{"id": "c", "command": ": " + "x" * (limits.COMMAND_BYTES - 2)}], BUG_EXEC),
    "argv item at its documented limit": (
        [{"id": "c", "command": ["true", "x" * limits.COMMAND_BYTES]}], BUG_EXEC),
    "env value at its documented limit": (
        [{"id": "c", "command": "true",
          "env": {"N" * limits.ENV_NAME_LENGTH: "x" * limits.ENV_VALUE_BYTES}}], BUG_EXEC),
    "200-character id of 100 segments": (
        [{"id": "/".join(["a"] * 100)[:199] + "b", "command": "true"}], BUG_WORKDIR),
    "inputs from 1,300 long results folders": (sources_bug(), BUG_SOURCES),
}


@pytest.mark.parametrize("name", sorted(EDGE_BUGS))
def test_a_task_at_a_documented_limit_is_refused_or_can_start(base_log: BaseLog,
                                                              name: str) -> None:
    """A minimal file per bug (its BUG_ text), at the limits as they are now:
    refused at push (exit 2, naming the file), or accepted and startable.
    Each failed at 76182e0: accepted, then E2BIG, "File name too long", or
    a dispatch over 4 MiB."""
    tasks, _bug = EDGE_BUGS[name]
    check_push(base_log, _file(tasks))


# -------------------------------------------------- accepted, and it runs


def rejections(cwd: Path) -> list[str]:
    """What the boss refused to log while running (a report too big...)."""
    url = f"sqlite:///{cwd}/ecloud.db"
    if not (cwd / "ecloud.db").exists():
        return []
    try:
        with open_store(url, create=False, read_only=True) as store:
            return [json.loads(body).get("reason", "") for _, _, tag, _, body in store.read_raw(1)
                    if tag == "input.rejected"]
    except Exception:  # noqa: BLE001 - the log is being made: look again
        return []


def ecloud_run(cwd: Path, tasks: list[dict], workers: int = 2, datastore: Path | None = None,
               deadline: float = 180) -> tuple[int, str, str, list[str]]:
    """``ecloud run FILE --local N`` as a user runs it. Stopped (SIGTERM:
    it stops its workers and broker) as soon as the boss refuses a worker's
    report - the task would never finish - or after ``deadline`` seconds.
    Returns the exit status, stdout, stderr and the refusals."""
    path = cwd / "edges.json"
    path.write_text(json.dumps({"tasks": tasks}))
    args = [sys.executable, "-m", "ecloud.cli.main", "run", str(path), "--local", str(workers)]
    if datastore is not None:
        args += ["--datastore", str(datastore)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CONFIG": "", "ECLOUD_DB": ""}
    with open(cwd / "run.out", "w+") as out, open(cwd / "run.err", "w+") as err:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err)
        start = time.monotonic()
        refused: list[str] = []
        try:
            while proc.poll() is None:
                refused = rejections(cwd)
                if refused or time.monotonic() - start > deadline:
                    proc.terminate()
                    break
                time.sleep(0.5)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read(), refused or rejections(cwd)


def statuses(cwd: Path) -> dict[str, str]:
    state = _state(f"sqlite:///{cwd}/ecloud.db")
    return {tid: t.status for tid, t in state.tasks.items()}


#: the largest a single argv/env string can be and still execve
EXECABLE = MAX_ARG_STRLEN - 1


def deep(size: int, char: str = "p") -> str:
    """A relative path of ``size`` bytes in parts of 200 (one ``x`` file)."""
    k = (size - 100) // 200
    head = (char * 199 + "/") * k
    return head + "x" * (size - len(head))


def _runnable_edges(datastore: Path) -> list[dict]:
    """Harmless tasks at the edges push accepts and a worker can run today:
    each is ``:``/``true``/``test`` with padding, and checks what it got."""
    longest_command = min(limits.COMMAND_BYTES, EXECABLE)
    value = min(limits.ENV_VALUE_BYTES, EXECABLE - len("BIG="))
    tid = "L" + "x" * (limits.ID_LENGTH - 1)
    slashed = "/".join(["abcdefgh"] * 30)[:limits.ID_LENGTH].rstrip("/")  # 22 slashes
    # as deep as the datastore takes: results/deep-out/<out>, and an input
    out = deep(limits.DATASTORE_PATH_BYTES - len("results/deep-out/"))
    stored = deep(limits.DATASTORE_PATH_BYTES, "s")
    (datastore / stored).parent.mkdir(parents=True)
    (datastore / stored).write_text("stored\n")
    return [
        {"id": "longest-command", "command": ": " + "é" * ((longest_command - 2) // 2)},
        {"id": "longest-command-ascii", "command": "true " + "x" * (longest_command - 5)},
        {"id": "most-args", "command": ["true"] + ["x"] * (limits.COMMAND_ARGS - 1)},
        {"id": "longest-arg", "command": ["sh", "-c", 'test "${#1}" -gt 100000', "sh",
                                          "y" * min(limits.COMMAND_BYTES, EXECABLE)]},
        {"id": "most-env", "command": 'test "$V999" = 999 && test "$V0" = 0',
         "env": {f"V{i}": str(i) for i in range(limits.ENV_VARS)}},
        {"id": "longest-env-name", "command": "true",
         "env": {"N" * limits.ENV_NAME_LENGTH: "v"}},
        {"id": "biggest-env-value", "command": 'test "${#BIG}" -gt 100000',
         "env": {"BIG": "v" * value}},
        {"id": "largest-task", "command": "true",
         **whole_task(limits.TASK_BYTES, 1, "largest-task")},
        {"id": tid, "command": "true", "depends_on": ["longest-command"]},
        {"id": slashed, "command": "true"},
        {"id": "a@b+c:d.e_f-g/h", "command": "true", "priority": limits.PRIORITY,
         "retries": limits.RETRIES, "retry_backoff": limits.RETRY_BACKOFF,
         "timeout": limits.TIMEOUT},
        {"id": "deep-out", "command": f'mkdir -p "$(dirname {out})" && echo made > {out}',
         "outputs": [out]},
        {"id": "deep-in", "command": "grep -q made got", "depends_on": ["deep-out"],
         "inputs": [{"from": "deep-out", "path": out, "name": "got"}]},
        {"id": "deep-store", "command": f"grep -q stored {stored.rsplit('/', 1)[1]}",
         "inputs": [stored]},
        {"id": "many-deps", "command": "true",
         "depends_on": ["longest-command", "most-args", "most-env", tid, slashed, "deep-in"]},
    ]


def test_tasks_accepted_at_the_edges_really_run(tmp_path: Path) -> None:
    """``ecloud run FILE --local 2`` of harmless tasks at the edges: the
    largest command (2-byte characters, and ASCII), the most arguments, the
    longest argument, the most variables, the longest name, the biggest
    value, a task of exactly 1 MiB, the longest id, a long id of 22
    segments, every number at its limit, an output and a datastore input as
    deep as the datastore takes, and an input from that output - exit 0,
    every task succeeded, nothing refused. (Checked
    to fail: one byte more on the ASCII command or the biggest value and its
    task fails with "Argument list too long" - the RUN_BUGS cases below.)"""
    datastore = tmp_path / "datastore"
    datastore.mkdir()
    tasks = _runnable_edges(datastore)
    code, out, err, refused = ecloud_run(tmp_path, tasks, datastore=datastore)
    assert code == 0 and not refused, (refused, out[-3000:], err[-3000:])
    assert statuses(tmp_path) == {t["id"]: "succeeded" for t in tasks}


def _many_deep_inputs(datastore: Path) -> dict:
    folder = deep(2900)
    (datastore / folder).mkdir(parents=True)
    for i in range(100):
        (datastore / folder / f"f{i}").write_text("in\n")
    return {"id": "many-deep-inputs", "command": "true",
            "inputs": [f"{folder}/f{i}" for i in range(100)]}


RUN_BUGS = {
    "command at its documented limit": (
        lambda ds: {"id": "c", "command": ": " + "x" * (limits.COMMAND_BYTES - 2)}, BUG_EXEC),
    "env value at its documented limit": (
        lambda ds: {"id": "e", "command": 'test "${#N}" -gt 100000',  # the longest name too
                    "env": {"N" + "_" * (limits.ENV_NAME_LENGTH - 1): "v" * limits.ENV_VALUE_BYTES,
                            "N": "v" * limits.ENV_VALUE_BYTES}}, BUG_EXEC),
    "a 200-character id of 100 segments": (
        lambda ds: {"id": "/".join(["a"] * 100)[:199] + "b", "command": "true"}, BUG_WORKDIR),
    "100 inputs at 2,900-byte paths": (_many_deep_inputs, BUG_REPORT),
    "results and output of 2,500 bytes": (
        lambda ds: {"id": "r", "command": f'mkdir -p "$(dirname {deep(2500)})" && '
                    f"echo made > {deep(2500)}", "outputs": [deep(2500)],
                    "results": deep(2500, "r")}, BUG_DATASTORE_PATH),
}


@pytest.mark.parametrize("name", sorted(RUN_BUGS))
def test_a_task_at_a_documented_limit_really_runs_or_is_refused(tmp_path: Path,
                                                                 name: str) -> None:
    """``ecloud run`` of a minimal task per bug (its BUG_ text), at the limits
    as they are now: refused at push (exit 2, naming the file, no
    traceback), or it runs and succeeds with nothing refused. Each failed at
    76182e0: "cannot start: Argument list too long", "cannot prepare the
    work directory: File name too long", a staging traceback ("exit code
    1"), or its report refused at every resend, the task never ending (the
    run is stopped at the first refusal)."""
    make, _bug = RUN_BUGS[name]
    datastore = tmp_path / "datastore"
    datastore.mkdir()
    task = make(datastore)
    code, out, err, refused = ecloud_run(tmp_path, [task], workers=1, datastore=datastore,
                                         deadline=90)
    assert "Traceback" not in err, err[-2000:]
    if "pushed 1 new task(s)" not in err:  # refused at push
        assert code == 2 and str(tmp_path / "edges.json") in err, (code, err[-2000:])
        return
    assert code == 0 and not refused, (refused[:1], out[-2000:])
    assert statuses(tmp_path) == {task["id"]: "succeeded"}
