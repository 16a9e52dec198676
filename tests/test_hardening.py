"""Regression tests for holes a review found (issue "Hardening"): each failed
on the code before the fix. Real servers, real sockets."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Peer, SSEError, define_hooks, sse_adapter
from aiohttp_crossws_sse._logs import operator_log
from aiohttp_crossws_sse.sync import MemoryHub, MemorySync
from tests.conftest import EventReader, wait_until
from tests.test_reliability import RawClient, app_for, url_of

MiB = 1 << 20


class Served:
    """An app on a real TCP port, with a chosen ``handler_cancellation``."""

    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, *, cancellation: bool = False, **kw: Any) -> Served:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=cancellation, **kw)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runners.append(runner)
        return Served(runner, f"http://127.0.0.1:{port}")

    yield start
    for runner in runners:
        await asyncio.wait_for(runner.cleanup(), 30)


# -- 1. max_buffer holds whatever the timing of the sends ---------------------------------


@pytest.mark.parametrize("policy", ["close", "drop-oldest"])
@pytest.mark.parametrize("how", ["send", "publish", "relayed"])
async def test_max_buffer_bounds_a_synchronous_burst(serve: Any, policy: str, how: str) -> None:
    """100,000 small events in one loop iteration to a client that never reads:
    what is held for it (queue + transport buffer) stays within max_buffer."""
    closed: list[str | None] = []
    hub = MemoryHub()
    sse = sse_adapter(
        define_hooks(open=lambda p: p.subscribe("t"), close=lambda p, d: closed.append(d.reason)),
        max_buffer=MiB,
        slow_consumer=policy,
        sync=MemorySync(hub),
    )
    other = sse_adapter(sync=MemorySync(hub))  # publishes that arrive relayed
    served = await serve(app_for(sse))
    other_app = web.Application()
    other.setup(other_app, "/sse")
    await serve(other_app)
    raw = await RawClient.open(served.url, rcvbuf=4096)
    await wait_until(lambda: len(sse.peers) == 1)
    (peer,) = sse.peers.values()
    payload = "x" * 200
    frame_size = 220  # one event on the wire, chunk framing included (upper bound)
    for _ in range(100_000):
        if how == "send":
            peer.send(payload)
        elif how == "publish":
            sse.publish("t", payload)
        else:
            other.publish("t", payload)
    if how == "relayed":  # they arrive in a later loop iteration
        await wait_until(lambda: sse.stats()["deliveries"] >= 100_000 or bool(closed))
    if policy == "close":
        await wait_until(lambda: closed == ["slow consumer"])
        assert sse.stats()["slow_consumers"] == 1
    else:
        assert peer.ready_state == 1
        assert peer.buffered_amount <= MiB + frame_size
        assert peer.dropped > 0 and sse.stats()["events_dropped"] == peer.dropped
        await asyncio.sleep(0)  # the joined write of the iteration
        assert peer.buffered_amount <= MiB + frame_size
    await raw.close()


# -- 2. the resolved upgrade hook guards POSTs ---------------------------------------------


async def test_resolved_upgrade_hook_guards_posts_and_sets_their_namespace(
    aiohttp_client: Any,
) -> None:
    got: list[str] = []

    def upgrade(request: web.Request) -> Any:
        if request.query.get("token") != "t0ken":
            raise web.HTTPUnauthorized(text="no token")
        return {"namespace": "room-1"}

    sse = sse_adapter(
        define_hooks(message=lambda peer, msg: got.append(msg.text())),
        resolve=lambda request: define_hooks(upgrade=upgrade),
        bidir=True,
    )
    client = await aiohttp_client(app_for(sse))
    reader = EventReader(await client.get("/sse?token=t0ken"))
    first = await reader.next()
    assert first.event == "crossws-id"
    peer_id = first.data
    assert sse.peers[peer_id].namespace == "room-1"
    headers = {"x-crossws-id": peer_id}
    refused = await client.post("/sse", data="sneaky", headers=headers)
    assert refused.status == 401 and await refused.text() == "no token"
    accepted = await client.post("/sse?token=t0ken", data="hello", headers=headers)
    assert accepted.status == 200
    await wait_until(lambda: got == ["hello"])
    # an unknown id meets the global hooks only: 400, nothing delivered
    unknown = await client.post("/sse?token=t0ken", data="x", headers={"x-crossws-id": "nope"})
    assert unknown.status == 400
    assert got == ["hello"]


# -- 6. send_timeout in range; failures preparing a stream are reported ------------------------


@pytest.mark.parametrize("value", [3_000_000, float("inf"), float("nan")])
def test_send_timeout_beyond_the_kernel_limit_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="send_timeout"):
        sse_adapter(send_timeout=value)


def test_send_timeout_at_the_kernel_limit_is_accepted() -> None:
    sse_adapter(send_timeout=2_147_483)


async def test_failure_preparing_a_stream_reaches_error_hook_and_log(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[Peer | None, SSEError]] = []
    sse = sse_adapter(define_hooks(error=lambda p, e: errors.append((p, e))))

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if response.content_type == "text/event-stream":
            raise RuntimeError("a response-prepare signal that fails")

    app = app_for(sse)
    app.on_response_prepare.append(on_prepare)
    client = await aiohttp_client(app)
    try:  # aiohttp had begun the response: the connection is dropped
        resp = await client.get("/sse")
        assert resp.status == 500
    except aiohttp.ClientError:
        pass
    await wait_until(lambda: len(errors) == 1)
    assert errors[0][0] is None
    assert isinstance(errors[0][1].__cause__, RuntimeError)
    assert "preparing the stream failed" in caplog.text
    assert not sse.peers


# -- 7. close hooks are never cancelled half-way ---------------------------------------------


@pytest.mark.parametrize("cancellation", [False, True])
async def test_close_hooks_run_to_the_end_when_the_client_leaves(
    serve: Any, cancellation: bool
) -> None:
    release = asyncio.Event()
    started: list[str] = []
    finished: list[str] = []
    handler_cancelled = asyncio.Event()

    async def global_close(peer: Peer, details: CloseDetails) -> None:
        started.append("global")
        await release.wait()
        finished.append("global")

    def resolved_close(peer: Peer, details: CloseDetails) -> None:
        finished.append("resolved")

    sse = sse_adapter(
        define_hooks(open=lambda p: p.send("hi"), close=global_close),
        resolve=lambda r: define_hooks(close=resolved_close),
    )

    @web.middleware
    async def watch(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    app = web.Application(middlewares=[watch])
    sse.setup(app, "/sse")
    served = await serve(app, cancellation=cancellation)
    # force_close: the client drops the connection as soon as the body ends
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        reader = EventReader(await s.get(served.url + "/sse"))
        assert (await reader.next()).data == "hi"
        (peer,) = sse.peers.values()
        peer.close()  # the server ends it; the close hook starts and waits
        await reader.rest()  # the body ended; the client leaves
        await wait_until(lambda: started == ["global"])
        if cancellation:  # aiohttp cancels the handler while the close hook awaits
            await asyncio.wait_for(handler_cancelled.wait(), 5)
        release.set()
        await asyncio.wait_for(peer.wait_closed(), 5)
    assert finished == ["global", "resolved"]


# -- 8. wait_for_drain answers the right way round ----------------------------------------------


async def test_wait_for_drain_after_terminate_and_after_graceful_close(
    aiohttp_client: Any,
) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=peers.append))
    client = await aiohttp_client(app_for(sse))
    # graceful close: the queue is written out, so it drained
    reader = EventReader(await client.get("/sse"))
    await wait_until(lambda: len(peers) == 1)
    for i in range(100):
        peers[0].send(f"event {i}")
    peers[0].close()
    assert await peers[0].wait_for_drain(timeout=5) is True
    assert len(await reader.rest()) == 100
    # terminate() with events held for a client that does not read: discarded
    raw = await RawClient.open(f"http://127.0.0.1:{client.port}", rcvbuf=4096)
    await wait_until(lambda: len(peers) == 2)
    held = peers[1]
    while held.buffered_amount == 0:
        held.send("y" * 32768)
        await asyncio.sleep(0)
    held.send("queued")
    held.terminate()
    assert await held.wait_for_drain(timeout=5) is False
    await raw.close()


# -- 9. shutdown with the bare handler ----------------------------------------------------------


async def test_handler_registration_with_setup_shuts_down_promptly(serve: Any) -> None:
    closed: list[str | None] = []
    sse = sse_adapter(
        define_hooks(open=lambda p: p.send("hi"), close=lambda p, d: closed.append(d.reason))
    )
    app = web.Application()
    app.router.add_route("*", "/sse", sse.handler)
    sse.setup(app)  # the lifecycle line, no routes
    served = await serve(app, shutdown_timeout=60)
    async with aiohttp.ClientSession() as session:
        resp = await session.get(served.url + "/sse")
        assert (await EventReader(resp).next()).data == "hi"
        # aiohttp would wait shutdown_timeout (60 s) for a stream nobody ends
        await asyncio.wait_for(served.runner.cleanup(), 10)
        resp.close()
    assert closed == ["server shutdown"]


async def test_handler_without_setup_is_told_loudly(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sse = sse_adapter(define_hooks(open=lambda p: p.close()))
    app = web.Application()
    app.router.add_route("*", "/sse", sse.handler)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="aiohttp_crossws_sse"):
        await (await client.get("/sse")).read()
        await (await client.get("/sse")).read()
    errors = [r for r in caplog.records if "sse.setup(app)" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR


# -- 10. a stuck open hook is bounded by shutdown_timeout ------------------------------------------


@pytest.mark.parametrize("cancellation", [False, True])
async def test_stuck_open_hook_is_bounded_by_shutdown_timeout(
    serve: Any, cancellation: bool
) -> None:
    entered = asyncio.Event()
    closed: list[str | None] = []

    async def open_(peer: Peer) -> None:
        entered.set()
        await asyncio.Event().wait()  # forever

    sse = sse_adapter(
        define_hooks(open=open_, close=lambda p, d: closed.append(d.reason)),
        shutdown_timeout=0.2,
    )
    served = await serve(app_for(sse), cancellation=cancellation, shutdown_timeout=60)
    async with aiohttp.ClientSession() as session:
        resp = await session.get(served.url + "/sse")
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.wait_for(served.runner.cleanup(), 10)
        resp.close()
    assert closed == ["server shutdown"]  # exactly once


# -- 11. one adapter, one app -----------------------------------------------------------------


def test_second_app_is_refused() -> None:
    sse = sse_adapter()
    sse.setup(web.Application(), "/sse")
    with pytest.raises(RuntimeError, match="another app"):
        sse.setup(web.Application(), "/sse")


async def test_503_after_close_says_why(aiohttp_client: Any) -> None:
    sse = sse_adapter()
    client = await aiohttp_client(app_for(sse))
    await sse.close()
    resp = await client.get("/sse")
    assert resp.status == 503
    assert "shutting down" in await resp.text()
    assert resp.headers["Retry-After"] == "5"


# -- also looked at -------------------------------------------------------------------------


async def test_namespace_option_failure_reaches_error_hook(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[SSEError] = []

    def namespace(request: web.Request) -> str:
        raise LookupError("no tenant")

    sse = sse_adapter(define_hooks(error=lambda p, e: errors.append(e)), namespace=namespace)
    client = await aiohttp_client(app_for(sse))
    resp = await client.get("/sse")
    assert resp.status == 500
    assert len(errors) == 1 and isinstance(errors[0].__cause__, LookupError)
    assert "no tenant" in caplog.text


async def test_http10_stream_says_connection_close(aiohttp_client: Any) -> None:
    sse = sse_adapter(define_hooks(open=lambda p: (p.send("one"), p.close())))
    client = await aiohttp_client(app_for(sse))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /sse HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    body = await asyncio.wait_for(reader.read(-1), 5)
    head, _, stream = body.partition(b"\r\n\r\n")
    assert b"keep-alive" not in head.lower()
    assert stream == b"data: one\n\n"
    writer.close()


async def test_crossws_id_survives_drop_oldest(aiohttp_client: Any) -> None:
    def open_(peer: Peer) -> None:
        for i in range(2000):  # far over max_buffer, in the same iteration
            peer.send(f"{i:04d}" + "z" * 100)

    sse = sse_adapter(
        define_hooks(open=open_), bidir=True, max_buffer=4096, slow_consumer="drop-oldest"
    )
    client = await aiohttp_client(app_for(sse))
    resp = await client.get("/sse")
    reader = EventReader(resp)
    first = await reader.next()
    assert first.event == "crossws-id" and first.data == resp.headers["x-crossws-id"]
    rest = await reader.next()
    assert rest.data.endswith("z" * 100)


async def test_mistakes_are_refused_at_the_call() -> None:
    sse = sse_adapter()
    with pytest.raises(TypeError, match="namespace"):
        sse.publish("t", "x", namespace=5)  # type: ignore[arg-type]

    def open_(peer: Peer) -> None: ...

    with pytest.raises(TypeError, match="function"):
        sse_adapter(open_)

    class Hooks:
        def open(self, peer: Peer) -> None: ...

    with pytest.raises(TypeError, match=r"class Hooks.*instance"):
        sse_adapter(Hooks)
    sse_adapter(Hooks())  # the instance is fine

    class Nothing:
        pass

    with pytest.raises(TypeError, match="none of the hook attributes"):
        sse_adapter(Nothing())


async def test_many_topics_on_one_peer(aiohttp_client: Any) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=peers.append))
    client = await aiohttp_client(app_for(sse))
    reader = EventReader(await client.get("/sse"))
    await wait_until(lambda: bool(peers))
    peer = peers[0]
    for i in range(20_000):
        peer.subscribe(f"topic-{i}")
    assert len(peer.topics) == 20_000
    sse.publish("topic-19999", "last")
    assert (await reader.next()).data == "last"
    for i in range(20_000):
        peer.unsubscribe(f"topic-{i}")
    assert peer.topics == frozenset() and sse.stats()["topics"] == 0


# -- found by a review of the reshaped write path ----------------------------------------------


async def silent_client(url: str, rcvbuf: int = 2048) -> socket.socket:
    """A client that sends its GET and never reads a byte (no asyncio reader
    on its side, so the kernel buffers are all it has)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET /sse HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def _small_sndbuf(peer: Peer, size: int = 8192) -> None:
    """A small kernel send buffer: the transport holds data sooner."""
    transport = peer.request.transport
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def test_graceful_close_after_client_half_close_does_not_spin(serve: Any) -> None:
    peers: list[Peer] = []
    closed: list[CloseDetails] = []

    def open_(peer: Peer) -> None:
        peers.append(peer)
        _small_sndbuf(peer)
        for _ in range(100):
            peer.send("x" * 20_000)

    sse = sse_adapter(
        define_hooks(open=open_, close=lambda p, d: closed.append(d)),
        max_buffer=8 << 20,
        send_timeout=None,
    )
    served = await serve(app_for(sse))
    silent = await silent_client(served.url, rcvbuf=4096)
    await wait_until(lambda: bool(peers))
    await asyncio.sleep(0.1)
    silent.shutdown(socket.SHUT_WR)  # the client half-closes; aiohttp closes its end
    await asyncio.sleep(0.1)

    def read_slowly() -> None:  # in a thread: a spinning loop must not stop it
        silent.setblocking(True)
        silent.settimeout(20)
        while silent.recv(2048):
            time.sleep(0.0005)

    # A busy loop would freeze the event loop for good: fail loudly instead.
    faulthandler.dump_traceback_later(60, exit=True)
    try:
        peers[0].close()
        reading = asyncio.get_running_loop().run_in_executor(None, read_slowly)
        await asyncio.wait_for(peers[0].wait_closed(), 30)
        await asyncio.wait_for(reading, 30)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert len(closed) == 1
    silent.close()


