"""Write the recorded histories under tests/logs/ (run by hand, on purpose).

    python -m tests.logs.record                    # the hand-written history, and what
                                                   # the real runs fold to now
    ECLOUD_RECORD_LOGS=DIR pytest tests/chaos      # real runs, to copy from DIR

The hand-written history walks through rare transitions on purpose; the real
ones are logs of the chaos suite's runs (boss SIGKILLs, worker kills, a
standby takeover), with the timing and interleaving only real processes give.

Each history is a JSON-lines event log in the ``ecloud log --json`` format,
plus ``NAME.expected.json``: the canonical state and effect count the fold
produced when it was recorded. ``tests/test_recorded_logs.py`` replays them
on every change: a reducer change that alters how an old log folds fails
there, and must come with a new REDUCER_VERSION and a deliberate re-record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson

from ecloud.events import types as ev
from ecloud.events.codec import converter
from ecloud.events.types import Recorded, TaskSpec
from ecloud.projections.fold import fold_with_effects
from ecloud.projections.snapshot import canonical
from tests.support.folding import Driver

HERE = Path(__file__).parent


def eventful_run() -> Driver:
    """A diamond and a fan-out through a failure and retry after backoff, a
    lost worker and its late result, a timeout, a cancel, an operator retry,
    a boss restart and a dispatch queued ahead and given back."""
    d = Driver()
    st = d.statuses
    d.apply(ev.ContextSet("datastore_address", "data.example:/srv/data"))
    d.apply(ev.TasksSubmitted("b1", (
        TaskSpec("a", "echo a > a.txt", outputs=("a.txt",)),
        TaskSpec("b", ["sh", "-c", "exit 0"], depends_on=("a",), priority=2),
        TaskSpec("c", "flaky", depends_on=("a",), retries=2, retry_backoff=5.0),
        TaskSpec("d", "true", depends_on=("b", "c"), timeout=20.0),
    ), "examples/diamond.json"))
    d.apply(ev.WorkerAnnounced("w1", "host1", 2, 1, "i1", msg_id="w1-1"))
    d.apply(ev.WorkerAnnounced("w2", "host2", 1, 1, "j1", msg_id="w2-1"))
    d.schedule()
    d.apply(ev.TaskStarted("a", 1, "w1", "m1"), dt=1)
    d.apply(ev.TaskFinished("a", 1, "w1", 0, 1.0, stdout_tail="a\n", msg_id="m2"), dt=1)
    d.schedule()
    assert (d.state.tasks["b"].worker, d.state.tasks["c"].worker) == ("w1", "w1")
    d.apply(ev.TaskStarted("b", 1, "w1", "m3"), dt=1)
    d.apply(ev.TaskStarted("c", 1, "w1", "m4"), dt=1)
    d.apply(ev.TaskFinished("c", 1, "w1", 1, 0.5, stderr_tail="boom\n", msg_id="m5"), dt=1)
    assert st()["c"] == "ready" and d.state.tasks["c"].not_before is not None
    d.apply(ev.WorkerHeartbeat("w2"), dt=6)  # backoff over
    d.apply(ev.WorkerHeartbeat("w1"))
    d.schedule()
    assert d.state.tasks["c"].worker == "w1"  # w1 first: packing
    d.apply(ev.TaskFinished("b", 1, "w1", 0, 3.0, msg_id="m6"), dt=1)
    d.apply(ev.WorkerLost("w1", "last will: connection closed"), dt=1)
    assert st()["c"] == "ready"
    d.schedule()
    assert (d.state.tasks["c"].worker, d.state.tasks["c"].attempt) == ("w2", 3)
    d.apply(ev.TaskFinished("c", 2, "w1", 0, 9.0, msg_id="m7"))  # late: ignored
    assert st()["c"] == "dispatched"
    d.apply(ev.TaskStarted("c", 3, "w2", "n1"), dt=1)
    d.apply(ev.TaskFinished("c", 3, "w2", 0, 2.0, msg_id="n2"), dt=1)
    d.schedule()
    d.apply(ev.TaskStarted("d", 1, "w2", "n3"), dt=1)
    d.apply(ev.WorkerHeartbeat("w2"), dt=25)
    d.apply(ev.WorkerHeartbeat("w2"), dt=26)  # 20 s timeout + 30 s grace passed
    assert st()["d"] == "failed"
    d.apply(ev.TaskFinished("d", 1, "w2", None, 51.0, signal=9, reason="timeout", msg_id="n4"))
    d.apply(ev.TasksSubmitted("b2", tuple(
        TaskSpec(f"fan{i}", f"echo {i}", depends_on=("a",)) for i in range(3))))
    d.apply(ev.TaskCancelled("fan2", "not needed"))
    d.schedule()
    d.apply(ev.TaskFinished("fan0", 1, "w2", 0, msg_id="n5"), dt=1)
    d.apply(ev.RetryRequested("d"))
    d.apply(ev.BossStarted("boss-2"), dt=300)
    assert d.state.workers["w2"].status == "idle"
    d.apply(ev.InputRejected("mqtt", "payload too large", "{...}"))
    d.schedule()
    # w2's last task was quick: fan1 queues ahead behind d, waits, is given back
    assert (d.state.tasks["fan1"].worker, st()["fan1"]) == ("w2", "dispatched")
    d.apply(ev.TaskFinished("fan1", 1, "w2", None, 0.0, reason="given back unstarted",
                            returned=True, msg_id="n6"), dt=2)
    assert st() == {"a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "dispatched",
                    "fan0": "succeeded", "fan1": "ready", "fan2": "cancelled"}
    return d


def write(name: str, d: Driver) -> None:
    write_log(HERE / name, d.log)
    expected = {"effects": len(d.effects), "state": canonical(d.state)}
    (HERE / f"{name}.expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True))


def write_log(stem: Path, log: list[Recorded]) -> None:
    lines = []
    for rec in log:
        body = converter.unstructure(rec.event)
        lines.append(orjson.dumps({"seq": rec.seq, "ts": rec.ts, "type": rec.event.TYPE,
                                   "version": rec.event.VERSION, "body": body}).decode())
    stem.with_name(stem.name + ".jsonl").write_text("\n".join(lines) + "\n")


def state_digest(state) -> str:
    """A fingerprint of the canonical state (a real run's state is too big to
    keep in full beside its log)."""
    text = json.dumps(canonical(state), sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def record_run(stem: Path, log: list[Recorded]) -> None:
    """Keep a real run's log with what it folds to now."""
    write_log(stem, log)
    write_expected(stem, log)


def write_expected(stem: Path, log: list[Recorded]) -> None:
    """``NAME.expected.json`` for a real run: what its log folds to now."""
    state, effects = fold_with_effects(log)
    expected = {"effects": len(effects), "counts": dict(sorted(state.counts.items())),
                "state_sha256": state_digest(state)}
    stem.with_name(stem.name + ".expected.json").write_text(json.dumps(expected, indent=1))


def refresh_expected() -> list[str]:
    """Recompute the ``.expected.json`` of every recorded real run (the
    ``chaos-*`` logs) from its ``.jsonl``, which stays exactly as it was.

    Only for a deliberate reducer change - one that comes with a new
    REDUCER_VERSION and that you mean to make old logs fold differently (say
    new fields in the state). Never run it to make a failing
    ``tests/test_recorded_logs.py`` pass without knowing why it fails."""
    from tests.test_recorded_logs import read_jsonl

    names = []
    for path in sorted(HERE.glob("chaos-*.jsonl")):
        stem = path.with_suffix("")
        write_expected(stem, read_jsonl(path))
        names.append(stem.name)
    return names


if __name__ == "__main__":
    write("eventful-run", eventful_run())
    refresh_expected()
