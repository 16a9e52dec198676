"""Reliability: slow and stalled clients, churn, shutdown, limits, hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Peer, SSEAdapter, SSEError, define_hooks, sse_adapter
from tests.conftest import EventReader, wait_until

APPS = Path(__file__).parent / "apps"


def app_for(sse: SSEAdapter) -> web.Application:
    app = web.Application()
    sse.setup(app, "/sse")
    return app


class RawClient:
    """A client on a raw socket: it sends the request and reads only when told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str, path: str = "/sse", *, rcvbuf: int | None = None) -> RawClient:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # small kernel buffers make "stalled" happen sooner
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**24)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return cls(reader, writer)

    def reset(self) -> None:
        """Abort with a TCP RST."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def url_of(client: Any) -> str:
    return f"http://127.0.0.1:{client.port}"


# -- slow-consumer policies ----------------------------------------------------------


async def test_stalled_client_closed_by_policy_others_get_everything(
    session: aiohttp.ClientSession,
) -> None:
    """One client never reads while 50 healthy ones receive 2,000 x 16 KiB events
    from a server in its own process; its memory stays bounded."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(APPS / "broadcast_server.py"), stdout=asyncio.subprocess.PIPE
    )
    readers: list[asyncio.Future[int]] = []
    stalled: RawClient | None = None
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        base = "http://127.0.0.1:" + line.strip().split("=")[1]
        n, size = 2000, 16384

        async def healthy() -> int:
            async with session.get(base + "/sse?role=healthy") as resp:
                events, tail = 0, b""
                async for chunk in resp.content.iter_any():
                    data = tail + chunk
                    events += data.count(b"\n\n")
                    tail = data[-1:]
                    if events == n + 1:  # + the welcome
                        return n
            return events - 1

        async def stats() -> dict[str, Any]:
            async with session.get(base + "/stats") as r:
                result: dict[str, Any] = await r.json()
                return result

        async def rss() -> int:
            async with session.get(base + "/rss") as r:
                return int(await r.text())

        readers += [asyncio.ensure_future(healthy()) for _ in range(50)]
        stalled = await RawClient.open(base, "/sse?role=stalled", rcvbuf=4096)

        async def all_connected() -> bool:
            return bool((await stats())["peers"] == 51)

        # Every client must be in before the burst: a reader that came late
        # would miss events and wait for them forever (on a loaded machine
        # the 51 connections may take a while; this waits, it never guesses).
        await wait_until(all_connected, timeout=60)
        before = await rss()
        async with session.get(base + f"/publish?n={n}&size={size}") as r:
            assert r.status == 200
        counts = await asyncio.wait_for(asyncio.gather(*readers), 120)
        assert counts == [n] * 50
        final = await stats()
        assert final["slow_consumers"] == 1
        growth_mib = (await rss() - before) / 1024
        assert growth_mib < 64, f"server RSS grew {growth_mib:.1f} MiB"
    finally:
        # Our clients go first, whatever happened above, so that the
        # server's shutdown waits for nobody.
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if stalled is not None:
            stalled.reset()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 30)  # a bound, not a measurement
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("the server did not exit within 30 s of SIGINT") from None


async def test_drop_oldest_counts_and_keeps_newest(aiohttp_client: Any) -> None:
    closed: list[CloseDetails] = []
    sse = sse_adapter(
        define_hooks(
            open=lambda p: (p.subscribe("t"), p.send("welcome")),
            close=lambda p, d: closed.append(d),
        ),
        max_buffer=64 * 1024,
        slow_consumer="drop-oldest",
    )
    client = await aiohttp_client(app_for(sse))
    raw = await RawClient.open(url_of(client), rcvbuf=4096)
    await wait_until(lambda: len(sse.peers) == 1)
    (peer,) = sse.peers.values()
    total = 0
    extra = 500  # published after the first drop
    while extra:
        assert total < 200_000, "the kernel took everything; nothing was ever dropped"
        sse.publish("t", f"{total:06d}" + "x" * 994)  # ~1 KiB events
        total += 1
        if peer.dropped:
            extra -= 1
        if total % 100 == 0:
            await asyncio.sleep(0)  # let the transport fill and pause
    assert sse.stats()["events_dropped"] == peer.dropped
    assert peer.buffered_amount <= 64 * 1024 + 256 * 1024  # queue bound + kernel-side slack
    # now read everything: what was not dropped arrives, newest last
    sse.publish("t", "end")
    body = bytearray()
    while b"data: end\n\n" not in body:
        body += await asyncio.wait_for(raw.reader.read(1 << 20), 5)
    numbers = [int(line[6:12]) for line in bytes(body).split(b"\n") if line[6:7].isdigit()]
    assert numbers == sorted(numbers)
    assert numbers[-1] == total - 1  # the newest survived
    assert len(numbers) + peer.dropped == total  # nothing lost without being counted
    assert peer.ready_state == 1 and not closed
    await raw.close()


