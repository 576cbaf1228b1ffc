"""The autoscaler (ecloud/projections/autoscale.py): properties over
generated histories, the policy's rules one example each, and `ecloud scale`."""

from __future__ import annotations

import json

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecloud.cli import render
from ecloud.cli.main import cli
from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.log.url import open_store
from ecloud.projections.autoscale import autoscale, cloud_ceiling, next_deadline, pool
from ecloud.projections.effects import KillVM, SpawnVM
from ecloud.projections.fold import fold, fold_with_effects, step
from ecloud.projections.outstanding import outstanding
from ecloud.projections.reconcile import reconcile
from ecloud.projections.scheduler import schedule
from ecloud.projections.snapshot import canonical, clone_state, dump, load
from ecloud.projections.state import ACTIVE, DRAINING, FINAL, LIVE, State
from ecloud.projections.timers import next_deadline as timer_deadline
from tests.support.folding import POLICY, Driver, _act, check_invariants

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def kills(decisions: list) -> list[ev.VMKillRequested]:
    return [x for x in decisions if isinstance(x, ev.VMKillRequested)]


def requests(decisions: list) -> list[ev.VMRequested]:
    return [x for x in decisions if isinstance(x, ev.VMRequested)]


def setting(state: State, key: str) -> int:
    from ecloud.projections import context

    return context.get(state, key)  # type: ignore[return-value]


# ------------------------------------------------------------------ histories


def _operator_kill(draw, d: Driver) -> None:
    known = [vm.vm_id for vm in d.state.vms.values() if vm.vm_id is not None]
    if known:
        d.apply(ev.VMKillRequested(draw(st.sampled_from(sorted(known))), "operator", "operator"))


def _cloud_up(draw, d: Driver) -> None:
    """A requested VM comes up at once: allocated, and its worker announces."""
    name = draw(st.sampled_from(sorted(d.state.vms) or ["none"]))
    vm = d.state.vms.get(name)
    if vm is None or vm.status != "requested":
        return
    d.apply(ev.VMAllocated(name, 1000 + len(d.log)), dt=1)
    d.apply(ev.WorkerAnnounced(name, "h", draw(st.integers(1, 2)), 1, "i", vm.vm_id))


def _stale_autoscale(draw, d: Driver) -> None:
    """Decisions made on a state that moves on before they are folded: the
    scheduler's (and maybe a worker's report) land first."""
    decisions = autoscale(d.state, "vm-")
    if draw(st.booleans()):
        _act(draw, d, "submit")
    d.schedule()
    if draw(st.booleans()):
        _act(draw, d, "finish")
    for decision in decisions:
        d.apply(decision)


SCALE_ACTIONS = [
    *["autoscale"] * 4, *["stale_autoscale"] * 2, *["cloud"] * 4, *["cloud_up"] * 3,
    *["schedule"] * 3, *["start"] * 2, *["finish"] * 4, "submit", "submit", "tick", "tick",
    "heartbeat", "policy", "policy", "cancel", "lost", "left", "boss", "announce", "operator_kill",
]
EXTRA_ACTIONS = {"operator_kill": _operator_kill, "cloud_up": _cloud_up,
                 "stale_autoscale": _stale_autoscale}


@st.composite
def scaled_logs(draw, max_steps: int = 80) -> Driver:
    """A history where the autoscaler is on (max_workers >= 1 at first) and
    the cloud mostly does what it is asked: VMs requested, allocated or
    refused, workers announcing from them, failing to boot, seen gone."""
    d = Driver()
    d.apply(ev.ContextSet("max_workers", draw(st.sampled_from(["1", "3", "4"]))))
    for key in ("min_workers", "max_booting", "slots_per_worker", "idle_timeout", "boot_timeout"):
        if draw(st.booleans()):
            d.apply(ev.ContextSet(key, draw(st.sampled_from(POLICY[key][:2]))))
    _act(draw, d, "submit")
    for action in draw(st.lists(st.sampled_from(SCALE_ACTIONS), min_size=20, max_size=max_steps)):
        if action in EXTRA_ACTIONS:
            EXTRA_ACTIONS[action](draw, d)
        else:
            _act(draw, d, action)
    return d


class Cloud:
    """A cloud that does at once what it is asked, and a worker on each new
    VM (named after it, ``slots_per_worker`` slots) that announces at once."""

    def __init__(self, d: Driver) -> None:
        self.d = d
        self.next_id = 10_000

    def perform(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, SpawnVM):
                vm = self.d.state.vms[effect.vm_name]
                if vm.vm_id is None:
                    self.next_id += 1
                    self.d.apply(ev.VMAllocated(effect.vm_name, self.next_id))
                self.d.apply(ev.WorkerAnnounced(effect.vm_name, "h",
                                                setting(self.d.state, "slots_per_worker"),
                                                1, "i", self.d.state.vms[effect.vm_name].vm_id))
            elif isinstance(effect, KillVM):
                self.d.apply(ev.VMStateObserved(effect.vm_id, 6, 0))

    def heartbeats(self) -> None:
        for wid in sorted(self.d.state.workers):
            if self.d.state.workers[wid].status in LIVE:
                self.d.apply(ev.WorkerHeartbeat(wid))


