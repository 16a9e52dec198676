"""An asyncio Server-Sent Events client on ``aiohttp.ClientSession``.

Works with any SSE endpoint; with an endpoint of this package in
bidirectional mode it also knows the crossws peer id and can
[send][EventSourceClient.send] messages back::

    async with connect("http://localhost:8080/sse") as client:
        await client.send({"hello": "world"})
        async for event in client:
            print(event.event, event.data)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Generator, Mapping
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._backoff import STABLE_AFTER, reconnect_delay
from ._client_errors import SSEClientError, refusal
from ._describe import describe_events
from ._frame import FORBIDDEN_IN_HEADER
from ._parser import EventStreamParser, ServerSentEvent
from ._send import CREDENTIALS, encode_message, post_message
from ._wire import CROSSWS_ID_EVENT, LAST_EVENT_ID_HEADER, PEER_ID_HEADER

__all__ = ["EventSourceClient", "SSEClientError", "ServerSentEvent", "connect"]

#: Response header (and first event type) carrying the crossws peer id.
CROSSWS_ID_HEADER = PEER_ID_HEADER

logger = logging.getLogger("aiohttp_crossws_sse.client")


def _seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` checked as a number of seconds (``> 0``, or ``>= 0`` with ``zero``)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, not {value!r}")
    return float(value)


def _optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else _seconds(name, value)


class EventSourceClient:
    """One SSE stream, read on demand by the task that iterates it.

    ``async for event in client`` yields [ServerSentEvent][] objects;
    iteration ends when the stream ends, unless the client reconnects.
    ``crossws-id`` events are consumed: they update ``id`` and are not
    yielded. Only one task may read events at a time.

    Nothing is sent until it is used: as ``async with connect(url) as
    client:`` (or ``await connect(url)`` and later ``await client.close()``).
    Without ``session`` the client creates one and closes it on
    [close][EventSourceClient.close]; a given session is left open (its ``raise_for_status``
    is not applied: refusals raise [SSEClientError][]). ``headers`` are
    sent with every request (also the POSTs of [send][EventSourceClient.send]).
    ``last_event_id`` is sent as ``Last-Event-ID`` on the first request.

    Memory stays bounded on an endless stream: ``events`` and ``comments``
    hold only the last ``keep`` of each (``None``: all, for short streams;
    ``0``: none); ``events_seen`` counts them all.

    With ``reconnect=True`` a stream that ends or drops is reopened (to
    ``url``, with ``Last-Event-ID``), after the server's ``retry:`` time, or
    ``retry`` seconds when the server set none. Attempts that fail, and
    streams that end within a few seconds, back off exponentially with
    jitter above that time; a ``503`` with ``Retry-After`` (what this
    package's server answers at ``max_peers`` and while shutting down) waits
    at least that long. No wait exceeds ``max_retry`` seconds (a server's
    longer ``retry:`` or ``Retry-After`` included). Other refusals raise
    [SSEClientError][]; a ``204`` ends the stream for good.

    Timeouts, in seconds (``None``: no bound): ``timeout`` bounds each wait
    for the response headers. ``idle_timeout`` bounds the silence of an open
    stream: a server that sends keep-alive comments (this package's does,
    every ``keepalive`` seconds, 15 by default) is never silent for long,
    so a stream that stays silent longer is taken for a dead (half-open)
    connection and dropped; choose two to three times the server's
    keep-alive interval. ``send_timeout`` bounds each [send][EventSourceClient.send]. Every
    bad value raises ``ValueError`` or ``TypeError`` naming the parameter.
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
        max_retry: float = 30.0,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        send_timeout: float | None = 30.0,
        keep: int | None = 100,
    ) -> None:
        if last_event_id is not None:
            if not isinstance(last_event_id, str):
                raise TypeError(f"last_event_id must be a str, not {type(last_event_id).__name__}")
            if FORBIDDEN_IN_HEADER.search(last_event_id):
                raise ValueError(
                    "last_event_id must not contain a control character but tab "
                    f"(a header cannot carry one): {last_event_id!r}"
                )
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool)):
            raise TypeError(f"keep must be an int or None, not {type(keep).__name__}")
        if keep is not None and keep < 0:
            raise ValueError(f"keep must be >= 0 or None, not {keep!r}")
        self.url = URL(url)
        self.id: str | None = None
        self.reconnect = reconnect
        self.retry = _seconds("retry", retry, zero=True)
        self.max_retry = _seconds("max_retry", max_retry)
        self.timeout = _optional_seconds("timeout", timeout)
        self.idle_timeout = _optional_seconds("idle_timeout", idle_timeout)
        self.send_timeout = _optional_seconds("send_timeout", send_timeout)
        #: How many events were yielded in all (``events`` keeps the last ``keep``).
        self.events_seen = 0
        self._events: deque[ServerSentEvent] = deque(maxlen=keep)
        self._comments: deque[str] = deque(maxlen=keep)
        self._session = session
        self._owns_session = session is None
        self._request_headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._parser = EventStreamParser(last_event_id or "")
        self._pending: deque[ServerSentEvent] = deque()
        self._response: aiohttp.ClientResponse | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._credentials_dropped = False
        self._opened_at = 0.0
        self._last_data = 0.0
        self._failures = 0
        self._reconnect_at: float | None = None
        self._unsendable_id: str | None = None
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
    def stream_url(self) -> URL:
        """The URL the current (or last) stream was served from: ``url``, or
        where its redirects led. [send][EventSourceClient.send] posts there."""
        return self.response.url

    @property
    def last_event_id(self) -> str:
        """The stream's last event ID (sent as ``Last-Event-ID`` on reconnect).

        An ID that a header cannot carry (one with a control character, which
        this package's server never sends) is kept here but not sent: the
        client reconnects without it, and logs a warning.
        """
        return self._parser.last_event_id

    @property
    def events(self) -> list[ServerSentEvent]:
        """The last ``keep`` events yielded, oldest first (a new list)."""
        return list(self._events)

    @property
    def comments(self) -> list[str]:
        """The text after the colon of the last ``keep`` comment lines seen,
        e.g. ``" ping"`` (a new list)."""
        return list(self._comments)

    @property
    def reconnect_delay(self) -> float:
        """Seconds before a reconnection, backoff aside: the server's
        ``retry:`` or ``retry``, at most ``max_retry``."""
        if self._parser.retry is not None:
            return min(self._parser.retry / 1000, self.max_retry)
        return min(self.retry, self.max_retry)

    @property
    def closed(self) -> bool:
        """Whether [close][EventSourceClient.close] was called."""
        return self._closed

    # -- opening and closing -----------------------------------------------

    async def connected(self) -> EventSourceClient:
        """Open the stream if it is not open yet; return the client.

        Raises [SSEClientError][] when the status is not 200 or the
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

    def _stream_headers(self) -> CIMultiDict[str]:
        headers = CIMultiDict(self._request_headers)
        headers["Accept"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        last_id = self._parser.last_event_id
        if not last_id:
            return headers
        if FORBIDDEN_IN_HEADER.search(last_id):
            # aiohttp would refuse the whole request (and servers answer 400):
            # go on without it, as a fresh stream, rather than never again.
            if last_id != self._unsendable_id:
                self._unsendable_id = last_id
                logger.warning(
                    "%s: the last event id %r cannot be sent back in a %s header "
                    "(a control character); reconnecting without it",
                    self.url,
                    last_id,
                    LAST_EVENT_ID_HEADER,
                )
        else:
            headers[LAST_EVENT_ID_HEADER] = last_id
        return headers

    async def _open(self, *, first: bool) -> bool:
        """Request the stream; return False when there is none to read.

        That is when the client was closed meanwhile, or, on a reconnection,
        when the server answered 204 (stop reconnecting, as for ``EventSource``).
        """
        headers = self._stream_headers()
        session = self._get_session()
        # A dead connection must not hang a reconnection either.
        bound = self.timeout if self.timeout is not None else self.idle_timeout
        response: aiohttp.ClientResponse | None = None
        deadline = asyncio.timeout(bound)
        try:
            try:
                async with deadline:
                    response = await session.get(
                        self.url,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                        raise_for_status=False,
                    )
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise TimeoutError(f"no response from {self.url} within {bound}s") from None
            if self._closed:  # close() ran while we waited for the headers
                response.close()
                return False
            if response.status == 204 and not first:
                response.release()
                return False
            content_type = response.headers.get("Content-Type", "")
            mime = content_type.split(";", 1)[0].strip().lower()
            if response.status != 200 or mime != "text/event-stream":
                raise await refusal(self.url, response, content_type)
        except BaseException:
            if response is not None:
                response.close()
            raise
        if self._response is not None:
            self._response.close()
        self._response = response
        self._chunks = response.content.iter_any()
        # Did a redirect leave the origin? Then aiohttp dropped the
        # credentials, and send() must not hand them to that origin either.
        urls = [hop.url for hop in response.history] + [response.url]
        self._credentials_dropped = any(url.origin() != urls[0].origin() for url in urls)
        header_id = response.headers.get(CROSSWS_ID_HEADER)
        self.id = header_id if header_id else None
        self._parser.reset()
        self._opened_at = self._last_data = asyncio.get_running_loop().time()
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
        do not count), and [SSEClientError][] when the stream ended.
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
                raise  # from ``timeout`` or ``idle_timeout``, not ours
            raise TimeoutError(
                f"no event within {timeout}s from {self.url}; {self._describe()}"
            ) from None
        if event is None:
            raise SSEClientError(
                f"the event stream {self.url} ended; {self._describe()}",
                status=self._response.status if self._response is not None else None,
            )
        return event

    def _describe(self) -> str:
        return describe_events(self._events, self.events_seen)

    async def _next(self) -> ServerSentEvent | None:
        """The next event, or ``None`` when there will be no more."""
        while True:
            if self._pending:
                event = self._pending.popleft()
                self._events.append(event)
                self.events_seen += 1
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
            error: BaseException | None = None
            idle = asyncio.timeout_at(
                None if self.idle_timeout is None else self._last_data + self.idle_timeout
            )
            try:
                async with idle:
                    chunk = await anext(self._chunks)
            except StopAsyncIteration:
                pass
            except TimeoutError:  # before OSError, its base class
                if not idle.expired():
                    raise
                error = TimeoutError(
                    f"the event stream {self.url} sent nothing, not even a keep-alive "
                    f"comment, for {self.idle_timeout}s (idle_timeout): a dead connection"
                )
            except (aiohttp.ClientError, OSError) as exc:
                error = exc
            else:
                self._last_data = asyncio.get_running_loop().time()
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
            stable = asyncio.get_running_loop().time() - self._opened_at >= STABLE_AFTER
            self._schedule_reconnect(reset=stable)

    def _feed(self, chunk: bytes) -> None:
        parser = self._parser
        for event in parser.feed(chunk):
            if event.event == CROSSWS_ID_EVENT:
                self.id = event.data
            else:
                self._pending.append(event)
        if parser.comments:
            self._comments.extend(parser.comments)
            parser.comments.clear()

    def _schedule_reconnect(self, *, reset: bool = False, floor: float | None = None) -> None:
        """Set the time of the next attempt; ``reset`` after a stable stream."""
        if reset:
            self._failures = 0
        delay = reconnect_delay(
            self._failures, self.reconnect_delay, self.max_retry, random.random(), floor
        )
        self._failures += 1
        logger.debug("%s: reconnecting in %.3fs (attempt %d)", self.url, delay, self._failures)
        self._reconnect_at = asyncio.get_running_loop().time() + delay

    async def _reopen(self) -> bool:
        """Wait for the reconnection time, then reconnect until it works.

        Connection failures, timeouts and a ``503`` with ``Retry-After`` are
        retried; any other refusal raises [SSEClientError][]; a 204
        returns False.
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
            except SSEClientError as exc:
                if exc.retry_after is None:
                    self._ended = True
                    raise
                self._schedule_reconnect(floor=exc.retry_after)
                continue
            except (aiohttp.ClientConnectionError, OSError, TimeoutError):
                # TimeoutError: ours, for the headers (an outer deadline
                # cancels instead, and is re-raised by its own scope).
                self._schedule_reconnect()
                continue
            self._reconnect_at = None
            return opened

    # -- sending ---------------------------------------------------------------

    async def send(self, data: str | bytes | Mapping[str, Any] | list[Any]) -> int:
        """POST ``data`` as this peer to where the stream is served; return the status.

        Needs the crossws peer ``id`` (bidirectional mode), sent as the
        ``x-crossws-id`` header. ``str`` is sent as UTF-8 text, ``bytes`` as
        is, a dict or list as JSON. The POST goes to [stream_url][EventSourceClient.stream_url], the
        URL the stream was served from after any redirect, and never follows
        a redirect itself (a redirected POST would reach no peer). When that
        redirect left the stream's origin, the ``Authorization`` and
        ``Cookie`` headers given as ``headers`` are not sent, as aiohttp did
        not send them for the stream (and a session with credentials of its
        own, ``auth`` or default headers, raises [SSEClientError][]).

        Raises [SSEClientError][] without a peer id or when the status
        is not 2xx (a redirect included: the message was not delivered),
        ``TimeoutError`` when no response comes within ``send_timeout``
        seconds (the message may or may not have arrived), and aiohttp's
        connection errors as they are.
        """
        if self.id is None:
            raise SSEClientError(
                f"no crossws peer id for {self.url}: the server sent no "
                f"{CROSSWS_ID_HEADER!r} header (is it in bidirectional mode?)"
            )
        body, content_type = encode_message(data)
        target = self._response.url if self._response is not None else self.url
        session = self._get_session()
        headers = CIMultiDict(self._request_headers)
        if self._credentials_dropped:
            if session.auth is not None or any(name in session.headers for name in CREDENTIALS):
                # aiohttp adds a session's own credentials to every request.
                raise SSEClientError(
                    f"send to {target}: the stream was redirected there from another "
                    f"origin ({self.url.origin()}), so aiohttp sent it none of the "
                    "session's credentials; send() will not either, and cannot remove "
                    "the session's own (its auth or headers): use a session without them"
                )
            for name in CREDENTIALS:
                headers.popall(name, None)
        headers[CROSSWS_ID_HEADER] = self.id
        headers["Content-Type"] = content_type
        return await post_message(session, target, body, headers, self.send_timeout)


connect = EventSourceClient
"""``connect(url, **options)``: a client for the SSE endpoint ``url``; the
very class [EventSourceClient][],
so the options are written once."""
