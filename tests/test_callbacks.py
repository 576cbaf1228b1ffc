"""What the boss makes of a hook message (issue 24): ``vm.callback`` when
every check passes, ``input.rejected`` saying which failed otherwise; and
what the fold makes of a callback - no change of any VM's status, one look
at the cloud's pool asked for."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecloud.boss.callbacks import MAX_AGE, MAX_AHEAD, callback_events
from ecloud.events import types as ev
from ecloud.projections.effects import ObserveCloud
from tests.support.folding import Driver, check_invariants

CLUSTER = "c"
PREFIX = "ecloud-c-"
NOW = 1_800_000_000.0


def message(**fields) -> bytes:
    body = {"v": 1, "kind": "callback", "vm_id": 101, "name": PREFIX + "1", "state": 8,
            "lcm_state": 0, "at": NOW}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def with_vm() -> Driver:
    d = Driver()
    d.apply(ev.BossStarted("b", 3))
    d.apply(ev.VMRequested(PREFIX + "1"))
    d.apply(ev.VMAllocated(PREFIX + "1", 101))
    return d


def heard(payload: bytes, d: Driver | None = None, now: float = NOW) -> list:
    return callback_events(payload, CLUSTER, PREFIX, (d or with_vm()).state, now)


def reason(events: list) -> str:
    (event,) = events
    assert isinstance(event, ev.InputRejected), event
    assert event.source == f"mqtt ecloud/{CLUSTER}/hook"
    return event.reason


def test_a_callback_of_the_hook_s_format_becomes_a_vm_callback() -> None:
    assert heard(message()) == [ev.VMCallback(101, PREFIX + "1", 8, 0, NOW)]


def test_a_callback_about_a_vm_the_log_does_not_hold_yet_is_heard() -> None:
    """The hook can be faster than the spawn's answer: the look it asks for
    is what finds the VM."""
    assert heard(message(vm_id=102, name=PREFIX + "2")) == [
        ev.VMCallback(102, PREFIX + "2", 8, 0, NOW)]


@pytest.mark.parametrize(("payload", "why"), [
    (b"not json", "JSON syntax error"),
    (b"[1]", "not a JSON object"),
    (message(v=2), "not a version-1 callback"),
    (message(kind="hello"), "not a version-1 callback"),
    (message(extra=1), "unknown field(s) extra"),
    (message(at=...), "missing field(s) at"),
    (message(vm_id="101"), "vm_id must be a whole number"),
    (message(vm_id=-1), "vm_id must be a whole number"),
    (message(state=True), "state must be a whole number"),
    (message(lcm_state=10**6), "lcm_state must be a whole number"),
    (message(name=""), "name must be a VM name"),
    (message(name="x" * 129), "name must be a VM name"),
    (message(at="now"), "at must be a moment"),
    (b'{"v":1,"v":1}', "duplicate key"),
    (message(name="x" * 2000), "a callback is at most"),
])
def test_a_message_not_of_the_hook_s_format_is_rejected(payload: bytes, why: str) -> None:
    assert why in reason(heard(payload))


def test_a_vm_outside_the_prefix_is_rejected() -> None:
    assert "is not this cluster's" in reason(heard(message(vm_id=7, name="someone-else-7")))
    assert "is not this cluster's" in reason(heard(message(name="ecloud-other-1")))


def test_a_vm_id_the_log_knows_under_another_name_is_rejected() -> None:
    assert "is 'ecloud-c-1' in the log, not 'ecloud-c-9'" in reason(
        heard(message(name=PREFIX + "9")))


def test_a_stale_or_early_callback_is_rejected() -> None:
    assert "stale or early" in reason(heard(message(at=NOW - MAX_AGE - 1)))
    assert "stale or early" in reason(heard(message(at=NOW + MAX_AHEAD + 1)))
    assert heard(message(at=NOW - MAX_AGE + 1))  # within: heard
    assert heard(message(at=NOW + MAX_AHEAD - 1))
    assert "+1e+308 s" in reason(heard(message(at=1e308)))  # said short


def test_a_clock_far_ahead_cannot_silence_the_genuine_callbacks_after_it() -> None:
    """Seen: one callback 599 s ahead made every genuine one for that VM
    "out of order" for ten minutes."""
    d = with_vm()
    assert "stale or early" in reason(heard(message(at=NOW + 599), d))
    assert heard(message(at=NOW), d)


def test_a_duplicate_in_the_same_batch_is_rejected_before_the_fold() -> None:
    d = with_vm()
    memory: dict[str, float] = {}
    first = callback_events(message(), CLUSTER, PREFIX, d.state, NOW, memory)
    again = callback_events(message(), CLUSTER, PREFIX, d.state, NOW, memory)
    assert isinstance(first[0], ev.VMCallback) and "replayed" in reason(again)


def test_a_known_name_under_another_id_is_rejected() -> None:
    """OpenNebula names are unique per user only: another user's VM named
    like ours must not be credited to ours."""
    assert "is VM 101 in the log, not VM 555" in reason(heard(message(vm_id=555)))


@pytest.mark.parametrize("name", ["ecloud-c-\x1b[31mRED", "ecloud-c-1\nFAKE LINE", "ecloud-c- 1"])
def test_a_name_no_terminal_should_print_is_rejected(name: str) -> None:
    assert "name must be a VM name" in reason(heard(message(vm_id=777, name=name)))


def test_a_replayed_or_older_callback_is_rejected_once_the_log_holds_a_later_one() -> None:
    d = with_vm()
    (first,) = heard(message(at=NOW), d)
    d.apply(first)
    assert "replayed or out of order" in reason(heard(message(at=NOW), d))
    assert "replayed or out of order" in reason(heard(message(at=NOW - 1, state=3), d))
    assert heard(message(at=NOW + 0.5), d)  # a later one is news


def test_a_callback_changes_no_vm_and_asks_for_one_look_at_the_pool() -> None:
    d = with_vm()
    before = d.state.vms[PREFIX + "1"]
    status, state = before.status, before.state
    effects = d.apply(ev.VMCallback(101, PREFIX + "1", 8, 0, NOW))
    assert [type(e) for e in effects] == [ObserveCloud]
    vm = d.state.vms[PREFIX + "1"]
    assert (vm.status, vm.state) == (status, state)  # a hint: only the poll's sight decides
    assert (vm.callback_at, vm.callback_state, vm.callback_lcm) == (NOW, 8, 0)
    check_invariants(d.state)


def test_a_callback_about_a_vm_the_log_does_not_hold_asks_for_a_look_too() -> None:
    d = with_vm()
    effects = d.apply(ev.VMCallback(555, PREFIX + "555", 3, 3, NOW))
    assert [type(e) for e in effects] == [ObserveCloud]
    assert PREFIX + "555" not in d.state.vms


@given(st.lists(st.tuples(st.sampled_from([3, 4, 5, 6, 8, 9]), st.integers(0, 40),
                          st.floats(-5, 5, allow_nan=False)), max_size=8))
def test_callbacks_in_any_order_never_change_a_vm_s_status(calls) -> None:
    """Duplicates and out-of-order callbacks change nothing the poll decides."""
    d = with_vm()
    d.apply(ev.VMStateObserved(101, 3, 3, "10.0.0.1"))
    vm = d.state.vms[PREFIX + "1"]
    before = (vm.status, vm.state, vm.lcm_state, vm.ip)
    for state, lcm, shift in calls:
        d.apply(ev.VMCallback(101, PREFIX + "1", state, lcm, NOW + shift))
        assert (vm.status, vm.state, vm.lcm_state, vm.ip) == before
    check_invariants(d.state)


def test_a_callback_on_a_worker_s_own_topic_is_no_report_of_it() -> None:
    """A worker cannot write the hook's topic (the broker hangs up on it:
    tests/test_broker_security.py); what it writes on its own is refused."""
    from ecloud.boss.edge import to_events
    from ecloud.boss.heard import HeardReports
    from ecloud.effects.messaging.outbox import Outbox

    outbox = Outbox(lambda *a, **k: None, CLUSTER, 5.0)
    (event,) = to_events(f"ecloud/{CLUSTER}/from/{PREFIX}1", message(), CLUSTER,
                         with_vm().state, outbox, HeardReports())
    assert isinstance(event, ev.InputRejected) and event.sender == PREFIX + "1"


@pytest.mark.parametrize("account", ["ecloud-hook", "ecloud-boss"])
def test_ecloud_s_own_broker_accounts_are_heard_as_no_worker(account: str) -> None:
    """The ACL's patterns give every account a topic of its name: the hook's
    (or the boss's) cannot pose as a worker there."""
    from ecloud import wire
    from ecloud.boss.edge import to_events
    from ecloud.boss.heard import HeardReports
    from ecloud.effects.messaging.outbox import Outbox

    hello = wire.dumps(wire.WorkerPayload(account, [wire.Hello("m1", "h", 1, wire.PROTOCOL,
                                                                "i1")], incarnation="i1"))
    outbox = Outbox(lambda *a, **k: None, CLUSTER, 5.0)
    (event,) = to_events(f"ecloud/{CLUSTER}/from/{account}", hello, CLUSTER, with_vm().state,
                         outbox, HeardReports())
    assert isinstance(event, ev.InputRejected)
    assert "a broker account of ecloud's own" in event.reason


def test_the_vm_row_says_what_each_source_told_last() -> None:
    from ecloud.views.vms import precise_when, vm_rows

    d = with_vm()
    (row,) = vm_rows(d.state, d.state.clock)
    assert row["told"] == ""
    d.apply(ev.VMStateObserved(101, 3, 3, "10.0.0.1", PREFIX + "1"))
    d.apply(ev.VMCallback(101, PREFIX + "1", 8, 0, 86_400 * 3 + 3_723.5))
    (row,) = vm_rows(d.state, d.state.clock)
    assert row["told"] == (f"hook: POWEROFF at 01:02:03.500 · "
                           f"poll: RUNNING at {precise_when(d.state.vms[PREFIX + '1'].observed_at)}")
    assert precise_when(float("nan")) == "nan" and precise_when(59.9996) == "00:01:00.000"
