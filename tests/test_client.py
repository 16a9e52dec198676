"""Tests of the SSE client against small real aiohttp servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from yarl import URL

from aiohttp_crossws_sse import Message, Peer, SSEError, define_hooks, sse_adapter
from aiohttp_crossws_sse._backoff import parse_retry_after, reconnect_delay
from aiohttp_crossws_sse.client import (
    EventSourceClient,
    ServerSentEvent,
    SSEClientError,
    connect,
)
from aiohttp_crossws_sse.testing import SSEClientFactory, wait_until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_stream(
    request: web.Request, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/event-stream"
    await response.prepare(request)
    return response


async def hang() -> None:
    """Keep a handler's stream open until the client goes away.

    The test server cancels handlers whose client disconnected; the bound
    only stops a broken test from hanging forever.
    """
    await asyncio.sleep(60)


async def serve(aiohttp_server: AiohttpServer, handler: Handler) -> URL:
    app = web.Application()
    app.router.add_route("*", "/sse", handler)
    server = await aiohttp_server(app)
    return server.make_url("/sse")


async def test_iterates_events_until_stream_ends(aiohttp_server: AiohttpServer) -> None:
    requests: list[web.Request] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append(request)
        response = await start_stream(request, {"X-Custom": "yes"})
        await response.write(b": hello\n\ndata: one\n\n")
        await response.write(b"event: named\nid: 7\ndata: two\ndata: lines\n\n")
        await response.write(b"data: thr")
        await response.write(b"ee\r\n\r\n: bye\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, headers={"Authorization": "Bearer t"}) as client:
        assert isinstance(client, EventSourceClient)
        assert client.response.status == 200
        assert client.headers["X-Custom"] == "yes"
        assert client.id is None
        events = [event async for event in client]
        # Iterating an ended stream yields nothing more.
        assert [event async for event in client] == []

    assert [(ev.event, ev.data, ev.id) for ev in events] == [
        ("message", "one", ""),
        ("named", "two\nlines", "7"),
        ("message", "three", "7"),
    ]
    assert client.events == events
    assert client.comments == [" hello", " bye"]
    assert client.last_event_id == "7"
    assert client.closed
    assert requests[0].headers["Accept"] == "text/event-stream"
    assert requests[0].headers["Authorization"] == "Bearer t"
    assert "Last-Event-ID" not in requests[0].headers


async def test_next_event_after_stream_end_raises(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"data: only\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        assert (await client.next_event()).data == "only"
        with pytest.raises(SSEClientError, match="ended") as info:
            await client.next_event()
    assert "only" in str(info.value)


async def test_await_connect_and_given_session_left_open(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"data: x\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with aiohttp.ClientSession() as session:
        client = await connect(url, session=session)
        try:
            assert (await client.next_event()).data == "x"
        finally:
            await client.close()
        assert not session.closed


async def test_initial_last_event_id_sent(aiohttp_server: AiohttpServer) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        response = await start_stream(request)
        await response.write(b"data: x\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, last_event_id="41") as client:
        event = await client.next_event()
    assert seen == ["41"]
    assert event.id == "41"


async def test_crossws_id_header_and_event_consumed(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request, {"x-crossws-id": "peer-1"})
        await response.write(b"event: crossws-id\ndata: peer-1\n\n")
        await response.write(b"data: hello\n\n")
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        assert client.id == "peer-1"
        event = await client.next_event()
        assert (event.event, event.data) == ("message", "hello")
        assert client.events == [event]
        assert client.id == "peer-1"


async def test_crossws_id_from_event_without_header(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"event: crossws-id\ndata: peer-2\n\ndata: hi\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        assert client.id is None
        events = [event async for event in client]
        assert client.id == "peer-2"
    assert [ev.data for ev in events] == ["hi"]


async def test_next_event_timeout_lists_events_seen(aiohttp_server: AiohttpServer) -> None:
    go = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"data: first-event\n\n")
        await asyncio.wait_for(go.wait(), 30)
        await response.write(b"data: second-event\n\n")
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        assert (await client.next_event()).data == "first-event"
        with pytest.raises(TimeoutError) as info:
            await client.next_event(timeout=0.05)
        assert str(info.value) == (
            f"no event within 0.05s from {url}; 1 event seen: 'message' 'first-event'"
        )
        # Nothing was lost: the stream goes on after a timeout.
        go.set()
        assert (await client.next_event()).data == "second-event"
        assert [ev.data for ev in client.events] == ["first-event", "second-event"]


async def test_timeout_with_no_events_says_so(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b": keep-alive\n\n")
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        with pytest.raises(TimeoutError, match=r"within 0\.05s .*; no events seen$"):
            await client.next_event(timeout=0.05)
        assert client.comments == [" keep-alive"]


async def test_failure_messages_are_short_whatever_was_seen(
    aiohttp_server: AiohttpServer,
) -> None:
    # 200 events of 10,000 characters: a timeout, then the end of the stream,
    # each says how many events came and shows the last three, cut short.
    go = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        for i in range(200):
            await response.write(b"id: %d\ndata: %d%s\n\n" % (i, i, b"x" * 10_000))
        await asyncio.wait_for(go.wait(), 30)
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        for _ in range(200):
            await client.next_event()
        with pytest.raises(TimeoutError) as timed_out:
            await client.next_event(timeout=0.05)
        go.set()
        with pytest.raises(SSEClientError) as ended:
            await client.next_event()
    for message in (str(timed_out.value), str(ended.value)):
        assert "200 events seen, the last 3: 'message' '197xxx" in message
        assert "...(10003 chars) (id '199')" in message
        assert len(message) < 500, message


async def test_keepalive_comment_lines_without_blank_line(aiohttp_server: AiohttpServer) -> None:
    # The keep-alive as this package writes it, ": ping\n" alone, after an id.
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"id: 1\ndata: one\n\n")
        for _ in range(3):
            await response.write(b": ping\n")
        await response.write(b"data: two\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        events = [(event.data, event.id) async for event in client]
        assert events == [("one", "1"), ("two", "1")]
        assert client.comments == [" ping"] * 3


async def test_error_on_404(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="no such stream")

    url = await serve(aiohttp_server, handler)
    with pytest.raises(SSEClientError, match="404") as info:
        async with connect(url):
            pytest.fail("the context must not be entered")
    assert info.value.status == 404
    assert info.value.body == "no such stream"


async def test_error_on_missing_route(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="unused")

    url = await serve(aiohttp_server, handler)
    client = connect(url.with_path("/missing"))
    with pytest.raises(SSEClientError, match="404") as info:
        await client.connected()
    await client.close()
    assert info.value.status == 404


async def test_error_on_wrong_content_type(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="not an event stream")

    url = await serve(aiohttp_server, handler)
    with pytest.raises(SSEClientError, match="text/plain") as info:
        async with connect(url):
            pytest.fail("the context must not be entered")
    assert info.value.status == 200
    assert info.value.body == "not an event stream"


async def test_content_type_parameters_accepted(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "Text/Event-Stream; charset=utf-8"})
        await response.prepare(request)
        await response.write(b"data: ok\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        assert [ev.data async for ev in client] == ["ok"]


async def test_reconnect_with_last_event_id_honouring_retry(
    aiohttp_server: AiohttpServer,
) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        response = await start_stream(request)
        if len(seen) == 1:
            await response.write(b"retry: 1\nid: 1\ndata: first\n\n")
        elif len(seen) == 2:
            await response.write(b"data: second\n\nid: 2\ndata: third\n\n")
        else:
            await response.write(b"data: fourth\n\n")
            await hang()
        return response

    url = await serve(aiohttp_server, handler)
    # With retry=3600 the test could only pass in time if the server's
    # "retry: 1" (1 ms) is used; otherwise next_event() times out.
    async with connect(url, reconnect=True, retry=3600) as client:
        events = [await client.next_event() for _ in range(4)]
        assert client.reconnect_delay == 0.001
    assert [(ev.data, ev.id) for ev in events] == [
        ("first", "1"),
        ("second", "1"),
        ("third", "2"),
        ("fourth", "2"),
    ]
    assert events[0].retry == 1
    assert seen == [None, "1", "2"]


async def test_reconnect_after_connection_drop(aiohttp_server: AiohttpServer) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        response = await start_stream(request)
        if len(seen) == 1:
            await response.write(b"id: a\ndata: before\n\ndata: partial, never dispatched\n")
            assert request.transport is not None
            request.transport.close()
        else:
            await response.write(b"data: after\n\n")
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, reconnect=True, retry=0) as client:
        first = await client.next_event()
        second = await client.next_event()
    assert (first.data, second.data, second.id) == ("before", "after", "a")
    assert seen == [None, "a"]


async def test_no_reconnect_connection_drop_raises(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"data: before\n\n")
        assert request.transport is not None
        request.transport.close()
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        assert (await client.next_event()).data == "before"
        with pytest.raises(aiohttp.ClientError):
            await client.next_event()


async def test_reconnect_stopped_by_204(aiohttp_server: AiohttpServer) -> None:
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count > 1:
            return web.Response(status=204)
        response = await start_stream(request)
        await response.write(b"retry: 0\ndata: one\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, reconnect=True) as client:
        assert [ev.data async for ev in client] == ["one"]
    assert count == 2


async def test_reconnect_refused_raises(aiohttp_server: AiohttpServer) -> None:
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count > 1:
            return web.Response(status=503, text="go away")
        response = await start_stream(request)
        await response.write(b"retry: 0\ndata: one\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, reconnect=True) as client:
        assert (await client.next_event()).data == "one"
        with pytest.raises(SSEClientError, match="503") as info:
            await client.next_event()
    assert info.value.body == "go away"


async def test_close_ends_iteration(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"data: one\n\ndata: two\n\n")
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    seen: list[str] = []
    async with connect(url, reconnect=True) as client:
        async for event in client:
            seen.append(event.data)
            await client.close()
    assert seen == ["one"]


async def test_close_wakes_a_waiting_reader(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b": open\n\n")
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, reconnect=True) as client:
        reader = asyncio.create_task(client.next_event(timeout=10))
        # Let the reader block on the stream.
        async with asyncio.timeout(5):
            while not client.comments:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        await client.close()
        with pytest.raises(SSEClientError, match="ended"):
            await reader


async def test_close_wakes_a_reader_waiting_to_reconnect(aiohttp_server: AiohttpServer) -> None:
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        response = await start_stream(request)
        await response.write(b"data: one\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, reconnect=True, retry=3600) as client:
        assert (await client.next_event()).data == "one"
        # The stream has ended; the reader now waits an hour to reconnect.
        reader = asyncio.create_task(client.next_event(timeout=10))
        await asyncio.sleep(0)
        await client.close()
        with pytest.raises(SSEClientError, match="ended"):
            await reader
    assert count == 1


def crossws_app(posted: list[tuple[str | None, str, bytes]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            body = await request.read()
            posted.append((request.headers.get("x-crossws-id"), request.content_type, body))
            if request.headers.get("x-crossws-id") != "peer-9":
                return web.Response(status=403, text="unknown peer")
            if body == b"reject":
                return web.Response(status=400, text="rejected")
            return web.Response(status=202 if body == b"accepted" else 204)
        response = await start_stream(request, {"x-crossws-id": "peer-9"})
        await response.write(b"event: crossws-id\ndata: peer-9\n\n")
        await hang()
        return response

    return handler


async def test_send_posts_with_header_and_body(aiohttp_server: AiohttpServer) -> None:
    posted: list[tuple[str | None, str, bytes]] = []
    url = await serve(aiohttp_server, crossws_app(posted))
    async with connect(url, headers={"Authorization": "Bearer t"}) as client:
        assert await client.send("h\u00e9llo") == 204
        assert await client.send(b"\x00\xff") == 204
        assert await client.send({"a": [1, 2]}) == 204
        assert await client.send([1, "x"]) == 204
        assert await client.send("accepted") == 202
    assert posted == [
        ("peer-9", "text/plain", "h\u00e9llo".encode()),
        ("peer-9", "application/octet-stream", b"\x00\xff"),
        ("peer-9", "application/json", json.dumps({"a": [1, 2]}).encode()),
        ("peer-9", "application/json", b'[1, "x"]'),
        ("peer-9", "text/plain", b"accepted"),
    ]
    assert json.loads(posted[2][2]) == {"a": [1, 2]}


async def test_send_non_2xx_raises(aiohttp_server: AiohttpServer) -> None:
    posted: list[tuple[str | None, str, bytes]] = []
    url = await serve(aiohttp_server, crossws_app(posted))
    async with connect(url) as client:
        with pytest.raises(SSEClientError, match="400") as info:
            await client.send("reject")
        assert (info.value.status, info.value.body) == (400, "rejected")
        client.id = "someone-else"
        with pytest.raises(SSEClientError, match="403") as info:
            await client.send("x")
        assert info.value.status == 403
    assert [peer for peer, _, _ in posted] == ["peer-9", "someone-else"]


async def test_send_without_peer_id_raises(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        with pytest.raises(SSEClientError, match="peer id"):
            await client.send("x")


# -- issue 26: regression tests against real servers -------------------------------------
#
# Hostile or odd servers (half-open connections, refused ports, closing at
# once) are tiny raw asyncio servers on 127.0.0.1; everything else is aiohttp.


class RawServer:
    """A raw TCP server on 127.0.0.1 running ``on_connection`` per connection.

    A handler that must stay silent awaits ``stop``, set on exit (never a
    long sleep: a handler task cancelled at teardown logs an asyncio error
    on Python 3.11).
    """

    def __init__(
        self, on_connection: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.on_connection = on_connection
        self.connections = 0
        self.stop = asyncio.Event()
        self.server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        try:
            await self.on_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> URL:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}/sse")

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.stop.set()
        self.server.close()
        async with asyncio.timeout(10):
            await asyncio.gather(*self._tasks)
            await self.server.wait_closed()


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\n"
)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def reconnect_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The delays the client scheduled, from its DEBUG log lines."""
    return [
        float(record.args[1])  # type: ignore[index, arg-type]
        for record in caplog.records
        if record.name == "aiohttp_crossws_sse.client" and "reconnecting in" in record.msg
    ]


