"""Real browsers: Chromium's ``EventSource`` (and ``fetch``) against real servers.

The apps run in the test's event loop like ``web.run_app`` serves them
(``run_app_server``: the handler is not cancelled when a client leaves), on
127.0.0.1. Every wait is bounded; nothing is asserted about timing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Peer, define_hooks, sse_adapter
from aiohttp_crossws_sse.testing import wait_until
from tests.browser.conftest import artifacts_dir
from tests.conftest import RunAppServer, keepalives_written
from tests.test_examples import load_example

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.browser

StartServer = Callable[[web.Application], Awaitable[RunAppServer]]

WAIT_MS = 10_000  # bound of every browser-side wait


async def new_page(browser: Browser, errors: list[str]) -> Page:
    page = await browser.new_page(viewport={"width": 640, "height": 560})
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def console(message: Any) -> None:
        if message.type == "error" and "favicon" not in (message.location.get("url") or ""):
            errors.append(f"console error: {message.text} ({message.location})")

    page.on("console", console)
    return page


# -- the chat example -------------------------------------------------------------------


async def join(page: Page, url: str, nick: str) -> None:
    from playwright.async_api import expect

    await page.goto(url + "/")
    await page.fill("#nick", nick)
    await page.press("#nick", "Enter")
    await expect(page.locator("#status")).to_have_text(f"online as {nick}", timeout=WAIT_MS)
    await expect(page.locator("#log li.notice").first).to_contain_text(
        f"Welcome, {nick}!", timeout=WAIT_MS
    )


async def say(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def shows(page: Page, text: str, kind: str = "") -> None:
    """Wait until the page's log has exactly one line ``text`` (of class ``kind``)."""
    from playwright.async_api import expect

    line = page.locator(f"#log li{'.' + kind if kind else ''}").filter(has_text=text)
    await expect(line).to_have_count(1, timeout=WAIT_MS)
    await expect(line).to_have_text(text, timeout=WAIT_MS)


async def test_two_pages_chat(run_app_server: StartServer, browser: Browser) -> None:
    chat = load_example("chat")
    app = chat.make_app()
    server = await run_app_server(app)
    sse = app[chat.SSE]
    errors: list[str] = []
    alice = await new_page(browser, errors)
    bob = await new_page(browser, errors)

    await join(alice, server.url, "alice")
    await join(bob, server.url, "bob")
    await shows(bob, "Welcome, bob! 1 other here.", "notice")
    await shows(alice, "bob joined", "notice")
    assert sorted(p.context["nick"] for p in sse.peers.values()) == ["alice", "bob"]

    await say(alice, "Hi Bob! How is the SSE life?")
    await shows(alice, "alice: Hi Bob! How is the SSE life?", "me")  # its own echo
    await shows(bob, "alice: Hi Bob! How is the SSE life?")
    await say(bob, "Great: EventSource down, fetch up.")
    await shows(bob, "bob: Great: EventSource down, fetch up.", "me")
    await shows(alice, "bob: Great: EventSource down, fetch up.")
    await say(alice, "<b>not bold</b> & unicode: héllo ✓")
    await shows(bob, "alice: <b>not bold</b> & unicode: héllo ✓")

    # The live numbers (the adapter's stats(), polled from /stats) reach the page.
    from playwright.async_api import expect

    await expect(alice.locator("#stats")).to_contain_text("2 open streams", timeout=WAIT_MS)
    await alice.screenshot(path=os.path.join(artifacts_dir(), "chat.png"))

    # Closing bob's page ends its stream: the close hook tells alice.
    await bob.close()
    await shows(alice, "bob left", "notice")
    await wait_until(lambda: len(sse.peers) == 1, timeout=10, what="bob's peer to close")
    await alice.close()
    await wait_until(lambda: not sse.peers, timeout=10, what="alice's peer to close")
    assert errors == []


