"""Bidirectional mode: messages over POST (plain and streamed chunked bodies) — over real HTTP.

Chunked bodies are written byte for byte over a raw socket, so the exact
framing on the wire (and where TCP writes split it) is under the test's control.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aiohttp_crossws_sse import (
    CloseDetails,
    Message,
    Peer,
    SSEAdapter,
    SSEError,
    define_hooks,
    sse_adapter,
)
from tests.conftest import EventReader, wait_until


def make_app(sse: SSEAdapter, *paths: str) -> web.Application:
    app = web.Application()
    for path in paths or ("/sse",):
        sse.setup(app, path)
    return app


async def open_stream(
    client: TestClient[Any, Any], path: str = "/sse"
) -> tuple[aiohttp.ClientResponse, EventReader, str]:
    """GET the stream and read its ``crossws-id`` event."""
    resp = await client.get(path)
    assert resp.status == 200
    reader = EventReader(resp)
    first = await reader.next()
    assert first.event == "crossws-id"
    assert first.data == resp.headers["x-crossws-id"]
    return resp, reader, first.data


def head(
    peer_id: str | None, path: str = "/sse", *, chunked: bool = True, extra: str = ""
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    if peer_id is not None:
        lines.append(f"x-crossws-id: {peer_id}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.append("Content-Type: application/octet-stream")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawPost:
    """One HTTP connection written byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, client: TestClient[Any, Any]) -> RawPost:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(timeout):
            status_line = await self.reader.readuntil(b"\r\n")
            headers: dict[str, str] = {}
            while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def raw_post() -> AsyncIterator[Callable[[TestClient[Any, Any]], Awaitable[RawPost]]]:
    """Opens raw connections to the test server; all are closed at teardown."""
    posts: list[RawPost] = []

    async def open_(client: TestClient[Any, Any]) -> RawPost:
        post = await RawPost.open(client)
        posts.append(post)
        return post

    yield open_
    for post in posts:
        post.close()
        with contextlib.suppress(ConnectionError):
            await post.writer.wait_closed()


class Got:
    """Message hooks that record what they see."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.errors: list[tuple[Peer | None, SSEError]] = []
        self.posts = 0  # upgrade calls for POSTs: the handler has started

    @property
    def texts(self) -> list[str]:
        return [m.text() for m in self.messages]

    def upgrade(self, request: web.Request) -> None:
        if request.method == "POST":
            self.posts += 1

    def message(self, peer: Peer, message: Message) -> None:
        self.messages.append(message)

    def error(self, peer: Peer | None, err: SSEError) -> None:
        self.errors.append((peer, err))


async def setup(
    aiohttp_client: Any, **options: Any
) -> tuple[Got, SSEAdapter, TestClient[Any, Any], aiohttp.ClientResponse, str]:
    got = Got()
    sse = sse_adapter(got, bidir=True, **options)
    client = await aiohttp_client(make_app(sse))
    resp, _, peer_id = await open_stream(client)
    return got, sse, client, resp, peer_id


# -- the stream side ------------------------------------------------------------------


async def test_stream_carries_id_header_and_first_event(aiohttp_client: Any) -> None:
    sse = sse_adapter(define_hooks(open=lambda peer: peer.send("welcome")), bidir=True)
    client = await aiohttp_client(make_app(sse))
    resp, reader, peer_id = await open_stream(client)
    assert list(sse.peers) == [peer_id]
    assert (await reader.next()).data == "welcome"
    resp.close()


# -- plain bodies ---------------------------------------------------------------------


async def test_plain_body_is_one_message(aiohttp_client: Any) -> None:
    got, sse, client, stream, peer_id = await setup(aiohttp_client)
    resp = await client.post("/sse", data=b"hello \xe2\x9c\x93", headers={"x-crossws-id": peer_id})
    assert resp.status == 200
    assert await resp.read() == b""
    await wait_until(lambda: len(got.messages) == 1)
    (msg,) = got.messages
    assert msg.peer is sse.peers[peer_id]
    assert msg.raw_data == b"hello \xe2\x9c\x93"
    assert msg.bytes() == msg.raw_data
    assert msg.text() == "hello \u2713"
    assert uuid.UUID(msg.id).version == 4
    assert sse.stats()["messages_received"] == 1
    stream.close()


async def test_plain_bodies_json_empty_and_invalid_utf8(aiohttp_client: Any) -> None:
    got, sse, client, stream, peer_id = await setup(aiohttp_client)
    headers = {"x-crossws-id": peer_id}
    for body in (b'{"a": [1, 2]}', b"", b"\xff\xfe"):
        assert (await client.post("/sse", data=body, headers=headers)).status == 200
    await wait_until(lambda: len(got.messages) == 3)
    as_json, empty, invalid = got.messages
    assert as_json.json() == {"a": [1, 2]}
    assert empty.raw_data == b"" and empty.text() == ""
    with pytest.raises(ValueError):
        invalid.text()
    with pytest.raises(ValueError):
        invalid.json()
    assert len({m.id for m in got.messages}) == 3
    assert sse.stats()["messages_received"] == 3
    stream.close()


async def test_plain_body_arriving_in_pieces(aiohttp_client: Any, raw_post: Any) -> None:
    got, _, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id, chunked=False, extra="Content-Length: 10") + b"abc")
    await wait_until(lambda: got.posts == 1)
    await post.send(b"defg")
    await post.send(b"hij")
    status, _, _ = await post.response()
    assert status == 200
    assert got.texts == ["abcdefghij"]
    post.close()
    stream.close()


# -- streamed chunked bodies --------------------------------------------------------

# Each scenario: the writes, and the messages the hook must have seen after each.
FRAMINGS: dict[str, list[tuple[bytes, list[str]]]] = {
    # what most clients send: each chunk whole, CRLF included
    "standard": [
        (b"", []),
        (b"5\r\nhello\r\n", ["hello"]),
        (b"6\r\n world\r\n", ["hello", " world"]),
        (b"0\r\n\r\n", ["hello", " world"]),
    ],
    # Node's fetch (WebSocketSSE): the first chunk rides with the headers and
    # each chunk's CRLF comes with the next one
    "fetch": [
        (b"4\r\nping", ["ping"]),
        (b"\r\n5\r\nworld", ["ping", "world"]),
        (b"\r\n1\r\na\r\n2\r\nbb", ["ping", "world", "a", "bb"]),
        (b"\r\n0\r\n\r\n", ["ping", "world", "a", "bb"]),
    ],
    # two complete chunks per TCP write
    "two per write": [
        (b"5\r\nhello\r\n5\r\nworld\r\n", ["hello", "world"]),
        (b"1\r\na\r\n2\r\nbb\r\n", ["hello", "world", "a", "bb"]),
        (b"0\r\n\r\n", ["hello", "world", "a", "bb"]),
    ],
    # chunks split across TCP writes, inside size lines, data and CRLFs
    "split": [
        (b"5\r\nhel", []),
        (b"lo", ["hello"]),
        (b"\r", ["hello"]),
        (b"\n1", ["hello"]),
        (b"0\r", ["hello"]),
        (b"\n0123456789", ["hello"]),
        (b"abcdef\r\n3;ext=1\r", ["hello", "0123456789abcdef"]),
        (b"\nxyz\r\n0\r\n\r\n", ["hello", "0123456789abcdef", "xyz"]),
    ],
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
async def test_chunked_body_one_message_per_chunk_as_it_arrives(
    aiohttp_client: Any, raw_post: Any, framing: str
) -> None:
    got, sse, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    writes = FRAMINGS[framing]
    first, expected = writes[0]
    await post.send(head(peer_id) + first)
    await wait_until(lambda: got.posts == 1, what="the POST handler")
    await wait_until(lambda: got.texts == expected, what=f"{expected} after the headers")
    for data, expected in writes[1:]:
        await post.send(data)
        # each message reaches the hook before the next chunk is even sent
        await wait_until(lambda e=expected: got.texts == e, what=f"{expected} after {data!r}")
    status, _, _ = await post.response()
    assert status == 200
    assert got.texts == writes[-1][1]
    assert all(m.peer is sse.peers[peer_id] for m in got.messages)
    assert sse.stats()["messages_received"] == len(got.messages)
    post.close()
    stream.close()


BODIES = [
    # sizes of one and two hex digits, a last chunk
    (
        b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n1\r\n!\r\n0\r\n\r\n",
        ["hello", "0123456789abcdef", "!"],
    ),
    # a chunk extension, leading zeros, trailers
    (b"5;name=val\r\nhello\r\n005\r\nworld\r\n0\r\nx-trailer: yes\r\n\r\n", ["hello", "world"]),
    # data that looks like framing
    (b"3\r\n\nab\r\n4\r\n\r\n0\r\r\n2\r\n:;\r\n0\r\n\r\n", ["\nab", "\r\n0\r", ":;"]),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["rest-at-once", "rest-bytewise"])
@pytest.mark.parametrize("body", range(len(BODIES)))
async def test_chunked_body_split_anywhere_before_the_handler_runs(
    aiohttp_client: Any, raw_post: Any, body: int, bytewise: bool
) -> None:
    """aiohttp parses whatever arrives before the handler runs; wherever that
    stops (in a size line, in data, before a CRLF, in the trailers) the
    messages are the same."""
    raw, expected = BODIES[body]
    got, _, client, stream, peer_id = await setup(aiohttp_client)
    for cut in range(len(raw) + 1):
        got.messages.clear()
        post = await raw_post(client)
        await post.send(head(peer_id) + raw[:cut])
        await wait_until(lambda cut=cut: got.posts == cut + 1, what=f"handler, cut {cut}")
        if bytewise:
            for i in range(cut, len(raw)):
                await post.send(raw[i : i + 1])
        else:
            await post.send(raw[cut:])
        status, _, _ = await post.response()
        assert (status, got.texts) == (200, expected), f"cut at {cut}: {raw[:cut]!r}"
        post.close()
    stream.close()


async def test_malformed_chunked_body_is_400_after_the_good_chunks(
    aiohttp_client: Any, raw_post: Any
) -> None:
    got, _, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"5\r\nhello\r\n")
    await wait_until(lambda: got.texts == ["hello"])
    await post.send(b"zz\r\nmore\r\n")
    status, _, body = await post.response()
    assert status == 400
    assert b"chunked" in body
    assert got.texts == ["hello"]
    assert await post.closed_by_server()
    post.close()
    stream.close()


async def test_aiohttp_framing_when_llhttp_cannot_be_probed(
    aiohttp_client: Any, raw_post: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the probe (llhttp unrecognised) aiohttp's own chunk ends split
    the messages: standard framing still gives each message, whole, at once."""
    from aiohttp_crossws_sse._post import takeover as _llhttp

    monkeypatch.setattr(_llhttp, "llhttp_parser", lambda request: None)
    got, _, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"5\r\nhello\r\n")
    await wait_until(lambda: got.texts == ["hello"])
    await post.send(b"3\r\nabc\r\n2\r\nde\r\n")
    await wait_until(lambda: got.texts == ["hello", "abc", "de"])
    await post.send(b"0\r\n\r\n")
    status, headers, _ = await post.response()
    assert (status, got.texts) == (200, ["hello", "abc", "de"])
    assert headers.get("connection") != "close"  # llhttp untouched: keep-alive
    stream.close()