async def read_for(client: EventSourceClient, seconds: float) -> list[ServerSentEvent]:
    """Every event the client yields within ``seconds`` (a window, not a measurement)."""
    events: list[ServerSentEvent] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for event in client:
                events.append(event)
    return events


# Defect 1: send() after a redirect


def bidir_app(
    seen: list[tuple[str, str | None]], messages: list[tuple[str, str]], opened: list[str]
) -> web.Application:
    def upgrade(request: web.Request) -> None:
        seen.append((request.method, request.headers.get("Authorization")))

    def message(peer: Peer, msg: Message) -> None:
        messages.append((peer.id, msg.text()))

    hooks = define_hooks(upgrade=upgrade, open=lambda peer: opened.append(peer.id), message=message)
    app = web.Application()
    sse_adapter(hooks, bidir=True).setup(app, "/sse")
    return app


async def test_send_after_a_redirected_stream_reaches_the_peer(
    aiohttp_server: AiohttpServer,
) -> None:
    # The stream URL answers 301 (as http -> https would). The POST must go
    # where the stream is served: a POST to the old URL is turned into a GET
    # by the 301, which opens a second stream and reports success.
    seen: list[tuple[str, str | None]] = []
    messages: list[tuple[str, str]] = []
    opened: list[str] = []
    app = bidir_app(seen, messages, opened)

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/sse")

    app.router.add_route("*", "/old", moved)
    server = await aiohttp_server(app)
    async with connect(server.make_url("/old"), headers={"Authorization": "Bearer t"}) as client:
        assert client.stream_url == server.make_url("/sse")
        assert client.id is not None
        assert 200 <= await client.send("hello") < 300
        await wait_until(lambda: messages, what="the message")
        assert messages == [(client.id, "hello")]
        assert opened == [client.id]  # no second stream
    # same origin: the credentials went with the stream and with the POST
    assert seen == [("GET", "Bearer t"), ("POST", "Bearer t")]


