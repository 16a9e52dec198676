"""Benchmark server: aiohttp + aiohttp-sse, the broadcast loop users hand-roll today.

A set of ``EventSourceResponse`` objects; a publish is
``for resp in clients: await resp.send(payload)``.

Contract (shared by every server in this directory):
  GET /sse                     event stream: ``data: welcome``, then the broadcast
  GET /publish?n=M&size=S      send M events of S bytes ("xxx...") to every client, then 200
  GET /peers                   number of connected clients, as text

Environment: PORT (default 8080), UVLOOP=0 for the default asyncio loop.
"""

from __future__ import annotations

import os

from _serving import new_loop, raise_nofile
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

clients: set[EventSourceResponse] = set()


async def stream(request: web.Request) -> web.StreamResponse:
    async with sse_response(request) as resp:
        clients.add(resp)
        try:
            await resp.send("welcome")
            await resp.wait()
        finally:
            clients.discard(resp)
    return resp


async def publish(request: web.Request) -> web.Response:
    n = int(request.query.get("n", "1"))
    payload = "x" * int(request.query.get("size", "64"))
    for _ in range(n):
        for resp in list(clients):  # a copy: clients may leave while we await
            try:
                await resp.send(payload)
            except ConnectionResetError:
                clients.discard(resp)
    return web.Response(text="ok")


async def peers(request: web.Request) -> web.Response:
    return web.Response(text=str(len(clients)))


def main() -> None:
    raise_nofile()
    app = web.Application()
    app.router.add_get("/sse", stream)
    app.router.add_get("/publish", publish)
    app.router.add_get("/peers", peers)
    port = int(os.environ.get("PORT", "8080"))
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        loop=new_loop(),
        print=None,
        access_log=None,
        backlog=4096,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
