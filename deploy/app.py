"""A tiny app to run under gunicorn: a room every stream joins, and a route that publishes to it.

From the repository's root::

    gunicorn deploy.app:create_app --worker-class aiohttp.GunicornWebWorker \\
        --workers 2 --bind 127.0.0.1:8000

or, with the settings of ``deploy/gunicorn.conf.py``::

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c deploy/gunicorn.conf.py deploy.app:create_app

- ``GET /sse``: the event stream. Its first event, ``worker``, is the PID of
  the worker that holds it; then every message published to the room.
- ``POST /publish``: publishes the body to the room and answers
  ``{"pid": <the worker that published it>}``.

Every gunicorn worker is a process of its own, with its own peers and topics.
Without a backplane a publish reaches only the streams of the worker that made
it: set ``REDIS_URL`` (``RedisSync``; channel ``SSE_CHANNEL``, default
``deploy-app``) and it reaches every worker's. Without ``REDIS_URL`` each worker
logs a warning saying so.
"""

from __future__ import annotations

import logging
import os

from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Peer, define_hooks, get_adapter, sse_adapter
from aiohttp_crossws_sse.sync import RedisSync

ROOM = "room"
log = logging.getLogger(__name__)


def open_(peer: Peer) -> None:
    peer.send(str(os.getpid()), event="worker")
    peer.subscribe(ROOM)


def close(peer: Peer, details: CloseDetails) -> None:
    log.info("worker %d: peer %s closed (%s)", os.getpid(), peer.id, details.reason)


async def publish(request: web.Request) -> web.Response:
    get_adapter(request).publish(ROOM, await request.text())
    return web.json_response({"pid": os.getpid()})


def make_app(redis_url: str | None, channel: str = "deploy-app") -> web.Application:
    sync = RedisSync(redis_url, channel=channel) if redis_url else None
    # shutdown_retry: on a restart, browsers reconnect (to a live worker) after 1 s
    sse = sse_adapter(define_hooks(open=open_, close=close), sync=sync, shutdown_retry=1000)
    app = web.Application()
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
    return make_app(redis_url, os.environ.get("SSE_CHANNEL", "deploy-app"))