async def test_send_after_a_cross_origin_redirect_keeps_credentials_home(
    aiohttp_server: AiohttpServer,
) -> None:
    # aiohttp drops Authorization when a redirect leaves the origin; the POST
    # that follows the stream there must not hand them over either.
    seen: list[tuple[str, str | None]] = []
    messages: list[tuple[str, str]] = []
    opened: list[str] = []
    there = await aiohttp_server(bidir_app(seen, messages, opened))

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(str(there.make_url("/sse")))

    here = web.Application()
    here.router.add_route("*", "/sse", moved)
    url = (await aiohttp_server(here)).make_url("/sse")
    async with connect(url, headers={"Authorization": "Bearer t"}) as client:
        assert client.stream_url == there.make_url("/sse")
        assert 200 <= await client.send("hello") < 300
        await wait_until(lambda: messages, what="the message")
        assert messages == [(client.id, "hello")]
        assert len(opened) == 1
    assert seen == [("GET", None), ("POST", None)]


async def test_send_after_a_cross_origin_redirect_refuses_a_sessions_credentials(
    aiohttp_server: AiohttpServer,
) -> None:
    # A session's own credentials go with every request it makes: send()
    # cannot strip them, so it refuses rather than hand them to the other
    # origin. (A session's auth= is refused the same way; aiohttp deprecates
    # BasicAuth, so it is not tested here.)
    seen: list[tuple[str, str | None]] = []
    messages: list[tuple[str, str]] = []
    there = await aiohttp_server(bidir_app(seen, messages, []))

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(str(there.make_url("/sse")))

    here = web.Application()
    here.router.add_route("*", "/sse", moved)
    url = (await aiohttp_server(here)).make_url("/sse")
    sessions = [
        lambda: aiohttp.ClientSession(headers={"Authorization": "Bearer t"}),
        lambda: aiohttp.ClientSession(headers={"Cookie": "a=b"}),
    ]
    for make_session in sessions:
        async with make_session() as session, connect(url, session=session) as client:
            with pytest.raises(SSEClientError, match="redirected there from another origin"):
                await client.send("hello")
    assert [method for method, _ in seen] == ["GET", "GET"]  # no POST went there
    assert messages == []


