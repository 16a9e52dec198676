"""The POST channel of bidirectional mode: chunk reader → ``Message`` → ``message`` hook.

crossws's ``WebSocketSSE`` client keeps one ``POST`` open and writes every
``send()`` as one HTTP chunk of it; each chunk is one message, and it must
reach the hook as soon as its last byte has arrived.

Why this module reads the chunk framing itself: Node's ``fetch`` writes the
CRLF that ends a chunk together with the *next* chunk (``4\\r\\nping``, later
``\\r\\n5\\r\\nhello``), and aiohttp's C parser (llhttp) reports the end of a
chunk only when that CRLF arrives. ``readchunk()`` would therefore hand every
message over one message late. The chunk sizes that would say "this chunk is
complete" stay inside llhttp.

So for a chunked body parsed by llhttp the channel takes the connection over:
a proxy protocol (``_Tap``) receives the raw bytes in aiohttp's place, and
``_Decoder`` reads the framing itself. What llhttp had parsed before the
handler ran is drained from ``request.content`` (chunk ends included); the
only thing missing is llhttp's position inside the framing — how much of the
current chunk is still due, or how much of a chunk-size line it has seen.
``_probe`` learns it by feeding llhttp a crafted byte string (never real
bytes) and recording, through a stand-in stream reader, what llhttp reports:
data, a chunk header, the end of the message. llhttp is not used again for
that connection, so it closes after the response (no keep-alive).

Plain bodies, and chunked bodies under aiohttp's pure-Python parser (which
reports a chunk's end as soon as its data is complete), stay with aiohttp's
parser: the proxy forwards every read and the channel drains
``request.content`` right after it ("forward" mode); keep-alive is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.streams import StreamReader

from ._hooks import call, logger, report, wrap
from ._message import Message
from ._protocol import Forwarder

if TYPE_CHECKING:
    from ._peer import Peer
    from ._registry import Stats

__all__ = ["receive"]

Spawn = Callable[[Coroutine[Any, Any, Any]], None]

_OPEN = 1  # Peer.ready_state OPEN (this module keeps to _message and _hooks)
_MAX_LINE = 8190  # chunk-size and trailer lines: aiohttp's own max_line_size
_MAX_TRAILERS = 128
_BACKLOG = 256 * 1024  # parsed, undelivered bytes beyond which reading pauses
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_CR, _LF = 13, 10


async def receive(
    request: web.Request,
    peer: Peer,
    *,
    max_size: int,
    stats: Stats,
    spawn: Spawn,
) -> web.StreamResponse:
    """Read one ``POST``'s messages and hand them to ``peer``'s message hooks.

    Answers ``200`` when the body ends (or the peer closes first), ``413`` for
    a message over ``max_size`` and ``400`` for a malformed chunked body.
    """
    inbox = _inbox_for(peer, stats, spawn)
    if inbox is None:
        return web.Response(status=400, text="unknown peer id")
    chunked = hdrs.TRANSFER_ENCODING in request.headers
    length = request.content_length
    if not chunked and length is not None and length > max_size:
        raise _too_large(max_size)
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if chunked and encoding != "identity":
        # One message per chunk of a compressed stream has no meaning.
        raise web.HTTPUnsupportedMediaType(text="compressed message streams are not supported")

    channel = _Channel(request, peer, max_size, chunked)
    try:
        channel.start()
        while True:
            data = channel.next()
            if data is not None:
                if not await inbox.deliver(data):
                    break  # the peer closed
            elif channel.finished:
                break
            else:
                await channel.wait()
    finally:
        channel.stop()
    return channel.response()


def _too_large(max_size: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_size=max_size,
        actual_size=max_size + 1,
        text=f"message larger than {max_size} bytes",
    )


# -- delivery: one peer's hooks, in order ---------------------------------------------


class _Inbox:
    """Runs one peer's message hooks one at a time, in arrival order.

    Hooks run in a task of their own, so a POST connection that drops (and
    has its handler cancelled) never cancels a hook half-way. Each POST waits
    for its message to be handled before reading on, which bounds what is
    queued here and pushes back on the client.
    """

    __slots__ = ("_current", "_peer", "_queue", "_running", "_spawn", "_stats", "_task")

    def __init__(self, peer: Peer, stats: Stats, spawn: Spawn) -> None:
        self._peer = peer
        self._stats = stats
        self._spawn = spawn
        self._queue: deque[tuple[bytes, asyncio.Future[bool]]] = deque()
        self._current: asyncio.Future[bool] | None = None
        self._running = False
        self._task: asyncio.Task[Any] | None = None

    def deliver(self, data: bytes) -> asyncio.Future[bool]:
        """Queue one message; the future is ``True`` once its hooks ran, ``False`` if dropped."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((data, done))
        if not self._running:
            self._running = True
            self._spawn(self._run())
        return done

    async def _run(self) -> None:
        self._task = asyncio.current_task()
        peer = self._peer
        try:
            while self._queue and peer.ready_state == _OPEN:
                data, done = self._queue.popleft()
                self._current = done
                self._stats.messages_received += 1
                await _dispatch(peer, Message(peer, data))
                self._current = None
                if not done.done():
                    done.set_result(True)
        finally:
            self._task = None
            self._running = False
            self._drop()

    def _drop(self) -> None:
        pending = [done for _, done in self._queue]
        self._queue.clear()
        if self._current is not None:
            pending.append(self._current)
            self._current = None
        for done in pending:
            if not done.done():
                done.set_result(False)

    def _on_peer_end(self, _: asyncio.Future[bool]) -> None:
        if _inboxes.get(self._peer) is self:
            del _inboxes[self._peer]
        self._drop()
        if self._task is not None:
            # A hook still running may finish while the close hooks run; it
            # must not outlive the peer, so it is cancelled once they are done.
            self._spawn(self._cancel_when_closed(self._task))

    async def _cancel_when_closed(self, task: asyncio.Task[Any]) -> None:
        await self._peer.wait_closed()
        task.cancel()


