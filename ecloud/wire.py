"""The boss <-> worker protocol over MQTT: topics and message shapes.

Topics carry the cluster and the worker id, so a broker ACL can confine each
worker to its own (docs/design.md, "MQTT")::

    ecloud/<cluster>/from/<worker id>   worker -> boss   (reports; the will)
    ecloud/<cluster>/to/<worker id>     boss -> worker   (dispatches, cancels, acks;
                                                          and ``ecloud logs`` requests)
    ecloud/<cluster>/logs/<worker id>/<request id>
                                        worker -> ``ecloud logs``  (an attempt's output)
    ecloud/<cluster>/boss               boss -> every worker (retained: the boss's beat,
                                        and its will: "no boss")

Every payload is one JSON object with the protocol version ``v`` (a worker
of another version is heard only as far as its ``hello``, so that it can be
refused with a reason). Worker
payloads carry a list of reports (several per message when they pile up),
each with its own ``msg_id``; the boss acknowledges a report only after its
event is committed, and the worker resends every report until it is acked.
Boss payloads carry acks, dispatches and cancels together.

Incarnations: each agent process has a random ``incarnation``, sent with
every worker payload (and in its will). Two agents may listen under one
worker id (a duplicate the boss refuses, or a restarted agent beside its
not-yet-dead predecessor): a boss payload names the incarnation it is for
(``to``), and an agent acts only on its own (or on one naming none).

:func:`parse_worker_payload` is the boss's edge: size-bounded, JSON,
schema-checked, the worker id matching the topic's; anything else raises
:class:`WireError` with a reason and becomes an ``input.rejected`` event.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from attrs import field, frozen
from cattrs.errors import BaseValidationError
from cattrs.gen import make_dict_unstructure_fn, override

from ecloud import limits
from ecloud.events.codec import converter, describe
from ecloud.events.types import Command, InputSpec, NodeSpec, StagedFile

PROTOCOL = 1
#: the macros DAGMan replaces in a script's arguments (``RETURN``,
#: ``PRE_SCRIPT_RETURN`` and ``JOBID`` a post script's only): the DAG reader
#: fills in the static ones, the worker the rest (the boss sends some in a dispatch)
SCRIPT_MACROS = frozenset({
    "JOB", "JOBID", "RETRY", "MAX_RETRIES", "RETURN", "PRE_SCRIPT_RETURN", "DAG_STATUS",
    "FAILED_COUNT",
})
#: what a report's ``stage`` may say (see ecloud.events.types.TaskFinished.stage)
STAGES = frozenset(["", "pre", "post", "pre_skip", "noop"])
MAX_PAYLOAD = limits.WORKER_MESSAGE_BYTES
TAIL = 4096  # bytes of stdout/stderr sent back with a result


class WireError(ValueError):
    """A payload that is not a valid message of this protocol."""


#: the broker accounts that are no worker's (``ecloud broker config``): the
#: boss's, and OpenNebula's state hook's. The ACL's patterns give every
#: account a ``from`` topic of its name; the boss hears none of these as a worker.
BOSS_USER = "ecloud-boss"
HOOK_USER = "ecloud-hook"
SERVICE_USERS = (BOSS_USER, HOOK_USER)


# ------------------------------------------------------------------- topics


def from_topic(cluster: str, worker_id: str) -> str:
    return f"ecloud/{cluster}/from/{worker_id}"


def to_topic(cluster: str, worker_id: str) -> str:
    return f"ecloud/{cluster}/to/{worker_id}"


def from_all(cluster: str) -> str:
    """The boss's subscription: every worker's reports."""
    return f"ecloud/{cluster}/from/+"


def boss_topic(cluster: str) -> str:
    """Where the boss says, retained, that it is there (:class:`BossBeat`):
    workers that stop hearing it stop their attempts after a grace period."""
    return f"ecloud/{cluster}/boss"


def logs_topic(cluster: str, worker_id: str, request_id: str) -> str:
    """Where a worker answers one ``ecloud logs`` request (the boss does not
    listen there: output is not an event)."""
    return f"ecloud/{cluster}/logs/{worker_id}/{request_id}"


def worker_of(topic: str, cluster: str) -> str | None:
    """The worker id in a ``from`` topic of this cluster, else None."""
    prefix = f"ecloud/{cluster}/from/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix):]
    return rest if rest and "/" not in rest else None


# ---------------------------------------------------------- worker -> boss


@frozen
class Hello:
    """The worker announces itself (and again after a reconnect), with the
    attempts it holds: a boss that had given up on it learns what still
    runs there (and takes it back, or has it stopped)."""

    msg_id: str
    host: str
    slots: int
    protocol: int
    incarnation: str
    vm_id: int | None = None
    running: list[tuple[str, int]] = field(factory=list)
    kind: str = "hello"


converter.register_unstructure_hook(
    Hello, make_dict_unstructure_fn(Hello, converter, running=override(omit_if_default=True)))


@frozen
class Heartbeat:
    msg_id: str
    running: list[tuple[str, int]] = field(factory=list)
    kind: str = "heartbeat"


@frozen
class Started:
    msg_id: str
    task_id: str
    attempt: int
    kind: str = "started"


@frozen
class Finished:
    msg_id: str
    task_id: str
    attempt: int
    exit_code: int | None
    duration: float
    signal: int | None = None
    reason: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    staged: list[StagedFile] = field(factory=list)
    #: given back unstarted, see :attr:`ecloud.events.types.TaskFinished.returned`;
    #: left out of the message when False, so that a boss older than this field
    #: still reads every report (only it never queues ahead, so never gets one back)
    returned: bool = False
    #: which part of a task with scripts decided ``exit_code`` (see
    #: :attr:`ecloud.events.types.TaskFinished.stage`); left out when ""
    stage: str = ""
    kind: str = "finished"


converter.register_unstructure_hook(
    Finished, make_dict_unstructure_fn(Finished, converter, returned=override(omit_if_default=True),
                                       stage=override(omit_if_default=True)))


@frozen
class Bye:
    msg_id: str
    reason: str = ""
    kind: str = "bye"


@frozen
class Draining:
    """The worker is shutting down: no new work, please; what it had queued
    comes back (``returned``), what runs finishes, then it says goodbye."""

    msg_id: str
    reason: str = ""
    kind: str = "draining"


@frozen
class Lost:
    """The worker's MQTT will: published by the broker when the worker's
    connection dies without a goodbye."""

    msg_id: str = ""
    kind: str = "lost"


Report = Hello | Heartbeat | Started | Finished | Bye | Draining | Lost
REPORTS: dict[str, type] = {
    c.__attrs_attrs__.kind.default: c  # type: ignore[attr-defined]
    for c in (Hello, Heartbeat, Started, Finished, Bye, Draining, Lost)
}


@frozen
class WorkerPayload:
    worker: str
    reports: list[Any]
    v: int = PROTOCOL
    #: the sending agent's incarnation ("": an agent older than the field)
    incarnation: str = ""


# ---------------------------------------------------------- boss -> worker


@frozen
class DispatchMsg:
    task_id: str
    attempt: int
    command: Command
    env: dict[str, str] = field(factory=dict)
    timeout: float | None = None
    slots: int = 1
    inputs: list[InputSpec] = field(factory=list)
    outputs: list[str] = field(factory=list)
    #: where inputs come from and results go (the context's datastore_address)
    datastore: str = ""
    #: the datastore folder this task's outputs go to ("": results/<task id>)
    results: str = ""
    #: upstream task -> its results folder, for the inputs ``from`` a task
    sources: dict[str, str] = field(factory=dict)
    #: the id the datastore root's marker must hold (the context's datastore_id)
    datastore_id: str = ""
    #: scripts and placement (pre, post, pre_skip, workdir, stdin/out/err);
    #: None for a plain task, and then left out of the message
    node: NodeSpec | None = None
    #: values of the scripts' macros the boss knows ($RETRY, $MAX_RETRIES,
    #: $JOB, and for a final task $DAG_STATUS and $FAILED_COUNT); left out when empty
    macros: dict[str, str] = field(factory=dict)


converter.register_unstructure_hook(
    DispatchMsg, make_dict_unstructure_fn(DispatchMsg, converter,
                                          node=override(omit_if_default=True),
                                          macros=override(omit_if_default=True)))


@frozen
class CancelMsg:
    task_id: str
    attempt: int
    reason: str = ""


#: bytes of output one logs reply carries at most (base64 makes 4/3 of it)
LOG_CHUNK = 128 * 1024
STREAMS = ("stdout", "stderr")


@frozen
class LogsRequest:
    """``ecloud logs`` asks a worker for a piece of an attempt's output."""

    request_id: str
    task_id: str
    attempt: int
    stream: str
    offset: int = 0
    limit: int = LOG_CHUNK


