"""Write the generated state tables into README.md and docs/architecture.md
(``python -m tests.support.tables``): between each ``<!-- NAME-transitions
... -->`` marker and its end, the table :func:`ecloud.projections.transitions.markdown`
renders. tests/test_transitions.py checks that the files hold what this writes."""

from __future__ import annotations

import re
from pathlib import Path

from ecloud.projections.transitions import (
    ATTEMPT_MOVES,
    TASK_MOVES,
    VM_MOVES,
    WORKER_MOVES,
    Move,
    markdown,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", ROOT / "docs" / "architecture.md")
TABLES: dict[str, tuple[Move, ...]] = {"task": TASK_MOVES, "attempt": ATTEMPT_MOVES,
                                       "worker": WORKER_MOVES, "vm": VM_MOVES}


def block(marker: str) -> re.Pattern[str]:
    """The generated part of a document for the table ``marker``."""
    return re.compile(rf"(<!-- {marker}-transitions:[^\n]*-->\n)(.*?)(<!-- /{marker}-transitions -->)",
                      re.S)


def refresh() -> list[str]:
    """Rewrite every table in place; the names of the files changed."""
    changed = []
    for doc in DOCS:
        text = doc.read_text()
        new = text
        for marker, moves in TABLES.items():
            table = markdown(moves)
            new = block(marker).sub(lambda m, t=table: m.group(1) + t + m.group(3), new)
        if new != text:
            doc.write_text(new)
            changed.append(doc.name)
    return changed


if __name__ == "__main__":
    print("rewrote:", ", ".join(refresh()) or "nothing")
