"""Benchmark server: sse-starlette + uvicorn, one ``asyncio.Queue`` per client.

Each stream's async generator yields from its own queue; a publish puts the
payload into every queue.

Contract (shared by every server in this directory):
  GET /sse                     event stream: ``data: welcome``, then the broadcast
  GET /publish?n=M&size=S      queue M events of S bytes ("xxx...") for every client, then 200
  GET /peers                   number of connected clients, as text

Environment: PORT (default 8080), UVLOOP=0 for the default asyncio loop,
SSE_PING=seconds between keep-alive pings (sse-starlette's default: 15).
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import AsyncIterator

import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

queues: set[asyncio.Queue[str]] = set()


async def stream(request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, str]]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        queues.add(queue)
        try:
            yield {"data": "welcome"}
            while True:
                yield {"data": await queue.get()}
        finally:
            queues.discard(queue)

    ping = os.environ.get("SSE_PING")
    if ping is None:
        return EventSourceResponse(events())
    return EventSourceResponse(events(), ping=int(ping))


async def publish(request: Request) -> PlainTextResponse:
    n = int(request.query_params.get("n", "1"))
    payload = "x" * int(request.query_params.get("size", "64"))
    for _ in range(n):
        for queue in queues:
            queue.put_nowait(payload)
    return PlainTextResponse("ok")


async def peers(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(queues)))


app = Starlette(routes=[Route("/sse", stream), Route("/publish", publish), Route("/peers", peers)])


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = "asyncio"
    if os.environ.get("UVLOOP", "1") != "0":
        try:
            import uvloop  # noqa: F401

            loop = "uvloop"
        except ImportError:
            pass
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8080")),
        loop=loop,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