@pytest.mark.parametrize(
    "bad",
    [
        b"5\r\nhelloX",  # no CRLF after the data
        b"5\nhello\r\n",  # bare LF after the size
        b"5" + b";x" * 5000 + b"\r\n",  # endless size line
        b"1\r\na\r\n0\r\n" + b"x: y\r\n" * 200,  # endless trailers
        b"1\r\na\r\n0\r\nx: y\n",  # bare LF in the trailers
        b"12345678901234567\r\n",  # 17 digits
        b"0x5\r\nhello\r\n",  # what int(..., 16) would take
    ],
    ids=["crlf", "bare-lf", "long-line", "trailers", "trailer-lf", "digits", "0x"],
)
async def test_malformed_framing_is_400(aiohttp_client: Any, raw_post: Any, bad: bytes) -> None:
    # A chunk is handed on as soon as its data is in, before what follows is seen.
    delivered = {b"5\r\nhelloX": ["hello"], b"1\r\na\r\n0": ["a"]}
    expected = ["ok", *next((v for k, v in delivered.items() if bad.startswith(k)), [])]
    got, _, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"2\r\nok\r\n")
    await wait_until(lambda: got.texts == ["ok"])
    await post.send(bad)
    assert (await post.response())[0] == 400
    assert await post.closed_by_server()
    assert got.texts == expected
    post.close()
    stream.close()


async def test_compressed_stream_is_415(aiohttp_client: Any, raw_post: Any) -> None:
    got, _, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id, extra="Content-Encoding: gzip") + b"0\r\n\r\n")
    assert (await post.response())[0] == 415
    assert got.messages == []
    post.close()
    stream.close()


