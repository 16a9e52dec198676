"""One instance of a cluster, in its own process, for the backplane tests.

``argv[1]``: JSON ``{"backend": "redis" | "postgres", "url": str, "channel": str,
"options": {...}, "adapter": {...}}`` (options go to ``RedisSync`` /
``PostgresSync``, adapter options to ``sse_adapter``). Prints
``port=N`` once listening on 127.0.0.1; SIGTERM shuts it down gracefully
(peers closed, backplane disconnected).

Routes (the adapter is bidirectional):

- ``GET /sse?topics=a,b&ns=NAME``: a stream in namespace NAME (default the
  path) subscribed to the topics (default ``chat``); its first event after
  ``crossws-id`` is ``welcome``.
- ``POST /sse``: a message ``{"topic": t, "data": d, "binary": bool}`` that the
  ``message`` hook publishes with ``peer.publish`` (``binary``: ``d`` is
  latin-1 text standing for bytes).
- ``GET /publish?topic=&data=&n=&ns=&event=&binary=&spread=&pads=``:
  ``sse.publish`` ``n`` times (data ``data`` or, with ``n`` > 1, ``data`` +
  index; with ``pads=a,b,..`` publish i gets ``:`` and ``pads[i]`` euro signs
  appended); with ``spread=1`` one publish per event-loop iteration, else all
  in one. With ``wait=1`` each publish is awaited before the next, and the
  answer is JSON ``{"ids": [...]}`` (the awaited ids), or 503 with the
  ``BackplaneError``'s message.
- ``POST /batch``: a JSON list of ``{"topic": t, "data": d, "event": e, "ns": n}``
  (``event`` and ``ns`` optional), all published with ``sse.publish`` in one
  event-loop iteration (a POST: such payloads outgrow a request line).
- ``GET /errors``: what the ``error`` hook saw (JSON list of strings).
- ``GET /health``: ``{"peers": n, "handler_errors": n}``.
- ``GET /stats``: ``sse.stats()``.

With ``&recovered=1`` on ``GET /sse``, the stream gets an event ``recovered``
(data ``True``, ``False`` or ``None``: ``peer.recovered``) once its replay is
done. ``options`` may hold ``"sharded": true``; ``url`` a list of node URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from aiohttp import web

from aiohttp_crossws_sse import (
    BackplaneError,
    Message,
    Peer,
    SSEError,
    define_hooks,
    sse_adapter,
)
from aiohttp_crossws_sse.sync import PostgresSync, RedisSync

config: dict[str, Any] = json.loads(sys.argv[1])
errors: list[str] = []
handler_errors = 0


def upgrade(request: web.Request) -> dict[str, Any] | None:
    ns = request.query.get("ns")
    return {"namespace": ns} if ns else None


tasks: set[asyncio.Task[None]] = set()


async def report_recovered(peer: Peer) -> None:
    peer.send(str(await peer.wait_recovered()), event="recovered")


def open_(peer: Peer) -> None:
    for topic in peer.request.query.get("topics", "chat").split(","):
        peer.subscribe(topic)
    peer.send("welcome")
    if peer.request.query.get("recovered"):
        task = asyncio.get_running_loop().create_task(report_recovered(peer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def message(peer: Peer, msg: Message) -> None:
    body = msg.json()
    data = body["data"].encode("latin-1") if body.get("binary") else body["data"]
    peer.publish(body["topic"], data)


def error(peer: Peer | None, err: SSEError) -> None:
    errors.append(f"{err} | cause: {err.__cause__!r}")


def make_sync() -> RedisSync | PostgresSync:
    options = config.get("options", {})
    if config["backend"] == "redis":
        return RedisSync(config["url"], channel=config["channel"], **options)
    return PostgresSync(config["url"], channel=config["channel"], **options)


sse = sse_adapter(
    define_hooks(upgrade=upgrade, open=open_, message=message, error=error),
    bidir=True,
    sync=make_sync(),
    **config.get("adapter", {}),
)


@web.middleware
async def count_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    global handler_errors
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException:
        raise
    except Exception:
        handler_errors += 1
        raise


async def publish(request: web.Request) -> web.Response:
    q = request.query
    n = int(q.get("n", "1"))
    data = q.get("data", "")
    pads = [int(p) for p in q["pads"].split(",")] if "pads" in q else []
    ids: list[str | None] = []
    for i in range(n):
        text = f"{data}{i}" if n > 1 else data
        if pads:
            text = f"{text}:" + "\u20ac" * pads[i % len(pads)]  # 3 bytes each in UTF-8
        item = text.encode("latin-1") if q.get("binary") else text
        published = sse.publish(q["topic"], item, event=q.get("event"), namespace=q.get("ns"))
        if q.get("wait"):
            try:
                ids.append(await published)
            except BackplaneError as exc:
                return web.Response(status=503, text=str(exc))
        if q.get("spread"):
            await asyncio.sleep(0)
    return web.json_response({"ids": ids}) if q.get("wait") else web.Response(text="ok")


async def batch(request: web.Request) -> web.Response:
    items = await request.json()
    for item in items:  # no await in between: one loop iteration, one relayed batch
        sse.publish(item["topic"], item["data"], event=item.get("event"), namespace=item.get("ns"))
    return web.Response(text="ok")


async def show_errors(request: web.Request) -> web.Response:
    return web.json_response(errors)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"peers": len(sse.peers), "handler_errors": handler_errors})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(sse.stats())


async def main() -> None:
    app = web.Application(middlewares=[count_errors])
    sse.setup(app, "/sse")
    app.router.add_get("/publish", publish)
    app.router.add_post("/batch", batch)
    app.router.add_get("/errors", show_errors)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"port={port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