@frozen
class LogsReply:
    """A worker's answer: ``data`` (base64) from ``offset``; ``size`` is the
    file's size when read (-1: the worker has no such attempt); ``running``
    whether the attempt still runs there (more may come)."""

    request_id: str
    task_id: str
    attempt: int
    stream: str
    offset: int
    size: int
    running: bool
    data: str = ""
    error: str = ""
    v: int = PROTOCOL


@frozen
class BossPayload:
    acks: list[str] = field(factory=list)
    dispatch: list[DispatchMsg] = field(factory=list)
    cancel: list[CancelMsg] = field(factory=list)
    #: set when the boss refuses this worker (e.g. protocol mismatch)
    refuse: str | None = None
    #: the boss does not know this worker (e.g. lost it): announce again
    reannounce: bool = False
    #: output requests of ``ecloud logs`` (sent by it, not by the boss)
    logs: list[LogsRequest] = field(factory=list)
    v: int = PROTOCOL
    #: the incarnation this message is for ("": whichever agent has the id)
    to: str = ""
    #: with ``refuse``: announce again after this many seconds (another
    #: agent holds the id for now); None: the refusal is final
    retry_after: float | None = None


# left out when empty: the boss's messages stay as they were (and as short)
converter.register_unstructure_hook(
    BossPayload, make_dict_unstructure_fn(BossPayload, converter,
                                          logs=override(omit_if_default=True),
                                          to=override(omit_if_default=True),
                                          retry_after=override(omit_if_default=True)))