# ----------------------------------------------------------------- properties


@SETTINGS
@given(scaled_logs())
def test_decisions_never_take_the_pool_past_max_workers_or_max_booting(d: Driver) -> None:
    state = d.state
    live, booting = pool(state)
    decisions = autoscale(state, "vm-")
    asked = requests(decisions)
    room = min(setting(state, "max_workers") - live - booting, setting(state, "max_booting") - booting)
    assert len(asked) <= max(0, room)
    assert len({x.vm_name for x in asked}) == len(asked)
    assert not {x.vm_name for x in asked} & set(state.vms)  # names are never reused
    before = len(state.rejected)
    for decision in decisions:
        d.apply(decision)
    assert len(d.state.rejected) == before  # the fold takes every decision as made
    if asked:
        live, booting = pool(d.state)
        assert live + booting <= setting(d.state, "max_workers")
        assert booting <= setting(d.state, "max_booting")
        # counting every VM the cloud has given an id and not yet taken back:
        # failed, unbooted, being killed
        in_cloud = [vm for vm in d.state.vms.values() if vm.vm_id is not None and vm.status != "gone"]
        assert len(in_cloud) <= setting(d.state, "max_workers")
    check_invariants(d.state)


@SETTINGS
@given(scaled_logs())
def test_the_autoscaler_never_kills_the_vm_of_a_busy_worker(d: Driver) -> None:
    state = d.state
    for kill in kills(autoscale(state, "vm-")):
        assert kill.source == "autoscaler"
        on_vm = [w for w in state.workers.values() if w.vm_id == kill.vm_id and w.status in LIVE]
        assert all(w.used == 0 for w in on_vm), (kill, on_vm)
    # and in the log: no kill of the autoscaler's took while a worker on it was busy
    replay = State()
    for rec in d.log:
        if isinstance(rec.event, ev.VMKillRequested) and rec.event.source == "autoscaler":
            busy = [w for w in replay.workers.values()
                    if w.vm_id == rec.event.vm_id and w.status in LIVE and w.used]
            _, out = step(replay, rec)
            if busy:
                assert out == [] and replay.rejected[-1].seq == rec.seq
        else:
            step(replay, rec)


@SETTINGS
@given(scaled_logs())
def test_a_kill_that_finds_the_worker_busy_is_refused_unless_the_operator_asked(d: Driver) -> None:
    busy = sorted({w.vm_id for w in d.state.workers.values()
                   if w.vm_id is not None and w.status in LIVE and w.used
                   and d.state.vm_with_id(w.vm_id) is not None
                   and d.state.vm_with_id(w.vm_id).status not in ("killing", "gone")})
    for vm_id in busy:
        trial = Driver()
        trial.state, trial.log, trial.now = clone_state(d.state), list(d.log), d.now
        before = canonical(trial.state)
        assert trial.apply(ev.VMKillRequested(vm_id, "idle", source="autoscaler")) == []
        after = canonical(trial.state)
        assert after["rejected"][-1]["reason"].startswith(f"kill of VM {vm_id}: worker ")
        assert {k: v for k, v in after.items() if k not in ("seq", "rejected")} == \
            {k: v for k, v in before.items() if k not in ("seq", "rejected")}
        out = trial.apply(ev.VMKillRequested(vm_id, "operator says so", source="operator"))
        assert out == [KillVM(trial.state.seq, vm_id, "operator says so")]
        assert all(w.status == DRAINING for w in trial.state.workers_on(vm_id))
        assert not [x for x in schedule(trial.state) if trial.state.workers[x.worker_id].vm_id == vm_id]


@SETTINGS
@given(scaled_logs())
def test_an_idle_kill_overtaken_by_a_dispatch_is_refused(d: Driver) -> None:
    # Make the idle workers idle long enough (and nothing ready), then let the
    # scheduler give one of them work between the autoscaler's decision and its fold.
    policy(d, idle_timeout=5, min_workers=0)
    for tid in sorted(t for t, r in d.state.tasks.items() if r.status == "ready"):
        d.apply(ev.TaskCancelled(tid))
    for wid in sorted(d.state.workers):
        if d.state.workers[wid].status in LIVE:
            d.apply(ev.WorkerHeartbeat(wid))
    d.apply(ev.Tick(), dt=10)
    for n, kill in enumerate(kills(autoscale(d.state, "vm-"))):
        idle = [w for w in d.state.workers_on(kill.vm_id) if w.status == "idle"]
        if not idle:
            continue  # a failed VM, or one whose worker went away: nothing to give work to
        trial = Driver()
        trial.state, trial.log, trial.now = clone_state(d.state), list(d.log), d.now
        trial.apply(ev.TasksSubmitted(f"late{n}", (TaskSpec(f"late{n}", "true"),)))
        trial.apply(ev.TaskDispatched(f"late{n}", 1, idle[0].worker_id))
        assert trial.state.workers[idle[0].worker_id].status == "busy"
        assert trial.apply(kill) == []
        assert trial.state.rejected[-1].reason == (
            f"kill of VM {kill.vm_id}: worker {idle[0].worker_id} is busy")
        assert trial.state.vm_with_id(kill.vm_id).status not in ("killing", "gone")
        check_invariants(trial.state)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scaled_logs())
