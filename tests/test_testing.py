"""The pytest plugin ``aiohttp_crossws_sse.testing``: fixtures and assertion helpers.

Run directly (the plugin is active in this session through its entry point)
and through ``pytester`` in a fresh pytest process, as a user's suite would.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Peer, define_hooks, sse_adapter
from aiohttp_crossws_sse.client import SSEClientError
from aiohttp_crossws_sse.testing import (
    EventReader,
    SSEClientFactory,
    assert_no_event,
    next_event,
    wait_for_event,
    wait_until,
)

pytest_plugins = ["pytester"]


def greeter(closed: list[str] | None = None) -> Any:
    def open_(peer: Peer) -> None:
        peer.send(f"hello {peer.context.get('user', 'anon')}")
        peer.send("line one\nline two", event="multi")

    def close(peer: Peer, details: CloseDetails) -> None:
        if closed is not None:
            closed.append(peer.id)

    return sse_adapter(define_hooks(open=open_, close=close))


# -- registration and import safety ----------------------------------------------------


def test_entry_point_is_registered() -> None:
    (entry,) = [
        ep
        for ep in importlib.metadata.entry_points(group="pytest11")
        if ep.name == "aiohttp_crossws_sse"
    ]
    assert entry.value == "aiohttp_crossws_sse.testing"


def test_import_has_no_side_effects() -> None:
    # A fresh interpreter, the dependencies imported first: importing the
    # plugin itself adds no warning filter, logging handler, level or loop.
    code = (
        "import asyncio, logging, warnings\n"
        "import aiohttp.test_utils, pytest, pytest_asyncio, aiohttp_crossws_sse.client\n"
        "def state():\n"
        "    loggers = ['', 'asyncio', 'aiohttp_crossws_sse', 'aiohttp.access']\n"
        "    return (list(warnings.filters),\n"
        "            [(list(logging.getLogger(n).handlers), logging.getLogger(n).level)\n"
        "             for n in loggers],\n"
        "            asyncio.get_event_loop_policy())\n"
        "before = state()\n"
        "import aiohttp_crossws_sse.testing\n"
        "assert state() == before, (before, state())\n"
        "assert asyncio.events._get_running_loop() is None\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# -- sse_client --------------------------------------------------------------------------


async def test_sse_client_serves_an_adapter(sse_client: SSEClientFactory) -> None:
    closed: list[str] = []
    sse = greeter(closed)
    client = await sse_client(sse)
    assert client.response.status == 200
    assert str(client.url).startswith("http://127.0.0.1:")
    assert (await next_event(client)).data == "hello anon"
    event = await next_event(client)
    assert (event.event, event.data) == ("multi", "line one\nline two")
    # A second client reuses the same server.
    other = await sse_client(sse)
    assert other.url == client.url
    await next_event(other)
    assert len(sse.peers) == 2
    await client.close()
    await wait_until(lambda: len(closed) == 1, what="the close hook of the first client")


async def test_sse_client_with_app_query_and_path(sse_client: SSEClientFactory) -> None:
    def upgrade(request: web.Request) -> dict[str, Any]:
        if request.query.get("token") != "secret":
            raise web.HTTPUnauthorized(text="bad token")
        return {"context": {"user": request.query["user"]}}

    sse = sse_adapter(
        define_hooks(upgrade=upgrade, open=lambda peer: peer.send(f"hi {peer.context['user']}"))
    )
    app = web.Application()
    sse.setup(app, "/events")  # already routed: the factory does not set it up again

    client = await sse_client(app=app, path="/events", query={"token": "secret", "user": "bob"})
    assert (await next_event(client)).data == "hi bob"

    with pytest.raises(SSEClientError) as refused:
        await sse_client(app=app, path="/events", query={"user": "eve"})
    assert refused.value.status == 401
    assert refused.value.body == "bad token"
    assert all(c.closed for c in sse_client.clients[1:])  # a refused client is closed


async def test_sse_client_sets_up_adapter_on_given_app(sse_client: SSEClientFactory) -> None:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="page")

    app = web.Application()
    app.router.add_get("/", index)
    sse = greeter()
    client = await sse_client(sse, "/stream", app=app)
    assert client.url.path == "/stream"
    assert (await next_event(client)).data == "hello anon"
    server = await sse_client.server(app=app)
    assert server.make_url("/stream") == client.url


async def test_sse_client_matches_routes_as_the_router_does(sse_client: SSEClientFactory) -> None:
    # A variable route and a sub-app's route: resolved by the app's router,
    # not compared as strings, so the factory neither refuses them nor adds
    # a second route of its own.
    rooms = sse_adapter(
        define_hooks(open=lambda peer: peer.send(f"room {peer.request.match_info['room']}"))
    )
    chat = sse_adapter(define_hooks(open=lambda peer: peer.send("chat")))
    app = web.Application()
    rooms.setup(app, "/rooms/{room}/sse")
    sub = web.Application()
    chat.setup(sub, "/sse")
    app.add_subapp("/chat", sub)
    routes = len(app.router.resources())

    blue = await sse_client(rooms, "/rooms/blue/sse", app=app)
    assert len(app.router.resources()) == routes  # not set up again at /rooms/blue/sse
    assert (await next_event(blue)).data == "room blue"
    red = await sse_client(app=app, path="/rooms/red/sse")
    assert (await next_event(red)).data == "room red"
    in_sub = await sse_client(app=app, path="/chat/sse")
    assert (await next_event(in_sub)).data == "chat"
    assert len(sub.router.resources()) == 1


async def test_sse_client_routed_check_of_an_app_not_started(sse_client: SSEClientFactory) -> None:
    # The same resolution decides, before the server starts, whether the app
    # needs the adapter set up: a sub-app's route counts, an absent one does not.
    chat = sse_adapter(define_hooks(open=lambda peer: peer.send("chat")))
    sub = web.Application()
    chat.setup(sub, "/sse")
    app = web.Application()
    app.add_subapp("/chat", sub)
    client = await sse_client(app=app, path="/chat/sse")
    assert (await next_event(client)).data == "chat"
    with pytest.raises(ValueError, match="no route at '/elsewhere'"):
        await sse_client(app=web.Application(), path="/elsewhere")


async def test_sse_client_one_adapter_at_two_paths(sse_client: SSEClientFactory) -> None:
    messages: list[tuple[str, str]] = []
    sse = sse_adapter(
        define_hooks(
            open=lambda peer: peer.send(f"at {peer.request.path}"),
            message=lambda peer, message: messages.append((peer.request.path, message.text())),
        ),
        bidir=True,
    )
    a = await sse_client(sse, "/a")
    b = await sse_client(sse, "/b")  # asked for after /a's server started
    assert (await next_event(a)).data == "at /a"
    assert (await next_event(b)).data == "at /b"
    assert a.url.origin() == b.url.origin()  # one adapter, one app, one server
    assert sse.path == "/a"
    assert {peer.request.path for peer in sse.peers.values()} == {"/a", "/b"}
    assert await b.send("hi from b") == 200  # bidirectional mode's POSTs too
    await wait_until(lambda: messages == [("/b", "hi from b")], what="the POST at /b")
    again = await sse_client(sse, "/b")
    assert (await next_event(again)).data == "at /b"
    async with aiohttp.ClientSession() as http, http.get(a.url.with_path("/c")) as response:
        assert response.status == 404  # a path nobody asked for stays unserved


async def test_sse_client_refuses_a_new_path_on_a_running_app(
    sse_client: SSEClientFactory,
) -> None:
    # An app you pass cannot gain a route once its server runs: the error says
    # what to do instead. The adapter follows that app, with or without app=.
    sse = greeter()
    app = web.Application()
    sse.setup(app, "/one")
    await sse_client(sse, "/one", app=app)
    with pytest.raises(RuntimeError, match=r"adapter\.setup\(app, '/two'\) before"):
        await sse_client(sse, "/two", app=app)
    with pytest.raises(RuntimeError, match=r"adapter\.setup\(app, '/two'\) before"):
        await sse_client(sse, "/two")
    assert (await next_event(await sse_client(sse, "/one"))).data == "hello anon"


async def test_sse_client_needs_adapter_or_routed_app(sse_client: SSEClientFactory) -> None:
    with pytest.raises(TypeError, match="adapter"):
        await sse_client()
    with pytest.raises(ValueError, match="no route"):
        await sse_client(app=web.Application())


async def test_sse_client_closes_clients_at_teardown(aiohttp_server: Any) -> None:
    # What the fixture does at teardown, driven by hand.
    closed: list[str] = []
    sse = greeter(closed)
    factory = SSEClientFactory(aiohttp_server)
    clients = [await factory(sse) for _ in range(3)]
    for client in clients:
        await next_event(client)
    await factory.close()
    assert all(client.closed for client in clients)
    await wait_until(lambda: len(closed) == 3, what="three close hooks")
    assert not sse.peers


# -- next_event / wait_for_event -----------------------------------------------------------


async def test_next_event_timeout_lists_events_seen(sse_client: SSEClientFactory) -> None:
    client = await sse_client(greeter())
    await next_event(client)
    await next_event(client)
    with pytest.raises(TimeoutError) as failed:  # the rule of client.next_event too
        await next_event(client, timeout=0.2)
    assert str(failed.value) == (
        f"no event within 0.2s from {client.url}; "
        "2 events seen: 'message' 'hello anon'; 'multi' 'line one\\nline two'"
    )


async def test_next_event_stream_end_is_a_client_error(sse_client: SSEClientFactory) -> None:
    def open_(peer: Peer) -> None:
        peer.send("bye")
        peer.close()

    client = await sse_client(sse_adapter(define_hooks(open=open_)))
    assert (await next_event(client)).data == "bye"
    with pytest.raises(SSEClientError, match=r"ended; 1 event seen: 'message' 'bye'$"):
        await next_event(client)


async def test_wait_for_event_skips_until_match(sse_client: SSEClientFactory) -> None:
    sse = greeter()
    client = await sse_client(sse)
    event = await wait_for_event(client, event="multi")
    assert event.data == "line one\nline two"
    assert [e.event for e in client.events] == ["message", "multi"]

    peer = next(iter(sse.peers.values()))
    for n in range(5):
        peer.send(str(n))
    assert (await wait_for_event(client, lambda e: int(e.data) > 2)).data == "3"
    assert (await wait_for_event(client, data="4", event="message")).data == "4"

    with pytest.raises(TimeoutError) as failed:
        await wait_for_event(client, data="never", timeout=0.2)
    assert str(failed.value) == (
        f"no event with data='never' within 0.2s from {client.url}; "
        "7 events seen, the last 3: 'message' '2'; 'message' '3'; 'message' '4'"
    )


async def test_helpers_count_every_event_when_the_client_keeps_a_few(
    sse_client: SSEClientFactory,
) -> None:
    # keep bounds what the client holds (memory on an endless stream); the
    # helpers' messages still count every event seen.
    def open_(peer: Peer) -> None:
        for n in range(7):
            peer.send(str(n))

    client = await sse_client(sse_adapter(define_hooks(open=open_)), keep=2)
    await wait_for_event(client, data="6")
    assert ([e.data for e in client.events], client.events_seen) == (["5", "6"], 7)
    with pytest.raises(TimeoutError) as failed:
        await next_event(client, timeout=0.2)
    assert str(failed.value) == (
        f"no event within 0.2s from {client.url}; "
        "7 events seen, the last 2: 'message' '5'; 'message' '6'"
    )


# -- assert_no_event -------------------------------------------------------------------------


async def test_assert_no_event_with_a_client(sse_client: SSEClientFactory) -> None:
    sse = sse_adapter(define_hooks(open=lambda peer: peer.subscribe("news")), keepalive=0.05)
    client = await sse_client(sse)
    await wait_until(lambda: sse.peers, what="the peer")
    # Keep-alive comments arrive meanwhile: they are not events, and do not
    # stretch the wait (the outer bound only keeps a broken helper from hanging).
    await asyncio.wait_for(assert_no_event(client, within=0.3), 10)
    sse.publish("news", "x" * 1000, event="update")
    with pytest.raises(AssertionError) as failed:
        await assert_no_event(client, within=10)  # fails as soon as the event comes
    assert str(failed.value) == (
        f"expected no event within 10s from {client.url}, got 'update' 'xxxxxxxxxx"
        + "x" * 50
        + "'...(1000 chars)"
    )
    assert client.events[-1].data == "x" * 1000  # consumed, as by next_event


async def test_assert_no_event_with_a_reader(aiohttp_client: Any) -> None:
    peers: list[Peer] = []
    app = web.Application()
    sse_adapter(define_hooks(open=peers.append), keepalive=0.05).setup(app, "/sse")
    resp = await (await aiohttp_client(app)).get("/sse")
    reader = EventReader(resp)
    await reader.comment()
    await asyncio.wait_for(assert_no_event(reader, within=0.3), 10)
    peers[0].send("late", id="1")
    with pytest.raises(AssertionError, match=r"got 'message' 'late' \(id '1'\)$"):
        await assert_no_event(reader, within=10)
    peers[0].close()
    with pytest.raises(SSEClientError, match="ended; 1 event seen"):
        await assert_no_event(reader, within=10)  # an ended stream is no proof of silence
    resp.close()


# -- wait_until ------------------------------------------------------------------------------


async def test_wait_until_returns_the_truthy_value() -> None:
    values = iter([0, None, "", "ready"])
    assert await wait_until(lambda: next(values)) == "ready"

    async def check() -> int:
        return 7

    assert await wait_until(check) == 7


async def test_wait_until_fails_naming_the_condition() -> None:
    with pytest.raises(TimeoutError, match="timed out waiting for the moon"):
        await wait_until(lambda: False, timeout=0.05, what="the moon")


# -- EventReader -----------------------------------------------------------------------------


async def test_event_reader_over_aiohttp_client(aiohttp_client: Any) -> None:
    def open_(peer: Peer) -> None:
        peer.send("a")
        peer.send("b\r\nc", event="two")
        peer.send("d", id="9")
        peer.close()

    app = web.Application()
    sse_adapter(define_hooks(open=open_), keepalive=0.05).setup(app, "/sse")
    client = await aiohttp_client(app)
    resp = await client.get("/sse")
    reader = EventReader(resp)
    assert (await reader.next()).data == "a"
    (two,) = await reader.take(1)
    assert (two.event, two.data) == ("two", "b\nc")
    rest = await reader.rest()
    assert [(e.data, e.id) for e in rest] == [("d", "9")]
    assert reader.eof
    assert [e.data for e in reader.events] == ["a", "b\nc", "d"]
    assert b"data: a\n\n" in reader.raw
    with pytest.raises(SSEClientError, match=r"ended; 3 events seen: 'message' 'a'; "):
        await reader.next()
    # next_event / wait_for_event accept a reader too.
    with pytest.raises(SSEClientError, match="ended; 3 events seen"):
        await next_event(reader)
    resp.close()


async def test_event_reader_comment_and_timeout(aiohttp_client: Any) -> None:
    app = web.Application()
    sse = sse_adapter(keepalive=0.05)
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    resp = await client.get("/sse")
    reader = EventReader(resp)
    assert (await reader.comment()).strip()
    peer = next(iter(sse.peers.values()))
    peer.send("x")
    assert (await wait_for_event(reader, data="x")).data == "x"
    sse2 = sse_adapter()
    app2 = web.Application()
    sse2.setup(app2, "/sse")
    quiet = await (await aiohttp_client(app2)).get("/sse")  # default keepalive: 15s
    with pytest.raises(TimeoutError, match=r"no event within 0.1s .*; no events seen$"):
        await EventReader(quiet).next(timeout=0.1)
    quiet.close()
    resp.close()


READER_WAITS: dict[str, Callable[[EventReader], Awaitable[object]]] = {
    "next_event": lambda reader: next_event(reader, timeout=0.3),
    "wait_for_event": lambda reader: wait_for_event(reader, data="never", timeout=0.3),
    "reader.next": lambda reader: reader.next(timeout=0.3),
    "reader.take": lambda reader: reader.take(1, timeout=0.3),
    "reader.rest": lambda reader: reader.rest(timeout=0.3),
}


@pytest.mark.parametrize("name", READER_WAITS)
async def test_reader_timeouts_bound_the_whole_wait_despite_keepalives(
    aiohttp_client: Any, name: str
) -> None:
    # A keep-alive arrives every 0.05 s, and no event ever: the wait must
    # still give up after its timeout. The outer bound only keeps a broken
    # helper from hanging the test.
    app = web.Application()
    sse_adapter(keepalive=0.05).setup(app, "/sse")
    resp = await (await aiohttp_client(app)).get("/sse")
    reader = EventReader(resp)
    await reader.comment()
    outer = asyncio.timeout(10)
    try:
        async with outer:
            with pytest.raises(TimeoutError, match=r"^no .* within 0\.3s from "):
                await READER_WAITS[name](reader)
    except TimeoutError:
        if outer.expired():
            pytest.fail(f"{name}(timeout=0.3) was still waiting after 10 s")
        raise
    assert len(reader.comments) > 1  # keep-alives did arrive meanwhile
    assert reader.events == []
    resp.close()


# -- as a user's suite sees it -------------------------------------------------------------

USER_TESTS = """
from typing import Any

