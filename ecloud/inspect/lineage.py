"""Provenance: which attempt produced a task's result files, from which
inputs with which checksums - followed back through the DAG.

Every staged file is in the log (``task.finished``'s ``staged``), so the
lineage of a result is a walk over those events: a file the task read from
``results/<upstream>/...`` was written by the upstream's succeeding
attempt, whose own inputs lead further back.
"""

from __future__ import annotations

from typing import Any

from ecloud.log.store import LogStore


def producers(store: LogStore, until: int | None = None) -> dict[str, dict[str, Any]]:
    """Datastore path -> the last successful attempt that wrote it:
    ``{"task", "attempt", "seq", "sha256", "bytes", "inputs": [...]}``."""
    made: dict[str, dict[str, Any]] = {}
    for rec in store.read(1, until, types=["task.finished"]):
        e = rec.event
        if e.exit_code != 0 or not e.staged:
            continue
        inputs = [{"path": f.path, "name": f.name, "sha256": f.sha256, "bytes": f.bytes}
                  for f in e.staged if f.direction == "in"]
        for f in e.staged:
            if f.direction == "out":
                made[f.path] = {"task": e.task_id, "attempt": e.attempt, "seq": rec.seq,
                                "sha256": f.sha256, "bytes": f.bytes, "name": f.name,
                                "inputs": inputs}
    return made


def lineage(store: LogStore, task_id: str, until: int | None = None,
            depth: int = 20) -> list[dict[str, Any]]:
    """The task's result files, each with the inputs it came from and, for an
    input another task produced, that producer's lineage (checksums compared)."""
    made = producers(store, until)

    def trace(path: str, level: int) -> dict[str, Any]:
        node = dict(made[path], path=path)
        if level < depth:
            for inp in node["inputs"]:
                source = made.get(inp["path"])
                if source is not None:
                    inp["produced_by"] = trace(inp["path"], level + 1)
                    inp["matches"] = source["sha256"] == inp["sha256"]
        return node

    return [trace(path, 0) for path, info in sorted(made.items()) if info["task"] == task_id]


def lineage_lines(nodes: list[dict[str, Any]], indent: str = "") -> list[str]:
    """The lineage for a person, one line per file."""
    lines = []
    for node in nodes:
        lines.append(f"{indent}{node['path']} sha256:{node['sha256'][:12]} {node['bytes']} B "
                     f"<- {node['task']} attempt {node['attempt']} (seq {node['seq']})")
        for inp in node["inputs"]:
            check = {True: "", False: " CHECKSUM DIFFERS from what was produced"}.get(
                inp.get("matches"), "")
            lines.append(f"{indent}    from {inp['path']} sha256:{inp['sha256'][:12]}{check}")
            if "produced_by" in inp:
                lines += lineage_lines([inp["produced_by"]], indent + "        ")
    return lines
