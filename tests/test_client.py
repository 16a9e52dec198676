"""Tests of the SSE client against small real aiohttp servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from yarl import URL

from aiohttp_crossws_sse.client import EventSourceClient, SSEClientError, connect

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
