"""The boss's side facing the cloud: provider calls off the loop's thread,
and when to look at the cloud's VM pool.

Spawns and kills run in a small thread pool, so a slow cloud never holds the
loop; their outcomes (events) go to the loop's inbox. The pool is looked at
every ``every`` seconds, at once at the start (whatever the machine's
uptime: the last look is "never"), and soon after a callback of OpenNebula's
state hook asked for it (``ObserveCloud``) - at most every :data:`LOOK_GAP`
seconds, however many callbacks come, and one look at a time: a look asked
for while one is under way (whose answer may predate the change the callback
told of) follows when that one is done.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ecloud.boss.inbox import Inbox
from ecloud.events import types as ev
from ecloud.projections.effects import KillVM, ObserveCloud, SpawnVM
from ecloud.projections.state import State

log = logging.getLogger("ecloud.boss")

#: the least time between two looks at the pool that callbacks asked for: a flood of
#: callbacks (thousands a second, for VMs of anybody's) costs oned two calls a second
LOOK_GAP = 0.5


class CloudSide:
    def __init__(self, provider: Any, inbox: Inbox, every: float) -> None:
        self.provider = provider
        self.inbox = inbox
        self.every = every
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="provider")
        self._last_look = -math.inf
        self._look_now = False  # a callback asked for a look not yet taken
        self._looking: Future | None = None  # the look under way

    def perform(self, effects: list) -> None:
        """Start the provider's part of a turn's effects."""
        for effect in effects:
            kind = type(effect)
            if kind is SpawnVM:
                self._call(self.provider.spawn if self.provider else None, effect)
            elif kind is KillVM:
                self._call(self.provider.kill if self.provider else None, effect)
            elif kind is ObserveCloud:
                self._look_now = True  # taken at the end of the turn (look)

    def look(self, state: State) -> None:
        """Look at the pool if it is time (see the module docstring)."""
        if self.provider is None:
            return
        now = time.monotonic()
        since = now - self._last_look
        if not ((self._look_now and since >= LOOK_GAP) or since >= self.every):
            return
        if self._looking is not None and not self._looking.done():
            return
        self._last_look = now
        self._look_now = False
        # always, and every VM the cloud may still hold - failed and dying
        # ones too: only the pool says what exists (a reconciler's view)
        alive = [(vm.vm_name, vm.vm_id) for vm in state.vms.values()
                 if vm.vm_id is not None and vm.status != "gone"]
        unallocated = [vm.vm_name for vm in state.vms.values()
                       if vm.vm_id is None and vm.status != "gone"]
        self._looking = self._pool.submit(self.provider.observe, alive, unallocated)
        self._looking.add_done_callback(self._done)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _call(self, fn: Callable | None, effect: Any) -> None:
        if fn is None:
            # a boss without a provider cannot act on VMs: the effect stays
            # outstanding in the state, for a boss that has one (a standby
            # must be started as the active one was: --local N, --provider)
            log.warning("cannot %s: this boss has no provider (start it with --local N or "
                        "--provider opennebula, as the boss before it was)", effect)
            return
        self._pool.submit(fn, effect).add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        if future.cancelled():  # the boss is shutting down
            return
        try:
            events = future.result()
        except Exception as exc:  # noqa: BLE001 - a provider bug must not stop the boss
            log.exception("provider call failed")
            events = [ev.InputRejected("provider", f"provider error: {exc}")]
        if events:
            self.inbox.put(("events", list(events)))


__all__ = ["LOOK_GAP", "CloudSide"]