async def _nearly_full_slow_peer(
    aiohttp_client: Any, budget: int, closed: list[CloseDetails], policy: str = "close"
) -> tuple[Any, Peer, Peer, EventReader, socket.socket]:
    """An adapter with ``max_buffer=budget``; a silent peer on topic "t" held
    just under it, and a healthy one reading. The publish the tests make
    next is the first of its loop iteration: its subscribers are not bound
    when it returns."""
    peers: list[Peer] = []

    def open_(peer: Peer) -> None:
        peer.subscribe("t")
        peers.append(peer)

    sse = sse_adapter(
        define_hooks(open=open_, close=lambda p, d: closed.append(d)),
        max_buffer=budget,
        send_timeout=None,
        slow_consumer=policy,
    )
    client = await aiohttp_client(app_for(sse))
    silent = await silent_client(url_of(client))
    await wait_until(lambda: len(peers) == 1)
    _small_sndbuf(peers[0], 4096)
    slow = peers[0]
    reader = EventReader(await client.get("/sse"))
    await wait_until(lambda: len(peers) == 2)
    for _ in range(20):
        while slow.ready_state == 1 and slow.buffered_amount + 2400 <= budget:
            sse.publish("t", "a" * 1000)
        await asyncio.sleep(0.02)
    assert slow.ready_state == 1
    return sse, slow, peers[1], reader, silent