async def _dispatch(peer: Peer, message: Message) -> None:
    try:
        for hooks in peer._hooks:
            if hooks.message is not None:
                await call(hooks.message, peer, message)
    except Exception as exc:
        logger.exception("message hook failed for peer %s", peer.id)
        await report(peer._hooks, peer, wrap("message hook failed", exc))


# Keyed by the peer object: a peer belongs to one adapter, and its inbox is
# removed when the peer ends (Peer has __slots__ and no room for it).
_inboxes: dict[Peer, _Inbox] = {}


def _inbox_for(peer: Peer, stats: Stats, spawn: Spawn) -> _Inbox | None:
    inbox = _inboxes.get(peer)
    if inbox is None:
        ended = peer._ended
        if ended is None or ended.done() or peer.ready_state != _OPEN:
            return None
        inbox = _inboxes[peer] = _Inbox(peer, stats, spawn)
        ended.add_done_callback(inbox._on_peer_end)
    return inbox


# -- reading a POST body ----------------------------------------------------------------

_BASIC, _FORWARD, _RAW, _DROP = range(4)


class _Channel:
    """One POST body: where its bytes come from and the messages read so far.

    Modes: ``_FORWARD`` (aiohttp parses; drained after every read), ``_RAW``
    (our ``_Decoder`` reads the bytes llhttp no longer sees), ``_DROP``
    (bytes ignored) and ``_BASIC`` (no proxy possible: ``readchunk()``).
    """

    __slots__ = (
        "active",
        "chunked",
        "content",
        "decoder",
        "finished",
        "inner",
        "max_size",
        "mode",
        "parts",
        "parts_size",
        "paused",
        "peer",
        "probed",
        "queue",
        "queued",
        "reason",
        "request",
        "status",
        "tap",
        "transport",
        "waiter",
    )

    def __init__(self, request: web.Request, peer: Peer, max_size: int, chunked: bool) -> None:
        self.request = request
        self.peer = peer
        self.content = request.content
        self.max_size = max_size
        self.chunked = chunked
        self.mode = _BASIC
        self.active = True  # still turning bytes into messages
        self.finished = False  # no message will follow those queued
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.parts: list[bytes] = []  # the message being read
        self.parts_size = 0
        self.status: int | None = None  # 400/413: the body was refused
        self.reason = ""
        self.decoder: _Decoder | None = None
        self.probed = False  # llhttp was probed: the connection cannot be reused
        self.transport: asyncio.Transport | None = None
        self.inner: Any = None
        self.tap: _Tap | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # -- setup and teardown ---------------------------------------------------------

    def start(self) -> None:
        """Take what aiohttp parsed already and put the proxy in place."""
        ended = self.peer._ended
        if ended is not None:
            ended.add_done_callback(self._on_peer_end)
        content = self.content
        transport = self.request.transport
        if (
            type(content) is not StreamReader
            or not hasattr(content, "_http_chunk_splits")
            or not hasattr(content, "_cursor")
            or transport is None
            or transport.get_protocol() is not self.request.protocol
        ):
            return  # _BASIC: aiohttp's public reading API only
        self.transport = transport
        self.inner = self.request.protocol
        self.mode = _FORWARD
        self._pull()
        if self.finished:
            return
        if self.chunked and _is_llhttp(self.inner._parser):
            self.mode = _RAW
            if self.parts:
                self._resume_in_data()
            # else: llhttp stopped between chunks or inside a size line; the
            # first byte still to come tells which probe reads its state.
        self.tap = _Tap(self.inner, self)
        transport.set_protocol(self.tap)

    def stop(self) -> None:
        """The handler is done: stop reading messages, leave the connection sane."""
        self.active = False
        ended = self.peer._ended
        if ended is not None:
            ended.remove_done_callback(self._on_peer_end)
        self._resume_reading()
        transport, tap = self.transport, self.tap
        if tap is None or transport is None:
            return
        if self.mode == _FORWARD or (self.mode == _RAW and not self.probed):
            # aiohttp's parser is intact: give it the connection back (it
            # reads and discards what is left of the body, keep-alive works).
            if not transport.is_closing() and transport.get_protocol() is tap:
                transport.set_protocol(self.inner)
            self.tap = None
            self.mode = _FORWARD
        elif self.mode == _RAW and self.decoder is not None:
            # Keep following the framing, dropping data, so aiohttp learns
            # where the body ends; the connection closes after the response.
            self.decoder.discard = True

    def response(self) -> web.StreamResponse:
        """The POST's response (raised for 400/413, as aiohttp wants HTTPExceptions)."""
        if self.status == 413:
            exc: web.HTTPException = _too_large(self.max_size)
        elif self.status == 400:
            exc = web.HTTPBadRequest(text=self.reason)
        else:
            resp = web.Response(status=200)
            if self.probed:
                resp.force_close()
            return resp
        if self.probed or self.status == 400:  # (400: the framing is not to be trusted)
            exc.force_close()
        raise exc

    # -- what the handler awaits ------------------------------------------------------

    def next(self) -> bytes | None:
        if not self.queue:
            return None
        data = self.queue.popleft()
        self.queued -= len(data)
        if self.paused and self.queued < _BACKLOG // 2:
            self._resume_reading()
        return data

    async def wait(self) -> None:
        """Until a message, the end of the body, a lost connection or the peer's end."""
        if self.mode == _BASIC:
            await self._read_basic()
            return
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_peer_end(self, _: asyncio.Future[bool]) -> None:
        self._finish()

    def _finish(self) -> None:
        self.active = False
        self.finished = True
        self._wake()

    # -- messages ---------------------------------------------------------------------

    def _add(self, data: bytes) -> None:
        if not self.active:
            return
        if self.parts_size + len(data) > self.max_size:
            self._refuse(413)
            return
        self.parts.append(data)
        self.parts_size += len(data)

    def _end_message(self) -> None:
        data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts = []
        self.parts_size = 0
        self.emit(data)

    def emit(self, data: bytes) -> None:
        """A complete message (the ``_Decoder`` sink)."""
        if not self.active:
            return
        self.queue.append(data)
        self.queued += len(data)
        self._throttle()
        self._wake()

    def _throttle(self) -> None:
        # The hooks are slower than the client: stop reading until they catch
        # up, so a fast client cannot grow the queue without bound. Re-applied
        # after draining aiohttp, which resumes reading as its buffer empties.
        if self.queued > _BACKLOG and self.transport is not None:
            self.paused = True
            _pause(self.transport)

    def oversize(self) -> None:
        """A chunk over ``max_size`` (the ``_Decoder`` sink): refuse the body."""
        self._refuse(413)

    def done(self) -> None:
        """The body ended (the ``_Decoder`` sink)."""
        self._eof()
        self._finish()

    def _refuse(self, status: int, reason: str = "") -> None:
        if self.status is None and self.active:
            self.status = status
            self.reason = reason
        self.parts = []
        self.parts_size = 0
        self._finish()

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionError):
            self._finish()  # the connection is gone
        else:
            self._refuse(400, "invalid request body")

    def _eof(self) -> None:
        # aiohttp checks the payload after the handler: at EOF it neither
        # lingers on the body nor treats the request as unfinished.
        if not self.content.is_eof():
            self.content.feed_eof()

    def _resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None:
                _resume(self.transport)

    # -- forward mode: aiohttp parses, we drain ---------------------------------------

    def _pull(self) -> None:
        """Turn what aiohttp parsed into messages, split at aiohttp's chunk ends."""
        content = self.content
        try:
            while self.active:
                splits = content._http_chunk_splits
                if splits:
                    n = splits[0] - content._cursor
                    if n <= 0:
                        splits.popleft()
                        # Nothing read since the last chunk end: not a message
                        # (aiohttp repeats an end once earlier ones are consumed).
                        if n == 0 and self.parts:
                            self._end_message()
                        continue
                    data = content.read_nowait(n)
                else:
                    data = content.read_nowait(-1)
                if not data:
                    break
                self._add(data)
        except Exception as exc:  # the payload's exception
            self._failed(exc)
            return
        finally:
            self._throttle()
        if self.active and content.is_eof():
            if not self.chunked or self.parts:
                self._end_message()  # a plain body is one message, even empty
            self._finish()

    async def _read_basic(self) -> None:
        try:
            data, end = await self.content.readchunk()
        except Exception as exc:
            self._failed(exc)
            return
        if not self.active:
            return
        if data:
            self._add(data)
        if end and self.chunked and self.parts:
            self._end_message()
        elif not data and not end:  # readchunk()'s EOF
            if not self.chunked or self.parts:
                self._end_message()
            self._finish()

    # -- raw mode: the proxy's bytes ----------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the transport (``_Tap.data_received``)."""
        mode = self.mode
        if mode == _FORWARD:
            self.inner.data_received(data)
            if self.active:
                self._pull()
        elif mode == _RAW:
            if self.decoder is None:
                self._resume_at_line(data)
            decoder = self.decoder
            if decoder is None:
                return
            try:
                decoder.feed(data)
            except _FramingError as exc:
                self._refuse(400, f"invalid chunked body: {exc}")
                self._drop()

    def lost(self) -> None:
        """The connection is gone (``_Tap.connection_lost``)."""
        self.transport = None
        self.tap = None
        self.paused = False
        if self.mode != _FORWARD:
            self._eof()  # aiohttp may be lingering on a body it no longer parses
        self._finish()

    def _drop(self) -> None:
        # Where the body ends is unknown: ignore the rest, close after responding.
        self.mode = _DROP
        self.decoder = None
        self._eof()
        self._resume_reading()

    # -- learning llhttp's position (see the module docstring) --------------------------

    def _resume_in_data(self) -> None:
        """llhttp stopped inside a chunk whose data it has partly fed to us."""
        budget = self.max_size - self.parts_size
        _, fed, _ = self._probe(b"x" * (budget + 1))
        decoder = _Decoder(self, self.max_size)
        if fed > budget:
            self._refuse(413)
            self._drop()
            return
        if fed:  # that many bytes of the chunk are still due
            decoder.state = _S_DATA
            decoder.remaining = fed
            decoder.parts = self.parts
            decoder.parts_size = self.parts_size
            self.parts = []
            self.parts_size = 0
        else:  # the chunk is complete; only its CRLF (or LF) is due
            self._end_message()
            decoder.state = _S_CR_OR_LF
        self.decoder = decoder

    def _resume_at_line(self, ahead: bytes) -> None:
        """llhttp stopped with no chunk data pending: between chunks, inside a
        chunk-size line or the trailers, or after a size line (data all due).
        ``ahead``, the next bytes on the wire, picks a probe whose outcome
        tells these apart."""
        limit = self.max_size
        decoder = _Decoder(self, limit)
        first = ahead[0]
        if first == _LF:
            begun, fed, eof = self._probe(b"\n" + b"x" * (limit + 1))
            if begun:  # the size line lacked only its LF: fed == its size
                decoder.state = _S_SIZE_LF
                decoder.size = fed
            elif fed:
                decoder.state = _S_DATA
                decoder.remaining = fed
            elif eof:  # the final CRLF of the body lacked its LF
                decoder.state = _S_END_LF
            else:  # a trailer line lacked its LF
                decoder.state = _S_TRAILERS_LF
        else:
            lead, in_ext = _line_ending(ahead)
            begun, fed, eof = self._probe(lead + b"x" * (limit + 1))
            if begun:  # inside a size line: fed is the value of its digits so far
                decoder.state = _S_SIZE
                decoder.prefix = fed
                decoder.in_ext = in_ext
            elif fed:  # after a size line: fed is the whole chunk
                decoder.state = _S_DATA
                decoder.remaining = fed
            elif eof:  # in the trailers
                decoder.state = _S_TRAILERS
            else:  # at the start of a size line (or garbage: the decoder says 400)
                decoder.state = _S_SIZE
        if fed > limit:
            self._refuse(413)
            self._drop()
            return
        self.decoder = decoder

    def _probe(self, probe: bytes) -> tuple[bool, int, bool]:
        """Feed ``probe`` to llhttp; returns (chunk header seen, data bytes, message end)."""
        self.probed = True
        log = _PROBE
        log.begun, log.fed, log.eof = False, 0, False
        content = self.content
        # The parser holds this very object as its payload: swapping the
        # class routes llhttp's callbacks to the recorder and keeps nothing.
        content.__class__ = _ProbeReader
        try:
            self.inner._parser.feed_data(probe)
        except Exception:
            pass  # the probe ends in a parse error by design
        finally:
            content.__class__ = StreamReader
        return log.begun, log.fed, log.eof