async def test_send_answered_with_a_redirect_raises(aiohttp_server: AiohttpServer) -> None:
    streams = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        if request.method == "POST":
            raise web.HTTPMovedPermanently("/sse")
        streams += 1
        response = await start_stream(request, {"x-crossws-id": "peer-9"})
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        with pytest.raises(SSEClientError, match=r"HTTP 301, a redirect to /sse, not followed"):
            await client.send("lost")
    assert streams == 1  # the POST did not turn into a second stream


# Defect 2: bounded memory on an endless stream


async def test_events_and_comments_kept_are_bounded(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        for i in range(3000):
            await response.write(b": ping\ndata: %d\n\n" % i)
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:  # the default keep=100
        assert len([event async for event in client]) == 3000
        assert client.events_seen == 3000
        assert [event.data for event in client.events] == [str(i) for i in range(2900, 3000)]
        assert client.comments == [" ping"] * 100
        with pytest.raises(SSEClientError) as ended:
            await client.next_event()
        assert str(ended.value).startswith(
            f"the event stream {url} ended; 3000 events seen, the last 3: 'message' '2997'"
        )
    async with connect(url, keep=0) as client:
        assert len([event async for event in client]) == 3000
        assert (client.events, client.comments, client.events_seen) == ([], [], 3000)
    async with connect(url, keep=None) as client:
        assert len([event async for event in client]) == 3000
        assert len(client.events) == len(client.comments) == 3000


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"keep": -1}, ValueError),
        ({"keep": 1.5}, TypeError),
        ({"retry": -1}, ValueError),
        ({"max_retry": 0}, ValueError),
        ({"max_retry": float("inf")}, ValueError),
        ({"idle_timeout": 0}, ValueError),
        ({"send_timeout": "30"}, TypeError),
        ({"timeout": float("nan")}, ValueError),
        ({"last_event_id": "a\x01b"}, ValueError),
        ({"last_event_id": 7}, TypeError),
    ],
)
def test_bad_options_name_the_parameter(options: dict[str, Any], error: type[Exception]) -> None:
    (name,) = options
    with pytest.raises(error, match=f"^{name} "):
        connect("http://127.0.0.1:1/sse", **options)


