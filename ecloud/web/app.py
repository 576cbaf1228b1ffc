"""The status page's web application (Starlette): one static page that
draws itself from a small read-only JSON API, and the Prometheus endpoint.

Routes::

    /                    the page (static HTML, CSS and JS; no framework)
    /api/page[?seq=N]    progress, workers, VMs booting, failures, decisions
                         at the head, or right after seq N (the time slider)
    /api/graph[?seq=N&mode=auto|task|pattern|level]
                         the DAG with task states, grouped when large
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
from ecloud.views import dag
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
    raw = request.query_params.get("seq")
    if raw in (None, ""):
        return None
    try:
        seq = int(raw)
    except ValueError:
        raise ValueError(f"seq must be a whole number, not {raw!r}") from None
    if seq < 0:
        raise ValueError("seq must not be negative")
    return seq


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
        Route("/api/stream", stream),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ], middleware=[Middleware(HostCheck, names=tuple(hosts), own_address=own_address)])
