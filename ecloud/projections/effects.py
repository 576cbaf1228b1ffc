"""Effects: what the fold asks the outside world to do, as plain data.

Reducers return these; handlers in :mod:`ecloud.effects` perform them and turn
the outcomes into new events. Every effect names the seq of the event that
caused it (``cause``) and has an idempotency ``key`` (docs/design.md, "Effects and idempotency"):
performing an effect twice with the same key must do no more than once.
"""

from __future__ import annotations

from attrs import frozen

from ecloud.events.types import TaskSpec


@frozen
class Dispatch:
    """Send attempt ``attempt`` of a task to a worker. The worker runs a given
    (task, attempt) at most once, so resending is always safe."""

    cause: int
    task_id: str
    attempt: int
    worker_id: str
    spec: TaskSpec
    #: the context's datastore_address when the attempt was dispatched
    datastore: str = ""
    #: (upstream task, its results folder) for every input ``from`` a task
    sources: tuple[tuple[str, str], ...] = ()
    #: the context's datastore_id: the marker the datastore's root must hold
    datastore_id: str = ""
    #: (name, value) of the script macros the boss knows, for a task with
    #: scripts or a final task ($RETRY, $MAX_RETRIES, $JOB, $DAG_STATUS, $FAILED_COUNT)
    macros: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"dispatch/{self.task_id}/{self.attempt}"


@frozen
class CancelAttempt:
    """Kill a running attempt on its worker (cancelled, timed out, or
    superseded by a newer attempt)."""

    cause: int
    task_id: str
    attempt: int
    worker_id: str
    reason: str

    @property
    def key(self) -> str:
        return f"cancel/{self.task_id}/{self.attempt}"


@frozen
class Ack:
    """Tell a worker its message ``msg_id`` is committed, so it stops resending."""

    cause: int
    worker_id: str
    msg_id: str

    @property
    def key(self) -> str:
        return f"ack/{self.worker_id}/{self.msg_id}"


@frozen
class RefuseWorker:
    """Tell a worker's agent it may not join (an incompatible protocol, or
    another agent holds its id). ``incarnation`` names the agent refused
    (others listening under the same id ignore it); ``retry_after`` (set)
    lets it announce itself again after that many seconds."""

    cause: int
    worker_id: str
    reason: str
    incarnation: str = ""
    retry_after: float | None = None

    @property
    def key(self) -> str:
        return f"refuse/{self.worker_id}/{self.cause}"


@frozen
class SpawnVM:
    """Create a worker VM under a deterministic name (looked up first, so a
    replayed spawn never creates a second VM)."""

    cause: int
    vm_name: str
    #: what the new worker is told (boss address, slots, datastore): read from
    #: the state when the spawn is decided or re-issued, so a provider never
    #: needs the state
    context: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"spawn/{self.vm_name}"


@frozen
class ObserveCloud:
    """Look at the cloud's pool now, not at the next poll: a callback said a
    VM changed (``vm.callback``). What the look sees is what the log records
    and the reconciler acts on. Looking twice is harmless."""

    cause: int
    vm_id: int

    @property
    def key(self) -> str:
        return f"observe/{self.vm_id}"


@frozen
class KillVM:
    """Terminate a VM. Killing a dead VM is fine."""

    cause: int
    vm_id: int
    reason: str

    @property
    def key(self) -> str:
        return f"kill/{self.vm_id}"


Effect = Dispatch | CancelAttempt | Ack | RefuseWorker | SpawnVM | KillVM | ObserveCloud