async def test_chat_page_refuses_a_bad_nickname(
    run_app_server: StartServer, browser: Browser
) -> None:
    chat = load_example("chat")
    server = await run_app_server(chat.make_app())
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(server.url + "/")
    await page.fill("#nick", "   ")  # required + trimmed: nothing is sent
    await page.press("#nick", "Enter")
    await page.evaluate("document.getElementById('nick').removeAttribute('maxlength')")
    await page.fill("#nick", "x" * 40)
    await page.press("#nick", "Enter")
    await shows(page, "Could not join (a nickname has 1-32 characters).", "notice")
    await page.close()
    # The refused EventSource request is logged by Chromium as a failed load.
    assert all("400" in error for error in errors), errors


# -- event fidelity ---------------------------------------------------------------------

FIDELITY_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>fidelity</title>
<script>
  window.received = [];
  const source = new EventSource("/sse");
  source.onmessage = (e) => window.received.push([e.type, e.data, e.lastEventId]);
  source.addEventListener("update", (e) => window.received.push([e.type, e.data, e.lastEventId]));
</script>
"""

MULTILINE = "first line\nsecond line\r\nthird line\rfourth\n\n  indented after a blank line"


async def test_multiline_message_and_named_event(
    run_app_server: StartServer, browser: Browser
) -> None:
    peers: list[Peer] = []

    def open_(peer: Peer) -> None:
        peers.append(peer)
        peer.send(MULTILINE)
        peer.send({"n": 1, "text": "a\nb"}, event="update", id="7")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=FIDELITY_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    sse_adapter(define_hooks(open=open_)).setup(app, "/sse")
    server = await run_app_server(app)
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(server.url + "/")
    await page.wait_for_function("() => window.received.length >= 2", timeout=WAIT_MS)
    peers[0].send("trailing newline\n")  # a live event after the first ones
    await page.wait_for_function("() => window.received.length >= 3", timeout=WAIT_MS)
    received = await page.evaluate("window.received")
    assert received == [
        # Every line break (CRLF, LF, CR) becomes LF in the browser; nothing is lost.
        [
            "message",
            "first line\nsecond line\nthird line\nfourth\n\n  indented after a blank line",
            "",
        ],
        ["update", json.dumps({"n": 1, "text": "a\nb"}, separators=(",", ":")), "7"],
        ["message", "trailing newline\n", "7"],
    ]
    await page.close()
    assert errors == []


async def test_basic_example_page(run_app_server: StartServer, browser: Browser) -> None:
    from playwright.async_api import expect

    basic = load_example("basic")
    server = await run_app_server(basic.make_app())
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(server.url + "/")
    await expect(page.locator("#log li").filter(has_text="hello!")).to_have_count(
        1, timeout=WAIT_MS
    )
    await page.close()
    assert errors == []


# -- keep-alive -------------------------------------------------------------------------

KEEPALIVE_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>keep-alive</title>
<script>
  window.received = [];
  window.errors = 0;
  window.opens = 0;
  const source = new EventSource("/sse");
  window.source = source;
  source.onopen = () => { window.opens += 1; };
  source.onerror = () => { window.errors += 1; };
  source.onmessage = (e) => window.received.push([e.type, e.data, e.lastEventId]);
</script>
"""


async def test_event_source_stays_open_through_keepalives(
    run_app_server: StartServer, browser: Browser
) -> None:
    """Keep-alives (``: ping`` alone, no blank line after it) between events
    with ids: the page's EventSource stays open on its first connection,
    dispatches no event for them, and gets the events sent after them."""
    peers: list[Peer] = []

    def open_(peer: Peer) -> None:
        peers.append(peer)
        peer.send("first", id="1")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=KEEPALIVE_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    sse_adapter(define_hooks(open=open_), keepalive=0.05).setup(app, "/sse")
    server = await run_app_server(app)
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(server.url + "/")
    await page.wait_for_function("() => window.received.length >= 1", timeout=WAIT_MS)
    await keepalives_written(server.url + "/sse", 5)  # the page's stream got them too
    peers[0].send("later", id="2")
    await page.wait_for_function("() => window.received.length >= 2", timeout=WAIT_MS)
    state = await page.evaluate(
        "({received: window.received, errors: window.errors, opens: window.opens,"
        " readyState: window.source.readyState})"
    )
    assert state == {
        "received": [["message", "first", "1"], ["message", "later", "2"]],
        "errors": 0,
        "opens": 1,
        "readyState": 1,  # OPEN
    }
    assert len(peers) == 2  # the page's and keepalives_written's: no reconnection
    await page.close()
    assert errors == []


