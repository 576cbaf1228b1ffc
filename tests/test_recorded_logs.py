"""Recorded histories replayed on every change (see tests/logs/record.py).

If one of these fails, a reducer change alters how an existing log folds:
that needs a new REDUCER_VERSION (old snapshots must not be trusted) and a
deliberate re-record - never a silent one.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from ecloud.events.codec import decode
from ecloud.events.types import Recorded
from ecloud.projections.fold import fold_with_effects
from ecloud.projections.snapshot import canonical
from tests.logs.record import state_digest

LOGS = sorted(Path(__file__).parent.joinpath("logs").glob("*.jsonl"))


def read_jsonl(path: Path) -> list[Recorded]:
    out = []
    for line in path.read_text().splitlines():
        row = orjson.loads(line)
        out.append(Recorded(row["seq"], row["ts"],
                            decode(row["type"], row["version"], row["body"], row["seq"])))
    return out


def test_there_are_recorded_logs() -> None:
    assert LOGS


@pytest.mark.parametrize("path", LOGS, ids=[p.stem for p in LOGS])
def test_recorded_log_folds_as_recorded(path: Path) -> None:
    expected = json.loads(path.with_suffix("").with_suffix(".expected.json").read_text())
    state, effects = fold_with_effects(read_jsonl(path))
    assert len(effects) == expected["effects"]
    if "state" in expected:
        # through JSON, as recorded, so tuples and lists compare alike
        assert json.loads(json.dumps(canonical(state))) == expected["state"]
    else:  # a real run: its counts, and the fingerprint of the whole state
        assert dict(sorted(state.counts.items())) == expected["counts"]
        assert state_digest(state) == expected["state_sha256"]
