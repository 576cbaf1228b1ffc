"""Event types: every fact the log can hold.

Each event is a frozen attrs class named in the past tense, registered under a
stable *type tag* (``"task.finished"``) and a schema *version*. The tag, not the
class name, is what is stored, so classes can be renamed freely; when a body's
shape changes, bump the version and register an upcaster in
:mod:`ecloud.events.codec` so old logs still load.

Events say what happened; they never carry derived state. Time is not a field:
every stored event has a ``ts`` in its envelope (:class:`Recorded`), and that
is the only clock the reducers see.
"""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import field, frozen

#: A command is a shell string (run by ``/bin/sh -c``) or an argv tuple.
Command = str | tuple[str, ...]

EVENT_TYPES: dict[str, type] = {}
"""Type tag -> event class. Filled by :func:`event`."""


def event(tag: str, version: int = 1):
    """Register an event class under a stable type tag and schema version."""

    def register(cls):
        if tag in EVENT_TYPES:
            raise ValueError(f"event tag {tag!r} registered twice")
        cls.TYPE = tag
        cls.VERSION = version
        EVENT_TYPES[tag] = cls
        return cls

    return register


class Event:
    """Marker base class; ``TYPE`` and ``VERSION`` are set by :func:`event`."""

    __slots__ = ()
    TYPE: ClassVar[str]
    VERSION: ClassVar[int]


@frozen
class Recorded:
    """An event as stored: its position, its time and the event itself."""

    seq: int
    ts: float
    event: Any


# --------------------------------------------------------------------------- tasks


@frozen
class StagedFile:
    """A file (or directory) moved for an attempt: ``direction`` "in" (from
    the datastore into the working directory, as ``name``) or "out" (from
    ``name`` in the working directory to the datastore), with the sha256 and
    size of what arrived."""

    direction: str
    name: str
    path: str
    sha256: str
    bytes: int


def default_results_folder(task_id: str) -> str:
    """A task's results folder when its task file names none."""
    return f"results/{task_id}"


@frozen
class InputSpec:
    """A file the task needs in its working directory before it runs.

    ``path`` is on the datastore, or - when ``from_task`` is set - a declared
    output of that upstream task. ``name`` is where it lands (default: the
    path's last component); ``sha256`` is checked after the copy when given.
    """

    path: str
    name: str | None = None
    sha256: str | None = None
    from_task: str | None = None


@frozen
class AbortOn:
    """End the whole workflow when an attempt of this task ends with exit
    status ``exit``: its running tasks are cancelled, nothing new starts
    (but its final task), and the workflow's result is ``returns`` (None:
    ``exit`` itself). DAGMan's ``ABORT-DAG-ON node exit RETURN returns``."""

    exit: int
    returns: int | None = None


@frozen
class NodeSpec:
    """What a task of a workflow may say beyond its command; ``None`` in a
    plain task's spec, so a million plain tasks carry nothing more.

    The worker holding an attempt runs ``pre``, the command and ``post`` in
    that order, as one attempt (as DAGMan runs a node: a retry runs all three
    again); the boss reads the rest."""

    #: run before the command; a non-zero exit fails the attempt without
    #: running the command - unless it equals ``pre_skip``: then the task
    #: succeeds without running command or post
    pre: Command | None = None
    #: run after the command (also when it failed), with its exit status as
    #: ``$RETURN``; the post's exit status is the attempt's
    post: Command | None = None
    pre_skip: int | None = None
    #: an attempt that ends with this exit status is not retried
    retry_unless_exit: int | None = None
    abort_on: AbortOn | None = None
    #: runs once every other task of its workflow has ended, whatever
    #: happened; its result is the workflow's
    final: bool = False
    #: succeeds without running anything (once its dependencies have)
    noop: bool = False
    #: given as already done: succeeded from the start
    done: bool = False
    #: at most the workflow's limit for this category run at once
    category: str | None = None
    #: an absolute directory to run in (on the worker's machine) instead of
    #: a fresh one; ``stdin``/``stdout``/``stderr``: files relative to it
    workdir: str | None = None
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None


@frozen
class WorkflowLimits:
    """How many tasks of one task file (workflow) run at once: in all
    (``max_running``, None: no limit) and per category."""

    max_running: int | None = None
    categories: dict[str, int] = field(factory=dict)


@frozen(hash=False)
class TaskSpec:
    """A task as the operator submitted it; never changes afterwards."""

    id: str
    command: Command
    depends_on: tuple[str, ...] = ()
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[str, ...] = ()
    retries: int = 0
    retry_backoff: float = 10.0
    timeout: float | None = None
    priority: int = 0
    env: dict[str, str] = field(factory=dict)
    slots: int = 1
    #: the datastore folder its outputs go to; None: ``results/<id>``
    results: str | None = None
    #: scripts, workflow roles and placement (:class:`NodeSpec`); None: none
    node: NodeSpec | None = None

    @property
    def results_folder(self) -> str:
        """Where this task's outputs, stdout and stderr land on the datastore."""
        return self.results if self.results is not None else default_results_folder(self.id)


