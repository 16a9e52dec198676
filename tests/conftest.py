"""Shared test helpers: a WHATWG stream reader over real HTTP, servers, bounded waits."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse.testing import EventReader, wait_until

# -- asyncio errors are test failures ------------------------------------------------


class _LoopErrors(logging.Handler):
    """Collects what asyncio logs at ERROR ("Task was destroyed but it is
    pending!", "Unclosed ...", exceptions never retrieved)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_loop_errors = _LoopErrors()
logging.getLogger("asyncio").addHandler(_loop_errors)


@pytest.fixture(autouse=True)
def no_asyncio_errors() -> Any:
    _loop_errors.records.clear()
    yield
    gc.collect()
    errors = [r.getMessage() for r in _loop_errors.records]
    _loop_errors.records.clear()
    assert not errors, f"asyncio logged errors: {errors}"


# -- reading an event stream: the package's pytest helpers -------------------------

# Re-exported: test modules do ``from tests.conftest import EventReader, wait_until``.
__all__ = ["EventReader", "wait_until"]


async def settle(awaitable: Awaitable[Any], timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


async def keepalives_written(url: str, count: int, timeout: float = 10.0) -> bytes:
    """Open a stream of the adapter at ``url`` and read it until ``count``
    keep-alives came; return its raw bytes. One adapter-wide timer writes
    each keep-alive to every stream at once, so every stream open before this
    call was written ``count`` keep-alives meanwhile, after what it had."""
    raw = b""
    async with aiohttp.ClientSession() as session, session.get(url) as watcher:
        async with asyncio.timeout(timeout):
            while raw.count(b": ping\n") < count:
                chunk = await watcher.content.readany()
                assert chunk, f"the stream ended before {count} keep-alives: {raw!r}"
                raw += chunk
    return raw


# -- servers ---------------------------------------------------------------------


class RunAppServer:
    """An app served like ``web.run_app`` does (AppRunner defaults: the handler
    is NOT cancelled when the client disconnects)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def run_app_server() -> AsyncIterator[Callable[[web.Application], Awaitable[RunAppServer]]]:
    servers: list[RunAppServer] = []

    async def start(app: web.Application) -> RunAppServer:
        server = RunAppServer(app)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