async def test_send_timeout_aborts_stalled_client(aiohttp_client: Any) -> None:
    closed: list[str | None] = []
    sse = sse_adapter(
        define_hooks(open=lambda p: p.subscribe("t"), close=lambda p, d: closed.append(d.reason)),
        max_buffer=1 << 30,
        send_timeout=0.2,
    )
    client = await aiohttp_client(app_for(sse))
    raw = await RawClient.open(url_of(client), rcvbuf=4096)
    await wait_until(lambda: len(sse.peers) == 1)
    (peer,) = sse.peers.values()

    async def keep_publishing() -> None:  # the kernel buffers fill, then writes block
        while peer.ready_state == 1:
            sse.publish("t", "x" * 65536)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(asyncio.gather(keep_publishing(), peer.wait_closed()), 20)
    assert closed == ["send timeout"]
    await raw.close()


async def test_wait_for_drain(aiohttp_client: Any) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=peers.append))
    client = await aiohttp_client(app_for(sse))
    raw = await RawClient.open(url_of(client), rcvbuf=4096)
    await wait_until(lambda: bool(peers))
    peer = peers[0]
    sent = 0
    while peer.buffered_amount == 0:  # until the kernel buffers are full
        assert sent < 2000, "the kernel took everything"
        peer.send("y" * 32768)
        sent += 1
        await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await peer.wait_for_drain(-1, timeout=0.05)  # never satisfiable
    drained = asyncio.ensure_future(peer.wait_for_drain(0, timeout=10))
    got = 0
    while got < sent * 32768:
        got += len(await asyncio.wait_for(raw.reader.read(1 << 20), 5))
        if drained.done():
            break
    assert await drained is True
    assert peer.buffered_amount == 0
    await raw.close()


# -- churn, shutdown, limits -----------------------------------------------------------


async def test_churn_leaves_nothing_behind(run_app_server: Any) -> None:
    opened: list[str] = []
    closed: list[str] = []
    sse = sse_adapter(
        define_hooks(
            open=lambda p: (opened.append(p.id), p.subscribe(f"t{len(opened) % 7}"), p.send("hi")),
            close=lambda p, d: closed.append(p.id),
        )
    )
    server = await run_app_server(app_for(sse))
    baseline = len(asyncio.all_tasks())
    for batch in range(40):
        clients = [await RawClient.open(server.url) for _ in range(50)]
        for i, c in enumerate(clients):
            if i % 3 == 0:
                c.reset()
            elif i % 3 == 1:
                await asyncio.wait_for(c.reader.readuntil(b"hi"), 5)
                await c.close()
            else:
                await c.close()
        if batch % 10 == 9:
            await wait_until(lambda: not sse.peers, what="peers to leave")
    await wait_until(lambda: not sse.peers and len(closed) == len(opened), what="all closed")
    await wait_until(lambda: len(asyncio.all_tasks()) <= baseline, what="tasks back to baseline")
    assert sorted(opened) == sorted(closed)
    assert len(set(closed)) == len(closed)
    assert sse.stats()["topics"] == 0
    assert sse.stats()["peers_opened"] == sse.stats()["peers_closed"] == len(opened)


async def test_shutdown_with_200_peers_some_stalled(run_app_server: Any) -> None:
    closed: list[tuple[str, str | None]] = []
    sse = sse_adapter(
        define_hooks(
            open=lambda p: (p.subscribe("t"), p.send("hi")),
            close=lambda p, d: closed.append((p.id, d.reason)),
        ),
        shutdown_timeout=0.5,
        max_buffer=1 << 30,
    )
    server = await run_app_server(app_for(sse))
    clients = [
        await RawClient.open(server.url, rcvbuf=4096 if i % 10 == 0 else None) for i in range(200)
    ]
    await wait_until(lambda: len(sse.peers) == 200)
    for _ in range(20):
        sse.publish("t", "z" * 65536)  # the stalled ones (1 in 10) cannot take this
        await asyncio.sleep(0)
    readers = [asyncio.ensure_future(c.reader.read(-1)) for i, c in enumerate(clients) if i % 10]
    await asyncio.wait_for(server.close(), 30)
    assert len(closed) == 200
    assert len({pid for pid, _ in closed}) == 200
    assert {reason for _, reason in closed} == {"server shutdown"}
    assert not sse.peers
    for r in readers:
        await asyncio.wait_for(r, 10)
    for c in clients:
        await c.close()


async def test_max_peers_503_and_no_hooks_beyond_upgrade(aiohttp_client: Any) -> None:
    calls: list[str] = []
    sse = sse_adapter(
        define_hooks(
            upgrade=lambda r: calls.append("upgrade"),
            open=lambda p: (calls.append("open"), p.send("in")),
        ),
        max_peers=2,
        retry_after=7,
    )
    client = await aiohttp_client(app_for(sse))
    a = await client.get("/sse")
    b = await client.get("/sse")
    c = await client.get("/sse")
    assert c.status == 503
    assert c.headers["Retry-After"] == "7"
    assert calls == ["upgrade", "open", "upgrade", "open", "upgrade"]
    assert sse.stats()["peers_rejected"] == 1
    a.close()
    await wait_until(lambda: len(sse.peers) == 1)
    d = await client.get("/sse")
    assert d.status == 200
    b.close()
    d.close()