def _line_ending(ahead: bytes) -> tuple[bytes, bool]:
    """What ends, for llhttp, the line it may have stopped inside of, judged by
    the rest of that line (``ahead``); and whether that is a chunk extension.

    A trailer line has a colon: ``x:`` completes a field name (or is part of a
    value). The rest of a size line can only be hex digits up to ``;`` or CR;
    anything else there is an extension, which needs a name or value
    character (``x``) before the line may end. (An extension whose rest is
    hex digits alone reads as size digits: the one case this cannot tell.)
    In chunk data every byte of the probe is data, whatever it is.
    """
    end = ahead.find(b"\n")
    tail = ahead if end < 0 else ahead[:end]
    if b":" in tail:
        return b"x:\r\n\r\n", False
    for stop in (b";", b"\r"):
        cut = tail.find(stop)
        if cut >= 0:
            tail = tail[:cut]
    if any(c not in _HEXDIGITS for c in tail):
        return b"x\r\n\r\n", True
    return b"\r\n\r\n", False


def _is_llhttp(parser: object) -> bool:
    cls = type(parser)
    return cls.__module__ == "aiohttp._http_parser" and cls.__name__ == "HttpRequestParser"


class _ProbeLog:
    __slots__ = ("begun", "eof", "fed")

    def __init__(self) -> None:
        self.begun = False
        self.fed = 0
        self.eof = False