def test_with_no_work_and_time_passing_the_vms_converge_to_min_workers(d: Driver) -> None:
    state = d.state
    if setting(state, "max_workers") == 0:
        d.apply(ev.ContextSet("max_workers", "2"))
    for tid in sorted(t for t, r in state.tasks.items() if r.status not in FINAL):
        d.apply(ev.TaskCancelled(tid))
    for wid in sorted(state.workers):  # the workers stop what they were running
        for tid, attempt in sorted(state.workers[wid].running):
            d.apply(ev.TaskFinished(tid, attempt, wid, None, signal=9, reason="cancelled"))
    d.apply(ev.ContextSet("heartbeat_timeout", "30"))
    cloud = Cloud(d)
    cloud.perform(outstanding(d.state))  # what a (re)started boss issues
    target = min(setting(state, "min_workers"), setting(state, "max_workers"))
    quiet = 0
    for _ in range(400):
        decisions = autoscale(d.state, "vm-") + reconcile(d.state)
        for decision in decisions:
            cloud.perform(d.apply(decision))
        cloud.heartbeats()
        d.apply(ev.Tick(), dt=20)
        quiet = 0 if decisions else quiet + 1
        if quiet > 40 and pool(d.state) == (target, 0):
            break
    assert pool(d.state) == (target, 0)
    assert not any(t.status in ACTIVE for t in d.state.tasks.values())
    check_invariants(d.state)


@SETTINGS
@given(scaled_logs())
def test_same_state_same_decisions(d: Driver) -> None:
    decisions = autoscale(d.state, "vm-")
    assert autoscale(d.state, "vm-") == decisions
    assert autoscale(clone_state(d.state), "vm-") == decisions
    assert autoscale(load(dump(d.state)), "vm-") == decisions
    assert autoscale(fold(d.log), "vm-") == decisions
    assert next_deadline(load(dump(d.state))) == next_deadline(d.state)


@SETTINGS
@given(scaled_logs(), st.data())
def test_a_log_with_autoscaling_replays_and_restores_from_snapshots_exactly(d: Driver, data) -> None:
    full, effects = fold_with_effects(d.log)
    assert canonical(full) == canonical(d.state)
    assert effects == [e for _, e in d.effects]
    k = data.draw(st.integers(0, len(d.log)))
    restored = load(dump(fold(d.log[:k])))
    state, suffix_effects = fold_with_effects(d.log[k:], restored)
    assert canonical(state) == canonical(full)
    assert suffix_effects == [e for seq, e in d.effects if seq > k]
    assert autoscale(state, "vm-") == autoscale(full, "vm-")
    check_invariants(state)


@SETTINGS
@given(scaled_logs())
def test_invariants_hold_after_every_event_of_an_autoscaled_log(d: Driver) -> None:
    state = State()
    for rec in d.log:
        step(state, rec)
        check_invariants(state)


# ------------------------------------------------------------------- examples


def tasks(n: int, slots: int = 1) -> ev.TasksSubmitted:
    return ev.TasksSubmitted("b", tuple(TaskSpec(f"t{i}", "true", slots=slots) for i in range(n)))


def policy(d: Driver, **values: object) -> None:
    for key, value in values.items():
        d.apply(ev.ContextSet(key, str(value)))


def decide(d: Driver) -> list:
    """The autoscaler's decisions, appended and folded."""
    decisions = autoscale(d.state, "vm-")
    for decision in decisions:
        d.apply(decision)
    return decisions


def wait(d: Driver, seconds: float) -> None:
    """Let time pass, the live workers heartbeating (every 20 s at most)."""
    while seconds > 0:
        for wid in sorted(d.state.workers):
            if d.state.workers[wid].status in LIVE:
                d.apply(ev.WorkerHeartbeat(wid))
        dt = min(seconds, 20.0)
        d.apply(ev.Tick(), dt=dt)
        seconds -= dt


def up(d: Driver, name: str, vm_id: int, slots: int = 1) -> None:
    """VM ``name`` is allocated as ``vm_id`` and its worker announces itself."""
    d.apply(ev.VMAllocated(name, vm_id))
    d.apply(ev.WorkerAnnounced(name, "h", slots, 1, "i", vm_id))


def test_autoscaling_is_off_by_default() -> None:
    d = Driver()
    d.apply(tasks(10))
    assert autoscale(d.state, "vm-") == []
    assert next_deadline(d.state) is None


