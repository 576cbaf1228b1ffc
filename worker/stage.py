"""The staging wrapper: a task attempt's process when data moves.

The runner starts ``python -m ecloud_worker.stage PLAN`` as the attempt's process
instead of the bare command. In the attempt's own process group it

1. fetches every input from the datastore into the working directory,
   checking sha256 when the task gives one (the runner has already resolved
   an input ``from`` an upstream task to that task's results folder);
2. runs the command there, with stdout and stderr already redirected by the
   runner, and passes its exit status through;
3. after a success, pushes the declared outputs (paths or globs) and the
   attempt's stdout and stderr to the task's results folder on the datastore
   (``results/<task id>/`` unless the task file says otherwise) - each push
   only into a root that still holds the datastore's marker (the root may
   have gone while the command ran: unmounted, renamed), each copy read
   back on the datastore before it takes its name.

Being the attempt's process is the point: a cancel or a timeout kills the
whole group, staging included, and the agent's loop never blocks on a
transfer. What moved, with checksums and byte counts, is written to
``.ecloud/staged.json`` for the runner to report; a staging failure exits
with :data:`STAGING_FAILED` after writing its reason to ``.ecloud/failure``,
so the attempt fails with that reason (and is retried per the task's policy).
A transfer never leaves a partial file under its final name (the movers
write to a temporary name and rename).

A task with scripts or a workdir of its own runs in the node wrapper
instead (:mod:`ecloud_worker.node`), which takes these steps from here
(:func:`stage_in`, :func:`stage_out`, :func:`failed`) and runs them between
its scripts: one wrapper process per attempt, never two.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from ecloud.effects.data.movers import StagingError, Transfer, mover_for

STAGING_FAILED = 97  # exit status: the reason is in .ecloud/failure
META = ".ecloud"


def _record(transfer: Transfer, direction: str, name: str) -> dict[str, Any]:
    return {"direction": direction, "name": name, "path": transfer.path,
            "sha256": transfer.sha256, "bytes": transfer.bytes,
            "seconds": round(transfer.seconds, 3)}


def stage_in(plan: dict, cwd: Path, mover) -> list[dict]:
    staged = []
    for item in plan["inputs"]:
        name = item.get("name") or Path(item["path"]).name
        transfer = mover.fetch(item["source"], cwd / name, item.get("sha256"))
        staged.append(_record(transfer, "in", name))
    return staged


def outputs_of(patterns: list[str], cwd: Path) -> list[str]:
    """The files and directories the output patterns name, relative to
    ``cwd``, sorted; a pattern that matches nothing is an error (a declared
    output is missing). Patterns are globs (``*``, ``?``, ``[...]`` within a
    name, ``**`` across directories); the working directory is walked once,
    without following symbolic links, so a link loop there costs nothing
    (what a matched directory holds is checked when it is pushed)."""
    paths = _paths_under(cwd)
    found: set[str] = set()
    for pattern in patterns:
        match = _glob_regex(pattern).fullmatch
        matches = [p for p in paths if match(p)]
        if not matches:
            raise StagingError("missing", f"declared output {pattern!r} was not produced")
        found.update(matches)
    return sorted(found)


def _paths_under(cwd: Path) -> list[str]:
    """Every file and directory under ``cwd`` (relative, ``/``-separated),
    but the staging folder; symbolic links are listed, never followed."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(cwd, followlinks=False):
        base = os.path.relpath(dirpath, cwd)
        if base == ".":
            dirnames[:] = [d for d in dirnames if d != META]
            base = ""
        for name in dirnames + filenames:
            paths.append(f"{base}/{name}" if base else name)
    return paths


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` as a regular expression over ``/``-separated paths."""
    out = []
    parts = pattern.split("/")
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:.*/)?")
            continue
        out.append(_segment(part) + ("" if last else "/"))
    return re.compile("".join(out))


def _segment(part: str) -> str:
    """One path segment of a glob as a regex (no ``/`` matched)."""
    regex = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            regex.append("[^/]*")
        elif c == "?":
            regex.append("[^/]")
        elif c == "[" and (end := part.find("]", i + 2)) > 0:
            inner = part[i + 1:end]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            regex.append("[" + inner.replace("\\", "\\\\") + "]")
            i = end
        else:
            regex.append(re.escape(c))
        i += 1
    return "".join(regex)


def stage_out(plan: dict, cwd: Path, mover, attempt_dir: Path | None = None) -> list[dict]:
    """Push the declared outputs (found in ``cwd``, the process working
    directory) and the attempt's ``stdout`` and ``stderr`` (in
    ``attempt_dir``, the same directory unless the task names a workdir)."""
    staged = []
    logs = cwd if attempt_dir is None else attempt_dir
    for base, rel in [(cwd, rel) for rel in outputs_of(plan["outputs"], cwd)] + \
            [(logs, "stdout"), (logs, "stderr")]:
        transfer = mover.push(base / rel, f"{plan['results']}/{rel}")
        staged.append(_record(transfer, "out", rel))
    return staged


def failed(meta: Path, exc: Exception) -> str:
    """Write why staging failed to ``.ecloud/failure`` (the runner's
    ``reason``) and return it."""
    if isinstance(exc, StagingError):
        text = f"staging ({exc.kind}): {exc.reason}"
    else:  # the system refused a path or a file: a reason, not a traceback
        text = f"staging (error): {exc}"
    try:
        (meta / "failure").write_text(text)
    except OSError:
        pass  # the task removed .ecloud: the node wrapper reports the reason all the same
    return text


def run(plan: dict, cwd: Path) -> int:
    meta = cwd / META
    meta.mkdir(exist_ok=True)
    staged: list[dict] = []

    def save() -> None:
        (meta / "staged.json").write_text(json.dumps(staged))

    try:
        with mover_for(plan["datastore"], key_file=plan.get("key_file"),
                       identity=plan.get("datastore_id") or None) as mover:
            mover.identify()  # a root gone before the start: say so, not "no such input"
            staged += stage_in(plan, cwd, mover)
            save()
            command = plan["command"]
            argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
            status = subprocess.call(argv, cwd=cwd)
            if status != 0:
                return status if status > 0 else 128 - status
            sys.stdout.flush()
            sys.stderr.flush()
            staged += stage_out(plan, cwd, mover)
            save()
            return 0
    except (StagingError, OSError) as exc:
        save()
        failed(meta, exc)
        return STAGING_FAILED


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    sys.exit(run(plan, Path(os.getcwd())))


if __name__ == "__main__":
    main()