async def test_slow_consumer_closed_mid_burst_is_counted_once(aiohttp_client: Any) -> None:
    closed: list[CloseDetails] = []
    sse, slow, _healthy, reader, silent = await _nearly_full_slow_peer(
        aiohttp_client, 65536, closed
    )
    try:
        for _ in range(200):  # a burst of three times max_buffer
            sse.publish("t", "b" * 1000)
        assert slow.ready_state >= 2 and slow.buffered_amount == 0
        await wait_until(lambda: [d.reason for d in closed] == ["slow consumer"])
        assert sse.stats()["slow_consumers"] == 1
        got = 0  # the healthy peer gets the whole burst
        while got < 200:
            got += (await reader.next()).data == "b" * 1000
    finally:
        silent.close()


async def test_tiny_max_buffer_bounds_publishes_too(aiohttp_client: Any) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(
        define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))), max_buffer=300
    )
    client = await aiohttp_client(app_for(sse))
    silent = await silent_client(url_of(client))
    await wait_until(lambda: bool(peers))
    peer = peers[0]
    _small_sndbuf(peer, 4096)
    worst = 0
    for _ in range(3000):
        if peer.ready_state != 1:
            break
        sse.publish("t", "x" * 40)
        await asyncio.sleep(0)
        worst = max(worst, peer.buffered_amount)
    assert peer.ready_state >= 2  # it never reads: closed as a slow consumer
    assert worst <= 300 + 60  # max_buffer plus one frame
    silent.close()


