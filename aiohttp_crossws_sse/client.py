"""An asyncio Server-Sent Events client on :class:`aiohttp.ClientSession`.

Works with any SSE endpoint; with an endpoint of this package in
bidirectional mode it also knows the crossws peer id and can
:meth:`~EventSourceClient.send` messages back::

    async with connect("http://localhost:8080/sse") as client:
        await client.send({"hello": "world"})
        async for event in client:
            print(event.event, event.data)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._parser import EventStreamParser, ServerSentEvent
from ._wire import CROSSWS_ID_EVENT, PEER_ID_HEADER

__all__ = ["EventSourceClient", "SSEClientError", "ServerSentEvent", "connect"]

#: Response header (and first event type) carrying the crossws peer id.
CROSSWS_ID_HEADER = PEER_ID_HEADER

_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_BODY_WAIT = 5.0


class SSEClientError(Exception):
    """A client failure: the server refused the stream or a ``send()``.

    Also raised by ``send()`` without a peer id and by ``next_event()`` once
    the stream has ended. ``status`` is the HTTP status (``None`` when there
    was no response) and ``body`` the start of the response body as text.
    """

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class EventSourceClient:
    """One SSE stream, read on demand by the task that iterates it.

    ``async for event in client`` yields :class:`ServerSentEvent` objects
    (every one is also appended to ``events``); iteration ends when the
    stream ends, unless the client reconnects. ``crossws-id`` events are
    consumed: they update ``id`` and are not yielded. Only one task may read
    events at a time.

    Nothing is sent until it is used: as ``async with connect(url) as
    client:`` (or ``await connect(url)`` and later ``await client.close()``).
    Without ``session`` the client creates one and closes it on
    :meth:`close`; a given session is left open. ``headers`` are sent with
    every request (also the POSTs of :meth:`send`). ``last_event_id`` is
    sent as ``Last-Event-ID`` on the first request. With ``reconnect=True`` a
    stream that ends or drops is reopened after the server's ``retry:`` time,
    or ``retry`` seconds when the server set none. ``timeout`` bounds, in
    seconds, each wait for the response headers (``None``: no bound); the
    stream itself is never timed out.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        last_event_id: str | None = None,
        reconnect: bool = False,
        retry: float = 3.0,
        timeout: float | None = None,
    ) -> None:
        self.url = URL(url)
        self.id: str | None = None
        self.events: list[ServerSentEvent] = []
        self.reconnect = reconnect
        self.retry = retry
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._request_headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._parser = EventStreamParser(last_event_id or "")
        self._pending: deque[ServerSentEvent] = deque()
        self._response: aiohttp.ClientResponse | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._reconnect_at: float | None = None
        self._ended = False
        self._closed = False
        self._close_event = asyncio.Event()

    # -- state ---------------------------------------------------------------

    @property
    def response(self) -> aiohttp.ClientResponse:
        """The response of the current (or last) stream request.

        Raises ``RuntimeError`` before the stream was first opened.
        """
        if self._response is None:
            raise RuntimeError("the event stream is not open; await client.connected() first")
        return self._response

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The response headers of the current (or last) stream request."""
        return self.response.headers

    @property
    def last_event_id(self) -> str:
        """The stream's last event ID (sent as ``Last-Event-ID`` on reconnect)."""
        return self._parser.last_event_id

    @property
    def comments(self) -> list[str]:
        """Text after the colon of every comment line seen, e.g. ``" ping"``."""
        return self._parser.comments

    @property
    def reconnect_delay(self) -> float:
        """Seconds waited before reconnecting: the server's ``retry:`` or ``retry``."""
        if self._parser.retry is not None:
            return self._parser.retry / 1000
        return self.retry

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- opening and closing -----------------------------------------------

    async def connected(self) -> EventSourceClient:
        """Open the stream if it is not open yet; return the client.

        Raises :class:`SSEClientError` when the status is not 200 or the
        content type is not ``text/event-stream``, ``TimeoutError`` when the
        headers do not come within ``timeout``, and aiohttp's connection
        errors as they are (the first connection is never retried).
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._response is None:
            await self._open(first=True)
        return self

    def __await__(self) -> Generator[Any, None, EventSourceClient]:
        return self.connected().__await__()

    async def __aenter__(self) -> EventSourceClient:
        try:
            return await self.connected()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the stream, and the session if the client created it."""
        self._closed = True
        self._close_event.set()
        self._pending.clear()
        self._release()
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                raise RuntimeError("the client is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    def _release(self) -> None:
        # Keep ``_response`` for ``response``/``headers``; drop the connection.
        self._chunks = None
        if self._response is not None:
            self._response.close()

    async def _open(self, *, first: bool) -> bool:
        """Request the stream; return False when there is none to read.

        That is when the client was closed meanwhile, or, on a reconnection,
        when the server answered 204 (stop reconnecting, as for ``EventSource``).
        """
        headers = CIMultiDict(self._request_headers)
        headers["Accept"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        if self._parser.last_event_id:
            headers["Last-Event-ID"] = self._parser.last_event_id
        session = self._get_session()
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.timeout):
                response = await session.get(
                    self.url,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                )
            if self._closed:  # close() ran while we waited for the headers
                response.close()
                return False
            if response.status == 204 and not first:
                response.release()
                return False
            content_type = response.headers.get("Content-Type", "")
            mime = content_type.split(";", 1)[0].strip().lower()
            if response.status != 200 or mime != "text/event-stream":
                body = await _read_error_body(response)
                if response.status != 200:
                    message = f"event stream request to {self.url} failed: HTTP {response.status}"
                else:
                    message = (
                        f"event stream request to {self.url} returned content type "
                        f"{content_type or '(none)'!r}, not 'text/event-stream'"
                    )
                raise SSEClientError(message, status=response.status, body=body)
        except BaseException:
            if response is not None:
                response.close()
            raise
        if self._response is not None:
            self._response.close()
        self._response = response
        self._chunks = response.content.iter_any()
        header_id = response.headers.get(CROSSWS_ID_HEADER)
        self.id = header_id if header_id else None
        self._parser.reset()
        return True

    # -- reading -------------------------------------------------------------

    def __aiter__(self) -> EventSourceClient:
        return self

    async def __anext__(self) -> ServerSentEvent:
        event = await self._next()
        if event is None:
            raise StopAsyncIteration
        return event

    async def next_event(self, timeout: float | None = 5.0) -> ServerSentEvent:
        """Return the next event, waiting at most ``timeout`` seconds in all.

        Raises ``TimeoutError`` when none comes in time (keep-alive comments
        do not count), and :class:`SSEClientError` when the stream ended.
        Either message is short: the URL, the number of events seen and the
        last few of them, their data cut short. A timeout loses nothing: the
        next call goes on reading. (``aiohttp_crossws_sse.testing`` follows
        the same rule.)
        """
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                event = await self._next()
        except TimeoutError:
            if not deadline.expired():
                raise  # from ``timeout`` of connect(), not ours
            raise TimeoutError(
                f"no event within {timeout}s from {self.url}; {_describe_events(self.events)}"
            ) from None
        if event is None:
            raise SSEClientError(
                f"the event stream {self.url} ended; {_describe_events(self.events)}",
                status=self._response.status if self._response is not None else None,
            )
        return event

    async def _next(self) -> ServerSentEvent | None:
        """The next event, or ``None`` when there will be no more."""
        while True:
            if self._pending:
                event = self._pending.popleft()
                self.events.append(event)
                return event
            if self._closed or self._ended:
                return None
            if self._response is None:
                await self._open(first=True)
                continue
            if self._chunks is None:
                if not await self._reopen():
                    self._ended = True
                    return None
                continue
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                error: BaseException | None = None
            except (aiohttp.ClientError, OSError) as exc:
                error = exc
            else:
                self._feed(chunk)
                continue
            # The stream ended (cleanly when ``error`` is None).
            self._release()
            if self._closed:
                return None
            if not self.reconnect:
                self._ended = True
                if error is not None:
                    raise error
                return None
            self._reconnect_at = asyncio.get_running_loop().time() + self.reconnect_delay

    def _feed(self, chunk: bytes) -> None:
        for event in self._parser.feed(chunk):
            if event.event == CROSSWS_ID_EVENT:
                self.id = event.data
            else:
                self._pending.append(event)

    async def _reopen(self) -> bool:
        """Wait for the reconnection time, then reconnect until it works.

        Connection failures are retried; a refusal (status or content type)
        raises :class:`SSEClientError`; a 204 returns False.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._reconnect_at is not None:
                delay = self._reconnect_at - loop.time()
                if delay > 0:
                    # Sleep, but wake up at once if close() is called.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._close_event.wait()
            if self._closed:
                return False
            try:
                opened = await self._open(first=False)
            except SSEClientError:
                self._ended = True
                raise
            except (aiohttp.ClientConnectionError, OSError):
                self._reconnect_at = loop.time() + self.reconnect_delay
                continue
            self._reconnect_at = None
            return opened

    # -- sending ---------------------------------------------------------------

    async def send(self, data: str | bytes | Mapping[str, Any] | list[Any]) -> int:
        """POST ``data`` to the stream URL as this peer; return the status.

        Needs the crossws peer ``id`` (bidirectional mode), sent as the
        ``x-crossws-id`` header. ``str`` is sent as UTF-8 text, ``bytes`` as
        is, a dict or list as JSON. Raises :class:`SSEClientError` when the
        id is unknown or the status is not 2xx.
        """
        if self.id is None:
            raise SSEClientError(
                f"no crossws peer id for {self.url}: the server sent no "
                f"{CROSSWS_ID_HEADER!r} header (is it in bidirectional mode?)"
            )
        if isinstance(data, bytes):
            body, content_type = data, "application/octet-stream"
        elif isinstance(data, str):
            body, content_type = data.encode(), "text/plain; charset=utf-8"
        else:
            body, content_type = json.dumps(data).encode(), "application/json"
        headers = CIMultiDict(self._request_headers)
        headers[CROSSWS_ID_HEADER] = self.id
        headers["Content-Type"] = content_type
        session = self._get_session()
        async with session.post(self.url, data=body, headers=headers) as response:
            if not 200 <= response.status < 300:
                raise SSEClientError(
                    f"send to {self.url} failed: HTTP {response.status}",
                    status=response.status,
                    body=await _read_error_body(response),
                )
            return response.status


#: ``connect(url, **options)``: a client for the SSE endpoint ``url``; the
#: very class, so the options are written once (see ``EventSourceClient``).
connect = EventSourceClient


_SHOW_EVENTS = 3  # how many of the last events an error message shows
_SHOW_CHARS = 60  # and how much of each field


def _clip(text: str) -> str:
    if len(text) <= _SHOW_CHARS:
        return repr(text)
    return f"{text[:_SHOW_CHARS]!r}...({len(text)} chars)"


def _describe_events(events: Sequence[ServerSentEvent]) -> str:
    """A short summary of ``events`` for an error message, bounded in size.

    ``no events seen``, or the count and the last three, each field cut to
    60 characters: ``5 events seen, the last 3: message 'c'; update '{"n":1}'
    (id '7'); ...``.
    """
    if not events:
        return "no events seen"
    shown = events[-_SHOW_EVENTS:]
    count = f"{len(events)} event{'s' if len(events) != 1 else ''} seen"
    if len(shown) < len(events):
        count += f", the last {len(shown)}"
    return f"{count}: {'; '.join(_describe_event(event) for event in shown)}"


def _describe_event(event: ServerSentEvent) -> str:
    """``'update' '{"n":1}' (id '7')``: type, data and id, each cut short."""
    text = f"{_clip(event.event)} {_clip(event.data)}"
    return text + f" (id {_clip(event.id)})" if event.id else text


async def _read_error_body(response: aiohttp.ClientResponse) -> str:
    """Read the start of a refused response's body as text (bounded)."""
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(_ERROR_BODY_WAIT):
            while size < _ERROR_BODY_LIMIT:
                chunk = await response.content.readany()
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    raw = b"".join(parts)[:_ERROR_BODY_LIMIT]
    try:
        return raw.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return raw.decode("utf-8", errors="replace")
