"""A tiny app to run under gunicorn: a room every stream joins, and a route that publishes to it.

From the repository's root::

    gunicorn deploy.app:create_app --worker-class aiohttp.GunicornWebWorker \\
        --workers 2 --bind 127.0.0.1:8000

or, with the settings of ``deploy/gunicorn.conf.py``::

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c deploy/gunicorn.conf.py deploy.app:create_app

- ``GET /sse``: the event stream. Its first event, ``worker``, is the PID of
  the worker that holds it (on a resume, the replay of what the stream missed
  comes before it); then every message published to the room.
- ``POST /publish``: publishes the body to the room and answers
  ``{"pid": <the worker that published it>}``.

Set ``HISTORY`` (events kept for ``Last-Event-ID`` replay; off by default) and
published events carry ids: a browser that reconnects, after a blip or a
restart, gets what it missed, then an event ``recovered`` whose data is
``true`` when nothing was lost and ``false`` when some may be (send a full
state then). With ``REDIS_URL`` the history lives in Redis and survives a
restart of gunicorn; without it each worker keeps its own, lost on restart.

Every gunicorn worker is a process of its own, with its own peers and topics.
Without a backplane a publish reaches only the streams of the worker that made
it: set ``REDIS_URL`` (``RedisSync``; channel ``SSE_CHANNEL``, default
``deploy-app``) and it reaches every worker's. Without ``REDIS_URL`` each worker
logs a warning saying so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Peer, define_hooks, get_adapter, sse_adapter
from aiohttp_crossws_sse.sync import RedisSync

ROOM = "room"
TASKS = web.AppKey("tasks", set[asyncio.Task[None]])
log = logging.getLogger(__name__)


def open_(peer: Peer) -> None:
    peer.send(str(os.getpid()), event="worker")
    peer.subscribe(ROOM)  # in open: replayed on a resume
    if get_adapter(peer.request).options.history:
        # The replay runs after open returns: learn its outcome in a task,
        # kept until it ends (the app's cleanup awaits the rest).
        tasks = peer.request.app[TASKS]
        task = asyncio.get_running_loop().create_task(tell_recovered(peer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def tell_recovered(peer: Peer) -> None:
    """On a resume, tell the page whether it missed nothing."""
    recovered = await peer.wait_recovered()  # None: no Last-Event-ID, or the peer left
    if recovered is not None:
        peer.send(json.dumps(recovered), event="recovered")


def close(peer: Peer, details: CloseDetails) -> None:
    log.info("worker %d: peer %s closed (%s)", os.getpid(), peer.id, details.reason)


async def publish(request: web.Request) -> web.Response:
    get_adapter(request).publish(ROOM, await request.text())
    return web.json_response({"pid": os.getpid()})


async def finish_tasks(app: web.Application) -> None:
    # After shutdown closed every peer, so each wait_recovered has returned.
    await asyncio.gather(*app[TASKS])


def make_app(
    redis_url: str | None, channel: str = "deploy-app", history: int = 0
) -> web.Application:
    sync = RedisSync(redis_url, channel=channel) if redis_url else None
    # shutdown_retry: on a restart, browsers reconnect (to a live worker) after 1 s
    sse = sse_adapter(
        define_hooks(open=open_, close=close), sync=sync, history=history, shutdown_retry=1000
    )
    app = web.Application()
    app[TASKS] = set()
    app.on_cleanup.append(finish_tasks)
    sse.setup(app, "/sse")
    app.router.add_post("/publish", publish)
    return app


async def create_app() -> web.Application:
    """The app factory gunicorn's ``aiohttp.GunicornWebWorker`` calls in each worker."""
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        log.warning(
            "worker %d: no backplane (REDIS_URL is not set): pub/sub is per process, "
            "a publish reaches only this worker's streams",
            os.getpid(),
        )
    history = int(os.environ.get("HISTORY", "0"))
    return make_app(redis_url, os.environ.get("SSE_CHANNEL", "deploy-app"), history)
