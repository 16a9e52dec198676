"""What the benchmark servers share: the event loop, the open-file limit, and
the ``/peers`` and ``/stats`` routes of an adapter (not a server itself)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from typing import Any

from aiohttp import web


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop unless ``UVLOOP=0`` (or uvloop is missing)."""
    if os.environ.get("UVLOOP", "1") != "0":
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            print("uvloop not installed: using asyncio's loop", file=sys.stderr)
    return asyncio.new_event_loop()


def raise_nofile() -> None:
    """The open-file limit up to its hard limit: thousands of streams."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def add_adapter_routes(app: web.Application, sse: Any) -> None:
    """``GET /peers`` (open streams, as text) and ``GET /stats`` (``sse.stats()``)."""

    async def peers(request: web.Request) -> web.Response:
        return web.Response(text=str(len(sse.peers)))

    async def stats(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(sse.stats()), content_type="application/json")

    app.router.add_get("/peers", peers)
    app.router.add_get("/stats", stats)
