"""A broadcast server for tests that need it in its own process (RSS checks).

Prints ``port=N`` once listening on 127.0.0.1. Routes: ``GET /sse?role=R``
(subscribes to "all"), ``GET /publish?n=&size=`` (publishes, pausing for the
peers whose role is ``healthy`` to drain — as a well-behaved broadcaster
would), ``GET /stats``, ``GET /rss`` (VmRSS in KiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

from aiohttp import web

from aiohttp_crossws_sse import Peer, define_hooks, sse_adapter


def open_(peer: Peer) -> None:
    peer.context["role"] = peer.request.query.get("role", "healthy")
    peer.subscribe("all")
    peer.send("welcome")


sse = sse_adapter(
    define_hooks(open=open_), **json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")
)


async def publish(request: web.Request) -> web.Response:
    n, size = int(request.query["n"]), int(request.query["size"])
    payload = "x" * size
    for i in range(n):
        sse.publish("all", payload)
        if i % 8 == 7:
            healthy = [p for p in sse.peers.values() if p.context["role"] == "healthy"]
            await asyncio.gather(*(p.wait_for_drain(256 * 1024) for p in healthy))
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(sse.stats())


def read_rss_kib() -> str:
    with open("/proc/self/status") as f:
        return next(x for x in f if x.startswith("VmRSS:")).split()[1]


async def rss(request: web.Request) -> web.Response:
    return web.Response(text=read_rss_kib())


async def main() -> None:
    app = web.Application()
    sse.setup(app, "/sse")
    app.router.add_get("/publish", publish)
    app.router.add_get("/stats", stats)
    app.router.add_get("/rss", rss)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"port={port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
