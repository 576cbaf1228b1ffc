"""The state tables (ecloud/projections/transitions.py): the README shows it
as the code has it, and the reducers never move a task outside it - the
fold's property tests (tests/test_fold_properties.py, test_fold_machine.py)
fail on any refusal of the fold, and a move outside the table is one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ecloud.errors import ReducerBug
from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.projections import transitions
from ecloud.projections.state import (
    ATTEMPT_NONE,
    ATTEMPT_STATUSES,
    TASK_STATUSES,
    VM_ALLOCATED,
    VM_FAILED,
    VM_GONE,
    VM_KILLING,
    VM_OBSERVED,
    VM_REQUESTED,
    WORKER_STATUSES,
)
from ecloud.projections.transitions import (
    ATTEMPT_MOVES,
    RETRY,
    TASK_MOVES,
    VM_MOVES,
    WORKER_MOVES,
    markdown,
    move_task,
)
from tests.support import tables
from tests.support.folding import Driver

README = Path(__file__).resolve().parent.parent / "README.md"
ARCHITECTURE = README.parent / "docs" / "architecture.md"
VM_STATUSES = (VM_REQUESTED, VM_ALLOCATED, VM_OBSERVED, VM_FAILED, VM_KILLING, VM_GONE)


@pytest.mark.parametrize("marker", sorted(tables.TABLES))
def test_the_docs_show_the_tables_of_the_code(marker: str) -> None:
    for doc in (README, ARCHITECTURE):
        found = tables.block(marker).search(doc.read_text())
        assert found, f"{doc.name} lacks the generated {marker} table"
        assert found.group(2) == markdown(tables.TABLES[marker]), (
            f"{doc.name}'s {marker} table differs from ecloud/projections/transitions.py: "
            "run python -m tests.support.tables")


def test_the_table_names_only_task_statuses_and_every_cause_is_used() -> None:
    for move in TASK_MOVES:
        assert set(move.sources) | {move.target} <= set(TASK_STATUSES), move
        assert move.target not in move.sources, move  # a move moves
    for move in VM_MOVES:
        assert set(move.sources) | {move.target} <= set(VM_STATUSES), move
        assert move.target not in move.sources, move
    for move in WORKER_MOVES:
        assert set(move.sources) | {move.target} <= set(WORKER_STATUSES), move
        assert move.target not in move.sources, move
    for move in ATTEMPT_MOVES:
        assert set(move.sources) | {move.target} <= {ATTEMPT_NONE, *ATTEMPT_STATUSES}, move
        assert move.target not in move.sources, move
    causes = {m.cause for m in TASK_MOVES + VM_MOVES + WORKER_MOVES + ATTEMPT_MOVES}
    names = [n for n in dir(transitions) if n.isupper() and isinstance(getattr(transitions, n), str)
             and getattr(transitions, n) in causes
             and getattr(transitions, n) not in TASK_STATUSES + VM_STATUSES + WORKER_STATUSES
             + ATTEMPT_STATUSES]
    assert {getattr(transitions, n) for n in names} == causes
    code = "".join(p.read_text() for p in (Path(transitions.__file__).parent).glob("*.py")
                   if p.name != "transitions.py")
    unused = [n for n in names if not re.search(rf"\b{n}\b", code)]
    assert unused == []  # every cause is one a reducer names


def test_a_move_outside_the_table_raises_before_anything_changes() -> None:
    d = Driver()
    d.apply(ev.TasksSubmitted("b", (TaskSpec("a", "true"), TaskSpec("b", "true", ("a",)))))
    state = d.state
    waiting = state.tasks["b"]
    counts = dict(state.counts)
    with pytest.raises(ReducerBug, match="no move from waiting to ready on 'failed, retries left'"):
        move_task(state, waiting, "ready", RETRY)
    assert waiting.status == "waiting" and dict(state.counts) == counts