def test_ten_ready_tasks_get_max_booting_vms_then_more_as_they_announce() -> None:
    d = Driver()
    policy(d, max_workers=4, max_booting=2)
    d.apply(tasks(10))
    decisions = autoscale(d.state, "vm-")
    assert [x.vm_name for x in decisions] == ["vm-1", "vm-2"]
    assert [type(e) for x in decisions for e in d.apply(x)] == [SpawnVM, SpawnVM]
    assert autoscale(d.state, "vm-") == []  # two booting: max_booting
    up(d, "vm-1", 1)
    assert [x.vm_name for x in autoscale(d.state, "vm-")] == ["vm-3"]
    up(d, "vm-2", 2)
    d.schedule()
    assert [x.vm_name for x in decide(d)] == ["vm-3", "vm-4"]
    assert autoscale(d.state, "vm-") == []  # four: max_workers
    assert pool(d.state) == (2, 2)


def test_demand_counts_task_slots_free_slots_and_booting_vms() -> None:
    d = Driver()
    policy(d, max_workers=10, max_booting=10, slots_per_worker=4)
    d.apply(ev.TasksSubmitted("b", (TaskSpec("big", "true", slots=8),  # fits no new VM
                                    *(TaskSpec(f"t{i}", "true", slots=2) for i in range(7)))))
    d.apply(ev.WorkerAnnounced("hand", "h", 3, 1, "i"))  # not a VM of ours: 3 free slots
    # 7 x 2 = 14 slots, minus 3 free: 11, i.e. 3 VMs of 4 slots
    assert [x.vm_name for x in autoscale(d.state, "vm-")] == ["vm-1", "vm-2", "vm-3"]


def test_min_workers_are_kept_without_work() -> None:
    d = Driver()
    policy(d, max_workers=3, min_workers=2)
    assert [(x.vm_name, x.reason) for x in decide(d)] == [
        ("vm-1", "keep min_workers 2"), ("vm-2", "keep min_workers 2")]
    assert autoscale(d.state, "vm-") == []


def test_a_vm_that_fails_to_boot_is_killed_and_replaced() -> None:
    d = Driver()
    policy(d, max_workers=1)
    d.apply(tasks(1))
    d.autoscale()
    d.apply(ev.VMAllocated("vm-1", 7))
    d.apply(ev.VMStateObserved(7, 3, 36, None, "vm-1"), dt=5)  # BOOT_FAILURE
    assert d.state.vms["vm-1"].status == "failed" and d.state.vms["vm-1"].failed_at == d.now
    # the failed VM still counts against max_workers 1 until the cloud has let it go
    assert autoscale(d.state, "vm-") == []
    decisions = reconcile(d.state)  # it is the reconciler's to terminate
    assert [type(x).__name__ for x in decisions] == ["VMKillRequested"]
    assert (decisions[0].vm_id, decisions[0].source) == (7, "reconciler")
    assert decisions[0].reason == "terminate failed VM vm-1 (LCM state 36)"
    assert [type(e) for x in decisions for e in d.apply(x)] == [KillVM]
    assert d.state.vms["vm-1"].status == "killing"
    assert autoscale(d.state, "vm-") == [] and reconcile(d.state) == []
    d.apply(ev.VMStateObserved(7, 6, 0, None, "vm-1"), dt=1)  # DONE
    (replacement,) = autoscale(d.state, "vm-")
    assert replacement.vm_name == "vm-2"
    assert [type(e) for e in d.apply(replacement)] == [SpawnVM]


def test_a_vm_whose_worker_does_not_announce_in_time_is_replaced() -> None:
    d = Driver()
    policy(d, max_workers=2, max_booting=2, boot_timeout=600)
    d.apply(tasks(2))
    d.autoscale()  # vm-1, vm-2
    d.apply(ev.VMAllocated("vm-1", 1))  # vm-2 never gets an id
    assert next_deadline(d.state) == 1000.0 + 600
    d.apply(ev.Tick(), dt=599)
    assert autoscale(d.state, "vm-") == []
    d.apply(ev.Tick(), dt=1)
    decisions = autoscale(d.state, "vm-")
    assert [(type(x).__name__, getattr(x, "vm_id", None) or x.vm_name) for x in decisions] == [
        ("VMKillRequested", 1), ("VMRequested", "vm-3")]  # vm-1 counts until it is gone
    assert decisions[0].reason == "replace VM vm-1: no worker announced within 600s"


