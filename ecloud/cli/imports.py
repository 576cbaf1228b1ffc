"""``ecloud import``: task files made from workflows described elsewhere.

``ecloud import wfformat INSTANCE -o FILE`` reads a WfCommons workflow
instance, converts it (:mod:`ecloud.taskfiles.wfformat`, which is pure),
checks the result with the task-file validator ``ecloud push`` uses, writes
it atomically (a temporary file renamed into place; an existing FILE only
with ``--force``) and reports what was imported and what was not.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click

from ecloud.cli.common import handle_errors
from ecloud.errors import UserError, ValidationError

#: what each kind of note in the report means (``ignored:`` and ``unknown:``
#: notes name the field themselves)
NOTES = {
    "no_execution": "no workflow.execution: no runtimes, commands or cores recorded",
    "version": "a schemaVersion that does not usually come with this layout (read by its "
               "layout)",
    "stray_execution": "execution entries for no task, or for one described already (ignored)",
    "machines": "machines described (ecloud places tasks on its own workers)",
    "bad_link": 'files whose "link" is neither input nor output (ignored)',
    "one_sided": "dependencies declared only in a parent's children or only in a child's "
                 "parents (the union is used)",
    "implied": "dependencies added because a task reads a file another task writes",
    "many_writers": "files written by several tasks (a reader takes a parent's, else the "
                    "first writer's)",
    "inputs_left_out": "workflow input files (no task writes them) left out of inputs: the "
                       "commands find them only if they are there (see --inputs-from)",
    "inputs_from": "workflow input files taken from the datastore folder given",
    "ids_mapped": "task ids changed to fit ecloud's alphabet",
    "id_collisions": "task ids made unique with a suffix",
    "paths_mapped": "file names changed to safe relative paths",
    "path_collisions": "file paths made unique with a suffix",
    "no_size": "files without a recorded size (a replay writes them empty)",
    "bad_size": "file sizes that are not a number >= 0 (a replay writes them empty)",
    "no_runtime": "tasks without a recorded runtime (a replay sleeps 0 s)",
    "bad_runtime": "runtimes that are not a number >= 0 (a replay sleeps 0 s)",
    "no_program": "recorded arguments without a program (no command)",
    "bad_command": "recorded commands that are not a program and its arguments (no command)",
    "program_repeated": "recorded commands whose first argument is the program again (taken "
                        "as the program)",
    "shell": "recorded commands with shell operators such as 2> (run by /bin/sh)",
    "cores_rounded": "fractional core counts rounded up to whole slots",
    "cores_capped": "core counts outside ecloud's 1-4096 slots (capped)",
    "bad_cores": "core counts that are not numbers (1 slot)",
    "priority_rounded": "fractional priorities rounded",
    "priority_capped": "priorities beyond ecloud's range (capped)",
    "bad_priority": "priorities that are not numbers (0)",
}


def describe(kind: str) -> str:
    """What a note of the report means, in words."""
    if kind.startswith("ignored:"):
        return f"not carried over: {kind.removeprefix('ignored:')}"
    if kind.startswith("unknown:"):
        return f"unknown field (ignored): {kind.removeprefix('unknown:')}"
    return NOTES.get(kind, kind)


def _scale(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (0 <= value < float("inf")):  # NaN passes a FloatRange
        raise click.BadParameter(f"{value} is not a finite number >= 0", ctx, param)
    return value


@click.group("import")
def import_group() -> None:
    """Make task files from workflows described in other formats."""


@import_group.command("wfformat")
@click.argument("instance", metavar="INSTANCE.json")
@click.option("--output", "-o", required=True, metavar="FILE",
              help="Write the task file here (- for standard output).")
@click.option("--replay-runtimes", "scale", type=float, metavar="SCALE", callback=_scale,
              help="Instead of the recorded commands, run commands that sleep each task's "
                   "recorded runtime times SCALE (a number >= 0), then write each of its "
                   "recorded output files at its recorded size.")
@click.option("--inputs-from", metavar="DIR",
              help="Take the workflow's input files (those no task writes) from this folder "
                   "of the datastore. Default: leave them out of the tasks' inputs.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object on standard output instead of text "
                   "on standard error.")
@handle_errors
def wfformat(instance: str, output: str, scale: float | None, inputs_from: str | None,
             force: bool, as_json: bool) -> None:
    """Convert a WfCommons workflow instance (WfFormat or WorkflowHub JSON) into a task file.

    One task per workflow task, with its dependencies (the parents and
    children lists, and the files tasks pass each other: a file a task
    writes is one of its outputs, and an input of each task that reads it).
    Each task runs its recorded command; a task without one needs
    --replay-runtimes. The report on standard error says what was not
    carried over: machines, memory, measured metrics, unknown fields, ids
    and file names that had to change.
    """
    if output == "-" and as_json:
        raise UserError("-o - and --json both write to standard output: give -o FILE")
    target = None if output == "-" else Path(output)
    if (target is not None and instance != "-" and target.exists()
            and target.resolve() == Path(instance).resolve()):
        raise UserError(f"{output} is the instance being read: give another -o FILE")
    if target is not None and not force and (target.exists() or target.is_symlink()):
        raise UserError(f"{output} exists: give --force to overwrite it")
    from ecloud.taskfiles import wfformat as converter
    from ecloud.taskfiles.taskfile import parse_tasks

    source = "<stdin>" if instance == "-" else instance
    data = converter.load_instance(_read(instance), source)
    tasks, report = converter.convert(data, source=source, replay_scale=scale,
                                      inputs_from=inputs_from)
    try:  # what `ecloud push` would say of the file, before it is written
        parse_tasks({"tasks": tasks}, source=f"{source} (converted)")
    except ValidationError as exc:
        raise ValidationError([*exc.problems, "the instance converts into tasks that ecloud "
                               "refuses (see the limits in the README's \"Task files\")"],
                              source=exc.source) from None
    import orjson

    body = orjson.dumps({"tasks": tasks}, option=orjson.OPT_INDENT_2) + b"\n"
    if target is None:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    else:
        write_atomically(target, body, force)
    summary = {**report.as_dict(), "source": source, "output": output}
    for note in summary["notes"]:
        note["what"] = describe(note["kind"])
    if as_json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        for line in report_lines(summary):
            click.echo(line, err=True)


def _read(instance: str) -> bytes:
    if instance == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(instance).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {instance}: {exc.strerror or exc}") from None


def write_atomically(target: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to a temporary file beside ``target``, then give it
    ``target``'s name: replacing it (``force``), or only if there is none
    (a hard link fails on an existing name; a filesystem without hard links
    is checked first instead). A reader never sees a half-written file."""
    temporary = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if force:
            os.replace(temporary, target)
            return
        try:
            os.link(temporary, target)
        except FileExistsError:
            raise UserError(f"{target} exists: give --force to overwrite it") from None
        except OSError:  # no hard links here
            if target.exists() or target.is_symlink():
                raise UserError(f"{target} exists: give --force to overwrite it") from None
            os.replace(temporary, target)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        temporary.unlink(missing_ok=True)