@event("tasks.submitted")
@frozen
class TasksSubmitted(Event):
    """A batch of tasks pushed at once (one task file). All or nothing."""

    batch_id: str
    tasks: tuple[TaskSpec, ...]
    source: str = ""
    #: the limits of the workflow ``source`` names (the last push's hold)
    limits: WorkflowLimits | None = None


@event("tasks.replaced")
@frozen
class TasksReplaced(Event):
    """An edited task file was pushed with ``--replace``: these tasks, all in
    the log already, take these new specs and run again as new attempts,
    with every task downstream of them (see
    :mod:`ecloud.projections.replace`). All or nothing."""

    batch_id: str
    tasks: tuple[TaskSpec, ...]
    source: str = ""


@event("task.cancelled")
@frozen
class TaskCancelled(Event):
    """The operator cancelled a task; a running attempt is killed."""

    task_id: str
    reason: str = ""


@event("task.retry_requested")
@frozen
class RetryRequested(Event):
    """The operator asked to run a failed or cancelled task again."""

    task_id: str
    reason: str = ""


@event("task.dispatched")
@frozen
class TaskDispatched(Event):
    """The scheduler gave attempt ``attempt`` of a task to a worker.

    Scheduling decisions are logged rather than recomputed on replay, so a
    change to the scheduler never rewrites history.
    """

    task_id: str
    attempt: int
    worker_id: str


@event("task.started")
@frozen
class TaskStarted(Event):
    """A worker reports that it started an attempt."""

    task_id: str
    attempt: int
    worker_id: str
    msg_id: str = ""


@event("task.finished")
@frozen
class TaskFinished(Event):
    """A worker reports the end of an attempt.

    ``exit_code`` is None when the process died by ``signal`` or never started
    (``reason`` then says why, e.g. ``"timeout"`` or ``"input missing"``).
    """

    task_id: str
    attempt: int
    worker_id: str
    exit_code: int | None
    duration: float = 0.0
    signal: int | None = None
    reason: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    msg_id: str = ""
    #: what the attempt staged in and out (checksums and sizes: provenance)
    staged: tuple[StagedFile, ...] = ()
    #: the worker gave the attempt back unstarted (it waited too long in the
    #: worker's queue, see ``queue_ahead``): not a failure, the task is ready again
    returned: bool = False
    #: which part of a task with scripts decided ``exit_code``: "pre", "post",
    #: "pre_skip" (the pre script's exit was the task's ``pre_skip``: succeeded
    #: without running more), "noop"; "" the command (or no scripts)
    stage: str = ""


# ------------------------------------------------------------------------- workers


@event("worker.announced")
@frozen
class WorkerAnnounced(Event):
    """A worker came up (or back) and offers ``slots`` concurrent tasks.

    ``incarnation`` is a fresh random id per agent process: an announcement
    with a new incarnation means the agent restarted and whatever the old one
    was running is gone; the same incarnation again is only a reconnect."""

    worker_id: str
    host: str
    slots: int
    protocol: int
    incarnation: str = ""
    vm_id: int | None = None
    msg_id: str = ""
    #: (task id, attempt) the agent holds as it announces itself: after a
    #: loss, the boss takes back what it did not give to another worker and
    #: has the rest stopped
    running: tuple[tuple[str, int], ...] = ()


@event("worker.heartbeat")
@frozen
class WorkerHeartbeat(Event):
    """A worker is alive. Heartbeats push its deadline forward. They are
    never acknowledged or resent (the next one replaces a lost one);
    ``msg_id`` only serves tracing."""

    worker_id: str
    msg_id: str = ""
    #: the agent process that sent it ("": an agent older than the field);
    #: only the worker's current incarnation keeps it alive
    incarnation: str = ""


@event("worker.left")
@frozen
class WorkerLeft(Event):
    """A worker said goodbye (shut down cleanly)."""

    worker_id: str
    reason: str = ""
    msg_id: str = ""
    incarnation: str = ""


@event("worker.draining")
@frozen
class WorkerDraining(Event):
    """A worker is shutting down: it takes no new work, gives back what it
    had queued, and lets what runs finish (then says goodbye)."""

    worker_id: str
    reason: str = ""
    msg_id: str = ""
    incarnation: str = ""