async def test_bytes_after_a_taken_over_body_are_dropped(
    aiohttp_client: Any, raw_post: Any
) -> None:
    """Once llhttp has been probed it cannot parse the next request: the
    connection answers this one and closes (a pipelined request is lost).
    aiohttp's Python parser is handed the connection back with what followed
    the body: the pipelined request is served."""
    from aiohttp import http_parser

    python = http_parser.HttpRequestParser is http_parser.HttpRequestParserPy
    got, _, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"2\r\nhi")
    await wait_until(lambda: got.texts == ["hi"])
    await post.send(b"\r\n0\r\n\r\nGET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await post.response()
    if python:
        assert status == 200 and headers.get("connection") != "close"
        status, headers, _ = await post.response()  # the pipelined GET: a stream
        assert (status, headers["content-type"]) == (200, "text/event-stream")
    else:
        assert (status, headers["connection"]) == (200, "close")
        assert await post.closed_by_server()
    post.close()
    stream.close()


async def test_pure_python_parser_delivers_on_time(
    aiohttp_client: Any, raw_post: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's Python parser (AIOHTTP_NO_EXTENSIONS, PyPy) flags a chunk's end
    as soon as its data is in: aiohttp keeps parsing and keep-alive works."""
    from aiohttp import http_parser, web_protocol

    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    got, _, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"4\r\nping")
    await wait_until(lambda: got.texts == ["ping"])
    await post.send(b"\r\n5\r\nwo")
    await post.send(b"rld")
    await wait_until(lambda: got.texts == ["ping", "world"])
    await post.send(b"\r\n0\r\n\r\n")
    status, headers, _ = await post.response()
    assert status == 200
    assert headers.get("connection") != "close"
    # the same connection serves the next request
    await post.send(head(peer_id, chunked=False, extra="Content-Length: 2") + b"hi")
    assert (await post.response())[0] == 200
    await wait_until(lambda: got.texts == ["ping", "world", "hi"])
    # a malformed body is refused, and that connection closed
    await post.send(head(peer_id) + b"2\r\nok\r\n")
    await wait_until(lambda: len(got.messages) == 4)
    await post.send(b"zz\r\n")
    assert (await post.response())[0] == 400
    assert await post.closed_by_server()
    assert got.texts == ["ping", "world", "hi", "ok"]
    post.close()
    stream.close()


async def test_fallback_without_aiohttp_internals(
    aiohttp_client: Any, raw_post: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should aiohttp's internals change, messages still arrive (through
    ``readchunk()``: whole, in order, limits enforced)."""
    from aiohttp_crossws_sse._post import takeover as _llhttp

    monkeypatch.setattr(_llhttp, "reads_chunk_ends", lambda content: False)
    got, _, client, stream, peer_id = await setup(aiohttp_client, max_message_size=8)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"5\r\nhello\r\n")
    await wait_until(lambda: got.texts == ["hello"])
    await post.send(b"2\r\nhi\r\n0\r\n\r\n")
    assert (await post.response())[0] == 200
    assert got.texts == ["hello", "hi"]
    post.close()
    resp = await client.post("/sse", data=b"plain", headers={"x-crossws-id": peer_id})
    assert resp.status == 200
    post = await raw_post(client)
    await post.send(head(peer_id) + b"9\r\n123456789\r\n0\r\n\r\n")
    assert (await post.response())[0] == 413
    assert got.texts == ["hello", "hi", "plain"]
    post.close()
    stream.close()


# -- 400: the id ------------------------------------------------------------------------


async def test_missing_or_unknown_id_is_400(aiohttp_client: Any) -> None:
    got, _, client, stream, _ = await setup(aiohttp_client)
    resp = await client.post("/sse", data=b"x")
    assert resp.status == 400
    assert "x-crossws-id" in await resp.text()
    for bad in ("nope", str(uuid.uuid4()), ""):
        resp = await client.post("/sse", data=b"x", headers={"x-crossws-id": bad})
        assert resp.status == 400
    assert got.messages == []
    stream.close()


async def test_closed_peer_id_is_400(aiohttp_client: Any) -> None:
    got, sse, client, stream, peer_id = await setup(aiohttp_client)
    peer = sse.peers[peer_id]
    peer.close()
    await peer.wait_closed()
    resp = await client.post("/sse", data=b"late", headers={"x-crossws-id": peer_id})
    assert resp.status == 400
    assert await resp.text() == "unknown peer id"
    assert got.messages == []
    stream.close()


async def test_id_from_another_namespace_is_400(aiohttp_client: Any) -> None:
    got = Got()
    sse = sse_adapter(got, bidir=True)
    client = await aiohttp_client(make_app(sse, "/a", "/b"))
    stream, _, peer_id = await open_stream(client, "/a")
    resp = await client.post("/b", data=b"sneaky", headers={"x-crossws-id": peer_id})
    assert resp.status == 400
    assert await resp.text() == "unknown peer id"  # same answer as a made-up id
    resp = await client.post("/a", data=b"fine", headers={"x-crossws-id": peer_id})
    assert resp.status == 200
    await wait_until(lambda: got.texts == ["fine"])
    stream.close()


async def test_namespace_of_the_post_comes_from_upgrade_then_option(aiohttp_client: Any) -> None:
    got = Got()

    def upgrade(request: web.Request) -> dict[str, Any] | None:
        room = request.query.get("room")
        return {"namespace": room} if room else None

    sse = sse_adapter(
        define_hooks(upgrade=upgrade, message=got.message),
        bidir=True,
        namespace=lambda request: request.query.get("ns", "default"),
    )
    client = await aiohttp_client(make_app(sse))
    red, _, red_id = await open_stream(client, "/sse?room=red")
    plain, _, plain_id = await open_stream(client, "/sse?ns=x")
    assert sse.peers[red_id].namespace == "red"
    assert sse.peers[plain_id].namespace == "x"

    async def post(query: str, peer_id: str, data: str) -> int:
        resp = await client.post(f"/sse{query}", data=data, headers={"x-crossws-id": peer_id})
        return resp.status

    assert await post("?room=blue", red_id, "a") == 400
    assert await post("", red_id, "b") == 400
    assert await post("?ns=red", red_id, "c") == 200  # same namespace name, whoever chose it
    assert await post("?room=red", red_id, "d") == 200
    assert await post("?ns=y", plain_id, "e") == 400
    assert await post("?ns=x", plain_id, "f") == 200
    await wait_until(lambda: got.texts == ["c", "d", "f"])
    red.close()
    plain.close()


# -- 413 ------------------------------------------------------------------------------------


async def test_plain_body_over_the_limit_is_413(aiohttp_client: Any) -> None:
    got, _, client, stream, peer_id = await setup(aiohttp_client, max_message_size=10)
    headers = {"x-crossws-id": peer_id}
    resp = await client.post("/sse", data=b"x" * 11, headers=headers)
    assert resp.status == 413
    resp = await client.post("/sse", data=b"y" * 10, headers=headers)
    assert resp.status == 200
    await wait_until(lambda: len(got.messages) == 1)
    assert got.texts == ["y" * 10]
    stream.close()


async def test_chunk_over_the_limit_is_413_and_never_reaches_the_hook(
    aiohttp_client: Any, raw_post: Any
) -> None:
    got, _, client, stream, peer_id = await setup(aiohttp_client, max_message_size=10)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"5\r\nhello\r\n")
    await wait_until(lambda: got.texts == ["hello"])
    await post.send(b"b\r\n" + b"x" * 5)  # declares 11 bytes
    status, _, body = await post.response()
    assert status == 413
    assert b"10" in body
    await post.send(b"x" * 6 + b"\r\n2\r\nok\r\n0\r\n\r\n")  # the rest is discarded
    assert await post.closed_by_server()
    assert got.texts == ["hello"]
    post.close()
    stream.close()


