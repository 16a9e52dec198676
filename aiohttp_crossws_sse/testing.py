"""A pytest plugin and assertion helpers for testing apps built on this package.

Installing the package registers this module as a pytest plugin (entry point
``pytest11``). It is opt-in safe: importing it changes nothing, and its
fixtures only do something in tests that request them.

Fixtures (they need ``pytest-aiohttp``; ``pip install pytest-aiohttp``):

``sse_client``
    A factory of connected [EventSourceClient][aiohttp_crossws_sse.client.EventSourceClient]
    objects, each reading an adapter served by a real ``aiohttp_server``
    (HTTP over 127.0.0.1). Every client it made is closed at teardown, then
    the servers (their shutdown closes the adapters' peers, running close
    hooks)::

        async def test_welcome(sse_client):
            sse = sse_adapter(define_hooks(open=lambda peer: peer.send("hi")))
            client = await sse_client(sse)
            assert (await next_event(client)).data == "hi"

Helpers (usable with or without the fixtures):

* [next_event][] -- the next event;
* [wait_for_event][] -- skip events until one matches;
* [assert_no_event][] -- fail when an event comes within a time;
* [wait_until][] -- poll a condition with a bounded wait;
* [EventReader][] -- parse a raw ``aiohttp.ClientResponse`` event stream
  (for tests that make their requests with ``aiohttp_client``).

One rule, the client's too (``EventSourceClient.next_event``): a wait that
runs out raises ``TimeoutError``, a stream that ends first raises
[SSEClientError][aiohttp_crossws_sse.client.SSEClientError] (a connection that
breaks raises aiohttp's error as it is); each message is short, naming the
URL, the number of events seen and the last few. A ``timeout``
bounds the whole wait, however many keep-alive comments arrive meanwhile.
Timeouts here are bounds that keep a broken test from hanging, never
measurements: do not use them to assert on timing.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from aiohttp.typedefs import Handler
from aiohttp.web import HTTPMethodNotAllowed
from yarl import URL

from . import SSEAdapter
from ._describe import describe_event, describe_events
from ._parser import EventStreamParser, ServerSentEvent
from .client import EventSourceClient, SSEClientError, connect

if TYPE_CHECKING:
    from pytest_aiohttp import AiohttpServer

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - without pytest-aiohttp the fixture says so
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_TIMEOUT",
    "EventReader",
    "SSEClientError",
    "SSEClientFactory",
    "ServerSentEvent",
    "assert_no_event",
    "next_event",
    "sse_client",
    "wait_for_event",
    "wait_until",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
"""Seconds every helper waits by default before failing."""


# -- reading a raw event stream ------------------------------------------------------


class EventReader:
    """Reads a real ``text/event-stream`` body and parses it per WHATWG.

    Wrap a response of your own request (e.g. ``await client.get("/sse")``
    with the ``aiohttp_client`` fixture); the reader reads the body on
    demand, only inside its methods. Closing the response stays your job.

    Attributes: ``response``; ``events``, every event returned so far;
    ``raw``, every byte read; ``eof``, whether the body ended; ``comments``,
    the text after the colon of every comment line read (``": ping"`` is
    ``" ping"``). Every method raises ``TimeoutError`` when ``timeout``
    seconds pass, a bound on the whole call however many keep-alive comments
    arrive meanwhile (``None``: no bound), and
    [SSEClientError][aiohttp_crossws_sse.client.SSEClientError] when the stream
    ends first.
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.parser = EventStreamParser()
        self.events: list[ServerSentEvent] = []
        self.raw = bytearray()
        self._pending: deque[ServerSentEvent] = deque()
        self.eof = False

    @property
    def comments(self) -> list[str]:
        """Comment lines read so far (the text after the colon)."""
        return self.parser.comments

    @property
    def events_seen(self) -> int:
        """How many events were returned (``len(events)``, as for a client)."""
        return len(self.events)

    async def _within(
        self, timeout: float | None, what: str, wait: Callable[[], Awaitable[T]]
    ) -> T:
        """``await wait()`` under one deadline for the whole of it."""
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                result = await wait()
        except TimeoutError:
            if not deadline.expired():
                raise
            raise TimeoutError(
                f"no {what} within {timeout}s from {self.response.url}; "
                f"{describe_events(self.events)}"
            ) from None
        return result

    async def _read(self) -> None:
        data = await self.response.content.readany()
        if not data:
            self.eof = True
            return
        self.raw += data
        self._pending.extend(self.parser.feed(data))

    async def _next(self) -> ServerSentEvent:
        while not self._pending:
            if self.eof:
                raise SSEClientError(
                    f"the event stream {self.response.url} ended; {describe_events(self.events)}",
                    status=self.response.status,
                )
            await self._read()
        event = self._pending.popleft()
        self.events.append(event)
        return event

    async def next(self, timeout: float | None = DEFAULT_TIMEOUT) -> ServerSentEvent:
        """Return the next event (reading until one is complete)."""
        return await self._within(timeout, "event", self._next)

    async def take(self, n: int, timeout: float | None = DEFAULT_TIMEOUT) -> list[ServerSentEvent]:
        """Return the next ``n`` events (``timeout`` bounds all ``n``)."""

        async def take() -> list[ServerSentEvent]:
            return [await self._next() for _ in range(n)]

        return await self._within(timeout, f"{n} events", take)

    async def rest(self, timeout: float | None = DEFAULT_TIMEOUT) -> list[ServerSentEvent]:
        """Return every event until the server ends the stream."""

        async def rest() -> list[ServerSentEvent]:
            out: list[ServerSentEvent] = []
            while True:
                while self._pending:
                    event = self._pending.popleft()
                    self.events.append(event)
                    out.append(event)
                if self.eof:
                    return out
                await self._read()

        return await self._within(timeout, "end of the stream", rest)

    async def comment(self, timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Return the first comment line of the stream, reading until there is one."""

        async def comment() -> str:
            while not self.parser.comments:
                if self.eof:
                    raise SSEClientError(
                        f"the event stream {self.response.url} ended before a comment; "
                        f"{describe_events(self.events)}",
                        status=self.response.status,
                    )
                await self._read()
            return self.parser.comments[0]

        return await self._within(timeout, "comment", comment)


# -- assertion helpers ---------------------------------------------------------------

EventSource = EventSourceClient | EventReader


def _where(source: EventSource) -> str:
    return str(source.url if isinstance(source, EventSourceClient) else source.response.url)


async def _take(source: EventSource) -> ServerSentEvent:
    """The next event of ``source``, without a bound of its own."""
    if isinstance(source, EventReader):
        return await source.next(None)
    return await source.next_event(None)


async def _wait(
    source: EventSource,
    timeout: float | None,
    wanted: str,
    match: Callable[[ServerSentEvent], bool] | None = None,
) -> ServerSentEvent:
    """The first event of ``source`` that ``match``es, within ``timeout`` in all."""
    __tracebackhide__ = True
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                event = await _take(source)
                if match is None or match(event):
                    break
    except TimeoutError:
        if not deadline.expired():
            raise
        raise TimeoutError(
            f"no {wanted} within {timeout}s from {_where(source)}; "
            f"{describe_events(source.events, source.events_seen)}"
        ) from None
    return event


async def next_event(source: EventSource, timeout: float = DEFAULT_TIMEOUT) -> ServerSentEvent:
    """Return the next event of ``source`` (a client or an [EventReader][]).

    ``timeout`` bounds the whole wait (keep-alive comments do not extend
    it): after it, ``TimeoutError``. A stream that ends first raises
    [SSEClientError][aiohttp_crossws_sse.client.SSEClientError]. Both messages name
    the URL and sum up the events seen so far. A timeout loses nothing: the
    next call goes on reading.
    """
    __tracebackhide__ = True
    return await _wait(source, timeout, "event")


async def wait_for_event(
    source: EventSource,
    match: Callable[[ServerSentEvent], bool] | None = None,
    *,
    data: str | None = None,
    event: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ServerSentEvent:
    """Read events of ``source`` until one matches; return it.

    An event matches when ``match(event)`` is true (if given), its ``data``
    equals ``data`` and its type equals ``event`` (each if given; the type of
    an unnamed event is ``"message"``). Events read before it are skipped
    (they stay in ``source.events``). ``timeout`` bounds the whole wait:
    after it, ``TimeoutError``; a stream that ends first raises
    [SSEClientError][aiohttp_crossws_sse.client.SSEClientError].
    """
    __tracebackhide__ = True
    wanted = ", ".join(
        part
        for part in (
            f"data={data!r}" if data is not None else "",
            f"event={event!r}" if event is not None else "",
            "match()" if match is not None else "",
        )
        if part
    )

    def matches(got: ServerSentEvent) -> bool:
        return (
            (data is None or got.data == data)
            and (event is None or got.event == event)
            and (match is None or match(got))
        )

    return await _wait(source, timeout, f"event with {wanted}" if wanted else "event", matches)


async def assert_no_event(source: EventSource, *, within: float) -> None:
    """Assert that ``source`` gets no event for ``within`` seconds.

    Waits all of ``within`` (keep-alive comments are not events) and returns
    when no event came. An event that comes fails the test with an
    ``AssertionError`` naming it (it is consumed: it is in
    ``source.events``); a stream that ends meanwhile raises
    [SSEClientError][aiohttp_crossws_sse.client.SSEClientError]. It only shows that
    nothing came *within* that time: choose ``within`` long enough for an
    event wrongly sent to arrive (on 127.0.0.1, a few tenths of a second)::

        sse.publish("news", "not for you")
        await assert_no_event(client, within=0.3)
    """
    __tracebackhide__ = True
    deadline = asyncio.timeout(within)
    try:
        async with deadline:
            event = await _take(source)
    except TimeoutError:
        if deadline.expired():
            return
        raise
    raise AssertionError(
        f"expected no event within {within}s from {_where(source)}, got {describe_event(event)}"
    )


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T],
    timeout: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    *,
    interval: float = 0.005,
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; return that value.

    ``predicate`` may be a plain function or return an awaitable (a coroutine
    function). It is checked at once, then every ``interval`` seconds; after
    ``timeout`` seconds (a bound, not a measurement) a ``TimeoutError``
    says ``timed out waiting for {what}``, so name the condition::

        await wait_until(lambda: not sse.peers, what="every peer closed")
    """
    __tracebackhide__ = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what} (after {timeout}s)")
        await asyncio.sleep(interval)


