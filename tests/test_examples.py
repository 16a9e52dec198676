"""The examples' apps (``make_app()``), over real HTTP with the package's client."""

from __future__ import annotations

import ast
import hmac
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from aiohttp_crossws_sse import get_adapter
from aiohttp_crossws_sse.client import SSEClientError, connect
from aiohttp_crossws_sse.testing import (
    EventReader,
    SSEClientFactory,
    next_event,
    wait_for_event,
    wait_until,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chat = load_example("chat")
auth = load_example("auth")


async def assert_self_contained_page(aiohttp_client: Any, app: Any) -> str:
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page: str = await resp.text()
    assert 'EventSource("/sse' in page or "new EventSource(url)" in page
    # Served by the app itself: no CDN, no external URL of any kind.
    assert not re.search(r"https?:|src=|href=|@import", page)
    return page


# -- chat ------------------------------------------------------------------------------


async def test_chat_page(aiohttp_client: Any) -> None:
    page = await assert_self_contained_page(aiohttp_client, chat.make_app())
    assert '"crossws-id"' in page
    assert '"x-crossws-id"' in page


@pytest.mark.parametrize("query", [{}, {"nick": ""}, {"nick": "   "}, {"nick": "x" * 33}])
async def test_chat_rejects_bad_nicknames(sse_client: SSEClientFactory, query: Any) -> None:
    app = chat.make_app()
    with pytest.raises(SSEClientError) as refused:
        await sse_client(app=app, query=query)
    assert refused.value.status == 400
    assert "nick must be 1-32" in refused.value.body
    assert not app[chat.SSE].peers


async def test_chat_accepts_32_characters_and_trims(sse_client: SSEClientFactory) -> None:
    app = chat.make_app()
    nick = "n" * 32
    client = await sse_client(app=app, query={"nick": f"  {nick} "})
    welcome = await next_event(client)
    assert (welcome.event, welcome.data) == ("notice", f"Welcome, {nick}! 0 others here.")
    (peer,) = app[chat.SSE].peers.values()
    assert peer.context == {"nick": nick}
    assert peer.topics == {"chat"}


async def test_chat_stream_starts_with_the_peer_id(aiohttp_client: Any) -> None:
    app = chat.make_app()
    client = await aiohttp_client(app)
    resp = await client.get("/sse", params={"nick": "raw"})
    assert resp.status == 200
    peer_id = resp.headers["x-crossws-id"]
    reader = EventReader(resp)
    first = await reader.next()
    assert (first.event, first.data) == ("crossws-id", peer_id)
    assert list(app[chat.SSE].peers) == [peer_id]
    assert (await reader.next()).data.startswith("Welcome, raw!")
    resp.close()


async def test_chat_join_and_leave_notices(sse_client: SSEClientFactory) -> None:
    app = chat.make_app()
    alice = await sse_client(app=app, query={"nick": "alice"})
    await wait_for_event(alice, data="Welcome, alice! 0 others here.", event="notice")
    assert alice.id is not None and alice.id in app[chat.SSE].peers

    bob = await sse_client(app=app, query={"nick": "bob"})
    await wait_for_event(bob, data="Welcome, bob! 1 other here.", event="notice")
    await wait_for_event(alice, data="bob joined", event="notice")

    await bob.close()
    await wait_for_event(alice, data="bob left", event="notice")
    await wait_until(lambda: len(app[chat.SSE].peers) == 1, what="bob's peer closed")


async def test_chat_messages_reach_everyone_and_the_sender(
    sse_client: SSEClientFactory,
) -> None:
    app = chat.make_app()
    alice = await sse_client(app=app, query={"nick": "alice"})
    bob = await sse_client(app=app, query={"nick": "bob"})
    await wait_for_event(bob, event="notice")  # the welcome: bob is open
    await wait_for_event(alice, data="bob joined")

    assert await bob.send("hello, alice") == 200
    line = await wait_for_event(alice, event="message")
    assert line.data == "bob: hello, alice"
    assert (await wait_for_event(bob, event="message")).data == "bob: hello, alice"

    # Lines keep their breaks; surrounding blanks are trimmed; blank messages are dropped.
    await alice.send("  ")
    await alice.send("two\nlines\r\nthree ")
    expected = "alice: two\nlines\nthree"
    assert (await wait_for_event(bob, event="message")).data == expected
    assert (await wait_for_event(alice, event="message")).data == expected


async def test_chat_message_needs_the_nickname_too(sse_client: SSEClientFactory) -> None:
    # The upgrade hook guards the POSTs as well: the page posts to the stream's URL.
    app = chat.make_app()
    alice = await sse_client(app=app, query={"nick": "alice"})
    await next_event(alice)
    assert alice.id is not None
    async with aiohttp.ClientSession() as session:
        for url, status in [(alice.url.with_query({}), 400), (alice.url, 200)]:
            async with session.post(url, data="hi", headers={"x-crossws-id": alice.id}) as resp:
                assert resp.status == status, await resp.text()
    assert (await wait_for_event(alice, event="message")).data == "alice: hi"


# -- auth --------------------------------------------------------------------------------


async def test_auth_page(aiohttp_client: Any) -> None:
    await assert_self_contained_page(aiohttp_client, auth.make_app())


@pytest.mark.parametrize("query", [{}, {"token": "wrong"}])
async def test_auth_rejects_without_the_token(sse_client: SSEClientFactory, query: Any) -> None:
    app = auth.make_app()
    with pytest.raises(SSEClientError) as refused:
        await sse_client(app=app, query=query)
    assert refused.value.status == 401
    assert refused.value.body == "missing or bad token"
    assert not app[auth.SSE].peers


async def test_auth_compares_tokens_in_constant_time(
    sse_client: SSEClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy that lets the real comparison through: the token is checked with
    # hmac.compare_digest (on bytes: it refuses non-ASCII str), never with ==.
    compared: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = auth.make_app()
    client = await sse_client(app=app, query={"token": "secret"})
    assert (await next_event(client)).data == "Welcome, alice!"
    assert compared == [(b"secret", b"secret")]
    for wrong in ("secre", "secret ", "s\u00e9cret"):
        with pytest.raises(SSEClientError) as refused:
            await sse_client(app=app, query={"token": wrong})
        assert refused.value.status == 401, wrong


def test_examples_docstrings_name_how_to_run_them() -> None:
    # What a docstring says to run must run that very example.
    for path in sorted(EXAMPLES.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert f"python examples/{path.name}" in doc, path.name
        for script in re.findall(r"\./scripts/([\w-]+)", doc):
            runs = (EXAMPLES.parent / "scripts" / script).read_text(encoding="utf-8")
            assert f"examples/{path.name}" in runs, f"{path.name} names ./scripts/{script}"


async def test_auth_accepts_overrides_headers_and_greets(aiohttp_server: Any) -> None:
    app = auth.make_app()
    server = await aiohttp_server(app)
    async with connect(server.make_url("/sse?token=secret"), timeout=5) as client:
        assert client.headers["x-powered-by"] == "cross-ws"
        assert client.headers.getall("Cache-Control") == ["no-store"]
        assert client.headers["Content-Type"] == "text/event-stream"
        assert (await next_event(client)).data == "Welcome, alice!"
        (peer,) = app[auth.SSE].peers.values()
        assert peer.context == {"user": "alice"}
    await wait_until(lambda: not app[auth.SSE].peers, what="the peer closed")


async def test_chat_page_explains_itself_and_serves_live_stats(
    sse_client: SSEClientFactory,
) -> None:
    app = chat.make_app()
    alice = await sse_client(app=app, query={"nick": "alice"})
    await wait_for_event(alice, event="notice")
    server = await sse_client.server(app=app)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/")) as resp:
            page = await resp.text()
        assert "second window" in page and 'fetch("/stats")' in page
        async with http.get(server.make_url("/stats")) as resp:
            stats = await resp.json()
    assert stats["peers"] == 1 and stats["deliveries"] >= 1  # the welcome
    assert set(stats) == set(get_adapter(app).stats())
