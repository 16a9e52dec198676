"""Benchmark server: aiohttp_crossws_sse through its public API.

Contract (shared by every server in this directory):
  GET /sse                     event stream: ``data: welcome``, then the "bench" broadcast
  GET /publish?n=M&size=S      publish M events of S bytes ("xxx...") to every client, then 200
  GET /peers                   number of connected clients, as text
Extra here:
  GET /publish?...&rate=R      the same at R events per second (an absolute schedule)
  GET /stats                   ``json.dumps(sse.stats())``

Environment: PORT (default 8080), UVLOOP=0 for the default asyncio loop.
"""

from __future__ import annotations

import asyncio
import os

from _serving import add_adapter_routes, new_loop, raise_nofile
from aiohttp import web

from aiohttp_crossws_sse import Peer, define_hooks, sse_adapter


def open_(peer: Peer) -> None:
    peer.subscribe("bench")
    peer.send("welcome")


sse = sse_adapter(define_hooks(open=open_))


async def publish(request: web.Request) -> web.Response:
    n = int(request.query.get("n", "1"))
    payload = "x" * int(request.query.get("size", "64"))
    rate = float(request.query.get("rate", "0"))
    if rate <= 0:
        for _ in range(n):
            sse.publish("bench", payload)  # a plain method: encodes once, queues, returns
        return web.Response(text="ok")
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < n:  # publish whatever is due, then sleep until the next one is
        due = min(n, int((loop.time() - start) * rate) + 1)
        while sent < due:
            sse.publish("bench", payload)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    return web.Response(text="ok")


def main() -> None:
    raise_nofile()
    app = web.Application()
    sse.setup(app, "/sse")
    app.router.add_get("/publish", publish)
    add_adapter_routes(app, sse)
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