# Defect 3: an event id a header cannot carry


async def test_server_refuses_an_id_that_cannot_come_back(sse_client: SSEClientFactory) -> None:
    refused: list[str] = []

    def open_(peer: Peer) -> None:
        try:
            peer.send("never", id="a\x01b")
        except ValueError as exc:
            refused.append(str(exc))
        peer.send("after", id="a\tb")  # tab is fine in a header

    client = await sse_client(sse_adapter(define_hooks(open=open_)))
    event = await client.next_event()
    assert (event.data, event.id) == ("after", "a\tb")
    assert len(refused) == 1
    assert refused[0].startswith("id must not contain")
    assert "Last-Event-ID" in refused[0]


async def test_every_id_the_server_sends_comes_back_on_reconnect(
    sse_client: SSEClientFactory,
) -> None:
    # tab, every printable ASCII character and some beyond
    first_id = "".join(chr(c) for c in range(0x21, 0x7F)) + " \t\u00e9\u20ac\U0001f600"
    came_back: list[str | None] = []

    def open_(peer: Peer) -> None:
        if not came_back and peer.last_event_id is None:
            came_back.append(None)
            peer.send("first", id=first_id, retry=0)
            peer.close()
        else:
            came_back.append(peer.last_event_id)
            peer.send("second")

    client = await sse_client(sse_adapter(define_hooks(open=open_)), reconnect=True)
    assert [(await client.next_event()).data for _ in range(2)] == ["first", "second"]
    assert came_back == [None, first_id]