import aiohttp
import pytest
from aiohttp_crossws_sse import define_hooks, sse_adapter
from aiohttp_crossws_sse.testing import next_event, wait_until

closed = []


def make_adapter():
    return sse_adapter(define_hooks(
        open=lambda peer: peer.send("hi"),
        close=lambda peer, details: closed.append(details.reason),
    ))


@pytest.mark.asyncio
async def test_hello(sse_client):
    client = await sse_client(make_adapter())
    assert (await next_event(client)).data == "hi"


@pytest.mark.asyncio
async def test_previous_streams_were_closed_at_teardown():
    await wait_until(lambda: closed, what="the close hook of test_hello")


@pytest.mark.asyncio
async def test_failure_lists_events(sse_client):
    client = await sse_client(make_adapter())
    await next_event(client, timeout=0.2)
    await next_event(client, timeout=0.2)


def test_sync_tests_are_untouched():
    assert True
"""


def test_plugin_in_a_users_strict_mode_suite(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_failure_lists_events FAILED*",
            "*TimeoutError: no event within 0.2s from http://*; 1 event seen: 'message' 'hi'",
        ]
    )


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        test_user="""
        async def test_uses_fixture(sse_client):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:aiohttp_crossws_sse")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'sse_client' not found*"])
    listed = pytester.runpytest_subprocess("--fixtures")
    listed.stdout.fnmatch_lines(["sse_client*", "*factory of connected SSE clients*"])
