"""A chat room: crossws hooks and pub/sub over Server-Sent Events, both ways.

Run:  python examples/chat.py [--port 8080]
Open http://127.0.0.1:8080/ in two browser windows, pick a nickname in each,
and talk.

How it works. The page reads the room with a plain
``new EventSource("/sse?nick=...")``. The adapter runs in bidirectional mode
(``bidir=True``): the first event of the stream is ``event: crossws-id`` with
the peer's id (also sent as the ``x-crossws-id`` response header, which
``EventSource`` cannot see), and the page sends each line it posts with
``fetch("/sse?nick=...", {method: "POST", headers: {"x-crossws-id": id}})``.

Server side:

* ``upgrade`` takes the nickname from the query (1-32 characters once
  trimmed, else ``400``) into ``peer.context``. It runs for the POSTs too,
  which is why the page posts to the same URL;
* ``open`` subscribes the peer to ``"chat"``, welcomes it and tells the
  others it joined;
* ``message`` publishes ``"{nick}: {text}"`` to the others and echoes it to
  the sender (``peer.publish`` never reaches the publisher itself);
* ``close`` tells the others it left.

Room notices (welcome, joins, leaves) are sent as ``event: notice``; chat
lines are plain ``message`` events.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from aiohttp_crossws_sse import (
    ADAPTER_KEY,
    CloseDetails,
    Message,
    Peer,
    define_hooks,
    get_adapter,
    sse_adapter,
)

ROOM = "chat"
MAX_NICK = 32
MAX_TEXT = 2000

#: Where ``setup`` stores the app's adapter (``app[SSE]``, or ``get_adapter(app)``).
SSE = ADAPTER_KEY

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aiohttp-crossws-sse: chat</title>
<style>
  :root { --accent: #2f6fde; --bg: #f4f6fa; --line: #dde3ee; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, sans-serif; background: var(--bg);
         color: #1d2433; display: flex; justify-content: center; }
  main { width: min(640px, 100%); height: 100vh; display: flex; flex-direction: column;
         padding: 16px; gap: 12px; }
  header { display: flex; align-items: baseline; justify-content: space-between; }
  h1 { font-size: 20px; margin: 0; }
  #status { font-size: 13px; color: #6b7489; }
  .about { margin: 0; font-size: 13px; color: #4a5368; }
  #stats { font-size: 12px; color: #6b7489; font-variant-numeric: tabular-nums; }
  #status.online { color: #1c8a4c; }
  #log { flex: 1; overflow-y: auto; list-style: none; margin: 0; padding: 12px;
         background: #fff; border: 1px solid var(--line); border-radius: 10px; }
  #log li { padding: 4px 10px; margin: 4px 0; border-radius: 8px; white-space: pre-wrap;
            overflow-wrap: anywhere; width: fit-content; max-width: 85%; background: #eef1f7; }
  #log li.me { margin-left: auto; background: var(--accent); color: #fff; }
  #log li.notice { background: none; color: #6b7489; font-style: italic; font-size: 13px;
                   max-width: 100%; padding: 2px 10px; }
  #log b { font-weight: 600; }
  form { display: flex; gap: 8px; }
  input { flex: 1; padding: 10px 12px; font: inherit; border: 1px solid var(--line);
          border-radius: 8px; background: #fff; }
  input:focus { outline: 2px solid var(--accent); border-color: transparent; }
  button { padding: 10px 18px; font: inherit; font-weight: 600; color: #fff;
           background: var(--accent); border: 0; border-radius: 8px; cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  [hidden] { display: none !important; }
</style>
<main>
  <header>
    <h1>aiohttp-crossws-sse: a chat demo</h1>
    <span id="status">not connected</span>
  </header>
  <p class="about">A chat room served by <b>aiohttp-crossws-sse</b>: this page reads it
    with a plain <code>EventSource</code> and sends each line with a <code>POST</code>
    (bidirectional mode). Pick a nickname, then open this page in a second window and
    talk to yourself.</p>
  <div id="stats" title="the adapter's stats(), from /stats">&nbsp;</div>
  <form id="join">
    <input id="nick" name="nick" placeholder="Your nickname" maxlength="32" required
           autocomplete="off" autofocus>
    <button>Join</button>
  </form>
  <ul id="log" aria-live="polite"></ul>
  <form id="say" hidden>
    <input id="text" name="text" placeholder="Say something" autocomplete="off" required>
    <button id="send" disabled>Send</button>
  </form>
</main>
<script>
  const $ = (id) => document.getElementById(id);
  const log = $("log"), status = $("status");
  let source = null, peerId = null, nick = "", url = "";

  function show(text, kind) {
    const li = document.createElement("li");
    if (kind) li.className = kind;
    const colon = text.indexOf(": ");
    if (!kind || kind === "me") {  // "nick: text" -> bold nick
      const who = document.createElement("b");
      who.textContent = text.slice(0, colon + 1);
      li.append(who, text.slice(colon + 1));
    } else {
      li.textContent = text;
    }
    log.append(li);
    li.scrollIntoView({block: "end"});
  }

  function setStatus(text, online) {
    status.textContent = text;
    status.classList.toggle("online", online);
    $("send").disabled = !online;
  }

  async function refreshStats() {  // the adapter's stats(): live numbers
    try {
      const s = await (await fetch("/stats")).json();
      const n = (count, one, many) => `${count} ${count === 1 ? one : many}`;
      $("stats").textContent = `server: ${n(s.peers, "open stream", "open streams")}` +
        ` · ${n(s.frames_encoded, "event", "events")} encoded` +
        ` · ${n(s.deliveries, "delivery", "deliveries")}` +
        ` · ${n(s.messages_received, "message", "messages")} received`;
    } catch (err) {
      $("stats").textContent = "server: unreachable";
    }
  }
  refreshStats();
  setInterval(refreshStats, 2000);

  $("join").addEventListener("submit", (e) => {
    e.preventDefault();
    nick = $("nick").value.trim();
    if (!nick) return;
    url = "/sse?nick=" + encodeURIComponent(nick);
    source = new EventSource(url);
    $("join").hidden = true;
    $("say").hidden = false;
    $("text").focus();
    setStatus("connecting...", false);
    source.addEventListener("crossws-id", (e) => {
      peerId = e.data;  // our peer id: sent with every POST
      setStatus("online as " + nick, true);
    });
    source.addEventListener("notice", (e) => show(e.data, "notice"));
    source.onmessage = (e) => show(e.data, e.data.startsWith(nick + ": ") ? "me" : "");
    source.onerror = () => {
      peerId = null;
      if (source.readyState === EventSource.CLOSED) {
        setStatus("disconnected", false);
        show("Could not join (a nickname has 1-32 characters).", "notice");
        $("join").hidden = false;
        $("say").hidden = true;
      } else {
        setStatus("reconnecting...", false);
      }
    };
  });

  $("say").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("text").value;
    if (!text.trim() || !peerId) return;
    $("text").value = "";
    const response = await fetch(url, {
      method: "POST",
      headers: {"x-crossws-id": peerId, "content-type": "text/plain;charset=utf-8"},
      body: text,
    });
    if (!response.ok) show("Not sent: HTTP " + response.status, "notice");
  });
</script>
</html>
"""