# -- hooks that fail or take long ---------------------------------------------------------


async def test_failing_close_hook_is_contained(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[Peer | None, SSEError]] = []

    def close(peer: Peer, details: CloseDetails) -> None:
        raise RuntimeError("close failed")

    def error(peer: Peer | None, err: SSEError) -> None:
        errors.append((peer, err))
        raise RuntimeError("error hook fails too")

    sse = sse_adapter(
        define_hooks(open=lambda p: (p.subscribe("t"), p.send("hi")), close=close, error=error)
    )
    client = await aiohttp_client(app_for(sse))
    a, b = EventReader(await client.get("/sse")), EventReader(await client.get("/sse"))
    await a.next()
    await b.next()
    a.response.close()
    await wait_until(lambda: len(errors) == 1)
    assert isinstance(errors[0][1].__cause__, RuntimeError)
    sse.publish("t", "still here")
    assert (await b.next()).data == "still here"
    assert "close hook failed" in caplog.text and "error hook failed" in caplog.text


async def test_slow_async_hooks_do_not_delay_other_peers(aiohttp_client: Any) -> None:
    release = asyncio.Event()

    async def open_(peer: Peer) -> None:
        peer.subscribe("t")
        if peer.request.query.get("slow"):
            peer.send("slow open started")
            await release.wait()
            peer.send("slow open done")
        else:
            peer.send("hi")

    async def close(peer: Peer, details: CloseDetails) -> None:
        if peer.request.query.get("slow"):
            await release.wait()

    sse = sse_adapter(define_hooks(open=open_, close=close))
    client = await aiohttp_client(app_for(sse))
    slow = EventReader(await client.get("/sse?slow=1"))
    assert (await slow.next()).data == "slow open started"
    fast = EventReader(await client.get("/sse"))
    assert (await fast.next()).data == "hi"
    sse.publish("t", "to both")
    assert (await fast.next()).data == "to both"
    assert (await slow.next()).data == "to both"  # delivered while its open hook waits
    slow.response.close()
    sse.publish("t", "after slow left")
    assert (await fast.next()).data == "after slow left"
    release.set()
    await wait_until(lambda: len(sse.peers) == 1)
    fast.response.close()


async def test_hostile_last_event_id_and_garbage_requests(aiohttp_client: Any) -> None:
    ids: list[str | None] = []
    sse = sse_adapter(define_hooks(open=lambda p: (ids.append(p.last_event_id), p.send("ok"))))
    client = await aiohttp_client(app_for(sse))
    for value in ("a\x00b", "9" * 257, "\u2603", ""):
        resp = await client.get("/sse", params={"lastEventId": value})
        assert (await EventReader(resp).next()).data == "ok"
        resp.close()
    assert ids == [None, None, "\u2603", ""]
    raw = await RawClient.open(url_of(client))
    raw.writer.write(b"\x00\xff garbage \r\n\r\n" * 100)
    await raw.close()
    resp = await client.get("/sse")
    assert (await EventReader(resp).next()).data == "ok"
    resp.close()


async def test_shutdown_is_bounded_when_a_close_hook_hangs(session: aiohttp.ClientSession) -> None:
    never = asyncio.Event()

    async def close(peer: Peer, details: CloseDetails) -> None:
        await never.wait()

    sse = sse_adapter(define_hooks(open=lambda p: p.send("hi"), close=close), shutdown_timeout=0.2)
    runner = web.AppRunner(app_for(sse), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    resp = await session.get(f"http://127.0.0.1:{port}/sse")
    assert (await EventReader(resp).next()).data == "hi"
    await asyncio.wait_for(runner.cleanup(), 30)  # bounded, though the hook never returns
    assert not sse.peers
    resp.close()


async def test_http10_client_gets_a_close_delimited_stream(aiohttp_client: Any) -> None:
    peers: list[Peer] = []

    def open_(peer: Peer) -> None:
        peers.append(peer)
        peer.subscribe("t")
        peer.send("first")

    sse = sse_adapter(define_hooks(open=open_))
    client = await aiohttp_client(app_for(sse))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /sse HTTP/1.0\r\nHost: x\r\n\r\n")
    await wait_until(lambda: bool(peers))
    sse.publish("t", "x" * 20_000)  # big: the eager path
    sse.publish("t", "small")
    peers[0].close()
    body = await asyncio.wait_for(reader.read(-1), 5)  # the server closes the connection
    head, _, stream = body.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert stream == b"data: first\n\n" + b"data: " + b"x" * 20_000 + b"\n\ndata: small\n\n"
    writer.close()