@event("worker.lost")
@frozen
class WorkerLost(Event):
    """A worker is gone without a goodbye: its broker connection died (last
    will), an operator declared it lost, or - under fold rules 2 - the boss
    decided so because it stayed silent past its heartbeat deadline.

    ``incarnation`` (when set) names the agent process meant: a will or a
    decision about an incarnation that is no longer the worker's changes
    nothing. ``silent_since`` (set on the boss's decisions) is the clock of
    the last word the boss had from the worker when it decided: a worker
    heard from after that is not lost, the decision came too late."""

    worker_id: str
    reason: str = ""
    incarnation: str = ""
    silent_since: float | None = None
    #: the broker published the worker's will (its connection died). Under
    #: rules 2 that makes the worker only a suspect: a broker that went away
    #: publishes the wills of workers that are alive and about to reconnect
    will: bool = False


# ----------------------------------------------------------------------------- VMs


@event("vm.requested")
@frozen
class VMRequested(Event):
    """The autoscaler asked for a worker VM under a deterministic name."""

    vm_name: str
    reason: str = ""


@event("vm.allocated")
@frozen
class VMAllocated(Event):
    """The cloud created the VM named ``vm_name`` with id ``vm_id``."""

    vm_name: str
    vm_id: int


@event("vm.state_observed")
@frozen
class VMStateObserved(Event):
    """A change in a VM's state as seen by polling the cloud.

    ``state`` and ``lcm_state`` are OpenNebula's raw codes, kept as data.
    """

    vm_id: int
    state: int
    lcm_state: int
    ip: str | None = None
    vm_name: str = ""


@event("vm.discovered")
@frozen
class VMDiscovered(Event):
    """A VM named with this cluster's prefix that the log never asked for
    (left by a boss whose log is not this one, or made by hand), as the
    cloud's pool shows it: it holds quota like ours, so it is taken in -
    used if its worker comes, else terminated (:mod:`ecloud.projections.reconcile`)."""

    vm_id: int
    vm_name: str
    state: int
    lcm_state: int
    ip: str | None = None


@event("vm.callback")
@frozen
class VMCallback(Event):
    """OpenNebula's state hook said that a VM of this cluster's prefix
    changed state (:mod:`onehook.hook`, :mod:`ecloud.boss.callbacks`):
    its id, name, STATE and LCM_STATE as the hook read them, and the hook's
    time. A hint, never the truth: it changes no VM's status, it makes the
    boss look at the cloud's pool at once, and that look decides."""

    vm_id: int
    vm_name: str
    state: int
    lcm_state: int
    at: float


@event("vm.failed")
@frozen
class VMFailed(Event):
    """A VM could not be created or failed while booting."""

    vm_name: str
    reason: str
    kind: str = "error"
    vm_id: int | None = None


@event("vm.kill_requested")
@frozen
class VMKillRequested(Event):
    """The autoscaler or the operator decided to kill a VM.

    ``source`` is ``"autoscaler"`` for the autoscaler's decisions: the fold
    refuses one whose VM's worker took work meanwhile. Any other source (the
    default, and every kill logged before the field existed) always goes
    through."""

    vm_id: int
    reason: str = ""
    source: str = "operator"


# ------------------------------------------------------------------------- context


@event("context.set")
@frozen
class ContextSet(Event):
    """An operator (or the boss) set a context value, e.g. the datastore."""

    key: str
    value: str


@event("context.dropped")
@frozen
class ContextDropped(Event):
    """A context value was removed (the seed's ``drop_context``)."""

    key: str


# --------------------------------------------------------------------------- other


@event("tick")
@frozen
class Tick(Event):
    """Time passed. Carries nothing: its envelope's ``ts`` is the news."""


@event("boss.started")
@frozen
class BossStarted(Event):
    """A boss took over the log. Deadlines restart from here, so workers are
    not declared lost for the time no boss was listening to them.

    ``rules`` is the version of the fold's rules the boss follows from here
    on (:data:`ecloud.projections.state.CURRENT_RULES`); a log written before
    the field existed folds by rules 1, as it always did."""

    boss_id: str = ""
    rules: int = 1


@event("boss.resumed")
@frozen
class BossResumed(Event):
    """The boss could not listen or log for ``paused`` seconds (the database
    was down or locked, the process was stopped or starved) and now can
    again. Like ``boss.started``, it restarts every live worker's deadline:
    a worker is judged on what the boss could hear, never on the boss's own
    silence."""

    paused: float
    reason: str = ""


@event("input.rejected")
@frozen
class InputRejected(Event):
    """Outside input that failed validation. Logged for the record; it changes
    nothing else - but for the acknowledgement of a worker's report
    (``msg_id``), so that its agent stops sending it again.

    ``sender`` is the worker whose topic it came on ("" when none can be
    told): the state remembers workers heard from that never announced
    themselves, for ``ecloud status``."""

    source: str
    reason: str
    excerpt: str = ""
    sender: str = ""
    msg_id: str = ""