def nick_of(peer: Peer) -> str:
    nick: str = peer.context["nick"]
    return nick


def upgrade(request: web.Request) -> dict[str, object]:
    """Accept with the nickname from ``?nick=`` in the context; ``400`` without one."""
    nick = request.query.get("nick", "").strip()
    if not 1 <= len(nick) <= MAX_NICK or not nick.isprintable():
        raise web.HTTPBadRequest(text=f"nick must be 1-{MAX_NICK} printable characters")
    return {"context": {"nick": nick}}


def open_(peer: Peer) -> None:
    nick = nick_of(peer)
    peer.subscribe(ROOM)
    others = len(peer.peers) - 1
    peer.send(f"Welcome, {nick}! {others} other{'' if others == 1 else 's'} here.", event="notice")
    peer.publish(ROOM, f"{nick} joined", event="notice")


def message(peer: Peer, msg: Message) -> None:
    try:
        text = msg.text().strip()
    except ValueError:
        peer.send("Only UTF-8 text can be sent.", event="notice")
        return
    if not text:
        return
    line = f"{nick_of(peer)}: {text[:MAX_TEXT]}"
    peer.publish(ROOM, line)
    peer.send(line)  # publish skips the sender: echo it


def close(peer: Peer, details: CloseDetails) -> None:
    peer.publish(ROOM, f"{nick_of(peer)} left", event="notice")


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def stats(request: web.Request) -> web.Response:
    """The adapter's counters, for the page's status line."""
    return web.json_response(get_adapter(request).stats())


def make_app() -> web.Application:
    """The chat app: the page at ``/``, the room at ``/sse`` (its adapter: ``app[SSE]``)."""
    sse = sse_adapter(
        define_hooks(upgrade=upgrade, open=open_, message=message, close=close), bidir=True
    )
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/stats", stats)
    sse.setup(app, "/sse")  # also stores it: app[SSE], get_adapter(request)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A chat room over Server-Sent Events.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port)
