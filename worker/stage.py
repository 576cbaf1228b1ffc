"""The staging wrapper: a task attempt's process when data moves.

The runner starts ``python -m worker.stage PLAN`` as the attempt's process
instead of the bare command. In the attempt's own process group it

1. fetches every input from the datastore into the working directory,
   checking sha256 when the task gives one (the runner has already resolved
   an input ``from`` an upstream task to that task's results folder);
2. runs the command there, with stdout and stderr already redirected by the
   runner, and passes its exit status through;
3. after a success, pushes the declared outputs (paths or globs) and the
   attempt's stdout and stderr to the task's results folder on the datastore
   (``results/<task id>/`` unless the task file says otherwise).

Being the attempt's process is the point: a cancel or a timeout kills the
whole group, staging included, and the agent's loop never blocks on a
transfer. What moved, with checksums and byte counts, is written to
``.ecloud/staged.json`` for the runner to report; a staging failure exits
with :data:`STAGING_FAILED` after writing its reason to ``.ecloud/failure``,
so the attempt fails with that reason (and is retried per the task's policy).
A transfer never leaves a partial file under its final name (the movers
write to a temporary name and rename).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ecloud.effects.movers import StagingError, Transfer, mover_for

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
    """The files the output patterns name, relative to ``cwd``, sorted; a
    pattern that matches nothing is an error (a declared output is missing)."""
    found: set[str] = set()
    for pattern in patterns:
        matches = [m for m in glob.glob(pattern, root_dir=cwd, recursive=True)
                   if not m.startswith(META)]
        if not matches:
            raise StagingError("missing", f"declared output {pattern!r} was not produced")
        found.update(matches)
    return sorted(found)


def stage_out(plan: dict, cwd: Path, mover) -> list[dict]:
    staged = []
    for rel in outputs_of(plan["outputs"], cwd) + ["stdout", "stderr"]:
        transfer = mover.push(cwd / rel, f"{plan['results']}/{rel}")
        staged.append(_record(transfer, "out", rel))
    return staged


def run(plan: dict, cwd: Path) -> int:
    meta = cwd / META
    meta.mkdir(exist_ok=True)
    staged: list[dict] = []

    def save() -> None:
        (meta / "staged.json").write_text(json.dumps(staged))

    try:
        with mover_for(plan["datastore"], key_file=plan.get("key_file")) as mover:
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
    except StagingError as exc:
        save()
        (meta / "failure").write_text(f"staging ({exc.kind}): {exc.reason}")
        return STAGING_FAILED


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    sys.exit(run(plan, Path(os.getcwd())))


if __name__ == "__main__":
    main()