def report_lines(summary: dict[str, Any]) -> list[str]:
    """The report as text: what was made, from what, and every note."""
    version = f" {summary['schema_version']}" if summary["schema_version"] else ""
    name = f", {summary['name']!r}" if summary["name"] else ""
    where = "standard output" if summary["output"] == "-" else summary["output"]
    lines = [
        f"{where}: {summary['tasks']} task(s), {summary['edges']} dependencies, "
        f"{summary['files']} file(s) ({summary['produced_files']} written by tasks, "
        f"{summary['workflow_inputs']} workflow input(s))",
        f"  from {summary['source']} ({summary['format']}, schemaVersion{version or ' none'}"
        f"{name}); {summary['total_runtime_seconds']:,.2f} s of recorded runtime",
    ]
    scale = summary["replay_scale"]
    lines.append("  commands: the recorded ones" if scale is None else
                 f"  commands: replays of the recorded runtimes x {scale:g} "
                 f"(about {summary['total_runtime_seconds'] * scale:,.2f} s of work) and "
                 "output sizes")
    if summary["max_slots"] > 1:
        lines.append(f"  some tasks need {summary['max_slots']} slots: run workers with "
                     f"--slots {summary['max_slots']} or more")
    if summary["notes"]:
        lines.append("  not carried over, or changed:")
    for note in summary["notes"]:
        example = f" (e.g. {note['example']})" if note["example"] else ""
        lines.append(f"    - {note['what']}: {note['count']:,}{example}")
    return lines
