"""What the boss needs from a VM provider (local processes, OpenNebula).

Every method may block (the boss calls them from a thread pool) and returns
outcome events, which the boss logs: ``vm.allocated``, ``vm.state_observed``,
``vm.failed``. A provider never raises for a failure of the cloud: it reports
it as an event. Spawning is idempotent by VM name, killing by VM id.
"""

from __future__ import annotations

from typing import Protocol

from ecloud.projections.effects import KillVM, SpawnVM


class Provider(Protocol):
    def spawn(self, effect: SpawnVM) -> list: ...

    def kill(self, effect: KillVM) -> list: ...

    def observe(self, alive_in_log: list[tuple[str, int]]) -> list:
        """Changes for the VMs the log believes alive, as (name, vm id)."""
        ...

    def close(self) -> None: ...