async def test_client_survives_an_id_it_cannot_send_back(
    aiohttp_server: AiohttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Another server sends an id WHATWG allows but no header can carry: the
    # client reconnects without Last-Event-ID rather than never again.
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        response = await start_stream(request)
        if len(seen) == 1:
            await response.write(b"retry: 0\nid: a\x01b\ndata: one\n\n")
            return response
        await response.write(b"data: two\n\n")
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    caplog.set_level(logging.WARNING, "aiohttp_crossws_sse.client")
    async with connect(url, reconnect=True) as client:
        assert [(await client.next_event()).data for _ in range(2)] == ["one", "two"]
        assert client.last_event_id == "a\x01b"
    assert seen == [None, None]
    assert "cannot be sent back in a Last-Event-ID header" in caplog.text


# Defect 5: a huge retry value


async def test_huge_retry_value_is_clamped(aiohttp_server: AiohttpServer) -> None:
    # Over 4300 digits int() refuses to parse (a ValueError out of async for).
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"retry: " + b"9" * 5000 + b"\ndata: one\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url) as client:
        events = [event async for event in client]
    assert [event.data for event in events] == ["one"]
    assert events[0].retry == 2**63 - 1
    assert client.reconnect_delay == client.max_retry


@pytest.mark.parametrize("digits", [400, 5000])
async def test_huge_retry_value_never_stops_reconnection(
    aiohttp_server: AiohttpServer, digits: int
) -> None:
    # 400 digits overflowed the conversion to seconds when the stream ended.
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        response = await start_stream(request)
        await response.write(b"retry: %s\ndata: %d\n\n" % (b"9" * digits, count))
        if count == 1:
            return response
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    # the server asks to wait "forever": max_retry is the longest wait
    async with connect(url, reconnect=True, max_retry=0.05) as client:
        assert [(await client.next_event()).data for _ in range(2)] == ["1", "2"]


# Reconnect hygiene: backoff with jitter and a cap


def test_backoff_delays() -> None:
    # low and high ends of the jitter, the server's retry 0, a cap of 30 s
    low = [reconnect_delay(n, 0.0, 30.0, 0.0) for n in range(9)]
    high = [reconnect_delay(n, 0.0, 30.0, 0.999999) for n in range(9)]
    assert low == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert high == pytest.approx([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])
    # never below the server's retry; the first reconnection adds up to a quarter
    assert reconnect_delay(0, 3.0, 30.0, 0.0) == 3.0
    assert reconnect_delay(0, 3.0, 30.0, 0.999999) == pytest.approx(3.75)
    assert [reconnect_delay(n, 3.0, 30.0, 0.0) for n in range(1, 6)] == [3, 3, 6, 12, 15]
    # the cap bounds everything: the server's retry, Retry-After, the backoff
    assert reconnect_delay(0, 1e12, 30.0, 0.5) == 30.0
    assert reconnect_delay(50_000, 0.0, 30.0, 0.5) == 22.5
    assert reconnect_delay(0, 0.0, 30.0, 0.0, floor=float("inf")) == 30.0
    # Retry-After is a floor
    assert reconnect_delay(1, 0.0, 30.0, 0.0, floor=5.0) == 5.0
    assert reconnect_delay(6, 0.0, 30.0, 0.0, floor=5.0) == 15.0


def test_retry_after_values() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 007 ") == 7.0
    assert parse_retry_after("9" * 5000) == float("inf")
    assert parse_retry_after("-1") is None
    assert parse_retry_after("soon") is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(date, now=1445412470.0) == 10.0
    assert parse_retry_after(date, now=1445412490.0) == 0.0  # in the past


async def test_server_ending_streams_at_once_is_not_hammered(
    aiohttp_server: AiohttpServer,
) -> None:
    # retry: 0 and a stream that ends at once made thousands of requests a
    # second. The backoff (0.25-0.5 s, then 0.5-1 s, 1-2 s...) allows at most
    # 5 requests in 1.5 s; the bound is loose on purpose.
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        response = await start_stream(request)
        await response.write(b"retry: 0\ndata: x\n\n")
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, reconnect=True) as client:
        events = await read_for(client, 1.5)
    assert 2 <= count <= 10, count
    assert len(events) == count