OVERSIZED = {  # 0x14 = 20 bytes against a limit of 10, cut at different places
    "in-data": (b"14\r\nxxxxx", b"", []),
    "after-size": (b"14\r\n", b"y" * 20, []),
    "in-size": (b"1", b"4\r\n" + b"y" * 20, []),
    "in-crlf": (b"1\r\na\r", b"\n14\r\n" + b"y" * 20, ["a"]),
    "at-start": (b"", b"14\r\n" + b"y" * 20, []),
}


@pytest.mark.parametrize("where", list(OVERSIZED))
async def test_oversized_chunk_is_413_wherever_aiohttp_stopped(
    aiohttp_client: Any, raw_post: Any, where: str
) -> None:
    first, rest, expected = OVERSIZED[where]
    got, _, client, stream, peer_id = await setup(aiohttp_client, max_message_size=10)
    post = await raw_post(client)
    await post.send(head(peer_id) + first)
    await wait_until(lambda: got.posts == 1)
    await post.send(rest)
    assert (await post.response())[0] == 413
    assert got.texts == expected
    post.close()
    stream.close()


async def test_endless_chunk_is_refused_before_it_is_sent(
    aiohttp_client: Any, raw_post: Any
) -> None:
    """A declared 4 GiB chunk: 413 at once, and the server reads on without keeping anything."""
    got, _, client, stream, peer_id = await setup(aiohttp_client, max_message_size=1000)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"3\r\nabc\r\n")
    await wait_until(lambda: got.texts == ["abc"])
    await post.send(b"ffffffff\r\n" + b"z" * 100)
    assert (await post.response())[0] == 413
    for _ in range(20):  # discarded as it comes (aiohttp's lingering close)
        await post.send(b"z" * 65536)
    assert got.texts == ["abc"]
    post.close()
    stream.close()


async def test_slow_hook_pauses_reading_instead_of_buffering(
    aiohttp_client: Any, raw_post: Any
) -> None:
    release = asyncio.Event()
    seen: list[str] = []
    transports: list[asyncio.Transport] = []

    def upgrade(request: web.Request) -> None:
        if request.method == "POST" and request.transport is not None:
            transports.append(request.transport)

    async def message(peer: Peer, msg: Message) -> None:
        await release.wait()
        seen.append(msg.text())

    sse = sse_adapter(define_hooks(upgrade=upgrade, message=message), bidir=True)
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    post = await raw_post(client)
    count = 1024
    body = b"".join(b"200\r\n" + f"{i:0512d}".encode() + b"\r\n" for i in range(count))
    writer = asyncio.ensure_future(post.send(head(peer_id) + body))
    await wait_until(lambda: bool(transports))
    # the hook holds the first message; the server stops reading from the client
    await wait_until(lambda: not transports[0].is_reading(), what="reading paused")
    release.set()
    await wait_until(lambda: len(seen) == count, timeout=10)
    await writer
    assert seen == [f"{i:0512d}" for i in range(count)]
    await post.send(b"0\r\n\r\n")
    assert (await post.response())[0] == 200
    post.close()
    stream.close()


# -- upgrade and resolve on POST ----------------------------------------------------------


async def test_upgrade_runs_for_the_post_and_can_reject_it(aiohttp_client: Any) -> None:
    got = Got()
    seen: list[str] = []

    def upgrade(request: web.Request) -> dict[str, Any] | web.StreamResponse:
        seen.append(request.method)
        if request.query.get("token") != "secret":
            raise web.HTTPUnauthorized(text="bad token")
        if request.query.get("deny"):
            return web.Response(status=403, text="denied")
        return {"headers": {"x-powered-by": "cross-ws"}, "context": {"user": request.method}}

    sse = sse_adapter(define_hooks(upgrade=upgrade, message=got.message), bidir=True)
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client, "/sse?token=secret")
    context = sse.peers[peer_id].context
    headers = {"x-crossws-id": peer_id}
    resp = await client.post("/sse", data=b"no", headers=headers)
    assert (resp.status, await resp.text()) == (401, "bad token")
    resp = await client.post("/sse?token=secret&deny=1", data=b"no", headers=headers)
    assert (resp.status, await resp.text()) == (403, "denied")
    # a rejection comes before the id is even looked at
    resp = await client.post("/sse", data=b"no", headers={"x-crossws-id": "made-up"})
    assert resp.status == 401
    resp = await client.post("/sse?token=secret", data=b"yes", headers=headers)
    assert resp.status == 200
    assert "x-powered-by" not in resp.headers  # only the namespace counts for a POST
    await wait_until(lambda: got.texts == ["yes"])
    assert sse.peers[peer_id].context is context
    assert context == {"user": "GET"}  # the stream's, not the POST's
    assert seen == ["GET", "POST", "POST", "POST", "POST"]
    stream.close()