# -- the sse_client fixture ------------------------------------------------------------


def _serve_at(adapter: SSEAdapter, paths: set[str]) -> Handler:
    """A handler serving ``adapter`` at ``paths`` (read at each request), else 404."""

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.path not in paths:
            raise web.HTTPNotFound()
        return await adapter.handler(request)

    return serve


async def _has_route(app: web.Application, path: str) -> bool:
    """Whether a request for ``path`` reaches a route of ``app`` (for any method).

    Asked of the app's own router, so variable routes (``/rooms/{room}/sse``)
    and sub-apps' routes count as aiohttp would route a request.
    """
    match = await app.router.resolve(make_mocked_request("GET", path, app=app))
    error = match.http_exception
    return error is None or error.status == HTTPMethodNotAllowed.status_code


class SSEClientFactory:
    """What the ``sse_client`` fixture returns; call it to get a client.

    Servers are started on first use and reused: one per ``app`` you pass,
    and one per adapter when the factory builds the app (whatever paths it is
    asked for: an adapter follows one app). Everything is closed by
    ``close()``, which the fixture calls at teardown.
    """

    def __init__(self, aiohttp_server: AiohttpServer) -> None:
        self._aiohttp_server = aiohttp_server
        #: The app serving each adapter, built here or passed as ``app``.
        self._apps: dict[SSEAdapter, web.Application] = {}
        #: The paths served by each adapter whose app was built here.
        self._paths: dict[SSEAdapter, set[str]] = {}
        self._servers: list[tuple[web.Application, TestServer]] = []
        #: Every client made, in order (closed ones included).
        self.clients: list[EventSourceClient] = []

    async def server(
        self,
        adapter: SSEAdapter | None = None,
        path: str = "/sse",
        *,
        app: web.Application | None = None,
    ) -> TestServer:
        """The running server of ``adapter`` (at ``path``) or of ``app``.

        Without ``app``, the app serving ``adapter`` is used: a new
        ``web.Application`` built here at the first call, which serves the
        adapter at every ``path`` asked for (the first with
        ``adapter.setup(app, path)``; later ones, asked for once the server
        runs, through a catch-all route to ``adapter.handler``, whose
        ``request.match_info`` holds ``sse_client_path``). Or the ``app`` an
        earlier call passed with this adapter.

        With ``app``, ``adapter.setup(app, path)`` is called unless a request
        for ``path`` already reaches a route of ``app``, as its router
        resolves it: ``/rooms/blue/sse`` reaches ``/rooms/{room}/sse``, and a
        sub-app's routes count (pass an app built by your ``make_app()`` as
        is; ``adapter`` may then be ``None``). An app whose server runs cannot
        gain a route: a new ``path`` for its adapter raises ``RuntimeError``,
        so set the adapter up at each of its paths before the first client.
        ``path`` is a concrete URL path, never a route pattern.
        """
        if app is None:
            if adapter is None:
                raise TypeError("sse_client needs an adapter, an app, or both")
            app = self._apps.get(adapter)
            if app is None:
                app = self._apps[adapter] = web.Application()
                self._paths[adapter] = set()
        elif adapter is not None:
            self._apps.setdefault(adapter, app)
        server = next((s for served, s in self._servers if served is app), None)
        paths = self._paths.get(adapter) if adapter is not None else None
        if adapter is not None and paths is not None and self._apps[adapter] is app:
            if path not in paths:
                if server is None:
                    adapter.setup(app, path)
                paths.add(path)  # once the server runs, the catch-all route serves it
            if server is None:
                app.router.add_route("*", "/{sse_client_path:.*}", _serve_at(adapter, paths))
        elif not await _has_route(app, path):
            if adapter is None:
                if server is None:
                    raise ValueError(f"the app has no route at {path!r} and no adapter was given")
            elif server is not None:
                raise RuntimeError(
                    f"no route of the app serves {path!r}, and a running app cannot gain "
                    f"one: call adapter.setup(app, {path!r}) before the app's first client"
                )
            else:
                adapter.setup(app, path)
        if server is None:
            server = await self._aiohttp_server(app)
            self._servers.append((app, server))
        return server

    async def url(
        self,
        adapter: SSEAdapter | None = None,
        path: str = "/sse",
        *,
        app: web.Application | None = None,
        query: Mapping[str, str] | None = None,
    ) -> URL:
        """The ``http://127.0.0.1:PORT/path?query`` URL of the stream (server started)."""
        server = await self.server(adapter, path, app=app)
        url = server.make_url(path)
        return url.update_query(query) if query else url

    async def __call__(
        self,
        adapter: SSEAdapter | None = None,
        path: str = "/sse",
        *,
        app: web.Application | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        last_event_id: str | None = None,
        reconnect: bool = False,
        retry: float = 3.0,
        max_retry: float = 30.0,
        timeout: float | None = DEFAULT_TIMEOUT,
        idle_timeout: float | None = None,
        send_timeout: float | None = DEFAULT_TIMEOUT,
        keep: int | None = 100,
        session: aiohttp.ClientSession | None = None,
    ) -> EventSourceClient:
        """Open a stream and return its connected client.

        ``adapter``, ``path`` and ``app`` choose the server (see
        [server][SSEClientFactory.server]); ``query`` is added to the URL. The other arguments
        are those of [connect][aiohttp_crossws_sse.client.connect]; ``timeout``
        bounds the wait for the response headers and ``send_timeout`` each
        ``send()`` (both 5 s here, a test's bound). When the server refuses
        the stream, [SSEClientError][aiohttp_crossws_sse.client.SSEClientError]
        (with ``status`` and ``body``) is raised. The client comes back
        before any event is read: the peer is open once the first event
        arrives (``await next_event(client)``), or see
        ``wait_until(lambda: adapter.peers)``.
        """
        url = await self.url(adapter, path, app=app, query=query)
        client = connect(
            url,
            session=session,
            headers=headers,
            last_event_id=last_event_id,
            reconnect=reconnect,
            retry=retry,
            max_retry=max_retry,
            timeout=timeout,
            idle_timeout=idle_timeout,
            send_timeout=send_timeout,
            keep=keep,
        )
        self.clients.append(client)
        try:
            await client.connected()
        except BaseException:
            await client.close()
            raise
        return client

    async def close(self) -> None:
        """Close every client made (servers close with ``aiohttp_server``)."""
        for client in self.clients:
            await client.close()


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def sse_client(aiohttp_server: AiohttpServer) -> AsyncIterator[SSEClientFactory]:
        """A factory of connected SSE clients against real servers; see
        [SSEClientFactory][]. ``await sse_client(adapter)`` opens a
        stream of ``adapter`` served at ``/sse``; ``await sse_client(app=app)``
        one of an app you built. Clients, then servers, close at teardown."""
        factory = SSEClientFactory(aiohttp_server)
        try:
            yield factory
        finally:
            await factory.close()

else:  # pragma: no cover

    @pytest.fixture
    def sse_client() -> Any:
        """Needs pytest-aiohttp (``pip install pytest-aiohttp``)."""
        pytest.fail("the sse_client fixture needs pytest-aiohttp: pip install pytest-aiohttp")