def test_a_refused_request_backs_off_exponentially() -> None:
    d = Driver()
    policy(d, max_workers=2, max_booting=1, spawn_backoff=30)
    d.apply(tasks(2))
    assert [x.vm_name for x in decide(d)] == ["vm-1"]
    d.apply(ev.VMFailed("vm-1", "limit of 1 reached for VMS quota", "quota"), dt=1)
    failed_at = d.now
    assert autoscale(d.state, "vm-") == []
    assert next_deadline(d.state) == failed_at + 30
    d.apply(ev.Tick(), dt=29.5)
    assert autoscale(d.state, "vm-") == []
    d.apply(ev.Tick(), dt=0.5)
    assert [x.vm_name for x in decide(d)] == ["vm-2"]
    d.apply(ev.VMFailed("vm-2", "quota again", "quota"), dt=1)  # twice in a row: 60 s
    d.apply(ev.Tick(), dt=59)
    assert autoscale(d.state, "vm-") == []
    d.apply(ev.Tick(), dt=1)
    assert [x.vm_name for x in decide(d)] == ["vm-3"]
    d.apply(ev.VMAllocated("vm-3", 3), dt=1)  # the cloud gives again: the count starts over
    assert d.state.spawn_failures == 0
    d.apply(ev.VMFailed("vm-3", "some other error", "error"), dt=1)  # not a refusal: no wait
    assert [type(x).__name__ for x in autoscale(d.state, "vm-")] == ["VMRequested"]
    assert [(type(x).__name__, x.vm_id) for x in reconcile(d.state)] == [("VMKillRequested", 3)]


def test_the_backoff_is_capped_by_max_backoff() -> None:
    d = Driver()
    policy(d, max_workers=1, spawn_backoff=30, max_backoff=100)
    d.apply(tasks(1))
    for n in range(1, 6):
        (request,) = decide(d)
        d.apply(ev.VMFailed(request.vm_name, "no", "authorization"))
        assert next_deadline(d.state) == d.now + min(30 * 2 ** (n - 1), 100)
        d.apply(ev.Tick(), dt=100)


def test_an_idle_worker_past_idle_timeout_above_min_is_killed_youngest_first() -> None:
    d = Driver()
    policy(d, max_workers=3, min_workers=1, idle_timeout=300)
    decide(d)  # min_workers: vm-1
    up(d, "vm-1", 1)
    d.apply(tasks(3))
    decide(d)  # vm-2, vm-3
    up(d, "vm-2", 2)
    up(d, "vm-3", 3)
    d.schedule()
    for i, w in enumerate(["vm-1", "vm-2", "vm-3"]):  # vm-1 falls idle first
        d.apply(ev.TaskFinished(f"t{i}", 1, w, 0), dt=1)
    assert d.state.workers["vm-3"].idle_since == d.now
    assert next_deadline(d.state) == d.now - 2 + 300
    wait(d, 297)
    assert autoscale(d.state, "vm-") == []  # idle for 299 s at most
    wait(d, 3)
    decisions = autoscale(d.state, "vm-")  # all three idle for 300 s or more
    assert [(x.vm_id, x.source) for x in decisions] == [(3, "autoscaler"), (2, "autoscaler")]
    for x in decisions:
        assert [type(e) for e in d.apply(x)] == [KillVM]
    assert [d.state.workers[w].status for w in ("vm-1", "vm-2", "vm-3")] == ["idle", DRAINING, DRAINING]
    assert autoscale(d.state, "vm-") == []  # min_workers stays
    assert pool(d.state) == (1, 0)


def test_a_busy_worker_is_never_scaled_down() -> None:
    d = Driver()
    policy(d, max_workers=2, idle_timeout=10)
    d.apply(ev.TasksSubmitted("b", (TaskSpec("long", "sleep 1000"),)))
    decide(d)
    up(d, "vm-1", 1)
    d.schedule()
    d.apply(ev.TaskStarted("long", 1, "vm-1"))
    for _ in range(10):
        wait(d, 20)
        assert autoscale(d.state, "vm-") == []
    d.apply(ev.TaskFinished("long", 1, "vm-1", 0), dt=1)
    wait(d, 10)
    assert [x.vm_id for x in autoscale(d.state, "vm-")] == [1]


def test_a_kill_decided_before_a_dispatch_that_lands_first_is_refused() -> None:
    d = Driver()
    policy(d, max_workers=2, idle_timeout=10)
    d.apply(ev.VMRequested("vm-1"))
    up(d, "vm-1", 1)
    wait(d, 20)
    (kill,) = autoscale(d.state, "vm-")
    d.apply(tasks(1))  # work arrives, the scheduler gives it to vm-1 ...
    d.schedule()
    assert d.apply(kill) == []  # ... and the kill decided before it does not take
    assert d.state.rejected[-1].reason == "kill of VM 1: worker vm-1 is busy"
    assert (d.state.vms["vm-1"].status, d.state.workers["vm-1"].status) == ("allocated", "busy")


def test_no_dispatch_to_a_worker_whose_vm_is_being_killed() -> None:
    d = Driver()
    d.apply(ev.VMRequested("vm-1"))
    up(d, "vm-1", 1)
    d.apply(ev.VMKillRequested(1, "operator", "operator"))  # not busy, but the operator's anyway
    assert d.state.workers["vm-1"].status == DRAINING
    d.apply(tasks(1))
    assert schedule(d.state) == []
    d.apply(ev.TaskDispatched("t0", 1, "vm-1"))  # a decision from before the kill
    assert d.statuses() == {"t0": "ready"}
    # a worker that (re)announces from a VM being killed gets no work either
    d.apply(ev.WorkerAnnounced("vm-1", "h", 1, 1, "i2", 1))
    assert d.state.workers["vm-1"].status == DRAINING and schedule(d.state) == []