async def test_upgrade_failure_on_post_is_500_error_hook_and_log(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    got = Got()
    boom = RuntimeError("boom")

    def upgrade(request: web.Request) -> None:
        if request.method == "POST":
            raise boom

    sse = sse_adapter(
        define_hooks(upgrade=upgrade, message=got.message, error=got.error), bidir=True
    )
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    with caplog.at_level(logging.ERROR, logger="aiohttp_crossws_sse"):
        resp = await client.post("/sse", data=b"x", headers={"x-crossws-id": peer_id})
    assert resp.status == 500
    ((peer, err),) = got.errors
    assert peer is None
    assert isinstance(err, SSEError) and err.__cause__ is boom
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    assert got.messages == []
    stream.close()


async def test_resolve_is_not_called_again_for_posts(aiohttp_client: Any) -> None:
    calls: list[str] = []
    got_global: list[str] = []
    got_resolved: list[str] = []

    def resolve(request: web.Request) -> Any:
        calls.append(request.method)
        return define_hooks(message=lambda peer, msg: got_resolved.append(msg.text()))

    sse = sse_adapter(
        define_hooks(message=lambda peer, msg: got_global.append(msg.text())),
        resolve=resolve,
        bidir=True,
    )
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    for text in ("one", "two"):
        resp = await client.post("/sse", data=text, headers={"x-crossws-id": peer_id})
        assert resp.status == 200
    await wait_until(lambda: len(got_resolved) == 2)
    assert calls == ["GET"]
    assert got_global == got_resolved == ["one", "two"]
    stream.close()


# -- without bidir ----------------------------------------------------------------------------


async def test_post_without_bidir_is_405(aiohttp_client: Any) -> None:
    """A message hook without ``bidir`` is a mistake: a warning when the
    adapter is made, and a 405 whose body names ``bidir=True``."""
    got = Got()
    with pytest.warns(UserWarning, match=r"bidir=True"):
        sse = sse_adapter(got)
    app = make_app(sse)
    app.router.add_route("*", "/bare", sse.handler)
    client = await aiohttp_client(app)
    stream = await client.get("/sse")
    assert "x-crossws-id" not in stream.headers
    (peer_id,) = sse.peers
    for path in ("/sse", "/bare"):
        resp = await client.post(path, data=b"x", headers={"x-crossws-id": peer_id})
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET"
        assert "bidir=True" in await resp.text()
    assert got.messages == []
    stream.close()


# -- order, isolation, errors ------------------------------------------------------------------


async def test_slow_async_hook_keeps_arrival_order_across_posts(
    aiohttp_client: Any, raw_post: Any
) -> None:
    started: list[str] = []
    done: list[str] = []
    gate = asyncio.Event()
    posts: list[str] = []

    def upgrade(request: web.Request) -> None:
        posts.append(request.method)

    async def message(peer: Peer, msg: Message) -> None:
        text = msg.text()
        started.append(text)
        if text == "a1":
            await gate.wait()
        done.append(text)

    sse = sse_adapter(define_hooks(upgrade=upgrade, message=message), bidir=True)
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    a = await raw_post(client)
    await a.send(head(peer_id) + b"2\r\na1")
    await wait_until(lambda: started == ["a1"])
    # while a1's hook runs: a second POST of the same peer, then more chunks on the first
    b = asyncio.ensure_future(client.post("/sse", data=b"b1", headers={"x-crossws-id": peer_id}))
    await wait_until(lambda: posts.count("POST") == 2)
    await a.send(b"\r\n2\r\na2\r\n2\r\na3\r\n")
    assert done == []
    gate.set()
    assert (await b).status == 200
    await wait_until(lambda: len(done) == 4)
    assert started == done == ["a1", "b1", "a2", "a3"]
    await a.send(b"0\r\n\r\n")
    assert (await a.response())[0] == 200
    a.close()
    stream.close()


async def test_messages_arrive_in_order_with_slowing_hook(
    aiohttp_client: Any, raw_post: Any
) -> None:
    order: list[int] = []

    async def message(peer: Peer, msg: Message) -> None:
        n = int(msg.text())
        await asyncio.sleep(0.002 * (20 - n))  # earlier messages take longer
        order.append(n)

    sse = sse_adapter(define_hooks(message=message), bidir=True)
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    post = await raw_post(client)
    body = b"".join(b"%x\r\n%d\r\n" % (len(str(n)), n) for n in range(20))
    await post.send(head(peer_id) + body + b"0\r\n\r\n")
    assert (await post.response())[0] == 200  # sent once every message was handled
    assert order == list(range(20))
    post.close()
    stream.close()


async def test_a_slow_peer_does_not_hold_up_others(aiohttp_client: Any) -> None:
    gate = asyncio.Event()
    seen: list[tuple[str, str]] = []
    stuck: list[str] = []

    async def message(peer: Peer, msg: Message) -> None:
        if msg.text() == "wait":
            stuck.append(peer.id)
            await gate.wait()
        seen.append((peer.id, msg.text()))
        peer.publish("chat", msg.text())

    sse = sse_adapter(
        define_hooks(open=lambda peer: peer.subscribe("chat"), message=message), bidir=True
    )
    client = await aiohttp_client(make_app(sse))
    slow, slow_events, slow_id = await open_stream(client)
    fast, _, fast_id = await open_stream(client)
    waiting = asyncio.ensure_future(
        client.post("/sse", data=b"wait", headers={"x-crossws-id": slow_id})
    )
    await wait_until(lambda: stuck == [slow_id])
    resp = await client.post("/sse", data=b"hi", headers={"x-crossws-id": fast_id})
    assert resp.status == 200
    assert seen == [(fast_id, "hi")]
    # the slow peer's stream still flows while its own hook is stuck
    assert (await slow_events.next()).data == "hi"
    gate.set()
    assert (await waiting).status == 200
    assert seen == [(fast_id, "hi"), (slow_id, "wait")]
    slow.close()
    fast.close()


async def test_failing_hook_goes_to_error_hook_and_stream_stays_open(
    aiohttp_client: Any, raw_post: Any, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[Peer | None, SSEError]] = []
    boom = ValueError("bad message")

    def message(peer: Peer, msg: Message) -> None:
        if msg.text() == "boom":
            raise boom
        peer.send(f"echo {msg.text()}")

    sse = sse_adapter(
        define_hooks(message=message, error=lambda p, e: errors.append((p, e))), bidir=True
    )
    client = await aiohttp_client(make_app(sse))
    stream, events, peer_id = await open_stream(client)
    post = await raw_post(client)
    with caplog.at_level(logging.ERROR, logger="aiohttp_crossws_sse"):
        await post.send(head(peer_id) + b"4\r\nboom")
        await wait_until(lambda: bool(errors))
    ((peer, err),) = errors
    assert peer is sse.peers[peer_id]
    assert isinstance(err, SSEError) and err.__cause__ is boom
    assert any("message hook failed" in r.getMessage() for r in caplog.records)
    await post.send(b"\r\n5\r\nafter\r\n0\r\n\r\n")
    assert (await events.next()).data == "echo after"
    assert (await post.response())[0] == 200
    assert peer_id in sse.peers
    post.close()
    stream.close()


# -- the peer's end --------------------------------------------------------------------------


@pytest.mark.parametrize("pending", [b"4\r\nping", b"4\r\nping\r\n", b""], ids=str)
async def test_open_post_ends_when_the_peer_closes(
    aiohttp_client: Any, raw_post: Any, pending: bytes
) -> None:
    got, sse, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id) + pending)
    await wait_until(lambda: got.posts == 1)
    await wait_until(lambda: got.texts == (["ping"] if pending else []))
    sse.peers[peer_id].close()
    status, _, _ = await post.response()
    assert status == 200
    post.close()
    stream.close()


async def test_open_post_ends_when_the_client_drops_the_stream(
    aiohttp_client: Any, raw_post: Any
) -> None:
    got, sse, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"2\r\nhi")
    await wait_until(lambda: got.texts == ["hi"])
    stream.close()
    await wait_until(lambda: not sse.peers)
    assert (await post.response())[0] == 200
    assert got.texts == ["hi"]
    post.close()


async def test_incomplete_plain_body_ends_when_the_peer_closes(
    aiohttp_client: Any, raw_post: Any
) -> None:
    got, sse, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(head(peer_id, chunked=False, extra="Content-Length: 10") + b"abc")
    await wait_until(lambda: got.posts == 1)
    sse.peers[peer_id].close()
    assert (await post.response())[0] == 200
    assert got.messages == []
    post.close()
    stream.close()


