"""Shared test helpers: a WHATWG stream reader over real HTTP, servers, bounded waits."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse._parser import EventStreamParser, ServerSentEvent

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


# -- reading an event stream ---------------------------------------------------------


class EventReader:
    """Reads a real ``text/event-stream`` body and parses it per WHATWG."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.parser = EventStreamParser()
        self.events: list[ServerSentEvent] = []
        self.raw = bytearray()
        self._pending: deque[ServerSentEvent] = deque()
        self.eof = False

    @property
    def comments(self) -> list[str]:
        return self.parser.comments

    async def _read(self, timeout: float) -> None:
        try:
            data = await asyncio.wait_for(self.response.content.readany(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no data within {timeout}s; events so far: {self.events}"
            ) from None
        if not data:
            self.eof = True
            return
        self.raw += data
        self._pending.extend(self.parser.feed(data))

    async def next(self, timeout: float = 5.0) -> ServerSentEvent:
        while not self._pending:
            if self.eof:
                raise AssertionError(f"stream ended; events so far: {self.events}")
            await self._read(timeout)
        event = self._pending.popleft()
        self.events.append(event)
        return event

    async def take(self, n: int, timeout: float = 5.0) -> list[ServerSentEvent]:
        return [await self.next(timeout) for _ in range(n)]

    async def rest(self, timeout: float = 5.0) -> list[ServerSentEvent]:
        """Every event until the server ends the stream."""
        out: list[ServerSentEvent] = []
        while True:
            while self._pending:
                event = self._pending.popleft()
                self.events.append(event)
                out.append(event)
            if self.eof:
                return out
            await self._read(timeout)

    async def comment(self, timeout: float = 5.0) -> str:
        while not self.parser.comments:
            if self.eof:
                raise AssertionError("stream ended before a comment")
            await self._read(timeout)
        return self.parser.comments[0]


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` (a bound, not a measurement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def settle(awaitable: Awaitable[Any], timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


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
