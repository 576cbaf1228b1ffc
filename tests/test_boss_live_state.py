"""The boss's live state is the log's state.

The boss folds the batch it has just appended from the events it holds
instead of reading them back (they are not decoded a second time), and the
scheduler's decisions ride with the next batch instead of a commit of their
own. Neither may change what the state is: after a real run with failures,
retries and two workers, the state the running boss holds must equal a fresh
replay of its log, field for field.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ecloud.boss.loop import Boss
from ecloud.cli.boss import request_local_vms
from ecloud.effects.providers.local import LocalProvider
from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store
from ecloud.projections.snapshot import canonical
from ecloud.taskfiles.submit import submit_tasks
from ecloud.taskfiles.taskfile import parse_tasks
from tests.support.brokers import wait_for
from tests.support.e2e import random_dag


def test_the_running_boss_holds_exactly_the_state_its_log_replays_to(sqlite_url, broker,
                                                                      tmp_path: Path) -> None:
    # a third of the tasks fail once (they leave a marker), then succeed on the retry
    marks = tmp_path / "marks"
    marks.mkdir()

    def command(rng) -> str:
        if rng.random() < 0.66:
            return "true"
        mark = marks / str(rng.randrange(10**9))
        return f"test -e {mark} || {{ touch {mark}; exit 3; }}"

    tasks = random_dag(60, seed=7, command=command)
    for task in tasks:
        task["retries"] = 2
        task["retry_backoff"] = 0
    with open_store(sqlite_url) as store:
        submit_tasks(store, parse_tasks(tasks), "test")
    provider = LocalProvider(broker.url, "live", slots=2, work_root=tmp_path / "workers")
    boss = Boss(sqlite_url, broker.url, provider=provider, cluster="live", poll=0.05,
                on_start=lambda state: request_local_vms(state, provider, 2, "test"))
    thread = threading.Thread(target=boss.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: boss.ready.is_set() or boss.finished.is_set(), 30, "the boss ready")
        wait_for(lambda: boss.view.get("counts", {}).get("succeeded") == 60 or boss.finished.is_set(),
                 120, "every task succeeded")
    finally:
        boss.stop()
        thread.join(60)
        provider.close(stop_workers=True)
    assert boss.error is None, boss.error
    with open_store(sqlite_url) as store:
        replayed = load_state(store, use_snapshot=False)
    assert replayed.counts["succeeded"] == 60
    assert any(t.attempt > 1 for t in replayed.tasks.values())
    assert boss.state.seq == replayed.seq
    assert canonical(boss.state) == canonical(replayed)
