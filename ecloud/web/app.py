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
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ecloud.views import dag
from ecloud.views.follower import Follower
from ecloud.views.metrics import LogCollector

STATIC = resources.files("ecloud.web") / "static"
#: how often the event stream looks whether the follower moved on
STREAM_POLL = 0.25
STREAM_KEEPALIVE = 15.0


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


def make_app(follower: Follower) -> Starlette:
    """The application serving ``follower``'s view of the log."""
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
    ])