@frozen
class BossBeat:
    """The boss is there (``up``), retained on :func:`boss_topic` and sent
    again every few seconds; its will says ``up: false``. ``boss`` is the
    boss's id, ``started`` when it became active and ``at`` when it beat
    (its clock): a boss hearing another's fresh beats on its cluster knows
    that two bosses - of two logs - share one cluster name on one broker."""

    boss: str
    up: bool = True
    v: int = PROTOCOL
    started: float = 0.0
    at: float = 0.0
    #: the id of the boss's log: bosses of one log (a standby that took over)
    #: are no conflict
    log: str = ""


# ------------------------------------------------------------------ codecs


def dumps(payload: WorkerPayload | BossPayload | LogsReply | BossBeat) -> bytes:
    return orjson.dumps(converter.unstructure(payload))


def _report(raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise WireError("a report must be a JSON object")
    cls = REPORTS.get(raw.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise WireError(f"unknown report kind {raw.get('kind')!r}")
    try:
        return converter.structure(raw, cls)
    except (BaseValidationError, TypeError, ValueError) as exc:
        raise WireError(f"bad {raw['kind']} report: {describe(exc)}") from None


#: bounds on what a worker may say, beyond the types: a value outside them is
#: not something our agent sends, and must not reach the log (a 200 kB "host"
#: would be copied into every snapshot)
MAX_TEXT = 1000  # reasons
MAX_NAME = 255  # host names, message ids, incarnations, task ids (taskgraph allows 200)
MAX_TAIL_CHARS = 4 * TAIL  # TAIL bytes decoded, each byte at most 4 characters after repair
MAX_ATTEMPT = 1_000_000
MAX_SLOTS = 4096
MAX_DURATION = 10 * 365 * 86400.0
MAX_STAGED = 10_000


def _bounded(value: str, limit: int, what: str) -> None:
    if len(value) > limit:
        raise WireError(f"{what} is {len(value)} characters long, at most {limit} allowed")


def _plausible(report: Any) -> None:
    """Raise :class:`WireError` for a value no agent of ours sends."""
    kind = type(report)
    _bounded(report.msg_id, MAX_NAME, "msg_id")
    if kind is Started or kind is Finished:
        if not report.task_id:
            raise WireError("task_id is empty")
        _bounded(report.task_id, MAX_NAME, "task_id")
        if not 1 <= report.attempt <= MAX_ATTEMPT:
            raise WireError(f"attempt {report.attempt} is out of range 1..{MAX_ATTEMPT}")
    if kind is Finished:
        if report.exit_code is not None and not -255 <= report.exit_code <= 255:
            raise WireError(f"exit code {report.exit_code} is out of range -255..255")
        if report.signal is not None and not 1 <= report.signal <= 128:
            raise WireError(f"signal {report.signal} is out of range 1..128")
        if not 0.0 <= report.duration <= MAX_DURATION:  # also false for NaN
            raise WireError(f"duration {report.duration} is out of range")
        _bounded(report.reason, MAX_TEXT, "reason")
        _bounded(report.stdout_tail, MAX_TAIL_CHARS, "stdout_tail")
        _bounded(report.stderr_tail, MAX_TAIL_CHARS, "stderr_tail")
        if len(report.staged) > MAX_STAGED:
            raise WireError(f"{len(report.staged)} staged files, at most {MAX_STAGED} allowed")
        for staged in report.staged:
            if staged.direction not in ("in", "out") or staged.bytes < 0:
                raise WireError(f"implausible staged file {staged.name[:100]!r}")
        if report.stage not in STAGES:
            raise WireError(f"unknown stage {report.stage[:40]!r}")
    elif kind is Hello:
        _bounded(report.host, MAX_NAME, "host")
        _bounded(report.incarnation, MAX_NAME, "incarnation")
        if report.slots > MAX_SLOTS:  # fewer than 1: the fold refuses the worker, saying why
            raise WireError(f"{report.slots} slots, at most {MAX_SLOTS} allowed")
        if report.vm_id is not None and not 0 <= report.vm_id < 2**31:
            raise WireError(f"VM id {report.vm_id} is out of range")
        if len(report.running) > MAX_STAGED or any(
                not 1 <= a <= MAX_ATTEMPT or not t or len(t) > MAX_NAME for t, a in report.running):
            raise WireError("implausible list of running attempts")
    elif kind is Bye or kind is Draining:
        _bounded(report.reason, MAX_TEXT, "reason")
    elif kind is Heartbeat and len(report.running) > MAX_STAGED:
        raise WireError(f"heartbeat lists {len(report.running)} attempts")


def parse_worker_payload(payload: bytes, topic_worker: str) -> WorkerPayload:
    """Check a worker's message completely, or raise :class:`WireError`."""
    if len(payload) > MAX_PAYLOAD:
        raise WireError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError("payload must be a JSON object")
    version = data.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise WireError(f"protocol version must be an integer, got {version!r}")
    if data.get("worker") != topic_worker:
        raise WireError(f"worker {data.get('worker')!r} speaking on the topic of {topic_worker!r}")
    reports = data.get("reports")
    if not isinstance(reports, list) or not reports:
        raise WireError("reports must be a non-empty list")
    extra = set(data) - {"v", "worker", "reports", "incarnation"}
    if extra:
        raise WireError(f"unknown keys {sorted(extra)}")
    incarnation = data.get("incarnation", "")
    if not isinstance(incarnation, str) or len(incarnation) > MAX_NAME:
        raise WireError("incarnation must be a string of at most "
                        f"{MAX_NAME} characters")
    reports = [_report(r) for r in reports]
    for report in reports:
        _plausible(report)
    if version != PROTOCOL and not all(isinstance(r, Hello) for r in reports):
        # Only an announcement is read from a worker of another version: the
        # fold then refuses it with a reason the worker is told.
        raise WireError(f"protocol version {version}, expected {PROTOCOL}")
    return WorkerPayload(topic_worker, reports, version, incarnation)


def _parse(payload: bytes, cls: type, what: str, limit: int) -> Any:
    """One JSON object of this protocol as ``cls``, or :class:`WireError`."""
    if len(payload) > limit:
        raise WireError(f"{what} too large")
    try:
        data = orjson.loads(payload)
        if not isinstance(data, dict) or data.get("v") != PROTOCOL:
            raise WireError(f"not a protocol {PROTOCOL} {what}")
        return converter.structure(data, cls)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not JSON: {exc}") from None
    except (BaseValidationError, TypeError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"bad {what}: {describe(exc)}") from None


def parse_boss_payload(payload: bytes) -> BossPayload:
    """The worker's side: a boss message, or :class:`WireError`."""
    return _parse(payload, BossPayload, "boss message", limits.BOSS_MESSAGE_BYTES)


def parse_boss_beat(payload: bytes) -> BossBeat:
    """The worker's side: the boss's beat, or :class:`WireError`."""
    return _parse(payload, BossBeat, "boss beat", 4096)


def check_logs_request(request: LogsRequest) -> str | None:
    """Why a worker must not serve this request, if it must not."""
    if request.stream not in STREAMS:
        return f"stream must be one of {', '.join(STREAMS)}"
    if not request.task_id or len(request.task_id) > MAX_NAME:
        return "bad task id"
    if not 1 <= request.attempt <= MAX_ATTEMPT:
        return f"attempt {request.attempt} is out of range"
    if not request.request_id or len(request.request_id) > 64 or "/" in request.request_id \
            or "+" in request.request_id or "#" in request.request_id:
        return "bad request id"
    if request.offset < 0 or not 0 < request.limit <= LOG_CHUNK:
        return "bad offset or limit"
    return None


def parse_logs_reply(payload: bytes) -> LogsReply:
    """``ecloud logs``'s side: a worker's answer, or :class:`WireError`."""
    return _parse(payload, LogsReply, "logs reply", 2 * LOG_CHUNK)


def excerpt(payload: bytes, limit: int = 200) -> str:
    """A bounded, printable piece of a payload for an ``input.rejected`` event."""
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(payload) > limit else "")


#: keys whose values an excerpt never shows (an env's values, passwords...)
_SECRET_KEY = re.compile(r"password|secret|token|credential|api_?key", re.I)
_ENV_TEXT = re.compile(rb'("env"\s*:\s*\{)[^}]*')
_SECRET_TEXT = re.compile(rb'("[^"]*(?:password|secret|token|credential|api_?key)[^"]*"\s*:\s*)'
                          rb'"(?:[^"\\]|\\.)*"', re.I)


def redacted_excerpt(payload: bytes, limit: int = 200) -> str:
    """:func:`excerpt` of a payload with every secret value blanked first:
    an ``env`` object's values and any value under a key that looks secret
    (``password``, ``token``...) - parsed when it is JSON, by pattern when
    it is not. Rejected input is logged, and the log is read by many."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        text = _SECRET_TEXT.sub(rb'\1"..."', _ENV_TEXT.sub(rb"\1...", payload))
        return excerpt(text, limit)
    return excerpt(orjson.dumps(_redact(data)), limit)


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 50:
        return "..."
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "env" and isinstance(item, dict):
                out[key] = dict.fromkeys(item, "...")
            elif isinstance(key, str) and _SECRET_KEY.search(key):
                out[key] = "..."
            else:
                out[key] = _redact(item, depth + 1)
        return out
    if isinstance(value, list):
        return [_redact(item, depth + 1) for item in value]
    return value


def bounded_reason(reason: str, limit: int = MAX_TEXT) -> str:
    """A rejection's reason, cut to ``limit`` characters (a reason quotes
    what it rejects, which may be anything)."""
    return reason if len(reason) <= limit else reason[:limit] + "…"