_PROBE = _ProbeLog()  # a probe runs synchronously; one record serves them all


class _ProbeReader(StreamReader):
    """Stands in for ``request.content`` while llhttp parses a probe: records
    what llhttp reports, keeps nothing, never pauses the connection."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        _PROBE.fed += len(data)
        return False

    def begin_http_chunk_receiving(self) -> None:
        _PROBE.begun = True

    def end_http_chunk_receiving(self) -> None:
        pass

    def feed_eof(self) -> None:
        _PROBE.eof = True


_NO_FLOW_CONTROL = (AttributeError, NotImplementedError, RuntimeError)  # or closing


def _pause(transport: asyncio.Transport) -> None:
    with contextlib.suppress(*_NO_FLOW_CONTROL):
        transport.pause_reading()


def _resume(transport: asyncio.Transport) -> None:
    with contextlib.suppress(*_NO_FLOW_CONTROL):
        transport.resume_reading()


class _Tap(Forwarder):
    """Stands in front of aiohttp's protocol while a POST body is read: the
    body's raw bytes go to the channel instead of aiohttp's parser."""

    __slots__ = ("_channel",)

    def __init__(self, inner: Any, channel: _Channel) -> None:
        super().__init__(inner)
        self._channel: _Channel | None = channel

    def data_received(self, data: bytes) -> None:
        if self._channel is not None:
            self._channel.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.lost()


# -- our reading of the chunked coding (RFC 9112, section 7.1) ----------------------------


class _FramingError(Exception):
    pass


(
    _S_SIZE,
    _S_SIZE_LF,
    _S_DATA,
    _S_CR,
    _S_LF,
    _S_CR_OR_LF,
    _S_TRAILERS,
    _S_TRAILERS_LF,
    _S_END_LF,
    _S_DONE,
) = range(10)


class _Decoder:
    """Reads chunked framing from raw bytes and hands each chunk's data to the
    channel the moment its last byte is in — not when the CRLF after it comes."""

    __slots__ = (
        "discard",
        "in_ext",
        "limit",
        "line",
        "parts",
        "parts_size",
        "prefix",
        "remaining",
        "sink",
        "size",
        "state",
        "trailers",
    )

    def __init__(self, sink: _Channel, limit: int) -> None:
        self.sink = sink
        self.limit = limit
        self.state = _S_SIZE
        self.discard = False  # follow the framing only (refused, or no one listening)
        self.line = bytearray()
        self.parts: list[bytes] = []
        self.parts_size = 0
        self.remaining = 0
        self.size = 0  # _S_SIZE_LF: the size llhttp already read
        self.prefix: int | None = None  # value of the size digits llhttp already read
        self.in_ext = False  # llhttp stopped inside a chunk extension
        self.trailers = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            state = self.state
            if state == _S_DATA:
                take = min(self.remaining, n - i)
                if not self.discard:
                    self.parts.append(data[i : i + take] if take < n else data)
                    self.parts_size += take
                i += take
                self.remaining -= take
                if not self.remaining:
                    self.state = _S_CR
                    parts, self.parts, self.parts_size = self.parts, [], 0
                    if not self.discard:
                        self.sink.emit(parts[0] if len(parts) == 1 else b"".join(parts))
            elif state in (_S_SIZE, _S_TRAILERS):
                j = data.find(b"\n", i)
                end = n if j < 0 else j
                if len(self.line) + end - i > _MAX_LINE:
                    raise _FramingError("line too long")
                self.line += data[i:end]
                if j < 0:
                    return
                i = j + 1
                if not self.line.endswith(b"\r"):
                    raise _FramingError("bare LF")
                line = bytes(self.line[:-1])
                self.line.clear()
                if state == _S_SIZE:
                    self._chunk(self._size(line))
                elif not line:
                    self._done()
                    return
                else:
                    self.trailers += 1
                    if self.trailers > _MAX_TRAILERS:
                        raise _FramingError("too many trailers")
            else:
                byte = data[i]
                i += 1
                if state == _S_CR and byte == _CR:
                    self.state = _S_LF
                elif state in (_S_LF, _S_CR_OR_LF) and byte == _LF:
                    self.state = _S_SIZE
                elif state == _S_CR_OR_LF and byte == _CR:
                    self.state = _S_LF
                elif state == _S_SIZE_LF and byte == _LF:
                    self._chunk(self.size)
                elif state == _S_TRAILERS_LF and byte == _LF:
                    self.state = _S_TRAILERS
                elif state == _S_END_LF and byte == _LF:
                    self._done()
                    return
                elif state == _S_DONE:
                    return  # bytes after the body: the connection closes anyway
                else:
                    raise _FramingError("CRLF expected")

    def _size(self, line: bytes) -> int:
        prefix, self.prefix = self.prefix, None
        in_ext, self.in_ext = self.in_ext, False
        if in_ext and prefix is not None:
            return prefix  # the rest of an extension llhttp had begun
        semi = line.find(b";")
        digits = line if semi < 0 else line[:semi]
        if prefix is None:
            if not _HEX.fullmatch(digits):
                raise _FramingError("bad chunk size")
            return int(digits, 16)
        if digits and not _HEX.fullmatch(digits):
            raise _FramingError("bad chunk size")
        return (prefix << 4 * len(digits)) + (int(digits, 16) if digits else 0)

    def _chunk(self, size: int) -> None:
        if not size:
            self.state = _S_TRAILERS
            return
        if size > self.limit and not self.discard:
            self.discard = True
            self.sink.oversize()
        self.remaining = size
        self.state = _S_DATA

    def _done(self) -> None:
        self.state = _S_DONE
        self.sink.done()