def test_a_vm_whose_worker_went_away_gets_boot_timeout_to_come_back() -> None:
    d = Driver()
    policy(d, max_workers=1, min_workers=1, boot_timeout=100)
    d.autoscale()
    up(d, "vm-1", 1)
    d.apply(ev.WorkerLost("vm-1", "last will"), dt=10)  # a broker restart, say
    assert pool(d.state) == (0, 1)
    d.apply(ev.Tick(), dt=89)
    assert autoscale(d.state, "vm-") == []
    d.apply(ev.WorkerAnnounced("vm-1", "h", 1, 1, "i", 1))  # back in time
    assert pool(d.state) == (1, 0)
    d.apply(ev.WorkerLeft("vm-1", "shutting down"))
    d.apply(ev.Tick(), dt=100)
    assert [(type(x).__name__, x.reason if isinstance(x, ev.VMKillRequested) else x.vm_name)
            for x in autoscale(d.state, "vm-")] == [
        ("VMKillRequested", "replace VM vm-1: its worker went away and did not come back within 100s")]


def test_no_deadline_counts_the_time_no_boss_was_running() -> None:
    d = Driver()
    policy(d, max_workers=2, idle_timeout=300, boot_timeout=600)
    d.apply(ev.VMRequested("vm-1"))
    d.apply(ev.VMRequested("vm-2"))
    up(d, "vm-1", 1)  # vm-2 boots
    d.apply(ev.BossStarted("b2"), dt=3600)  # an hour without a boss
    assert autoscale(d.state, "vm-") == []
    assert next_deadline(d.state) == d.now + 300
    wait(d, 300)
    assert [x.vm_id for x in autoscale(d.state, "vm-")] == [1]


def test_vm_names_are_never_reused() -> None:
    d = Driver()
    d.apply(ev.VMRequested("local-1"))
    d.apply(ev.VMRequested("vm-3"))  # someone else used our prefix
    policy(d, max_workers=5, min_workers=5, max_booting=10)
    assert [x.vm_name for x in autoscale(d.state, "vm-")] == ["vm-4", "vm-5", "vm-6"]


def test_an_allocation_of_an_id_another_vm_has_is_refused() -> None:
    d = Driver()
    d.apply(ev.VMRequested("vm-1"))
    d.apply(ev.VMRequested("vm-2"))
    d.apply(ev.VMAllocated("vm-1", 5))
    d.apply(ev.VMAllocated("vm-2", 5))
    assert d.state.rejected[-1].reason == "allocation of 'vm-2' as VM 5, which is 'vm-1'"
    assert (d.state.vms["vm-2"].vm_id, d.state.vm_with_id(5).vm_name) == (None, "vm-1")


def test_a_worker_announcing_before_its_vm_is_allocated_is_linked_all_the_same() -> None:
    d = Driver()
    policy(d, max_workers=1)
    d.apply(ev.VMRequested("vm-1"))
    d.apply(ev.WorkerAnnounced("vm-1", "h", 1, 1, "i", 9), dt=1)
    assert pool(d.state) == (0, 1)
    d.apply(ev.VMAllocated("vm-1", 9), dt=1)
    assert d.state.vms["vm-1"].announced_at == d.now
    assert pool(d.state) == (1, 0)


# ------------------------------------------------------------------ ecloud scale


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def rows(url: str) -> list:
    with open_store(url, create=False) as store:
        return list(store.read(1))


