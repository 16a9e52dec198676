"""The seed example of the crossws SSE docs: the open hook sends "hello!".

Run:  python examples/basic.py [--port 8080]
Open http://127.0.0.1:8080/ — the page connects with `new EventSource("/sse")`
and shows what arrives.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Peer, define_hooks, sse_adapter

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>aiohttp-crossws-sse: basic</title>
<h1>Events from <code>/sse</code></h1>
<ul id="log"></ul>
<script>
  const log = document.getElementById("log");
  const show = (text) => {
    const li = document.createElement("li");
    li.textContent = text;
    log.append(li);
  };
  const source = new EventSource("/sse");
  source.onopen = () => show("[connected]");
  source.onmessage = (event) => show(event.data);
  source.onerror = () => show("[connection lost, retrying]");
</script>
"""


def open_(peer: Peer) -> None:
    print(f"[open] {peer.id} from {peer.remote_address}")
    peer.send("hello!")


def close(peer: Peer, details: CloseDetails) -> None:
    print(f"[close] {peer.id} ({details.reason})")


sse = sse_adapter(define_hooks(open=open_, close=close))


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", index)
    sse.setup(app, "/sse")
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port)
