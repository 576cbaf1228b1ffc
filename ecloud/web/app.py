"""The status page's web application (Starlette): one static page that
draws itself from a small read-only JSON API, and the Prometheus endpoint.

Routes::

    /                    the page (static HTML, CSS and JS; no framework)
    /api/page[?seq=N]    progress, workers, VMs booting, failures, decisions
                         at the head, or right after seq N (the time slider)
    /api/graph[?seq=N&mode=auto|task|pattern|level]
                         the DAG with task states, grouped when large
    /api/tasks[?seq=N&q=&state=a,b&blocked_by=ID&group=KEY&mode=M&offset=&limit=]
                         a page of the task list: search (substring or glob),
                         states, the root of a block, a DAG node's tasks
    /api/task/ID[?seq=N] one task: spec, every attempt with its output tails,
                         parents, children and what it blocks; 404 if unknown
    /api/seek?time=T | ?failure=next|prev&from=SEQ
                         the seq the log was at at time T, or of the next
                         (previous) failed attempt: where the slider jumps
    /api/stream          server-sent events: the page's data each time the
                         log moves on (a comment every 15 s keeps proxies open)
    /metrics             Prometheus text format
    /healthz             the folded seq and the head, or 503 if following failed

Every route only reads: there is no way to change the cluster from here.

Every route answers only to the names the page is served at (the ``Host``
header, see :class:`HostCheck`): any other gets 421 and a line saying which
names are served. Else a web site the operator visits could point its own
name at 127.0.0.1 (DNS rebinding) and read the page - stderr tails and all.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ecloud.config import host_name
from ecloud.projections.state import TASK_STATUSES
from ecloud.views import dag, summary
from ecloud.views.follower import Follower
from ecloud.views.metrics import LogCollector

STATIC = resources.files("ecloud.web") / "static"
#: how often the event stream looks whether the follower moved on
STREAM_POLL = 0.25
STREAM_KEEPALIVE = 15.0
#: the names every page answers to, wherever it is bound
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_PORT_RE = re.compile(r"(:[0-9]*)?")


def host_of(header: str) -> str | None:
    """The name a ``Host`` header gives (``name``, ``name:port``,
    ``[v6]:port``) as :func:`~ecloud.config.host_name` writes it; None when
    it names none or is malformed."""
    text = header.strip()
    if text.startswith("["):
        end = text.find("]") + 1
        if not end:
            return None
        name, port = text[:end], text[end:]
    else:
        name, colon, port = text.partition(":")
        port = colon + port
    if not name or not _PORT_RE.fullmatch(port):
        return None
    try:
        return host_name(name)
    except ValueError:
        return None


class HostCheck:
    """ASGI middleware: pass on a request only when its single ``Host``
    header names one of ``names`` - or, with ``own_address`` (a page bound
    to 0.0.0.0 or ::), the address its connection reached, which is the
    page's own origin and never a rebinding site's. Any other request - a
    foreign, malformed, missing or repeated Host - gets 421 Misdirected
    Request and a plain line naming the setting that adds a name (not the
    served names: a rebinding page can read the answer); nothing of the app
    runs for it.

    Not Starlette's TrustedHostMiddleware: that answers 400 "Invalid host
    header" (and may redirect to a www. name), cannot say what is served,
    and knows nothing of the connection's own address."""

    def __init__(self, app: ASGIApp, names: Iterable[str], own_address: bool = False) -> None:
        self.app = app
        served = tuple(dict.fromkeys(host_name(name) for name in names))
        self.names = frozenset(served)
        self.own_address = own_address
        # the served names are not in the answer: a rebinding page may read
        # it, and the machine's names are none of its business
        self.refusal = (
            "421 Misdirected Request: this ecloud status page does not answer to that host "
            "name. To reach it by another name, add that name to the setting web_hosts "
            "($ECLOUD_WEB_HOSTS, comma-separated); the names it answers to are printed when it "
            "starts.\n")

    def allows(self, scope: Scope) -> bool:
        hosts = [value for key, value in scope["headers"] if key == b"host"]
        if len(hosts) != 1:
            return False
        host = host_of(hosts[0].decode("latin-1"))
        if host is None:
            return False
        if host in self.names:
            return True
        server = scope.get("server")
        if not self.own_address or not server:
            return False
        try:
            return host == host_name(server[0])
        except ValueError:
            return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":  # the server answers 403
            await send({"type": "websocket.close", "code": 1008})
        else:
            await PlainTextResponse(self.refusal, status_code=421, headers={
                "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            })(scope, receive, send)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _problem(message: str, status: int = 400) -> Response:
    return _json({"error": message}, status)


def _seq(request: Request) -> int | None:
    """The ``seq`` of a time-travel request (None: the head)."""
    return _whole(request, "seq", None, 0, None)


def _whole(request: Request, name: str, default: int | None, low: int,
           high: int | None) -> int | None:
    """A whole-number query parameter, at least ``low`` and at most ``high``
    (None: no bound); ValueError says why not."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    if high is None and value < low:
        raise ValueError(f"{name} must not be negative" if low == 0
                         else f"{name} must be at least {low}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}")
    return value


def _list_filters(request: Request) -> dict[str, Any]:
    """The task list's filters from the query; ValueError names a bad one."""
    params = request.query_params
    states = [s for s in params.get("state", "").split(",") if s]
    unknown = [s for s in states if s not in TASK_STATUSES]
    if unknown:
        raise ValueError(f"state must be among {', '.join(TASK_STATUSES)}, not {unknown[0]!r}")
    group, mode = params.get("group") or None, params.get("mode") or None
    if group is not None and mode not in dag.MODES[1:]:
        raise ValueError(f"a group needs its mode: one of {', '.join(dag.MODES[1:])}")
    return {"query": params.get("q", ""), "states": states,
            "blocked_by": params.get("blocked_by") or None, "group": group, "mode": mode,
            "offset": _whole(request, "offset", 0, 0, 2**62),
            "limit": _whole(request, "limit", summary.DEFAULT_LIST, 1, summary.MAX_LIST)}


def _seek(follower: Follower, request: Request) -> dict[str, Any]:
    """Where the slider jumps: ``time`` (seconds since the epoch, the log's
    clock), or ``failure`` next or prev ``from`` a seq."""
    params = request.query_params
    if "time" in params:
        try:
            ts = float(params["time"])
        except ValueError:
            raise ValueError(f"time must be seconds since the epoch, not {params['time']!r}") from None
        if ts != ts:  # NaN: no time at all
            raise ValueError("time must be a number")
        return {"seq": follower.seek_time(ts)}
    direction = params.get("failure")
    if direction not in ("next", "prev"):
        raise ValueError("give time=SECONDS, or failure=next|prev with from=SEQ")
    start = _whole(request, "from", 0, 0, 2**62)
    return {"seq": follower.seek_failure(start, direction == "next")}


def make_app(follower: Follower, hosts: Iterable[str] = LOOPBACK_NAMES,
             own_address: bool = False) -> Starlette:
    """The application serving ``follower``'s view of the log to requests
    for ``hosts`` (and, with ``own_address``, for the address a request was
    sent to): see :class:`HostCheck`."""
    registry = CollectorRegistry()
    registry.register(LogCollector(follower))

    async def index(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-store"})

    async def page(request: Request) -> Response:
        try:
            seq = _seq(request)
            if seq is None:
                return _json(await run_in_threadpool(follower.page))
            return _json(await run_in_threadpool(follower.page_at, seq))
        except ValueError as exc:
            return _problem(str(exc))

    async def graph(request: Request) -> Response:
        mode = request.query_params.get("mode", "auto")
        if mode not in dag.MODES:
            return _problem(f"mode must be one of {', '.join(dag.MODES)}")
        try:
            seq = _seq(request)
            if seq is None:
                return _json(await run_in_threadpool(follower.graph, mode))
            return _json(await run_in_threadpool(follower.graph_at, seq, mode))
        except ValueError as exc:
            return _problem(str(exc))

    async def tasks(request: Request) -> Response:
        try:
            seq, filters = _seq(request), _list_filters(request)
            return _json(await run_in_threadpool(lambda: follower.tasks(seq, **filters)))
        except ValueError as exc:
            return _problem(str(exc))

    async def task(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        try:
            seq = _seq(request)
            data = await run_in_threadpool(follower.task, task_id, seq)
        except ValueError as exc:
            return _problem(str(exc))
        if data is None:
            where = f" up to seq {seq}" if seq is not None else ""
            return _problem(f"no task {task_id!r} in the log{where}", 404)
        return _json(data)

    async def seek(request: Request) -> Response:
        try:
            return _json(await run_in_threadpool(_seek, follower, request))
        except ValueError as exc:
            return _problem(str(exc))

    async def stream(request: Request) -> Response:
        async def events():
            last, quiet = -1, 0.0
            while not await request.is_disconnected():
                if follower.state.seq != last:
                    data = await run_in_threadpool(follower.page)
                    if data["seq"] != last:  # a page built a moment ago may still be the last one
                        last, quiet = data["seq"], 0.0
                        yield b"event: page\ndata: " + orjson.dumps(data) + b"\n\n"
                elif quiet >= STREAM_KEEPALIVE:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(STREAM_POLL)
                quiet += STREAM_POLL

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        if follower.error:
            return _json({"ok": False, "error": follower.error}, 503)
        return _json({"ok": True, "seq": follower.state.seq, "head": follower.head})

    return Starlette(routes=[
        Route("/", index),
        Route("/api/page", page),
        Route("/api/graph", graph),
        Route("/api/tasks", tasks),
        Route("/api/task/{task_id:path}", task),
        Route("/api/seek", seek),
        Route("/api/stream", stream),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ], middleware=[Middleware(HostCheck, names=tuple(hosts), own_address=own_address)])