# -- closing ----------------------------------------------------------------------------


async def test_closing_the_page_runs_the_close_hook(
    run_app_server: StartServer, browser: Browser
) -> None:
    closed: list[tuple[str, CloseDetails]] = []
    opened: list[str] = []

    def open_(peer: Peer) -> None:
        opened.append(peer.id)
        peer.send("hi")

    def close(peer: Peer, details: CloseDetails) -> None:
        assert peer.ready_state == 3
        closed.append((peer.id, details))

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=FIDELITY_PAGE, content_type="text/html")

    sse = sse_adapter(define_hooks(open=open_, close=close))
    app = web.Application()
    app.router.add_get("/", index)
    sse.setup(app, "/sse")
    server = await run_app_server(app)
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(server.url + "/")
    await page.wait_for_function("() => window.received.length >= 1", timeout=WAIT_MS)
    assert len(sse.peers) == 1 and closed == []

    await page.close()
    await wait_until(lambda: closed, timeout=10, what="the close hook")
    ((peer_id, details),) = closed
    assert opened == [peer_id]
    assert details.reason == "connection lost"
    assert not sse.peers
    assert errors == []


# -- refusals ---------------------------------------------------------------------------

REFUSAL_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>refusals</title>
<script>
  // window.watch(name): one EventSource, and what it saw: its events, its
  // opens, and its readyState at each error (0: it will retry; 2: it gave up).
  window.sources = {};
  window.watch = (name) => {
    const seen = { received: [], opens: 0, errorStates: [] };
    const source = new EventSource("/sse?name=" + name);
    source.onopen = () => { seen.opens += 1; };
    source.onerror = () => { seen.errorStates.push(source.readyState); };
    source.onmessage = (e) => seen.received.push(e.data);
    window.sources[name] = { source, seen };
  };
</script>
"""


async def test_event_source_refused_at_max_peers_keeps_retrying(
    run_app_server: StartServer, browser: Browser
) -> None:
    """``refusal="retry"``: a stream refused at ``max_peers`` is a 200 event
    stream that only says ``retry:``. Chromium's EventSource reconnects after
    it (``readyState`` 0 at each error, never 2), again and again, and gets in
    once a slot frees. (With the default 503 it would give up at once.)"""
    opened: list[str] = []

    def open_(peer: Peer) -> None:
        name = peer.request.query["name"]
        opened.append(name)
        peer.send(f"welcome {name}")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=REFUSAL_PAGE, content_type="text/html")

    sse = sse_adapter(define_hooks(open=open_), max_peers=1, refusal="retry", retry_after=1)
    app = web.Application()
    app.router.add_get("/", index)
    sse.setup(app, "/sse")
    server = await run_app_server(app)
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(server.url + "/")

    async def seen(name: str) -> dict[str, Any]:
        result: dict[str, Any] = await page.evaluate(f"window.sources.{name}.seen")
        return result

    await page.evaluate("window.watch('a')")
    await page.wait_for_function(
        "() => window.sources.a.seen.received.length === 1", timeout=WAIT_MS
    )
    await page.evaluate("window.watch('b')")
    await page.wait_for_function(  # refused three times, one second apart
        "() => window.sources.b.seen.errorStates.length >= 3", timeout=WAIT_MS
    )
    b = await seen("b")
    assert set(b["errorStates"]) == {0}, b  # CONNECTING: it retries, never CLOSED
    assert b["opens"] >= 3 and b["received"] == [], b  # each refusal opened, with no event
    assert opened == ["a"]
    assert sse.stats()["peers_rejected"] >= 3

    await page.evaluate("window.sources.a.source.close()")
    await page.wait_for_function(
        "() => window.sources.b.seen.received.length === 1", timeout=WAIT_MS
    )
    b = await seen("b")
    assert b["received"] == ["welcome b"]
    assert 2 not in b["errorStates"], b
    assert await page.evaluate("window.sources.b.source.readyState") == 1
    assert opened == ["a", "b"]
    await page.close()
    await wait_until(lambda: not sse.peers, timeout=10, what="every stream closed")
    assert errors == []