async def test_running_hook_is_cancelled_after_the_peer_has_closed(
    aiohttp_client: Any, raw_post: Any
) -> None:
    events: list[str] = []
    forever = asyncio.Event()

    async def message(peer: Peer, msg: Message) -> None:
        events.append("message")
        try:
            await forever.wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def close(peer: Peer, details: CloseDetails) -> None:
        events.append("close")

    sse = sse_adapter(define_hooks(message=message, close=close), bidir=True)
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"2\r\nhi\r\n2\r\nho\r\n")
    await wait_until(lambda: events == ["message"])
    peer = sse.peers[peer_id]
    peer.close()
    assert (await post.response())[0] == 200
    await wait_until(lambda: events == ["message", "close", "cancelled"])
    assert sse.stats()["messages_received"] == 1  # "ho" was dropped with the peer
    post.close()
    stream.close()


async def test_app_shutdown_ends_posts_and_hooks(aiohttp_client: Any, raw_post: Any) -> None:
    forever = asyncio.Event()
    started: list[str] = []

    async def message(peer: Peer, msg: Message) -> None:
        started.append(msg.text())
        await forever.wait()

    sse = sse_adapter(define_hooks(message=message), bidir=True)
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"2\r\nhi")
    await wait_until(lambda: started == ["hi"])
    await asyncio.wait_for(sse.close(), 5)
    assert (await post.response())[0] == 200
    assert not sse._tasks
    post.close()
    stream.close()


# -- regressions: aiohttp versions, lingering, memory, bounds ----------------------------------


async def test_the_parser_in_use_is_taken_over_on_this_aiohttp(
    aiohttp_client: Any, raw_post: Any
) -> None:
    """The takeover of aiohttp's parser — llhttp, or the pure-Python one when
    aiohttp runs without its C extensions — works on this aiohttp version
    (CI runs this file on the oldest supported one too, with either parser):
    without it, Node's framing below would still arrive, but one message
    late under llhttp."""
    from aiohttp import http_parser

    from aiohttp_crossws_sse._post import takeover as _llhttp

    python = http_parser.HttpRequestParser is http_parser.HttpRequestParserPy
    found: list[bool] = []

    def upgrade(request: web.Request) -> None:
        if request.method == "POST":
            if python:
                found.append(_llhttp.PythonTakeover.of(request) is not None)
            else:
                found.append(_llhttp.llhttp_parser(request) is not None)

    got = Got()
    sse = sse_adapter(define_hooks(upgrade=upgrade, message=got.message), bidir=True)
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"4\r\nping")
    await wait_until(lambda: got.texts == ["ping"])
    await post.send(b"\r\n4\r\npong")
    await wait_until(lambda: got.texts == ["ping", "pong"])
    await post.send(b"\r\n0\r\n\r\n")
    assert (await post.response())[0] == 200
    assert found == [True]
    stream.close()


PYTHON_STOPS = {  # where aiohttp's Python parser stopped when the handler took over
    "at-start": (b"", b"2\r\nab\r\n", ["ab"]),
    "in-size": (b"1", b"\r\na\r\n", ["a"]),
    "in-extension": (b"1;na", b"me=v\r\na\r\n", ["a"]),
    "after-size": (b"2\r\n", b"ab\r\n", ["ab"]),
    "in-data": (b"5\r\nhe", b"llo\r\n", ["hello"]),
    "after-data": (b"2\r\nab", b"\r\n", ["ab"]),
    "in-crlf": (b"2\r\nab\r", b"\n", ["ab"]),
    "in-trailers": (b"1\r\na\r\n0\r\nx: y\r\nz", b": w\r\n", ["a"]),
}