async def test_server_closing_connections_at_once_is_not_hammered() -> None:
    # A server that accepts then closes (as a crashing backend does): every
    # attempt is a connection error, retried with backoff, not in a tight loop.
    first = True

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal first
        if first:
            first = False
            await read_request(reader)
            writer.write(STREAM_HEAD + b"retry: 0\ndata: x\n\n")
            await writer.drain()

    raw = RawServer(on_connection)
    async with raw as url, connect(url, reconnect=True) as client:
        events = await read_for(client, 1.5)
    assert [event.data for event in events] == ["x"]
    assert 2 <= raw.connections <= 10, raw.connections


async def test_refused_reconnections_back_off(caplog: pytest.LogCaptureFixture) -> None:
    # Serve one stream, then stop listening: every reconnection is refused.
    # aiohttp's request tracing counts the attempts (thousands in 1.5 s before).
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(STREAM_HEAD + b"retry: 0\ndata: x\n\n")
        await writer.drain()

    attempts = 0

    async def on_request_start(*args: object) -> None:
        nonlocal attempts
        attempts += 1

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(on_request_start)
    caplog.set_level(logging.DEBUG, "aiohttp_crossws_sse.client")
    raw = RawServer(on_connection)
    async with aiohttp.ClientSession(trace_configs=[tracing]) as session:
        async with raw as url:
            client = await connect(url, session=session, reconnect=True)
        try:
            events = await read_for(client, 1.5)
        finally:
            await client.close()
    assert [event.data for event in events] == ["x"]
    assert raw.connections == 1
    assert 2 <= attempts <= 10, attempts
    delays = reconnect_delays(caplog)
    assert delays[0] == 0.0  # retry: 0 after the stream, then growing
    assert all(later >= 0.25 for later in delays[1:])
    assert delays[-1] > delays[1]


