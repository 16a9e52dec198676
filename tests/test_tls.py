"""Streams over TLS terminated by aiohttp (a throwaway certificate), on both
event loops: a graceful end is as quick as over plain TCP, and what the
TLS layer holds counts against ``max_buffer``."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Peer, define_hooks, sse_adapter
from tests.conftest import EventReader, wait_until
from tests.test_write_path import certificate

# Bounds that keep a broken run from hanging, never measurements: a graceful
# end must not wait for send_timeout (None here: it would wait forever).
END_BOUND = 10.0


Contexts = tuple[ssl.SSLContext, ssl.SSLContext]
LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Contexts:
    cert, key = certificate(tmp_path_factory.mktemp("tls"))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    return server_ctx, ssl.create_default_context(cafile=cert)


def run_on(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario`` on a fresh event loop of that kind (the streams'
    transports differ: asyncio's SSL protocol, or uvloop's)."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


@contextlib.asynccontextmanager
async def serving(sse: Any, server_ctx: ssl.SSLContext) -> AsyncIterator[str]:
    """An app with ``sse`` at /sse served over TLS on 127.0.0.1; yields its URL."""
    app = web.Application()
    sse.setup(app, "/sse")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/sse"
    finally:
        await runner.cleanup()


async def read_to_end(resp: aiohttp.ClientResponse) -> bytes:
    body = b""
    async for chunk in resp.content.iter_any():
        body += chunk
    return body


@pytest.mark.parametrize("loop", LOOPS)
def test_graceful_close_over_tls_ends_the_stream_at_once(loop: str, tls: Contexts) -> None:
    """``peer.close()`` over TLS: the client gets everything queued and the
    end of the body, and the close hook runs, without waiting for
    ``send_timeout`` (asyncio's SSL transport used to pause the drain for
    good)."""
    server_ctx, client_ctx = tls
    peers: list[Peer] = []
    closed: list[CloseDetails] = []

    async def scenario() -> None:
        sse = sse_adapter(
            define_hooks(open=peers.append, close=lambda p, d: closed.append(d)),
            send_timeout=None,
        )
        async with serving(sse, server_ctx) as url, aiohttp.ClientSession() as http:
            resp = await http.get(url, ssl=client_ctx)
            await wait_until(lambda: bool(peers))
            peers[0].send("last words")
            peers[0].close(4000, "bye")
            body = await asyncio.wait_for(read_to_end(resp), END_BOUND)
            assert body.endswith(b"data: last words\n\n")
            await asyncio.wait_for(peers[0].wait_closed(), END_BOUND)
            assert [(d.code, d.reason) for d in closed] == [(4000, "bye")]

    run_on(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_app_shutdown_ends_tls_streams_gracefully(loop: str, tls: Contexts) -> None:
    """Shutdown closes TLS streams gracefully (each client reads its stream
    to its end), not by aborting them after ``shutdown_timeout``."""
    server_ctx, client_ctx = tls
    peers: list[Peer] = []
    closed: list[str | None] = []

    async def scenario() -> None:
        sse = sse_adapter(
            define_hooks(open=peers.append, close=lambda p, d: closed.append(d.reason)),
            send_timeout=None,
            shutdown_timeout=30.0,
        )
        async with serving(sse, server_ctx) as url, aiohttp.ClientSession() as http:
            responses = [await http.get(url, ssl=client_ctx) for _ in range(3)]
            await wait_until(lambda: len(peers) == 3)
            for peer in peers:
                peer.send(f"bye {peer.id}")
            await asyncio.wait_for(sse.close(), END_BOUND)
            bodies = await asyncio.wait_for(
                asyncio.gather(*(read_to_end(r) for r in responses)), END_BOUND
            )
            for peer, body in zip(peers, bodies, strict=True):
                assert body.endswith(f"data: bye {peer.id}\n\n".encode())
            assert closed == ["server shutdown"] * 3

    run_on(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_stream_reads_after_a_pause(loop: str, tls: Contexts) -> None:
    """A TLS client that falls behind then reads gets every event in order,
    and a graceful close after it ends the stream."""
    server_ctx, client_ctx = tls
    peers: list[Peer] = []

    async def scenario() -> None:
        sse = sse_adapter(define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))))
        async with serving(sse, server_ctx) as url, aiohttp.ClientSession() as http:
            resp = await http.get(url, ssl=client_ctx)
            reader = EventReader(resp)
            await wait_until(lambda: bool(peers))
            for i in range(300):
                sse.publish("t", f"{i}:" + "z" * 2000)
            events = await reader.take(300, timeout=20)
            assert [e.data.split(":")[0] for e in events] == [str(i) for i in range(300)]
            peers[0].close()
            await asyncio.wait_for(peers[0].wait_closed(), END_BOUND)
            await asyncio.wait_for(read_to_end(resp), END_BOUND)

    run_on(loop, scenario)
