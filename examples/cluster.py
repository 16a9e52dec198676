"""A chat room served by several worker processes that share Redis.

Run Redis, then:

    python examples/cluster.py --workers 3 --redis redis://127.0.0.1:6379/0

Worker i listens on port 8080 + i. Open http://127.0.0.1:8080/ and
http://127.0.0.1:8081/ side by side: each page says which worker (PID) serves
it, and a line posted on one shows up on the other — the publish crossed from
one process to the other through Redis (``RedisSync``). Stop Redis for a
moment and each worker keeps serving its own clients, logs the outage, and
relays again by itself once Redis is back.

The same app under gunicorn (one port, the kernel spreads the connections)::

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn --chdir examples cluster:create_app \\
        --worker-class aiohttp.GunicornWebWorker --workers 4 --bind 127.0.0.1:8080

(``pip install gunicorn aiohttp-crossws-sse[redis]``.) Every worker is an
instance of the cluster: what one publishes reaches the subscribers of all.

How it works: ``make_app`` is an ordinary app with
``sse_adapter(..., sync=RedisSync(url, channel=...))``; nothing else in the
code knows there is more than one process. The page reads ``/sse`` with an
``EventSource`` and posts each line to ``/say``, whose handler calls
``sse.publish``: that delivers to the worker's own subscribers at once and
relays through Redis; every other worker delivers it to its subscribers.
A line may be posted to any worker: it need not be the one holding the
stream. (Bidirectional mode is different: its POSTs name a peer, which
lives on one worker, so behind one port they need sticky routing.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys

from aiohttp import web

from aiohttp_crossws_sse import Peer, SSEAdapter, define_hooks, sse_adapter
from aiohttp_crossws_sse.sync import RedisSync

ROOM = "chat"
MAX_TEXT = 2000

#: The app's adapter (``app[SSE]``), for tests and for publishing from elsewhere.
SSE = web.AppKey("sse", SSEAdapter)

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>aiohttp-crossws-sse: cluster chat</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 640px; margin: 24px auto; }
  #log { list-style: none; padding: 12px; border: 1px solid #dde3ee; border-radius: 8px;
         height: 60vh; overflow-y: auto; }
  .notice { color: #6b7489; font-style: italic; }
  form { display: flex; gap: 8px; } input { flex: 1; padding: 8px; }
</style>
<h1>Cluster chat <small id="worker"></small></h1>
<ul id="log"></ul>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something">
<button>Send</button></form>
<script>
  const log = document.getElementById("log");
  const add = (text, cls) => {
    const li = document.createElement("li");
    li.textContent = text;
    if (cls) li.className = cls;
    log.append(li);
    log.scrollTop = log.scrollHeight;
  };
  const source = new EventSource("/sse");
  source.addEventListener("worker", (e) => {
    document.getElementById("worker").textContent = "(worker " + e.data + ")";
  });
  source.addEventListener("notice", (e) => add(e.data, "notice"));
  source.onmessage = (e) => add(e.data);
  document.getElementById("form").onsubmit = async (e) => {
    e.preventDefault();
    const input = document.getElementById("text");
    if (!input.value.trim()) return;
    await fetch("/say", {method: "POST", body: input.value});
    input.value = "";
  };
</script>
"""


def open_(peer: Peer) -> None:
    peer.send(str(os.getpid()), event="worker")
    peer.subscribe(ROOM)
    peer.publish(ROOM, f"someone joined on worker {os.getpid()}", event="notice")


async def say(request: web.Request) -> web.Response:
    text = (await request.text()).strip()[:MAX_TEXT]
    if not text:
        raise web.HTTPBadRequest(text="say something")
    # every subscriber of ROOM, on this worker (at once) and on the others (via Redis)
    request.app[SSE].publish(ROOM, f"[worker {os.getpid()}] {text}")
    return web.Response(text="ok")


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


def make_app(redis_url: str, channel: str = "cluster-chat") -> web.Application:
    """The app of one worker: a chat whose publishes reach every worker on ``channel``."""
    sse = sse_adapter(define_hooks(open=open_), sync=RedisSync(redis_url, channel=channel))
    app = web.Application()
    app[SSE] = sse
    sse.setup(app, "/sse")
    app.router.add_get("/", page)
    app.router.add_post("/say", say)
    return app


async def create_app() -> web.Application:
    """The app factory for ``gunicorn cluster:create_app`` (reads ``REDIS_URL``)."""
    return make_app(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


def serve(redis_url: str, channel: str, port: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the workers
    web.run_app(make_app(redis_url, channel), host="127.0.0.1", port=port, print=None)


def main() -> None:
    ap = argparse.ArgumentParser(description="A chat served by N workers sharing Redis.")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=8080, help="worker i listens on PORT + i")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="a redis-py URL")
    ap.add_argument("--channel", default="cluster-chat")
    args = ap.parse_args()
    # Ctrl-C or SIGTERM: stop every worker (SIGTERM: each shuts down gracefully)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    workers = [
        multiprocessing.Process(target=serve, args=(args.redis, args.channel, args.port + i))
        for i in range(args.workers)
    ]
    try:
        for worker in workers:
            worker.start()
        for i, worker in enumerate(workers):
            print(f"worker {worker.pid}: http://127.0.0.1:{args.port + i}/", flush=True)
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        pass
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            if worker.pid is not None:
                worker.join()


if __name__ == "__main__":
    main()
