"""The write path's direct socket writes: whatever the kernel does not take
goes through the transport, in order; TLS streams never bypass the transport."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import Peer, define_hooks, sse_adapter
from aiohttp_crossws_sse.client import SSEClientError
from tests.conftest import EventReader, wait_until
from tests.test_deploy import missing
from tests.test_reliability import RawClient, url_of


def app_for(sse: Any) -> web.Application:
    app = web.Application()
    sse.setup(app, "/sse")
    return app


async def test_partial_writes_keep_every_byte_in_order(aiohttp_client: Any) -> None:
    """A client that stops reading: writes go part to the kernel, the rest to
    the transport; later writes queue behind them. It then reads all of it."""
    peers: list[Peer] = []
    sse = sse_adapter(
        define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))), max_buffer=64 << 20
    )
    client = await aiohttp_client(app_for(sse))
    raw = await RawClient.open(url_of(client), rcvbuf=4096)
    await wait_until(lambda: bool(peers))
    peer = peers[0]
    count = 0
    while peer.buffered_amount < 1 << 20:  # well past what the kernel takes
        for _ in range(50):
            sse.publish("t", f"{count:07d}" + "y" * 900)
            count += 1
        if count % 500 == 0:
            peer.send(f"direct {count}")  # interleaved with the topic's batches
        await asyncio.sleep(0)
    expected: list[str] = []
    for i in range(count):
        expected.append(f"{i:07d}" + "y" * 900)
        if (i + 1) % 500 == 0:
            expected.append(f"direct {i + 1}")
    body = b""
    await raw.reader.readuntil(b"\r\n\r\n")  # the response head
    data_lines: list[str] = []
    while len(data_lines) < len(expected):
        chunk = await asyncio.wait_for(raw.reader.read(1 << 16), 10)
        assert chunk, "the stream ended early"
        body += chunk
        *done, body = body.split(b"\n")
        data_lines += [line[6:].decode() for line in done if line.startswith(b"data: ")]
    assert data_lines == expected
    await raw.close()


def certificate(tmp: Path) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        missing("openssl", "apt-get install openssl")
    assert openssl is not None
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls_streams_go_through_the_transport(aiohttp_server: Any, tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))))
    server = await aiohttp_server(app_for(sse), ssl=server_ctx)
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"https://127.0.0.1:{server.port}/sse", ssl=client_ctx)
        reader = EventReader(resp)
        await wait_until(lambda: bool(peers))
        # Plain bytes on a TLS socket would break the stream: none are written.
        assert sse._registry.connections[peers[0].id].outbox.fd == -1
        for i in range(2000):
            sse.publish("t", f"event {i}")
        events = await reader.take(2000, timeout=20)
        assert [e.data for e in events] == [f"event {i}" for i in range(2000)]
        resp.close()


async def test_plain_streams_write_to_the_socket(aiohttp_client: Any) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))))
    client = await aiohttp_client(app_for(sse))
    reader = EventReader(await client.get("/sse"))
    await wait_until(lambda: bool(peers))
    outbox = sse._registry.connections[peers[0].id].outbox
    assert outbox.fd >= 0
    sse.publish("t", "one")
    assert (await reader.next()).data == "one"
    reader.response.close()
    await wait_until(lambda: not sse.peers)
    assert outbox.fd == -1  # never kept past the connection


async def test_a_kernel_timeout_met_by_a_direct_write_is_a_send_timeout(
    aiohttp_client: Any,
) -> None:
    """The kernel reports ETIMEDOUT (``send_timeout`` as TCP_USER_TIMEOUT) to
    one write only; a direct write that meets it must say "send timeout"."""
    closed: list[str | None] = []
    peers: list[Peer] = []
    sse = sse_adapter(
        define_hooks(
            open=lambda p: (p.subscribe("t"), peers.append(p)),
            close=lambda p, d: closed.append(d.reason),
        ),
        send_timeout=0.5,
        max_buffer=1 << 30,
    )
    client = await aiohttp_client(app_for(sse))
    raw = socket.socket()  # a plain socket that never reads, with a tiny window
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", client.port))
    raw.send(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(lambda: bool(peers))
    peer = peers[0]
    for _ in range(2000):
        if peer.ready_state != 1:
            break
        sse.publish("t", "x" * 100)
        time.sleep(0.01)  # noqa: ASYNC251 - a busy loop: a write, not polling, meets the error
        await asyncio.sleep(0)
    await asyncio.wait_for(peer.wait_closed(), 10)
    assert closed == ["send timeout"]
    assert sse.stats()["send_timeouts"] == 1
    raw.close()


async def test_a_replay_is_never_cut_by_the_slow_consumer_policy(aiohttp_client: Any) -> None:
    """A resuming client that stops reading mid-replay while keep-alives are
    queued behind the replay, then reads everything: the whole replay
    arrives (its bytes in the transport do not count against
    ``max_buffer``), then live events."""
    peers: list[Peer] = []
    closed: list[str | None] = []
    sse = sse_adapter(
        define_hooks(
            open=lambda p: (p.subscribe("t"), peers.append(p)),
            close=lambda p, d: closed.append(d.reason),
        ),
        history=200,
        max_buffer=65536,
        keepalive=0.02,
    )
    client = await aiohttp_client(app_for(sse))
    first = EventReader(await client.get("/sse"))
    await wait_until(lambda: len(peers) == 1)
    sse.publish("t", "start")
    start_id = (await first.next()).id
    first.response.close()
    await wait_until(lambda: not sse.peers)
    big = "r" * 40_000
    for i in range(100):
        sse.publish("t", f"{i} {big}")
    closed.clear()  # the first client's
    raw = await RawClient.open(url_of(client), f"/sse?lastEventId={start_id}", rcvbuf=4096)
    await wait_until(lambda: len(sse.peers) == 1)
    peer = next(iter(sse.peers.values()))
    # The replay is blocked on the client while a dozen keep-alives are
    # queued (a pause, not a measurement: each queued frame used to count
    # the replay's bytes in the transport against max_buffer).
    await asyncio.sleep(0.3)
    body = b""
    while body.count(b"data: ") < 100:
        chunk = await asyncio.wait_for(raw.reader.read(1 << 16), 10)
        assert chunk, f"the stream ended early ({closed})"
        body += chunk
    sse.publish("t", "live")
    while b"data: live" not in body:
        chunk = await asyncio.wait_for(raw.reader.read(1 << 16), 10)
        assert chunk, f"the stream ended early ({closed})"
        body += chunk
    data = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    numbers = [int(d.split(b" ")[0]) for d in data if d[:1].isdigit()]
    assert numbers == list(range(100))
    assert closed == [], closed
    assert peer.recovered is True
    assert sse.stats()["slow_consumers"] == 0
    await raw.close()


async def test_a_failure_while_writing_a_batch_never_leaves_a_topic_stuck(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that raises at the end of an iteration (a broken transport)
    costs that batch, or that one peer, only: it is logged, and later
    publishes to the same topic reach every peer still open (the topic's
    batch is never left half-open)."""
    from aiohttp_crossws_sse._write import direct, outbox

    sse = sse_adapter(define_hooks(open=lambda p: (p.subscribe("a"), p.subscribe("b"))))
    client = await aiohttp_client(app_for(sse))
    readers = [EventReader(await client.get("/sse")) for _ in range(3)]
    await wait_until(lambda: len(sse.peers) == 3)
    real = direct.os_write
    failures = [RuntimeError("the transport broke")]

    def os_write(fd: int, data: Any) -> int:
        if failures:
            raise failures.pop()
        return real(fd, data)

    monkeypatch.setattr(direct, "os_write", os_write)  # a batch's writes
    monkeypatch.setattr(outbox, "_os_write", os_write)  # one peer's
    sse.publish("a", "a1")  # a write of this iteration meets the failure
    sse.publish("b", "b1")
    await wait_until(lambda: not failures)
    await asyncio.sleep(0.05)  # let the iteration end
    sse.publish("a", "a2")
    served = 0
    for reader in readers:
        got: list[str] = []
        try:
            while not got or got[-1] != "a2":  # a1 may be what was lost
                got.append((await reader.next()).data)
        except (aiohttp.ClientPayloadError, SSEClientError):
            continue  # the one peer whose own write failed
        assert got[-1] == "a2" and "b1" in got, got
        served += 1
        reader.response.close()
    assert served >= 2
    assert "the write path failed writing" in caplog.text


