"""A model-based test of the cloud side (issue 18): hypothesis drives a boss
- the real fold, scheduler, autoscaler and reconciler, and a provider that
follows ``OpenNebulaProvider``'s rules - against a model of OpenNebula that
misbehaves the ways a real one does: instantiates that act and still fail,
terminates refused as on a locked VM, VMs put in POWEROFF, SUSPENDED or
UNDEPLOYED from outside (their guests die with them), VMs with the
cluster's prefix made behind the boss's back, guests that know no VMID,
quota refusals; with bursts of tasks, policy changes and boss restarts (the
state rebuilt from the log, the outstanding effects issued again).

After every step:

- the boss never asks for a VM while the VMs of ours the cloud holds (any
  state but DONE, prefixed) are already ``max_workers`` or more;
- the policy never terminates a VM whose worker holds an attempt;
- no VM outside the prefix, or of another user, is ever acted on;
- the fold's invariants hold.

And once the faults stop: every VM the cloud holds is one the log knows,
with a worker, booting, or being terminated, and with no work left the
VMs converge to ``min_workers`` within a bounded number of turns.
"""

from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.projections import context
from ecloud.projections.autoscale import autoscale
from ecloud.projections.effects import KillVM, SpawnVM
from ecloud.projections.fold import fold
from ecloud.projections.outstanding import outstanding
from ecloud.projections.reconcile import reconcile
from ecloud.projections.state import LIVE
from tests.support.folding import Driver, check_invariants

PREFIX = "vm-"
DONE, ACTIVE, RUNNING = 6, 3, 3
OUT_OF_SERVICE = {"POWEROFF": 8, "SUSPENDED": 5, "UNDEPLOYED": 9, "STOPPED": 4}


class ModelVM:
    def __init__(self, vm_id: int, name: str, uid: int = 5) -> None:
        self.id, self.name, self.uid = vm_id, name, uid
        self.state, self.lcm = ACTIVE, RUNNING
        self.guest = True  # its worker process is alive
        self.announced = False


class Oned:
    """OpenNebula as the boss meets it (docs/opennebula.md)."""

    def __init__(self) -> None:
        self.vms: dict[int, ModelVM] = {}
        self.next_id = 100
        self.quota = 10
        self.refuse_terminates = 0
        self.act_but_fail = 0
        self.token = True
        self.touched: set[int] = set()  # every VM a call acted on

    def alive(self) -> list[ModelVM]:
        return [vm for vm in self.vms.values() if vm.state != DONE]

    def ours(self) -> list[ModelVM]:
        return [vm for vm in self.alive() if vm.uid == 5 and vm.name.startswith(PREFIX)]

    def add(self, name: str, uid: int = 5) -> ModelVM:
        self.next_id += 1
        vm = ModelVM(self.next_id, name, uid)
        self.vms[vm.id] = vm
        return vm

    def instantiate(self, name: str) -> tuple[str, object]:
        if len([vm for vm in self.alive() if vm.uid == 5]) >= self.quota:
            return "quota", "limit of VMS quota reached"
        vm = self.add(name)
        if self.act_but_fail:
            self.act_but_fail -= 1
            return "connection", "no answer within the deadline"
        return "ok", vm.id

    def terminate(self, vm_id: int) -> bool:
        vm = self.vms.get(vm_id)
        if vm is None or vm.state == DONE:
            return True
        self.touched.add(vm_id)
        if self.refuse_terminates:
            self.refuse_terminates -= 1
            return False
        vm.state, vm.guest = DONE, False
        return True


class CloudMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = Driver()
        self.oned = Oned()
        self.foreign = [self.oned.add("other-1").id, self.oned.add(PREFIX + "77", uid=9).id]
        self.reported: dict[int, tuple] = {}  # the provider's memory: last state reported
        self.absent: set[str] = set()  # ... and the names it said the pool does not have
        self.tasks = 0
        self.d.apply(ev.BossStarted("b", 3))
        self.policy(2, 0)

    # ------------------------------------------------------------- the boss

    def policy(self, most: int, least: int) -> None:
        for key, value in (("max_workers", most), ("min_workers", least),
                           ("slots_per_worker", 1), ("max_booting", 4), ("boot_timeout", 60),
                           ("idle_timeout", 30), ("spawn_backoff", 5), ("kill_retry", 10),
                           ("heartbeat_timeout", 1000)):
            if self.d.state.context.get(key) != str(value):
                self.d.apply(ev.ContextSet(key, str(value)))

    def perform(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, SpawnVM):
                self.spawn(effect.vm_name)
            elif isinstance(effect, KillVM):
                if effect.vm_id in self.foreign:
                    raise AssertionError(f"the boss killed VM {effect.vm_id}, not ours")
                if self.oned.terminate(effect.vm_id) and effect.vm_id in self.oned.vms:
                    self.apply_observation(self.oned.vms[effect.vm_id])

    def spawn(self, name: str) -> None:
        found = [vm for vm in self.oned.ours() if vm.name == name]
        if found:  # a spawn re-issued: the VM of that name
            self.d.apply(ev.VMAllocated(name, found[0].id))
            return
        # what the boss could know: every VM of ours the log has a record of
        # (by id, or by the name it asked for) - a stray made since the last
        # poll it cannot count
        state = self.d.state
        held = [vm.id for vm in self.oned.ours()
                if vm.id in state.vm_ids or (vm.name in state.vms and vm.name != name)]
        most = int(context.get(state, "max_workers"))
        assert len(held) < most, (
            f"asked for {name} while the cloud holds {held} of ours, max_workers {most}")
        kind, value = self.oned.instantiate(name)
        if kind == "ok":
            self.d.apply(ev.VMAllocated(name, value))
        else:
            self.d.apply(ev.VMFailed(name, str(value), kind))

    def apply_observation(self, vm: ModelVM) -> None:
        seen = (vm.state, vm.lcm)
        if self.reported.get(vm.id) != seen:
            self.reported[vm.id] = seen
            self.d.apply(ev.VMStateObserved(vm.id, vm.state, vm.lcm, None, vm.name), dt=0.1)

    def decide(self) -> None:
        decisions = self.d.schedule()  # dispatch (effects are the workers' business)
        del decisions
        for decision in autoscale(self.d.state, PREFIX) + reconcile(self.d.state):
            busy = isinstance(decision, ev.VMKillRequested) and any(
                w.used for w in self.d.state.workers_on(decision.vm_id))
            if busy and decision.source != "operator":
                # the fold must refuse it (autoscaler) - the reconciler must never decide it
                assert decision.source != "reconciler" or \
                    self.d.state.vm_with_id(decision.vm_id).status == "killing", decision
            self.perform(self.d.apply(decision))

    # ------------------------------------------------------------- rules

    @rule(n=st.integers(1, 6))
    def burst(self, n: int) -> None:
        specs = tuple(TaskSpec(f"t{self.tasks + i}", "true") for i in range(n))
        self.tasks += n
        self.d.apply(ev.TasksSubmitted(f"b{self.tasks}", specs), dt=0.1)

    @rule(most=st.integers(0, 4), least=st.integers(0, 2))
    def change_policy(self, most: int, least: int) -> None:
        self.policy(most, min(least, most))

    @rule()
    def boss_turn(self) -> None:
        self.decide()

    @rule()
    def observe(self) -> None:
        """The provider's poll: changes of the VMs the log holds, the ones it
        asked for and has no id for (found by name), and strays (discovered)."""
        state = self.d.state
        alive = {vm.vm_id: vm.vm_name for vm in state.vms.values()
                 if vm.vm_id is not None and vm.status != "gone"}
        unallocated = {vm.vm_name for vm in state.vms.values()
                       if vm.vm_id is None and vm.status != "gone"}
        for vm in sorted(self.oned.ours(), key=lambda v: v.id):
            if vm.id in alive:
                self.apply_observation(vm)
            elif vm.name in unallocated:
                self.d.apply(ev.VMAllocated(vm.name, vm.id), dt=0.1)
                self.reported.pop(vm.id, None)
            else:
                self.d.apply(ev.VMDiscovered(vm.id, vm.name, vm.state, vm.lcm), dt=0.1)
                self.reported[vm.id] = (vm.state, vm.lcm)
        in_cloud = {vm.name for vm in self.oned.ours()}
        for name in sorted(unallocated - in_cloud - self.absent):
            self.absent.add(name)
            self.d.apply(ev.VMFailed(name, "not in the cloud's pool", "absent"), dt=0.1)
        for vm_id in sorted(alive):
            vm = self.oned.vms.get(vm_id)
            if vm is None or vm.state == DONE:
                if self.reported.get(vm_id) != (DONE, 0):
                    self.reported[vm_id] = (DONE, 0)
                    self.d.apply(ev.VMStateObserved(vm_id, DONE, 0, None, alive[vm_id]), dt=0.1)

    @rule()
    def guests_speak(self) -> None:
        """Each live guest's worker announces itself once (under the VM's
        name; with its VMID only when the template gives it), then beats."""
        for vm in sorted(self.oned.ours(), key=lambda v: v.id):
            if not vm.guest:
                continue
            worker = self.d.state.workers.get(vm.name)
            if not vm.announced or worker is None or worker.status not in LIVE:
                vm.announced = True
                self.d.apply(ev.WorkerAnnounced(vm.name, "h", 1, 1, f"i{vm.id}",
                                                vm.id if self.oned.token else None), dt=0.1)
            else:
                self.d.apply(ev.WorkerHeartbeat(vm.name), dt=0.1)

    @rule()
    def work_ends(self) -> None:
        for wid in sorted(self.d.state.workers):
            worker = self.d.state.workers[wid]
            for task_id, attempt in sorted(worker.running):
                vm = self.d.state.vms.get(wid)
                alive = vm is not None and vm.vm_id in self.oned.vms and self.oned.vms[vm.vm_id].guest
                if alive:
                    self.d.apply(ev.TaskFinished(task_id, attempt, wid, 0, 0.1), dt=0.1)

    @rule(dt=st.sampled_from([1.0, 10.0, 40.0, 100.0]))
    def time_passes(self, dt: float) -> None:
        self.d.apply(ev.Tick(), dt=dt)

    @rule(phase=st.sampled_from(sorted(OUT_OF_SERVICE)), data=st.data())
    def put_out_of_service(self, phase: str, data) -> None:
        ours = sorted(self.oned.ours(), key=lambda v: v.id)
        if ours:
            vm = data.draw(st.sampled_from(ours))
            vm.state, vm.lcm, vm.guest = OUT_OF_SERVICE[phase], 0, False

    @rule(n=st.integers(1, 3))
    def lock_vms(self, n: int) -> None:
        self.oned.refuse_terminates += n

    @rule()
    def next_instantiate_acts_but_fails(self) -> None:
        self.oned.act_but_fail += 1

    @rule()
    def stray_vm(self) -> None:
        self.oned.add(f"{PREFIX}stray{self.oned.next_id}")

    @rule()
    def no_token(self) -> None:
        self.oned.token = False

    @rule(quota=st.integers(1, 10))
    def set_quota(self, quota: int) -> None:
        self.oned.quota = quota

    @rule()
    def boss_restarts(self) -> None:
        """A new boss: the state from the log alone, the effects it holds
        outstanding issued again, a fresh provider (it remembers nothing)."""
        self.d.state = fold(self.d.log)
        self.d.apply(ev.BossStarted("b", 3), dt=1)
        self.reported, self.absent = {}, set()
        self.perform(outstanding(self.d.state))

    # ------------------------------------------------------------- checks

    @invariant()
    def the_fold_holds(self) -> None:
        check_invariants(self.d.state)

    @invariant()
    def nothing_outside_the_prefix_was_touched(self) -> None:
        assert not self.oned.touched & set(self.foreign)

    @precondition(lambda self: self.tasks > 0)
    @rule()
    def settle(self) -> None:
        """The faults stop and the work ends: the cloud converges."""
        self.oned.refuse_terminates = self.oned.act_but_fail = 0
        self.oned.quota = 10
        for tid in sorted(t for t, r in self.d.state.tasks.items()
                          if r.status not in ("succeeded", "failed", "cancelled", "blocked")):
            self.d.apply(ev.TaskCancelled(tid))
        least = int(context.get(self.d.state, "min_workers"))
        for _ in range(60):
            self.observe()
            self.guests_speak()
            self.work_ends()
            self.decide()
            self.d.apply(ev.Tick(), dt=40)
        self.observe()
        known = {vm.vm_id: vm for vm in self.d.state.vms.values() if vm.vm_id is not None}
        for vm in self.oned.ours():
            assert vm.id in known, f"VM {vm.id} {vm.name} is in the cloud, not in the log"
            assert known[vm.id].status != "gone", (vm.id, vm.name)
        live = [vm for vm in self.oned.ours() if vm.guest]
        assert len(self.oned.ours()) == len(live)  # what is left serves
        if int(context.get(self.d.state, "max_workers")):  # the autoscaler's: down to min
            assert len(live) == least, (
                [(v.id, v.name, v.state, v.guest) for v in self.oned.ours()], least)


TestCloud = CloudMachine.TestCase
TestCloud.settings = settings(max_examples=int(os.environ.get("ECLOUD_MODEL_EXAMPLES", "300")),
                              stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
