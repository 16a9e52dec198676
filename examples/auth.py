"""Guarding a stream in the upgrade hook: reject, override headers, seed the context.

Run:  python examples/auth.py [--port 8080]
Open http://127.0.0.1:8080/ — the page connects with the token you type
(``secret`` is accepted) and shows the greeting, or the refusal.

Or with curl:

    curl -N 'http://127.0.0.1:8080/sse?token=secret'   # 200, x-powered-by, a greeting
    curl -i 'http://127.0.0.1:8080/sse'                # 401 "missing or bad token"

The ``upgrade`` hook sees the request before any stream exists:

* raising ``web.HTTPUnauthorized(text=...)`` rejects with that response (as
  does returning a ``web.Response``);
* returning ``{"headers": ...}`` adds or overrides response headers
  (case-insensitively: ``cache-control`` replaces the default one);
* returning ``{"context": ...}`` becomes ``peer.context`` in every later hook.
"""

from __future__ import annotations

import argparse
import hmac

from aiohttp import web

from aiohttp_crossws_sse import ADAPTER_KEY, CloseDetails, Peer, define_hooks, sse_adapter

#: Tokens and their users. A real app would look the token up in a session
#: store, verify a signed cookie, etc.
USERS = {"secret": "alice"}

#: Where ``setup`` stores the app's adapter (``app[SSE]``, or ``get_adapter(app)``).
SSE = ADAPTER_KEY

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>aiohttp-crossws-sse: auth</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto;
         padding: 0 1rem; color: #1d2433; }
  form { display: flex; gap: .5rem; }
  input { flex: 1; padding: .5rem; font: inherit; }
  button { padding: .5rem 1rem; font: inherit; }
  li.error { color: #b3261e; }
  li.info { color: #6b7489; font-style: italic; }
</style>
<h1>Authenticated events</h1>
<p>The stream accepts <code>?token=secret</code> and greets its user.</p>
<form id="connect">
  <input id="token" value="secret" aria-label="token">
  <button>Connect</button>
</form>
<ul id="log"></ul>
<script>
  const log = document.getElementById("log");
  const show = (text, kind) => {
    const li = document.createElement("li");
    li.textContent = text;
    if (kind) li.className = kind;
    log.append(li);
  };
  let source = null;
  document.getElementById("connect").addEventListener("submit", (e) => {
    e.preventDefault();
    if (source) source.close();
    const url = "/sse?token=" + encodeURIComponent(document.getElementById("token").value);
    source = new EventSource(url);
    source.onopen = () => show("[connected]", "info");
    source.onmessage = (event) => show(event.data);
    source.onerror = async () => {
      if (source.readyState !== EventSource.CLOSED) {
        show("[connection lost, retrying]", "info");
        return;
      }
      // EventSource hides the refusal; ask again to show its status and text.
      const response = await fetch(url);
      show(`[rejected: HTTP ${response.status}] ${await response.text()}`, "error");
    };
  });
</script>
</html>
"""


def user_of(token: str) -> str | None:
    """The user a token belongs to, or ``None``.

    Compared with ``hmac.compare_digest`` against every known token: its time
    does not depend on how much of a guess is right (``==`` or a dict lookup
    would stop at the first wrong character, and let the timing tell).
    """
    given = token.encode()
    found = None
    for known, user in USERS.items():
        if hmac.compare_digest(given, known.encode()):
            found = user
    return found


def upgrade(request: web.Request) -> dict[str, object]:
    """Accept known tokens, with the user in the context; ``401`` otherwise."""
    user = user_of(request.query.get("token", ""))
    if user is None:
        raise web.HTTPUnauthorized(text="missing or bad token")
    return {
        "headers": {"x-powered-by": "cross-ws", "cache-control": "no-store"},
        "context": {"user": user},
    }


def open_(peer: Peer) -> None:
    peer.send(f"Welcome, {peer.context['user']}!")


def close(peer: Peer, details: CloseDetails) -> None:
    print(f"[close] {peer.context['user']} ({details.reason})")


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


def make_app() -> web.Application:
    """The page at ``/``, the guarded stream at ``/sse`` (its adapter: ``app[SSE]``)."""
    sse = sse_adapter(define_hooks(upgrade=upgrade, open=open_, close=close))
    app = web.Application()
    app.router.add_get("/", index)
    sse.setup(app, "/sse")
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A token-guarded SSE stream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port)
