"""``ecloud graph``: the DAG with task states as Graphviz DOT, SVG or PNG."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

from ecloud.cli.common import (
    common_options,
    err,
    handle_errors,
    log_store,
    progress_bar,
)
from ecloud.errors import UserError
from ecloud.log.rebuild import load_state
from ecloud.views import dag

FORMATS = ("dot", "svg", "png")


def render_with_graphviz(dot: str, fmt: str) -> bytes:
    """Lay out and draw DOT with Graphviz's ``dot``; a clear error if it is
    not installed or fails."""
    program = shutil.which("dot")
    if program is None:
        raise UserError(f"--format {fmt} needs Graphviz's `dot` on PATH (Debian: apt-get install "
                        "graphviz); --format dot works without it")
    done = subprocess.run([program, f"-T{fmt}"], input=dot.encode(), capture_output=True,
                          timeout=600, check=False)
    if done.returncode != 0:
        raise UserError(f"Graphviz failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


@click.command("graph")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format. Default: from --output's suffix, else dot.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")
@click.option("--group", "mode", type=click.Choice(dag.MODES), default="auto", show_default=True,
              help=f"One node per task, per task-name pattern (digits as #) or per level; auto "
                   f"groups when there are more than {dag.MAX_NODES} nodes.")
@click.option("--until", type=click.IntRange(min=0), metavar="SEQ",
              help="The task states as they were right after this seq (default: head).")
@common_options
@handle_errors
def graph(fmt: str | None, output: Path | None, mode: str, until: int | None, db: str | None,
          config_path: str | None) -> None:
    """Export the task DAG with each task's state (or each group's counts)."""
    if fmt is None:
        suffix = output.suffix.lstrip(".").lower() if output else ""
        fmt = suffix if suffix in FORMATS else "dot"
    with log_store(db, config_path, create=False) as store:
        head = store.head()
        if until is not None and until > head:
            raise UserError(f"--until {until} is past the end of the log (head is seq {head})")
        with progress_bar("reading the log") as progress:
            state = load_state(store, until, progress=progress)
    dot = dag.to_dot(dag.build(state, mode), title=f"ecloud at seq {state.seq}")
    data = dot.encode() if fmt == "dot" else render_with_graphviz(dot, fmt)
    if output is None:
        if fmt == "png" and sys.stdout.isatty():
            raise UserError("PNG is binary: give --output FILE (or redirect standard output)")
        sys.stdout.buffer.write(data)
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror}") from None
    err.print(f"wrote {output} ({len(state.tasks)} tasks, seq {state.seq})", markup=False)
