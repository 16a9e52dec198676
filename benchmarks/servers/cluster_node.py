"""Benchmark server: one instance of a cluster (``ours.py`` plus a backplane).

Same contract as the other servers (``GET /sse``, ``GET /publish?n=M&size=S``,
``GET /peers``, ``GET /stats``, ``&rate=R``), plus:

  GET /publish?...&stamp=1     each event's data starts with the CLOCK_MONOTONIC
                               time of its publish in ns and a space, then "x"
                               up to S bytes (for publish -> receive latency)

  GET /sse?topics=I:K:N         subscribed to the topics t<j> for j in 0..N-1 with
                               j % K == I (a share of N topics), not "bench"
  GET /publish?...&topics=N&offset=O
                               publish i goes to topic t<(O + i) % N>, its data
                               "<O>:<i>" (padded to S bytes): spread over N topics

Environment: PORT (default 8080); SYNC = "" (no backplane), "redis" or
"postgres"; SYNC_URL (the Redis URL or Postgres DSN); CHANNEL (default
"bench"); ORDERED=1 for ``ordered=True``; SHARDED=1 for
``RedisSync(sharded=True)``; UVLOOP=0 for asyncio's default loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from _serving import add_adapter_routes, new_loop, raise_nofile
from aiohttp import web

from aiohttp_crossws_sse import Peer, define_hooks, sse_adapter


def open_(peer: Peer) -> None:
    share = peer.request.query.get("topics")
    if share:
        mine, every, count = (int(x) for x in share.split(":"))
        for j in range(mine, count, every):
            peer.subscribe(f"t{j}")
    else:
        peer.subscribe("bench")
    peer.send("welcome")


def make_sync() -> Any:
    kind = os.environ.get("SYNC", "")
    channel = os.environ.get("CHANNEL", "bench")
    ordered = os.environ.get("ORDERED") == "1"
    if kind == "redis":
        from aiohttp_crossws_sse.sync import RedisSync

        sharded = os.environ.get("SHARDED") == "1"
        return RedisSync(os.environ["SYNC_URL"], channel=channel, ordered=ordered, sharded=sharded)
    if kind == "postgres":
        from aiohttp_crossws_sse.sync import PostgresSync

        return PostgresSync(os.environ["SYNC_URL"], channel=channel, ordered=ordered)
    if kind:
        sys.exit(f"unknown SYNC={kind!r}")
    return None


sse = sse_adapter(define_hooks(open=open_), sync=make_sync())


def stamped(size: int) -> str:
    head = f"{time.monotonic_ns()} "
    return head + "x" * (size - len(head))


async def publish(request: web.Request) -> web.Response:
    n = int(request.query.get("n", "1"))
    size = int(request.query.get("size", "64"))
    rate = float(request.query.get("rate", "0"))
    stamp = request.query.get("stamp") == "1"
    payload = "x" * size
    topics = int(request.query.get("topics", "0"))
    offset = int(request.query.get("offset", "0"))

    def one(i: int) -> None:
        if topics:  # spread over topics t0..t<topics-1>, each event says who and which
            head = f"{offset}:{i}:"
            sse.publish(f"t{(offset + i) % topics}", head + "x" * (size - len(head)))
        else:
            sse.publish("bench", stamped(size) if stamp else payload)

    if rate <= 0:
        for i in range(n):
            one(i)
        return web.Response(text="ok")
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < n:  # publish whatever is due, then sleep until the next one is
        due = min(n, int((loop.time() - start) * rate) + 1)
        while sent < due:
            one(sent)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    return web.Response(text="ok")


def main() -> None:
    raise_nofile()
    app = web.Application()
    sse.setup(app, "/sse")
    app.router.add_get("/publish", publish)
    add_adapter_routes(app, sse)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8080")),
        loop=new_loop(),
        print=None,
        access_log=None,
        backlog=4096,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
