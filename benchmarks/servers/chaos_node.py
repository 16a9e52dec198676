"""Benchmark server: one instance of the chaos soak's cluster (``benchmarks/chaos.py``).

``RedisSync(..., ordered=True)`` with ``history`` on: ids are the cluster's,
so a client may resume on any instance.

  GET /sse?topic=T             a stream following topic T; resumes with
                               ``Last-Event-ID`` (header or ``lastEventId``).
                               Once the replay is over (``await
                               peer.wait_recovered()``), the instance sends
                               ``event: hello`` / ``data: <recovered> <name>``
                               (``recovered``: True, False or None), which
                               comes after the replayed events
  GET /publish?topic=T&n=K     awaits ``sse.publish(T, "T K <ns>")`` (``<ns>``:
                               CLOCK_MONOTONIC just before the publish) and
                               answers 200 with the event's id, or 503 when the
                               backplane refused it (``BackplaneError``: the
                               event went to this instance's subscribers only,
                               without an id)
  GET /peers                   open streams, as text
  GET /stats                   ``sse.stats()`` as JSON

The backplane's state changes (the package's log lines "lost the connection
to ..." and "reconnected to ...") are also printed on stdout, the moment they
are logged, as ``@chaos {"t": <CLOCK_MONOTONIC ns>, "kind": "down"|"up", "msg": ...}``:
the soak needs to know when this instance was not subscribed (what was
published then never reached it live, by design: pub/sub is at most once).
So is every replay that failed (``"kind": "replay-failed"``, from the
``error`` hook, with its cause).

Environment: PORT (default 8080), REDIS_URL (required), CHANNEL (default
"chaos"), HISTORY (events kept per topic, default 2000), NAME (this
instance's name, default the port), UVLOOP=0 for asyncio's default loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

from _serving import add_adapter_routes, new_loop, raise_nofile
from aiohttp import web

from aiohttp_crossws_sse import BackplaneError, Peer, define_hooks, sse_adapter
from aiohttp_crossws_sse.sync import RedisSync

NAME = os.environ.get("NAME") or os.environ.get("PORT", "8080")
_tasks: set[asyncio.Task[None]] = set()


def note(kind: str, text: str) -> None:
    """One ``@chaos`` line on stdout, timestamped now."""
    line = json.dumps({"t": time.monotonic_ns(), "kind": kind, "msg": text[:200]})
    sys.stdout.write(f"@chaos {line}\n")
    sys.stdout.flush()


class SyncStates(logging.Handler):
    """Prints the backplane's state changes, timestamped when logged."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot format is no state change
            return
        if "lost the connection to" in text:
            note("down", text)
        elif "reconnected to" in text:
            note("up", text)


def error(peer: Peer | None, err: Exception) -> None:
    """Every replay that failed (``recovered`` False), with its cause."""
    if peer is not None and str(err).startswith("replay failed"):
        note("replay-failed", str(err.__cause__ or err))


async def announce(peer: Peer) -> None:
    recovered = await peer.wait_recovered()
    peer.send(f"{recovered} {NAME}", event="hello")


def open_(peer: Peer) -> None:
    peer.subscribe(peer.request.query.get("topic", "t0"))
    task = asyncio.get_running_loop().create_task(announce(peer))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


sse = sse_adapter(
    define_hooks(open=open_, error=error),
    history=int(os.environ.get("HISTORY", "2000")),
    sync=RedisSync(
        os.environ["REDIS_URL"], channel=os.environ.get("CHANNEL", "chaos"), ordered=True
    ),
)


async def publish(request: web.Request) -> web.Response:
    topic = request.query["topic"]
    n = request.query["n"]
    try:
        event_id = await sse.publish(topic, f"{topic} {n} {time.monotonic_ns()}")
    except BackplaneError as exc:
        return web.Response(status=503, text=str(exc)[:200])
    return web.Response(text=event_id or "")


def main() -> None:
    raise_nofile()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiohttp_crossws_sse").addHandler(SyncStates())
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
        shutdown_timeout=2.0,
    )


if __name__ == "__main__":
    main()
