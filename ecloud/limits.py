"""What ecloud accepts from outside, as one table.

Every value that enters the system - a task file pushed, a worker's message,
an operator's context value - is bounded, so that nothing is accepted that
cannot then be stored, dispatched, sent over MQTT and started with
``execve``: a task that is accepted runs (or fails for reasons of its own),
and one that could not is refused at the door with exit status 2, naming the
file, the task and the field. The README's "Limits" section is generated from
:data:`TABLE` (:func:`markdown`) and a test checks that the two agree.

The numbers leave room for real work: a 128 KiB command line (the kernel's
own limit on one string, less its NUL) is longer than
any shell script one writes inline, and a whole task (1 MiB) plus what its
dispatch adds stays far below the 4 MiB a boss message may have, which in
turn stays below what Mosquitto and the worker accept.
"""

from __future__ import annotations

from attrs import frozen

KIB = 1024
MIB = 1024 * KIB

#: task ids (``ecloud.taskfiles.taskgraph`` checks the character set)
ID_LENGTH = 200
#: the kernel's limit on one argv or environment string, its NUL included
#: (MAX_ARG_STRLEN): execve refuses a longer one with E2BIG
EXEC_STRING_BYTES = 128 * KIB
#: a command string, or each argument of an argv list, in UTF-8 bytes
COMMAND_BYTES = EXEC_STRING_BYTES - 1
#: arguments of an argv command
COMMAND_ARGS = 4096
#: environment variables of a task
ENV_VARS = 1000
#: an environment variable's name (letters, digits and _, not starting with a digit)
ENV_NAME_LENGTH = 255
#: an environment variable's value, in UTF-8 bytes: ``NAME=VALUE`` and its
#: NUL must fit one execve string, whatever the name's length
ENV_VALUE_BYTES = EXEC_STRING_BYTES - 1 - ENV_NAME_LENGTH - 1
#: dependencies, inputs, outputs of one task (each)
LIST_ENTRIES = 10_000
#: a datastore or working-directory path, in UTF-8 bytes
PATH_BYTES = 4096
#: a path on the datastore as staging writes it (an input; a results folder,
#: '/', an output): PATH_MAX less room for the datastore's root
DATASTORE_PATH_BYTES = PATH_BYTES - 512
#: retries of one task
RETRIES = 10_000
#: seconds
RETRY_BACKOFF = 86_400.0
TIMEOUT = 365 * 86_400.0
PRIORITY = 1_000_000_000
SLOTS = 4096
#: a workflow's limit on its running tasks (in all, or per category)
MAX_RUNNING = 1_000_000
#: one task as JSON, in bytes
TASK_BYTES = 1 * MIB
#: lists and objects nested in a task file (a task needs 4)
JSON_NESTING = 64
#: the results folders of the tasks one task's inputs come from, as its
#: dispatch carries them: with the task (1 MiB) well inside a boss message
SOURCES_BYTES = 1 * MIB
#: one message from a worker to the boss (``ecloud.wire.MAX_PAYLOAD``)
WORKER_MESSAGE_BYTES = 256 * KIB
#: the files a worker's report of an attempt lists as staged (the rest of
#: the 256 KiB is for the output tails and the rest of the report)
STAGED_REPORT_BYTES = 128 * KIB
#: one message from the boss to a worker (dispatches are split to fit)
BOSS_MESSAGE_BYTES = 4 * MIB


@frozen
class Row:
    what: str
    limit: str
    where: str


TABLE: tuple[Row, ...] = (
    Row("task id", f"1-{ID_LENGTH} characters of `A-Z a-z 0-9 . _ - : / @ +`; `/`-separated "
        "parts start with a letter, digit or `_`", "push"),
    Row("`command`", f"a string of at most {COMMAND_BYTES:,} bytes (UTF-8; 128 KiB less the NUL "
        f"`execve` counts), or a list of 1-{COMMAND_ARGS} strings of at most {COMMAND_BYTES:,} "
        "bytes each", "push"),
    Row("`env`", f"at most {ENV_VARS} variables; names of 1-{ENV_NAME_LENGTH} letters, digits "
        f"and `_`, not starting with a digit; values of at most {ENV_VALUE_BYTES:,} bytes "
        "(`NAME=value` is one `execve` string of at most 128 KiB)", "push"),
    Row("`depends_on`, `inputs`, `outputs`", f"at most {LIST_ENTRIES:,} entries each", "push"),
    Row("paths (`inputs`, `outputs`, `results`)", f"relative, normalized (no `.`, `..` or empty "
        f"parts), at most {PATH_BYTES:,} bytes; on the datastore (an input, `results`/output) "
        f"at most {DATASTORE_PATH_BYTES:,} bytes, leaving room for its root", "push"),
    Row("`retries`", f"0-{RETRIES:,}", "push"),
    Row("`retry_backoff`", f"0-{RETRY_BACKOFF:,.0f} seconds", "push"),
    Row("`timeout`", f"more than 0, at most {TIMEOUT:,.0f} seconds (a year), or `null`", "push"),
    Row("`priority`", f"-{PRIORITY:,} to {PRIORITY:,}", "push"),
    Row("`slots`", f"1-{SLOTS:,}", "push; a worker's announcement"),
    Row("a whole task, as JSON", f"{TASK_BYTES // MIB} MiB", "push"),
    Row("lists and objects nested in a task file", f"at most {JSON_NESTING} levels", "push"),
    Row("the `results` folders of the tasks one task's `inputs` come `from`",
        f"{SOURCES_BYTES // MIB} MiB together (its dispatch carries them)", "push"),
    Row("NUL characters", "nowhere: ids, commands, environment, paths", "push"),
    Row("context durations (`heartbeat_timeout`, `max_backoff`, ...)",
        "more than 0 (`spawn_backoff`: 0 or more), at most 31,536,000 seconds (a year)",
        "`ecloud context set`, `ecloud scale`"),
    Row("a worker's message to the boss", f"{WORKER_MESSAGE_BYTES // KIB} KiB", "the boss's edge"),
    Row("files listed as staged in a worker's report of an attempt", f"as many as fit in "
        f"{STAGED_REPORT_BYTES // KIB} KiB (the others are on the datastore, not in the log)",
        "the worker"),
    Row("a boss message to a worker", f"{BOSS_MESSAGE_BYTES // MIB} MiB (dispatches are split "
        "into several messages to fit; one dispatch always fits)", "the boss"),
)


def markdown() -> str:
    """The table as Markdown, as the README shows it."""
    lines = ["| what | limit | checked at |", "| --- | --- | --- |"]
    lines += [f"| {row.what} | {row.limit} | {row.where} |" for row in TABLE]
    return "\n".join(lines)


def utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8, without encoding it when that is sure to
    be short (a character is at most 4 bytes)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