async def test_retry_after_of_a_503_is_honoured(
    aiohttp_server: AiohttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count == 2:
            return web.Response(status=503, text="busy", headers={"Retry-After": "1"})
        response = await start_stream(request)
        await response.write(b"retry: 0\ndata: %d\n\n" % count)
        if count > 2:
            await hang()
        return response

    url = await serve(aiohttp_server, handler)
    caplog.set_level(logging.DEBUG, "aiohttp_crossws_sse.client")
    async with connect(url, reconnect=True) as client:
        assert [(await client.next_event()).data for _ in range(2)] == ["1", "3"]
    assert count == 3
    # after the stream's end: retry 0; after the 503: at least its Retry-After
    assert reconnect_delays(caplog)[1] >= 1.0


async def test_503_of_max_peers_says_when_to_come_back(sse_client: SSEClientFactory) -> None:
    sse = sse_adapter(max_peers=1)
    await sse_client(sse)
    with pytest.raises(SSEClientError, match=r"HTTP 503 \(Retry-After: 5\)") as refused:
        await sse_client(sse)
    assert (refused.value.status, refused.value.retry_after) == (503, 5.0)


# Reconnect hygiene: an idle timeout for half-open connections


async def test_idle_timeout_drops_a_silent_connection() -> None:
    # The first connection goes silent without closing, as a half-open TCP
    # connection does: no FIN ever comes, reads just wait.
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(STREAM_HEAD + b"retry: 0\ndata: %d\n\n" % raw.connections)
        await writer.drain()
        await raw.stop.wait()  # silent, until the test ends

    raw = RawServer(on_connection)
    async with raw as url, connect(url, reconnect=True, idle_timeout=0.3) as client:
        assert [(await client.next_event()).data for _ in range(2)] == ["1", "2"]
    assert raw.connections == 2


async def test_idle_timeout_without_reconnect_raises() -> None:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(STREAM_HEAD + b"data: one\n\n")
        await writer.drain()
        await raw.stop.wait()

    raw = RawServer(on_connection)
    async with raw as url, connect(url, idle_timeout=0.3) as client:
        assert (await client.next_event()).data == "one"
        with pytest.raises(TimeoutError, match=r"not even a keep-alive .*\(idle_timeout\)"):
            await client.next_event(timeout=10)


async def test_idle_timeout_bounds_the_wait_for_headers_of_a_reconnection() -> None:
    # The second connection is accepted but never answered.
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if raw.connections != 2:
            writer.write(STREAM_HEAD + b"retry: 0\ndata: %d\n\n" % raw.connections)
            await writer.drain()
        await raw.stop.wait()

    raw = RawServer(on_connection)
    async with raw as url, connect(url, reconnect=True, idle_timeout=0.3) as client:
        assert [(await client.next_event()).data for _ in range(2)] == ["1", "3"]


async def test_keepalive_comments_keep_an_idle_stream_alive(sse_client: SSEClientFactory) -> None:
    # The package's own server, keep-alives every 0.05 s, a client that
    # would drop the connection after 1 s of silence: 1.5 s without an event.
    sse = sse_adapter(define_hooks(open=lambda peer: peer.send("hi")), keepalive=0.05)
    client = await sse_client(sse, idle_timeout=1.0, reconnect=True)
    assert (await client.next_event()).data == "hi"
    await asyncio.sleep(1.5)
    (peer,) = sse.peers.values()
    peer.send("still here")
    assert (await client.next_event()).data == "still here"
    assert len(client.comments) > 1


# send(): a timeout of its own, a session's raise_for_status


async def test_send_has_a_timeout_of_its_own(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            await hang()  # never answers
        response = await start_stream(request, {"x-crossws-id": "peer-9"})
        await hang()
        return response

    url = await serve(aiohttp_server, handler)
    async with connect(url, send_timeout=0.2) as client, asyncio.timeout(10):
        with pytest.raises(TimeoutError, match=r"no response within 0\.2s \(send_timeout\)"):
            await client.send("x")


async def test_a_sessions_raise_for_status_gives_the_clients_errors(
    aiohttp_server: AiohttpServer,
) -> None:
    posted: list[tuple[str | None, str, bytes]] = []
    url = await serve(aiohttp_server, crossws_app(posted))
    async with aiohttp.ClientSession(raise_for_status=True) as session:
        async with connect(url, session=session) as client:
            with pytest.raises(SSEClientError, match="400") as info:
                await client.send("reject")
            assert (info.value.status, info.value.body) == (400, "rejected")
        with pytest.raises(SSEClientError, match="404") as info:
            async with connect(url.with_path("/missing"), session=session):
                pytest.fail("the context must not be entered")
        assert info.value.status == 404


async def test_client_errors_share_the_package_base(aiohttp_server: AiohttpServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="gone")

    assert issubclass(SSEClientError, SSEError)
    url = await serve(aiohttp_server, handler)
    with pytest.raises(SSEError) as info:
        async with connect(url):
            pytest.fail("the context must not be entered")
    assert isinstance(info.value, SSEClientError)
    assert (info.value.status, info.value.body, info.value.retry_after) == (404, "gone", None)