async def test_a_graceful_end_while_a_replay_is_fetched_never_reorders(
    aiohttp_client: Any,
) -> None:
    """The peer closes gracefully while its replay's fetch is still pending
    (a backplane's history is a network read): the replay is given up, never
    written after what the hooks sent meanwhile."""
    peers: list[Peer] = []
    sse = sse_adapter(
        define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p), p.send("welcome"))),
        history=10,
    )
    client = await aiohttp_client(app_for(sse))
    first = EventReader(await client.get("/sse"))
    await wait_until(lambda: bool(sse.peers))
    sse.publish("t", "one")
    events = [await first.next(), await first.next()]
    one_id = events[-1].id
    first.response.close()
    await wait_until(lambda: not sse.peers)
    sse.publish("t", "two")
    history = sse._registry.history
    assert history is not None
    release = asyncio.Event()

    class SlowSource:  # the history, read as a backplane's would be: over a network
        async def fetch(self, *args: Any) -> Any:
            await release.wait()  # the window a network read leaves open
            return await history.fetch(*args)

        def caught_up(self, replay: Any) -> bool:
            return history.caught_up(replay)

    sse._registry.replay_source = SlowSource()
    resp = await client.get(f"/sse?lastEventId={one_id}")
    await wait_until(lambda: len(sse.peers) == 1)
    peers[-1].close()
    release.set()
    body = await asyncio.wait_for(resp.content.read(), 10)
    data = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert data in ([b"two", b"welcome"], [b"welcome"]), data