@pytest.mark.parametrize("where", list(PYTHON_STOPS))
async def test_python_parser_is_taken_over_on_this_aiohttp(
    aiohttp_client: Any, raw_post: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """aiohttp's Python parser (forced here; CI also runs this file under
    AIOHTTP_NO_EXTENSIONS and on the oldest aiohttp) is taken over wherever it
    stopped — its position read, not probed — and gets the connection back
    at the body's end: keep-alive works, the next request is served."""
    from aiohttp import http_parser, web_protocol

    from aiohttp_crossws_sse._post import takeover as _llhttp

    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    first, rest, expected = PYTHON_STOPS[where]
    found: list[bool] = []

    class Recorder(Got):
        def upgrade(self, request: web.Request) -> None:
            super().upgrade(request)
            if request.method == "POST" and request.headers.get("Transfer-Encoding"):
                found.append(_llhttp.PythonTakeover.of(request) is not None)

    got = Recorder()
    sse = sse_adapter(got, bidir=True)
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    post = await raw_post(client)
    await post.send(head(peer_id) + first)
    await wait_until(lambda: got.posts == 1)
    await post.send(rest)
    if where != "in-trailers":
        await post.send(b"0\r\n\r\n")
    else:
        await post.send(b"\r\n")
    status, headers, _ = await post.response()
    assert (status, got.texts, found) == (200, expected, [True])
    assert headers.get("connection") != "close"
    await post.send(head(peer_id, chunked=False, extra="Content-Length: 4") + b"next")
    assert (await post.response())[0] == 200
    await wait_until(lambda: got.texts == [*expected, "next"])
    stream.close()


async def test_python_parser_refuses_what_it_had_only_begun(
    aiohttp_client: Any, raw_post: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken over inside a size line, the Python parser's digits so far count:
    a chunk over the limit is refused from its size line alone; and the
    parser, handed the connection back with what followed a body, serves a
    pipelined request (llhttp, once probed, cannot)."""
    from aiohttp import http_parser, web_protocol

    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    got, _, client, stream, peer_id = await setup(aiohttp_client, max_message_size=10)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"2\r\nhi\r\n1")
    await wait_until(lambda: got.texts == ["hi"])
    await post.send(b"4\r\n")  # 0x14 = 20 bytes declared
    assert (await post.response())[0] == 413
    assert await post.closed_by_server()
    post.close()
    post = await raw_post(client)
    await post.send(head(peer_id) + b"2\r\nho")
    await wait_until(lambda: got.texts == ["hi", "ho"])
    await post.send(
        b"\r\n0\r\n\r\n" + head(peer_id, chunked=False, extra="Content-Length: 1") + b"x"
    )
    status, headers, _ = await post.response()
    assert status == 200 and headers.get("connection") != "close"
    assert (await post.response())[0] == 200  # the pipelined POST
    await wait_until(lambda: got.texts == ["hi", "ho", "x"])
    # a lone CRLF after a body is ignored (RFC 9112, 2.2)
    await post.send(head(peer_id) + b"2\r\nhu\r\n0\r\n\r\n\r\n")
    assert (await post.response())[0] == 200
    await post.send(head(peer_id, chunked=False, extra="Content-Length: 1") + b"y")
    assert (await post.response())[0] == 200
    await wait_until(lambda: got.texts == ["hi", "ho", "x", "hu", "y"])
    post.close()
    stream.close()


PENDING: dict[str, tuple[Callable[[str | None], bytes], bytes, list[str]]] = {
    "in-chunk": (head, b"4\r\nping", ["ping"]),  # Node: the CRLF is still due
    "after-chunk": (head, b"4\r\nping\r\n", ["ping"]),
    "no-chunk-yet": (head, b"", []),
    "plain-incomplete": (
        lambda peer_id: head(peer_id, chunked=False, extra="Content-Length: 10"),
        b"abc",
        [],
    ),
}


@pytest.mark.parametrize("pending", list(PENDING))
async def test_open_post_closes_its_connection_right_after_the_response(
    aiohttp_client: Any, raw_post: Any, pending: str
) -> None:
    """The peer closes while its POST's body is unfinished: the response comes,
    then the connection closes — not after aiohttp's 10 s lingering read of a
    body that never ends."""
    make_head, first, expected = PENDING[pending]
    got, sse, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    await post.send(make_head(peer_id) + first)
    await wait_until(lambda: got.posts == 1 and got.texts == expected)
    sse.peers[peer_id].close()
    status, headers, _ = await post.response()
    assert (status, headers["connection"]) == (200, "close")
    assert await post.closed_by_server(timeout=5)  # a hang guard: aiohttp lingers 10 s
    stream.close()


@pytest.mark.parametrize("which", ["unknown", "missing", "lookalike"])
async def test_post_for_no_peer_closes_its_connection_right_after_the_400(
    aiohttp_client: Any, raw_post: Any, which: str
) -> None:
    """A streamed POST with an unknown or missing peer id, its body unfinished:
    the 400 comes, then the connection closes — not after aiohttp's 10 s
    lingering read of a body that never ends."""
    got, _sse, client, stream, peer_id = await setup(aiohttp_client)
    post = await raw_post(client)
    ids = {"unknown": "no-such-peer", "missing": None, "lookalike": peer_id + "x"}
    await post.send(head(ids[which]) + b"4\r\nping")
    status, headers, body = await post.response()
    assert (status, headers["connection"]) == (400, "close")
    assert body in (b"unknown peer id", b"missing x-crossws-id header")
    assert await post.closed_by_server(timeout=5)  # a hang guard: aiohttp lingers 10 s
    assert got.texts == []
    stream.close()


async def test_refused_upload_ends_right_after_the_response(
    aiohttp_client: Any, raw_post: Any
) -> None:
    """413 before the body's end, with the peer still open: right after the
    response the client reads EOF (the server half-closes, and drops what
    still comes rather than reset the connection under the response), and
    the server closes the connection once the client is quiet."""
    transports: list[asyncio.Transport] = []

    def upgrade(request: web.Request) -> None:
        if request.method == "POST" and request.transport is not None:
            transports.append(request.transport)

    got = Got()
    sse = sse_adapter(
        define_hooks(upgrade=upgrade, message=got.message), bidir=True, max_message_size=10
    )
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    plain = await raw_post(client)
    await plain.send(head(peer_id, chunked=False, extra="Content-Length: 100") + b"x" * 20)
    chunked = await raw_post(client)
    await chunked.send(head(peer_id) + b"ffff\r\n" + b"y" * 20)
    for post in (plain, chunked):
        status, headers, _ = await post.response()
        assert (status, headers["connection"]) == (413, "close")
        assert await post.closed_by_server(timeout=5)  # a hang guard (aiohttp: 10 s)
    await wait_until(lambda: len(transports) == 2 and all(t.is_closing() for t in transports))
    assert got.messages == []
    stream.close()


async def test_shutdown_does_not_wait_for_open_streamed_posts() -> None:
    """``runner.cleanup()`` (``web.run_app`` defaults) with streamed POSTs open
    ends them and is done — it does not wait out aiohttp's lingering reads."""
    from tests.conftest import RunAppServer

    got = Got()
    sse = sse_adapter(got, bidir=True)
    server = RunAppServer(make_app(sse))
    await server.start()
    host, port = server.url.removeprefix("http://").split(":")
    async with aiohttp.ClientSession() as session:
        resp = await session.get(server.url + "/sse")
        first = await EventReader(resp).next()
        peer_id = first.data
        posts = []
        for first_bytes in (b"2\r\nhi", b"2\r\nho\r\n", b""):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(head(peer_id) + first_bytes)
            await writer.drain()
            posts.append(RawPost(reader, writer))
        await wait_until(lambda: got.posts == 3 and sorted(got.texts) == ["hi", "ho"])
        await asyncio.wait_for(server.runner.cleanup(), 5)  # a hang guard, not a timing
        for post in posts:
            assert (await post.response())[0] == 200
            assert await post.closed_by_server()
            post.close()
        resp.close()


@pytest.mark.parametrize(
    ("first", "rest"),
    [
        (b"5f5e100\r\n" + b"x" * 1000, b""),  # llhttp stopped inside the chunk's data
        (b"5f5e100\r\n", b""),  # ... right after its size line
        (b"5f5e1", b"00\r\n"),  # ... inside its size line
    ],
    ids=["in-data", "after-size", "in-size"],
)
async def test_memory_of_a_post_follows_what_arrives_not_the_limit(
    aiohttp_client: Any, raw_post: Any, first: bytes, rest: bytes
) -> None:
    """A 100 MB chunk declared under max_message_size=200 MB, of which 1 MiB
    arrives: the server's memory grows with that MiB, not with the limit (the
    probe of llhttp's position used to allocate twice the limit up front)."""
    import tracemalloc

    got, sse, client, stream, peer_id = await setup(aiohttp_client, max_message_size=200_000_000)
    post = await raw_post(client)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await post.send(head(peer_id) + first)
        await wait_until(lambda: got.posts == 1)
        await post.send(rest + b"y" * (1 << 20))
        await asyncio.sleep(0.1)  # (let the server read what arrived)
        sse.peers[peer_id].close()
        assert (await post.response())[0] == 200
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 12 * (1 << 20), f"{peak / (1 << 20):.1f} MiB for 1 MiB received"
    assert got.messages == []
    stream.close()


async def test_tiny_messages_count_their_real_size_against_the_receive_buffer(
    aiohttp_client: Any, raw_post: Any
) -> None:
    """20,000 two-byte messages behind a stuck hook: what the server holds
    stays near max_receive_buffer (each message costs its real size plus
    overhead, far more than its 2 bytes), and reading pauses; once the hook
    moves, every message arrives, in order."""
    import tracemalloc

    release = asyncio.Event()
    seen: list[bytes] = []
    transports: list[asyncio.Transport] = []

    def upgrade(request: web.Request) -> None:
        if request.method == "POST" and request.transport is not None:
            transports.append(request.transport)

    async def message(peer: Peer, msg: Message) -> None:
        await release.wait()
        seen.append(msg.raw_data)

    sse = sse_adapter(
        define_hooks(upgrade=upgrade, message=message), bidir=True, max_receive_buffer=4096
    )
    client = await aiohttp_client(make_app(sse))
    stream, _, peer_id = await open_stream(client)
    post = await raw_post(client)
    await post.send(head(peer_id) + b"2\r\n00\r\n")
    await wait_until(lambda: sse.stats()["messages_received"] == 1)  # the hook is stuck
    count = 20_000
    body = b"".join(b"2\r\n%02d\r\n" % (i % 100) for i in range(1, count))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await post.send(body)
        await wait_until(lambda: not transports[0].is_reading())
        await asyncio.sleep(0.1)  # (anything still to be read would be read now)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The wire bytes of one read may wait undecoded (140 kB here); decoded,
    # 20,000 messages would take well over 1 MB.
    assert held < 400_000, held
    assert sse.stats()["messages_received"] == 1
    release.set()
    await post.send(b"0\r\n\r\n")
    assert (await post.response(timeout=30))[0] == 200
    assert seen == [b"%02d" % (i % 100) for i in range(count)]
    stream.close()


async def test_open_posts_per_peer_are_capped(aiohttp_client: Any, raw_post: Any) -> None:
    got, _, client, stream, peer_id = await setup(aiohttp_client, max_posts_per_peer=2)
    a = await raw_post(client)
    await a.send(head(peer_id) + b"1\r\na")
    b = await raw_post(client)
    await b.send(head(peer_id))
    await wait_until(lambda: got.posts == 2 and got.texts == ["a"])
    c = await raw_post(client)
    await c.send(head(peer_id) + b"1\r\nc")
    status, headers, text = await c.response()
    assert (status, headers["connection"]) == (429, "close")
    assert b"too many open POSTs" in text and b"2" in text
    assert await c.closed_by_server()
    resp = await client.post("/sse", data=b"plain", headers={"x-crossws-id": peer_id})
    assert resp.status == 429
    await a.send(b"\r\n0\r\n\r\n")
    assert (await a.response())[0] == 200
    resp = await client.post("/sse", data=b"plain", headers={"x-crossws-id": peer_id})
    assert resp.status == 200
    await wait_until(lambda: got.texts == ["a", "plain"])
    stream.close()


@pytest.mark.parametrize(
    ("make_head", "first", "stall"),
    [
        (lambda peer_id: head(peer_id, chunked=False, extra="Content-Length: 10"), b"abc", b""),
        (head, b"5\r\nhe", b""),  # inside a chunk's data
        (head, b"1\r\na\r\n", b"5\r\nhe"),
        (head, b"1\r\na\r\n", b"5"),  # inside a chunk-size line
        (head, b"1\r\na\r\n", b"0\r\n"),  # the body's end is due
    ],
    ids=["plain", "in-data", "in-data-later", "in-size", "trailers"],
)
async def test_a_post_stalled_inside_a_message_times_out(
    aiohttp_client: Any, raw_post: Any, make_head: Any, first: bytes, stall: bytes
) -> None:
    got, sse, client, stream, peer_id = await setup(aiohttp_client, receive_timeout=0.2)
    post = await raw_post(client)
    await post.send(make_head(peer_id) + first)
    if stall:
        await wait_until(lambda: got.texts == ["a"])
        await post.send(stall)
    status, headers, text = await post.response()
    assert (status, headers["connection"]) == (408, "close")
    assert b"in the middle of a message" in text
    assert await post.closed_by_server()
    assert peer_id in sse.peers  # only the POST ended
    stream.close()


@pytest.mark.parametrize("pause_at", [b"2\r\nhi", b"2\r\nhi\r\n", b""], ids=str)
async def test_a_streamed_post_may_idle_between_messages(
    aiohttp_client: Any, raw_post: Any, pause_at: bytes
) -> None:
    """crossws keeps its POST open for the whole session: between messages
    (Node's framing included: the CRLF still due) there is no timeout."""
    got, _, client, stream, peer_id = await setup(aiohttp_client, receive_timeout=0.1)
    post = await raw_post(client)
    await post.send(head(peer_id) + pause_at)
    await wait_until(lambda: got.posts == 1)
    await asyncio.sleep(0.5)  # five times the timeout
    rest = b"" if pause_at.endswith(b"\n") or not pause_at else b"\r\n"
    await post.send(rest + b"2\r\nho\r\n0\r\n\r\n")
    assert (await post.response())[0] == 200
    assert got.texts == (["hi", "ho"] if pause_at else ["ho"])
    stream.close()


@pytest.mark.parametrize(
    ("name", "bad", "error"),
    [
        ("max_receive_buffer", 0, ValueError),
        ("max_receive_buffer", 1.5, TypeError),
        ("max_receive_buffer", None, TypeError),
        ("max_posts_per_peer", 0, ValueError),
        ("max_posts_per_peer", "2", TypeError),
        ("receive_timeout", 0, ValueError),
        ("receive_timeout", -1.0, ValueError),
        ("receive_timeout", "1", TypeError),
    ],
)
def test_post_channel_options_are_validated(name: str, bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=name):
        sse_adapter(bidir=True, **{name: bad})


def test_post_channel_option_defaults() -> None:
    options = sse_adapter(bidir=True).options
    assert options.max_receive_buffer == 262_144
    assert options.max_posts_per_peer == 16
    assert options.receive_timeout == 30.0
    sse_adapter(bidir=True, max_posts_per_peer=None, receive_timeout=None)


@pytest.mark.parametrize("cancellation", [False, True], ids=["run_app", "handler_cancellation"])
async def test_a_dropped_post_never_cancels_its_hook(cancellation: bool) -> None:
    """The client drops its POST while the hook handles a message of it: the
    hook runs to its end (it runs in the peer's inbox task, not the handler),
    messages read before the drop are still handled, and the peer goes on."""
    gate = asyncio.Event()
    events: list[str] = []

    async def message(peer: Peer, msg: Message) -> None:
        events.append(f"start {msg.text()}")
        try:
            if msg.text() == "slow":
                await gate.wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append(f"end {msg.text()}")

    sse = sse_adapter(define_hooks(message=message), bidir=True)
    runner = web.AppRunner(make_app(sse), access_log=None, handler_cancellation=cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            stream = await session.get(f"http://127.0.0.1:{port}/sse")
            peer_id = (await EventReader(stream).next()).data
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            post = RawPost(reader, writer)
            await post.send(head(peer_id) + b"4\r\nslow\r\n5\r\nafter\r\n")
            await wait_until(lambda: events == ["start slow"])
            post.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await asyncio.sleep(0.1)  # (the server notices the drop)
            gate.set()
            handled = ["start slow", "end slow", "start after", "end after"]
            await wait_until(lambda: events == handled)
            resp = await session.post(
                f"http://127.0.0.1:{port}/sse", data=b"more", headers={"x-crossws-id": peer_id}
            )
            assert resp.status == 200
            await wait_until(lambda: events[-1] == "end more")
            assert "cancelled" not in events
            stream.close()
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)
