"""``_write.direct``: the one dense encoding of the write path (``Outbox.fd``)
and the socket each kind of transport gives, on real sockets."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from aiohttp_crossws_sse._write.direct import NO_SOCKET, socket_fd, spilled, unspilled, write_all
from tests.conftest import wait_until
from tests.test_write_path import certificate


@pytest.mark.parametrize("fd", [0, 1, 7, 1023, 65535])
def test_spilled_and_back(fd: int) -> None:
    assert spilled(fd) <= -2  # never NO_SOCKET, never a socket
    assert unspilled(spilled(fd)) == fd
    assert spilled(spilled(fd)) == spilled(fd)  # already spilled: unchanged
    assert spilled(NO_SOCKET) == NO_SOCKET


async def test_socket_fd_of_each_transport(tmp_path: Path) -> None:
    """A plain TCP transport gives its socket; a TLS one gives none (its
    bytes must be encrypted first)."""
    loop = asyncio.get_running_loop()
    cert, key = certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    accepted: list[asyncio.BaseTransport] = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    for ctx, client_ctx_or_none in ((None, None), (server_ctx, client_ctx)):
        server = await loop.create_server(Keep, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx_or_none,
            server_hostname="127.0.0.1" if client_ctx_or_none else None,
        )  # fmt: skip
        await wait_until(lambda: bool(accepted))
        theirs = accepted.pop()
        assert isinstance(transport, asyncio.Transport)
        fd = socket_fd(transport)
        if ctx is None:
            assert fd == transport.get_extra_info("socket").fileno()
        else:
            assert fd == NO_SOCKET
        transport.close()
        theirs.close()
        server.close()
        await server.wait_closed()


def test_write_all_reports_what_each_socket_took() -> None:
    """Full sockets take part or nothing; a closed one reports its error;
    the others still get their write, in order."""
    pairs = [socket.socketpair() for _ in range(3)]
    for ours, _ in pairs:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pairs[1][1].close()  # the peer of the second one is gone
    data = b"x" * 100
    sent, errors = write_all([ours.fileno() for ours, _ in pairs], data)
    assert sent[0] == 100 and sent[2] == 100
    assert set(errors) == {1} and isinstance(errors[1], OSError)
    for ours, theirs in pairs:
        ours.close()
        if theirs.fileno() != -1:
            theirs.close()