async def test_wait_for_drain_is_false_when_a_gracefully_closing_peer_is_lost(
    aiohttp_client: Any,
) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=peers.append), max_buffer=16 << 20)
    client = await aiohttp_client(app_for(sse))
    silent = await silent_client(url_of(client))
    await wait_until(lambda: bool(peers))
    peer = peers[0]
    _small_sndbuf(peer)
    for _ in range(200):
        peer.send("x" * 2000)
    await asyncio.sleep(0.1)
    assert peer.buffered_amount > 0
    waiting = asyncio.ensure_future(peer.wait_for_drain(0, timeout=10))
    peer.close()  # graceful: the stream ends once everything reached the kernel...
    await asyncio.sleep(0.05)
    # ...but the client resets the connection first
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    silent.close()
    assert await waiting is False
    assert await peer.wait_for_drain(0, timeout=5) is False


# -- found by a review of the unbound first publish (Scheduler.settle) -------------------------


async def _healthy_gets(reader: EventReader, data: str) -> None:
    while (await reader.next()).data != data:
        pass


@pytest.mark.parametrize(
    "then", ["read", "subscribe", "close", "send", "unsubscribe", "wait_for_drain"]
)
async def test_a_call_after_an_unbound_publish_meets_the_policy_first(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture, then: str
) -> None:
    """A publish that puts a slow peer over max_buffer, then (in the same
    step) a call on that peer: the peer is closed as a slow consumer, as if
    the publish had been written at once, and the call finds it closed —
    it joins no topic, holds nothing, and its close reason is the policy's."""
    operator_log.clear()  # the limiter is per process: other tests logged this too
    closed: list[CloseDetails] = []
    budget = 65536
    sse, slow, healthy, reader, silent = await _nearly_full_slow_peer(
        aiohttp_client, budget, closed
    )
    try:
        with caplog.at_level(logging.WARNING, logger="aiohttp_crossws_sse"):
            sse.publish("t", "b" * 3000)  # over the budget for the slow peer
            if then == "subscribe":
                slow.subscribe("u")
            elif then == "close":
                slow.close(4000, "bye")
            elif then == "send":
                slow.send("c" * 10)
            elif then == "unsubscribe":
                slow.unsubscribe("t")
            elif then == "wait_for_drain":  # awaited in this very step
                assert await slow.wait_for_drain(timeout=5) is False
            # What the publish did shows at once, as if written then.
            stats = sse.stats()
            assert (stats["slow_consumers"], stats["peers"]) == (1, 1)
            assert list(sse.peers) == list(healthy.peers) == [healthy.id]
            assert slow.ready_state >= 2
            assert slow.buffered_amount == 0  # nothing held for a closed peer
            assert "u" not in slow.topics
            await wait_until(lambda: len(closed) == 1)
        assert (closed[0].code, closed[0].reason) == (None, "slow consumer")
        assert sse.stats()["slow_consumers"] == 1
        assert "slow consumer" in caplog.text
        # Only the healthy peer is left, on "t" alone; "u" has no subscriber.
        assert sse.stats()["topics"] == 1 and sse.stats()["peers"] == 1
        healthy.subscribe("u")
        sse.publish("u", "on u")
        await _healthy_gets(reader, "on u")
    finally:
        silent.close()


async def test_drop_oldest_shows_at_once_after_an_unbound_publish(aiohttp_client: Any) -> None:
    closed: list[CloseDetails] = []
    sse, slow, _healthy, reader, silent = await _nearly_full_slow_peer(
        aiohttp_client, 65536, closed, "drop-oldest"
    )
    try:
        sse.publish("t", "b" * 3000)
        assert slow.dropped > 0
        assert sse.stats()["events_dropped"] == slow.dropped
        assert slow.ready_state == 1 and not closed
        await _healthy_gets(reader, "b" * 3000)
    finally:
        silent.close()