def test_scale_appends_the_changes_in_one_batch_and_prints_the_policy(durable_url: str) -> None:
    result = run("scale", "--max", 4, "--min", 1, "--idle-timeout", 120, "--db", durable_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "set max_workers = 4, min_workers = 1, idle_timeout = 120"
    assert "autoscaling is on: 1 to 4 worker VMs; now 0 live, 0 booting" in result.stdout
    logged = rows(durable_url)
    assert [(r.event.key, r.event.value) for r in logged] == [
        ("max_workers", "4"), ("min_workers", "1"), ("idle_timeout", "120")]
    assert len({r.ts for r in logged}) == 1  # one append
    shown = json.loads(run("context", "show", "--json", "--db", durable_url).stdout)
    assert (shown["max_workers"], shown["boot_timeout"]) == (4, 600.0)  # numbers as numbers
    again = run("scale", "--max", 4, "--spawn-backoff", 0, "--db", durable_url)
    assert again.stdout.splitlines()[0] == "set spawn_backoff = 0"  # max was 4 already
    assert len(rows(durable_url)) == 4


def test_scale_refuses_bad_values_and_combinations_with_one_line_and_appends_nothing(sqlite_url: str) -> None:
    """Each refusal is one line, and one input.rejected in the log: no policy change."""
    assert run("scale", "--max", 2, "--db", sqlite_url).exit_code == 0
    for n, (args, message) in enumerate([
        (("--min", 3), "error: min_workers 3 is more than max_workers 2"),
        (("--max", 4, "--min", 5), "error: min_workers 5 is more than max_workers 4"),
        (("--max", -1), "error: max_workers: '-1' must be a whole number >= 0"),
        (("--slots-per-worker", 0), "error: slots_per_worker: '0' must be a whole number >= 1"),
        (("--idle-timeout", -5),
         "error: idle_timeout: '-5' must be a number of seconds > 0, at most 31,536,000"),
        (("--max-booting", "two"), "error: max_booting: 'two' must be a whole number >= 1"),
    ], start=1):
        result = run("scale", *args, "--db", sqlite_url)
        assert result.exit_code == 2, args
        assert result.stderr.strip() == message
        assert len(result.stderr.strip().splitlines()) == 1
        logged = rows(sqlite_url)
        assert len(logged) == 1 + n and logged[-1].event.TYPE == "input.rejected"
        assert logged[-1].event.reason == message.removeprefix("error: ")


def test_scale_without_options_or_with_show_only_prints(sqlite_url: str) -> None:
    run("scale", "--max", 3, "--db", sqlite_url)
    for args in ((), ("--show",)):
        result = run("scale", *args, "--db", sqlite_url)
        assert result.exit_code == 0
        assert "Autoscaling policy" in result.stdout and "spawn_backoff" in result.stdout
        assert "30 (default)" in result.stdout
    assert len(rows(sqlite_url)) == 1
    off = run("scale", "--max", 0, "--db", sqlite_url)
    assert "autoscaling is off (max_workers is 0)" in off.stdout
    assert run("scale", "--help").exit_code == 0


def test_context_show_lists_the_policy_keys(sqlite_url: str) -> None:
    run("context", "set", "queue_ahead", "3", "--db", sqlite_url)
    shown = json.loads(run("context", "show", "--json", "--db", sqlite_url).stdout)
    assert {k: shown[k] for k in ("max_workers", "min_workers", "slots_per_worker", "max_booting",
                                  "idle_timeout", "boot_timeout", "spawn_backoff")} == {
        "max_workers": 0, "min_workers": 0, "slots_per_worker": 1, "max_booting": 4,
        "idle_timeout": 300.0, "boot_timeout": 600.0, "spawn_backoff": 30.0}


def test_the_boss_names_its_vms_after_the_cluster() -> None:
    from ecloud.boss.loop import Boss

    assert Boss("sqlite:///unused.db", "mqtt://127.0.0.1:1", cluster="c7").vm_prefix == "ecloud-c7-"
    assert Boss("sqlite:///unused.db", "mqtt://127.0.0.1:1", vm_prefix="w-").vm_prefix == "w-"


def test_an_allocation_asked_for_before_a_refusal_does_not_end_the_backoff() -> None:
    """Requests run at once: one is refused for quota, another, made at the
    same time, is allocated after it. The backoff stands."""
    d = Driver()
    policy(d, max_workers=4, max_booting=2, spawn_backoff=30, slots_per_worker=1)
    d.apply(tasks(4))
    assert [x.vm_name for x in decide(d)] == ["vm-1", "vm-2"]
    d.apply(ev.VMFailed("vm-2", "limit of 1 reached for VMS quota", "quota"), dt=1)
    d.apply(ev.VMAllocated("vm-1", 1), dt=1)
    assert d.state.spawn_failures == 1
    assert autoscale(d.state, "vm-") == []  # still backing off


@SETTINGS
@given(scaled_logs())
def test_the_reconciler_never_terminates_a_failed_vm_whose_worker_is_busy(d: Driver) -> None:
    """It terminates failed VMs once nothing runs on them, asks again for the
    kills the cloud has not carried out, and decides the same on a clone."""
    state = d.state
    decisions = reconcile(state)
    assert reconcile(clone_state(state)) == decisions
    for kill in decisions:
        assert kill.source == "reconciler"
        vm = state.vm_with_id(kill.vm_id)
        assert vm is not None and vm.status in ("failed", "killing"), (kill, vm)
        if vm.status == "failed":
            assert all(w.used == 0 for w in state.workers_on(kill.vm_id)), kill


def test_a_kill_the_cloud_does_not_carry_out_is_asked_again_with_a_growing_wait() -> None:
    d = Driver()
    policy(d, max_workers=1, max_backoff=100)
    d.apply(ev.ContextSet("kill_retry", "10"))
    d.apply(tasks(1))
    d.autoscale()
    d.apply(ev.VMAllocated("vm-1", 7))
    d.apply(ev.VMKillRequested(7, "by hand", source="operator"), dt=1)
    asked = d.now
    assert reconcile(d.state) == [] and timer_deadline(d.state) <= asked + 10
    waits = []
    for _ in range(6):
        while not (again := reconcile(d.state)):
            d.apply(ev.Tick(), dt=1)
        waits.append(round(d.now - asked))
        asked = d.now
        (kill,) = again
        assert "still not gone" in kill.reason and kill.source == "reconciler"
        assert [type(e) for e in d.apply(kill)] == [KillVM]
    assert waits == [10, 20, 40, 80, 100, 100]  # doubling, at most max_backoff
    d.apply(ev.VMStateObserved(7, 6, 0, None, "vm-1"), dt=1)  # DONE at last
    d.apply(ev.Tick(), dt=1000)
    assert reconcile(d.state) == []


def test_rules_3_a_vm_found_in_the_cloud_is_used_if_its_worker_comes_else_terminated() -> None:
    d = Driver()
    d.apply(ev.BossStarted("b", 3))
    d.apply(ev.ContextSet("boot_timeout", "60"))
    d.apply(ev.VMDiscovered(41, "vm-41", 3, 3, "10.0.0.41"))
    d.apply(ev.VMDiscovered(42, "vm-42", 8, 0, None))  # POWEROFF: failed at once
    assert (d.state.vms["vm-41"].status, d.state.vms["vm-42"].status) == ("observed", "failed")
    assert [(k.vm_id, k.source) for k in reconcile(d.state)] == [(42, "reconciler")]
    # vm-41's guest knows no VMID: its worker is tied to it by its name
    d.apply(ev.WorkerAnnounced("vm-41", "h", 1, 1, "inc", None), dt=10)
    assert d.state.workers["vm-41"].vm_id == 41 and d.state.vms["vm-41"].announced_at == d.now
    d.apply(ev.Tick(), dt=100)
    assert [k.vm_id for k in reconcile(d.state)] == [42]  # vm-41 is in service
    # a second one with no worker: terminated at boot_timeout, not before
    d.apply(ev.VMDiscovered(43, "vm-43", 3, 3, None))
    d.apply(ev.Tick(), dt=59)
    assert 43 not in [k.vm_id for k in reconcile(d.state)]
    assert timer_deadline(d.state) == d.now + 1
    d.apply(ev.Tick(), dt=1)
    assert 43 in [k.vm_id for k in reconcile(d.state)]
    # the same name again with another id is refused; the log's gone VM seen again is back
    d.apply(ev.VMDiscovered(99, "vm-41", 3, 3, None))
    assert "the log's VM of that name is 41" in d.state.rejected[-1].reason


def test_rules_3_a_refusal_for_want_of_resources_shows_a_ceiling_and_asks_one_at_a_time() -> None:
    d = Driver()
    d.apply(ev.BossStarted("b", 3))
    policy(d, max_workers=4, max_booting=4, spawn_backoff=30)
    d.apply(tasks(4))
    assert len(decide(d)) == 4
    d.apply(ev.VMAllocated("vm-1", 1))
    d.apply(ev.VMAllocated("vm-2", 2))
    d.apply(ev.VMFailed("vm-3", "Cannot get IP/MAC lease from virtual network 0", "allocation"))
    d.apply(ev.VMFailed("vm-4", "Cannot get IP/MAC lease from virtual network 0", "allocation"))
    ceiling = cloud_ceiling(d.state)
    assert ceiling["at_vms"] == 2 and "IP/MAC lease" in ceiling["reason"]
    assert ceiling["next_try"] == d.now + 60  # two refusals in a row: 30 s doubled
    assert render.status_data(d.state)["cloud_ceiling"] == ceiling
    d.apply(ev.Tick(), dt=60)
    assert len(requests(autoscale(d.state, "vm-"))) == 1  # a probe, not a burst of two
    (probe,) = decide(d)
    d.apply(ev.VMAllocated(probe.vm_name, 5))  # capacity came back
    assert cloud_ceiling(d.state) is None and d.state.ceiling is None
    assert len(requests(autoscale(d.state, "vm-"))) == 1  # the last one wanted


def test_the_page_and_workers_list_say_why_each_vm_is_kept_or_terminated() -> None:
    from ecloud.views.summary import page
    from ecloud.views.vms import vm_rows

    d = Driver()
    d.apply(ev.BossStarted("b", 3))
    for name, vm_id in (("vm-1", 1), ("vm-2", 2), ("vm-3", 3)):
        d.apply(ev.VMRequested(name))
        d.apply(ev.VMAllocated(name, vm_id))
    d.apply(ev.WorkerAnnounced("vm-1", "h", 1, 1, "i", None))  # tied by its name
    d.apply(ev.VMStateObserved(2, 8, 0, None, "vm-2"))  # POWEROFF
    d.apply(ev.VMKillRequested(3, "by hand", source="operator"))
    d.apply(ev.VMKillRequested(3, "still not gone", source="reconciler"), dt=30)
    why = {row["name"]: (row["worker"], row["why"]) for row in vm_rows(d.state, d.now)}
    assert why["vm-1"] == ("vm-1", "in service")
    assert why["vm-2"][1].startswith("failed (STATE POWEROFF: it holds quota and runs nothing)")
    assert why["vm-3"][1] == ("being terminated: still not gone; asked 2 times, asked again "
                              "until the cloud has it DONE")
    shown = page(d.state, head=d.state.seq, source="test", decisions=[])["vms"]
    assert [(r["name"], r["why"]) for r in shown] == [(n, w) for n, (_, w) in why.items()]
