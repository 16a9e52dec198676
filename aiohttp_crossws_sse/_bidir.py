"""The POST channel of bidirectional mode: request body → messages → the peer's ``message`` hooks.

crossws's ``WebSocketSSE`` client keeps one ``POST`` open for a whole session
and writes every ``send()`` as one HTTP chunk of it; each chunk is one message
and must reach the hooks as soon as its last byte has arrived. A plain body is
one message.

Two owners:

- ``_Channel``, one per POST: turns its body into messages. It stands in
  front of aiohttp's protocol (``_Tap``, a ``Forwarder``) to see every read
  as it happens. Plain bodies stay with aiohttp's parser and are drained
  right after each read (``FORWARD``; the connection stays reusable). Chunked
  bodies are decoded here (``RAW``, ``_chunked``) from where aiohttp's parser
  stood when the handler took over, which ``_llhttp`` (the only module that
  knows aiohttp's internals) tells: under llhttp, aiohttp's C parser, because
  it reports a chunk's end only when the CRLF after it arrives — and Node's
  ``fetch`` sends that CRLF with the *next* chunk; under the pure-Python
  parser, so that framing errors, limits and stalls are seen as under llhttp
  (that parser gets the connection back at the body's end: it stays
  reusable). Without those internals, aiohttp's public ``readchunk()`` is
  used (``BASIC``: correct, but such a chunk arrives one message late).
- ``_Inbox``, one per peer (in ``Connection.inbox``): hands the messages of
  all that peer's POSTs to its ``message`` hooks one at a time, in arrival
  order, in a task of its own — a dropped POST never cancels a hook half-way.

Bounds, per peer: at most ``max_posts_per_peer`` open POSTs (one more: 429);
the bytes held for them — messages waiting for the hooks plus the message each
POST is reading, at their real size plus ``MESSAGE_OVERHEAD`` each — past
``max_receive_buffer`` stop the reading (TCP pushes back on the client) until
the hooks catch up; one message may always be completed, so a message as large
as ``max_message_size`` gets through whatever that bound. A POST that stalls in
the middle of a message for ``receive_timeout`` gets 408; between messages a
streamed POST may idle as long as its peer lives.

Responses: 200 once the body has ended and its messages were handled, or
when the peer closes (then at once); 400 for malformed framing, 413 for a
message over ``max_message_size``, 415 for a compressed chunked body, 408 and
429 as above. A response sent before the body's end ends the connection, never
aiohttp's ten-second lingering read of a body that never ends: when the peer
is gone or the client has gone quiet, it closes right after the response.
Otherwise — an upload still under way, which a reset could destroy the
response under — the server half-closes (the client reads EOF right after the
response; not over TLS), drops what still comes, and closes once the client
has been quiet for ``LINGER`` seconds, its body ends, or its peer closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import hdrs, web

from ._hooks import run_hooks
from ._message import Message
from ._post import takeover
from ._post.decoder import ChunkedDecoder, ChunkedError, State
from ._protocol import Forwarder
from ._wire import ReadyState

if TYPE_CHECKING:
    from ._connection import Connection
    from ._options import Options

__all__ = ["LINGER", "MESSAGE_OVERHEAD", "receive", "refuse"]

Spawn = Callable[[Coroutine[Any, Any, Any]], object]

#: Bytes counted per message on top of its data's real size (``sys.getsizeof``):
#: the queue slots and allocator rounding of a queued message.
MESSAGE_OVERHEAD = 48
#: Seconds of quiet from a client, still uploading a body its response has
#: refused, before its connection is closed (see the module docstring).
LINGER = 1.0


class _Stats(Protocol):
    messages_received: int


async def receive(
    request: web.Request,
    conn: Connection,
    *,
    options: Options,
    stats: _Stats,
    spawn: Spawn,
) -> web.StreamResponse:
    """Read one ``POST``'s messages and hand them to ``conn``'s message hooks.

    The caller has run the upgrade hooks and matched ``conn`` to the request.
    Returns (or raises, for errors) the response; see the module docstring.
    ``spawn`` runs the hook task (the adapter waits for it on shutdown).
    """
    inbox = _Inbox.of(conn, options, stats, spawn)
    channel = _Channel(request, conn, inbox, options)
    if channel.precheck():
        return channel.reject()
    assert inbox is not None
    inbox.attach(channel)
    try:
        channel.start()
        await channel.wait()
    finally:
        try:
            await channel.stop()
        finally:
            inbox.detach(channel)
    return channel.response()


def refuse(request: web.Request, reason: str, options: Options) -> web.StreamResponse:
    """400 for a ``POST`` that reaches no peer (its id missing or unknown):
    the body is dropped, and the connection closes right after the response
    rather than after aiohttp's lingering read of a body that may never end.
    Raises the response, as ``receive`` does for errors."""
    channel = _Channel(request, None, None, options)
    channel.status, channel.reason = 400, reason
    return channel.reject()


# -- one peer's inbox ------------------------------------------------------------------------


def _cost(data: bytes | bytearray) -> int:
    return sys.getsizeof(data) + MESSAGE_OVERHEAD


class _Inbox:
    """One peer's messages on their way to its ``message`` hooks (see the
    module docstring); also the per-peer bounds of its POSTs."""

    __slots__ = (
        "_channels",
        "_conn",
        "_finisher",
        "_handling",
        "_limit",
        "_max_posts",
        "_over",
        "_owners",
        "_queue",
        "_spawn",
        "_stats",
        "_task",
        "closed",
        "held",
    )

    def __init__(self, conn: Connection, options: Options, stats: _Stats, spawn: Spawn) -> None:
        self._conn = conn
        self._stats = stats
        self._spawn = spawn
        self._limit = options.max_receive_buffer
        self._max_posts = options.max_posts_per_peer
        self._queue: deque[bytes] = deque()
        self._owners: deque[_Channel] = deque()  # the POST each queued message came from
        self._channels: list[_Channel] = []  # open POSTs, oldest first
        self._finisher: _Channel | None = None  # may read on past the limit (see flow)
        self._handling = False  # the hook task is running (or about to)
        self._task: asyncio.Task[Any] | None = None
        self.closed = False  # the peer is closing: nothing is accepted any more
        self.held = 0  # bytes counted against max_receive_buffer
        self._over = False  # held went past the limit and not yet back to half

    @classmethod
    def of(cls, conn: Connection, options: Options, stats: _Stats, spawn: Spawn) -> _Inbox | None:
        """The peer's inbox (made on its first POST); ``None`` once it is closing."""
        inbox: _Inbox | None = conn.inbox
        if inbox is None:
            if conn.ended.done() or conn.peer.ready_state != ReadyState.OPEN:
                return None
            inbox = conn.inbox = cls(conn, options, stats, spawn)
            conn.ended.add_done_callback(inbox._on_end)
        return None if inbox.closed else inbox

    @property
    def max_posts(self) -> int | None:
        return self._max_posts

    def full(self) -> bool:
        """No room for one more POST."""
        return self._max_posts is not None and len(self._channels) >= self._max_posts

    def attach(self, channel: _Channel) -> None:
        self._channels.append(channel)

    def detach(self, channel: _Channel) -> None:
        with contextlib.suppress(ValueError):
            self._channels.remove(channel)
        if self._finisher is channel:
            self._finisher = None
        self.flow()

    def put(self, channel: _Channel, data: bytes) -> None:
        """Queue one complete message of ``channel``."""
        self._queue.append(data)
        self._owners.append(channel)
        self.held += _cost(data)
        if not self._handling:
            self._handling = True
            self._spawn(self._run())

    async def _run(self) -> None:
        self._task = asyncio.current_task()
        conn, queue, owners = self._conn, self._queue, self._owners
        peer = conn.peer
        try:
            while queue and not self.closed and peer.ready_state == ReadyState.OPEN:
                data = queue.popleft()
                owner = owners.popleft()
                self._stats.messages_received += 1
                try:
                    # Failures are logged and reported to the error hooks there.
                    await run_hooks(conn.hooks, "message", peer, Message(peer, data))
                finally:
                    self.held -= _cost(data)
                    owner.delivered()
                self.flow()
        finally:
            self._task = None
            self._handling = False
            if not self.closed:
                self.flow()  # the hooks are idle now: that may let a POST read on

    def flow(self) -> None:
        """Pause or resume the peer's POSTs after ``held`` changed.

        Under the limit (once past it: under half of it) every POST reads.
        Over it, while the hooks have work
        (which frees memory), none does. Over it with the hooks idle, the
        excess is messages still being read: one POST — the one furthest into
        its message — finishes that message, so progress never stalls.
        """
        channels = self._channels
        if self._over:
            self._over = self.held > self._limit // 2  # hysteresis: resume at half
        else:
            self._over = self.held > self._limit
        if not self._over:
            self._finisher = None
            for channel in channels:
                channel.throttle(False)
            return
        if self._queue or self._handling:
            self._finisher = None
            for channel in channels:
                channel.throttle(True)
            return
        finisher = self._finisher
        if finisher is None or not finisher.held:
            finisher = None
            for channel in channels:
                if channel.held and (finisher is None or channel.held > finisher.held):
                    finisher = channel
            self._finisher = finisher
        for channel in channels:
            channel.throttle(channel is not finisher)

    def _on_end(self, _: asyncio.Future[bool]) -> None:
        """The peer is closing: drop what waits, end its POSTs."""
        self.closed = True
        owners = list(self._owners)
        self._queue.clear()
        self._owners.clear()
        for channel in (*self._channels, *owners):
            channel.peer_ended()
        self._channels.clear()
        self._finisher = None
        if self._task is not None:
            # A hook still running may finish while the close hooks run; it
            # must not outlive the peer, so it is cancelled once they are done.
            self._spawn(self._cancel_when_closed(self._task))

    async def _cancel_when_closed(self, task: asyncio.Task[Any]) -> None:
        await self._conn.peer.wait_closed()
        task.cancel()


# -- one POST --------------------------------------------------------------------------------

_BASIC, _FORWARD, _RAW, _DROP = range(4)  # see _Channel


class _Channel:
    """One POST body (see the module docstring).

    Modes: ``_FORWARD`` (aiohttp parses, drained after every read), ``_RAW``
    (our ``ChunkedDecoder`` reads what aiohttp's parser no longer sees), ``_DROP``
    (bytes ignored: refused or ended early) and ``_BASIC`` (aiohttp's public
    ``readchunk()``, in a task of its own).
    """

    __slots__ = (
        "_ahead",
        "body_done",
        "buf",
        "chunked",
        "conn",
        "content",
        "decoder",
        "ended",
        "eof_fed",
        "gone",
        "grace",
        "handback",
        "held",
        "inbox",
        "inner",
        "last",
        "limit",
        "llhttp",
        "loop",
        "mode",
        "open",
        "paused",
        "pending",
        "raw",
        "raw_at",
        "reader",
        "reason",
        "request",
        "status",
        "tap",
        "timeout",
        "timer",
        "transport",
        "unpaused",
        "waiter",
    )

    def __init__(
        self,
        request: web.Request,
        conn: Connection | None,
        inbox: _Inbox | None,
        options: Options,
    ) -> None:
        self.request = request
        self.conn = conn
        self.inbox = inbox
        self.content = request.content
        self.limit = options.max_message_size
        self.timeout = options.receive_timeout
        self.chunked = hdrs.TRANSFER_ENCODING in request.headers
        self.loop = asyncio.get_running_loop()
        self.mode = _BASIC
        self.open = True  # still turning bytes into messages
        self.body_done = False  # the body's end was read
        self.ended = False  # the peer is closing
        self.gone = False  # the connection is gone
        self.status: int | None = None  # the body was refused with this status
        self.reason = ""
        self.buf: bytes | bytearray | None = None  # the message being read
        self.raw: bytes | None = None  # RAW: a read held back (paused) from raw_at on
        self.raw_at = 0
        self.held = 0  # what buf counts against the inbox
        self.pending = 0  # messages of this POST queued or being handled
        self.decoder: ChunkedDecoder | None = None
        self.llhttp: takeover.LlhttpTakeover | None = None
        self.handback: takeover.PythonTakeover | None = None  # RAW under the Python parser
        self._ahead = False  # RAW: llhttp's position is learnt from the first new bytes
        self.transport: asyncio.Transport | None = None
        self.inner: Any = None  # aiohttp's protocol
        self.tap: _Tap | None = None
        self.paused = False  # throttled by the inbox
        self.unpaused: asyncio.Future[None] | None = None  # BASIC: the reader waits
        self.reader: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.eof_fed = False
        self.last = self.loop.time()  # when the client's last byte came
        self.grace = self.last  # receive_timeout: stalls count from here at the earliest

    # -- before reading ------------------------------------------------------------------

    def precheck(self) -> bool:
        """Refusals decided by the headers alone (or the peer's state); True: refused."""
        inbox = self.inbox
        request = self.request
        if inbox is None:
            self.status, self.reason = 400, "unknown peer id"
        elif self.chunked and (
            request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower() != "identity"
        ):
            # One message per chunk of a compressed stream has no meaning.
            self.status, self.reason = 415, "compressed message streams are not supported"
        elif not self.chunked and (request.content_length or 0) > self.limit:
            self.status = 413
        elif inbox.full():
            self.status = 429
            self.reason = f"too many open POSTs for this peer (at most {inbox.max_posts})"
        else:
            return False
        return True

    def reject(self) -> web.StreamResponse:
        """Answer the refusal ``precheck`` found without reading the body, whose
        rest is dropped."""
        self.open = False
        if self.content.is_eof():
            self.body_done = True  # all of it arrived: aiohttp can read the next request
        elif self._tap_possible():
            self.mode = _FORWARD  # what aiohttp parsed is drained, then dropped
            self._install_tap()
            self._end_early(linger=self.inbox is not None)
        return self.response()

    # -- the handler's side ----------------------------------------------------------------

    def start(self) -> None:
        """Take what aiohttp parsed already and put the tap in place."""
        content = self.content
        if self._tap_possible() and (not self.chunked or takeover.reads_chunk_ends(content)):
            parser = takeover.llhttp_parser(self.request) if self.chunked else None
            python = None
            if self.chunked and parser is None:
                python = takeover.PythonTakeover.of(self.request)
            self.mode = _FORWARD
            self._install_tap()
            # Before aiohttp's parser is left behind, everything it parsed (or
            # holds back, paused) must be taken, whatever the inbox says: it
            # is not read again (llhttp, once probed, cannot give any of it back).
            self._pull(stop_when_paused=parser is None and python is None)
            if self.open and python is not None:
                self._take_over(python)
            elif self.open and parser is not None:
                self.mode = _RAW
                self.llhttp = takeover.LlhttpTakeover(parser, content)
                if self.buf is not None:
                    self._locate_in_data()
                else:
                    # llhttp stopped between chunks or inside a line: the
                    # first new bytes tell which probe reads its state.
                    self._ahead = True
        else:
            self.reader = asyncio.ensure_future(self._read_basic())
        if self.open:
            self._arm()

    async def wait(self) -> None:
        """Until no more messages will come from this POST and the hooks have
        handled those that did (not waited for when the peer or the connection
        is gone)."""
        while self.open or (self.pending and not self.ended and not self.gone):
            waiter = self.waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None

    async def stop(self) -> None:
        """The handler is done: stop reading and leave the connection sane."""
        self.open = False
        self._cancel_timer()
        reader = self.reader
        if reader is not None:
            reader.cancel()
            # Its readchunk() must stop waiting before aiohttp reads the payload.
            await asyncio.wait([reader])
        self.throttle(False)
        if self.tap is None or self.gone:
            return
        if self.body_done:
            if self.mode == _FORWARD:
                # aiohttp's parser is intact: give it the connection back
                # (keep-alive works, pipelined requests are served).
                self._uninstall_tap()
            else:
                # llhttp was probed, or the body was refused: bytes after it
                # are lost, and the connection closes after the response.
                self.mode = _DROP
            return
        self._end_early(linger=not self.ended)

    def response(self) -> web.StreamResponse:
        """The POST's response (raised for errors, as aiohttp wants HTTPExceptions)."""
        status = self.status or 200
        resp: _HalfClose
        if status == 413:
            resp = _TooLarge(
                max_size=self.limit,
                actual_size=self.limit + 1,
                text=f"message larger than {self.limit} bytes",
            )
        elif status == 200:
            resp = _Ok()
        else:
            resp = _ERRORS[status](text=self.reason)
        # After llhttp was probed (or bytes after the body were dropped), or
        # with the body unfinished, aiohttp cannot parse a next request here.
        if not (self.body_done and self.mode in (_FORWARD, _BASIC)):
            resp.force_close()
        if self.tap is not None and not self.eof_fed and not self.gone:
            resp.channel = self  # still reading the upload: half-close once it is sent
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the inbox's side --------------------------------------------------------------------

    def delivered(self) -> None:
        """One of this POST's messages was handled (or dropped)."""
        self.pending -= 1
        if not self.pending:
            self._wake()

    def peer_ended(self) -> None:
        self.ended = True
        self._close()

    def throttle(self, paused: bool) -> None:
        """Stop (or resume) reading from the client: the peer holds too much."""
        if paused and not self.open:
            return
        if paused == self.paused:
            return
        self.paused = paused
        if not paused:
            self.grace = self.loop.time()  # receive_timeout: a pause is not a stall
        transport = self.transport
        if self.mode == _BASIC:
            waiter = self.unpaused
            if not paused and waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif transport is None:
            pass
        elif paused:
            _pause(transport)
        elif self.open and self.mode in (_RAW, _FORWARD):
            # What was held back is read before anything new (and outside the
            # inbox's loop over its POSTs).
            self.loop.call_soon(self._continue)
        else:
            _resume(transport)

    def _continue(self) -> None:
        """Unpaused: read what was held back, then let the client send more."""
        transport = self.transport
        if self.paused or transport is None or self.tap is None:
            return
        if self.open:
            if self.mode == _RAW:
                raw = self.raw
                if raw is not None:
                    self.raw = None
                    self._decode(raw, self.raw_at)
            elif self.mode == _FORWARD:
                self._pull()
            if self.open and self.inbox is not None:
                self.inbox.flow()
        (_pause if self.paused else _resume)(transport)

    # -- messages ------------------------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        """Data of the message being read."""
        if not self.open:
            return
        buf = self.buf
        if buf is None:
            if len(data) > self.limit:
                self._refuse(413)
                return
            self.buf = data
        else:
            if len(buf) + len(data) > self.limit:
                self._refuse(413)
                return
            if isinstance(buf, bytes):
                # Pieces go into one growing buffer: many small pieces must not
                # cost an object (and its header) each.
                buf = self.buf = bytearray(buf)
            buf += data
        self._account()

    def _account(self) -> None:
        buf = self.buf
        held = 0 if buf is None else _cost(buf)
        inbox = self.inbox
        if inbox is not None:
            inbox.held += held - self.held
        self.held = held

    def _emit(self) -> None:
        """The message being read is complete."""
        buf = self.buf
        data = b"" if buf is None else buf if isinstance(buf, bytes) else bytes(buf)
        self.buf = None
        self._account()
        inbox = self.inbox
        if not self.open or inbox is None:
            return
        self.pending += 1
        inbox.put(self, data)
        inbox.flow()

    def _body_end(self) -> None:
        """The body's end was read."""
        self.body_done = True
        if self.mode != _FORWARD:
            self._feed_eof()
        self._close()

    def _refuse(self, status: int, reason: str = "") -> None:
        if self.status is None and self.open:
            self.status = status
            self.reason = reason
        if self.decoder is not None:
            self.decoder.discard = True
        self._close()

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionError):
            self.gone = True
            self._close()  # the connection is gone
        else:
            self._refuse(400, "invalid chunked body" if self.chunked else "invalid request body")

    def _close(self) -> None:
        """No more messages from this POST."""
        if self.open:
            self.open = False
            self._cancel_timer()
        self.raw = None
        if self.buf is not None:
            self.buf = None
            self._account()
        inbox = self.inbox
        if inbox is not None:
            inbox.flow()
        self._wake()

    # -- FORWARD: aiohttp parses, the channel drains ---------------------------------------

    def _pull(self, *, stop_when_paused: bool = True) -> None:
        """Turn what aiohttp parsed into messages, split at aiohttp's chunk ends
        (the rest waits in aiohttp's buffer when the inbox pauses this POST)."""
        content = self.content
        try:
            while self.open:
                if self.chunked:
                    data, end = takeover.read_parsed(content)
                else:  # a plain body needs no chunk ends (nor aiohttp's internals)
                    data, end = content.read_nowait(-1), False
                if data:
                    self._take(data)
                if end:
                    if self.buf is not None:
                        self._emit()
                        if self.paused and stop_when_paused:
                            break
                elif not data:
                    break
        except Exception as exc:  # the payload's exception
            self._failed(exc)
            return
        if self.open and content.at_eof():
            if not self.chunked or self.buf is not None:
                self._emit()  # a plain body is one message, even an empty one
            self._body_end()

    # -- RAW: the channel decodes --------------------------------------------------------------

    def _take_over(self, python: takeover.PythonTakeover) -> None:
        """Decode from where aiohttp's Python parser stopped (its position is
        read, not probed); in an unknown state it just goes on (FORWARD)."""
        located = python.locate()
        if located is None:
            return
        self.mode = _RAW
        self.handback = python
        if located.due > self.limit - (0 if self.buf is None else len(self.buf)):
            self._refuse(413)
            self.mode = _DROP
            return
        self.decoder = ChunkedDecoder(self, located.position)
        if located.unparsed:
            self._decode(located.unparsed)

    def _locate_in_data(self) -> None:
        """llhttp stopped inside a chunk whose data it has partly passed on."""
        assert self.llhttp is not None and self.buf is not None
        budget = self.limit - len(self.buf)
        located = self.llhttp.in_data(budget)
        if located.due > budget:
            self._refuse(413)
            self.mode = _DROP
            return
        if located.position.state == State.CR_OR_LF:
            self._emit()  # the chunk is complete; only its CRLF is due
        self.decoder = ChunkedDecoder(self, located.position)

    def _locate_at_line(self, ahead: bytes) -> None:
        assert self.llhttp is not None
        located = self.llhttp.at_line(ahead, self.limit)
        if located.due > self.limit:
            self._refuse(413)
            self.mode = _DROP
            return
        self.decoder = ChunkedDecoder(self, located.position)

    def _decode(self, data: bytes, start: int = 0) -> None:
        raw = self.raw
        if raw is not None:  # bytes held back come first
            self.raw = None
            data = raw[self.raw_at :] + data[start:]
            start = 0
        if self._ahead:
            self._ahead = False
            self._locate_at_line(data[start:] if start else data)
        decoder = self.decoder
        if decoder is None:
            return
        try:
            used = decoder.feed(data, start)
        except ChunkedError as exc:
            self._refuse(400, f"invalid chunked body: {exc}")
            # Where the body ends is unknown now: ignore the rest.
            self.mode = _DROP
            self.decoder = None
            return
        if decoder.state == State.DONE:
            rest = data[used:] if used < len(data) else b""
            handback = self.handback
            if (
                self.mode == _RAW
                and self.status is None
                and handback is not None
                and handback.give_back()
            ):
                # aiohttp's Python parser is past the body now: it reads
                # what follows (a pipelined request), and keep-alive works.
                self.mode = _FORWARD
                if rest:
                    self.inner.data_received(rest)
            # (else what follows the body is dropped, as after llhttp)
        elif used < len(data) and self.open:
            # Paused after a chunk: the rest of this read waits undecoded — at
            # most one read per POST, a fraction of what it would cost as
            # many tiny messages (not counted as held: pausing cannot free it).
            self.raw = data
            self.raw_at = used

    # ChunkedDecoder's sink:

    def chunk_started(self, size: int) -> None:
        if size > self.limit:
            self._refuse(413)

    def chunk_data(self, data: bytes) -> None:
        self._take(data)

    def chunk_ended(self) -> bool:
        if self.open:
            self._emit()  # may pause this POST: then the decoder stops here
        return not self.paused

    def body_ended(self) -> None:
        self._body_end()

    # -- BASIC: aiohttp's public reading API -------------------------------------------------

    async def _read_basic(self) -> None:
        content = self.content
        try:
            while self.open:
                if self.paused:
                    waiter = self.unpaused = self.loop.create_future()
                    try:
                        await waiter
                    finally:
                        self.unpaused = None
                    continue
                data, end = await content.readchunk()
                self.last = self.loop.time()
                if not self.open:
                    break
                if data:
                    self._take(data)
                if end and self.chunked:
                    if self.buf is not None:
                        self._emit()
                elif not data and not end:  # readchunk()'s EOF
                    if not self.chunked or self.buf is not None:
                        self._emit()
                    self._body_end()
                if self.inbox is not None:
                    self.inbox.flow()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)

    # -- the tap: bytes as they arrive -------------------------------------------------------

    def _tap_possible(self) -> bool:
        transport = self.request.transport
        return (
            transport is not None
            and not transport.is_closing()
            and transport.get_protocol() is self.request.protocol
        )

    def _install_tap(self) -> None:
        transport = self.request.transport
        assert transport is not None
        self.transport = transport
        self.inner = transport.get_protocol()
        self.tap = _Tap(self.inner, self)
        transport.set_protocol(self.tap)

    def _uninstall_tap(self) -> None:
        tap, transport = self.tap, self.transport
        self.tap = None
        if tap is not None and transport is not None:
            tap.uninstall(transport)

    def feed(self, data: bytes) -> None:
        """Bytes from the client (``_Tap.data_received``)."""
        self.last = self.loop.time()
        mode = self.mode
        if mode == _FORWARD:
            self.inner.data_received(data)
            if self.open:
                self._pull()
        elif mode == _RAW:
            self._decode(data)
        elif mode == _DROP:
            return
        inbox = self.inbox
        if self.open and inbox is not None:
            inbox.flow()
        if self.paused and self.transport is not None:
            # aiohttp resumes reading as its buffer empties; the inbox says otherwise.
            _pause(self.transport)

    def lost(self) -> None:
        """The connection is gone (``_Tap.connection_lost``)."""
        self.gone = True
        self.transport = None
        self.tap = None
        self.paused = False
        self._cancel_timer()
        # aiohttp may be lingering on a body no one feeds it any more.
        self._feed_eof()
        self._close()

    # -- ending early, lingering ------------------------------------------------------------

    def _end_early(self, *, linger: bool) -> None:
        """The response comes before the body's end: drop the rest, and have
        aiohttp close the connection after the response (see the module
        docstring for when)."""
        if self.mode == _FORWARD:
            # Whatever aiohttp parsed is dropped with the rest; with its buffer
            # empty, aiohttp neither parses nor reads the payload again.
            with contextlib.suppress(Exception):
                while self.content.read_nowait(-1):
                    pass
        if linger and self.mode == _RAW and self.decoder is not None:
            self.decoder.discard = True  # following the framing: its end ends the wait
        else:
            self.mode = _DROP
        self.paused = False
        if self.transport is not None:
            _resume(self.transport)
        conn = self.conn
        if not linger or conn is None or self.loop.time() - self.last >= LINGER:
            self._feed_eof()
            return
        conn.ended.add_done_callback(self._linger_over)
        self.timer = self.loop.call_at(self.last + LINGER, self._linger_check)

    def response_written(self) -> None:
        """The response to a body still arriving is out: half-close (FIN), so
        the client learns at once that nothing more comes, while the rest of
        its upload is still read and dropped until ``_feed_eof``."""
        transport = self.transport
        if self.eof_fed or self.gone or transport is None or transport.is_closing():
            return
        with contextlib.suppress(*_NO_FLOW_CONTROL):  # (TLS cannot half-close)
            if transport.can_write_eof():
                transport.write_eof()

    def _linger_check(self) -> None:
        self.timer = None
        if self.eof_fed or self.gone:
            return
        quiet = self.loop.time() - self.last
        if quiet >= LINGER:
            self._feed_eof()
        else:
            self.timer = self.loop.call_at(self.last + LINGER, self._linger_check)

    def _linger_over(self, _: object = None) -> None:
        self._feed_eof()

    def _feed_eof(self) -> None:
        """Tell aiohttp the body is over: it stops waiting for it (and closes
        the connection after a response marked so)."""
        if self.eof_fed:
            return
        self.eof_fed = True
        if not self.open:
            self._cancel_timer()
        if self.conn is not None:
            with contextlib.suppress(ValueError):
                self.conn.ended.remove_done_callback(self._linger_over)
        if not self.content.is_eof():
            self.content.feed_eof()

    # -- the receive timeout -----------------------------------------------------------------

    def _arm(self) -> None:
        if self.timeout is not None:
            self.timer = self.loop.call_at(self.last + self.timeout, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        timeout = self.timeout
        if not self.open or timeout is None:
            return
        now = self.loop.time()
        if self.paused or not self._mid_message():
            self.grace = now  # not a stall of the client's: the clock starts again
        elif now - max(self.last, self.grace) >= timeout:
            self._refuse(408, f"no data for {timeout:g} s in the middle of a message")
            return
        self.timer = self.loop.call_at(max(self.last, self.grace) + timeout, self._on_timer)

    def _mid_message(self) -> bool:
        """Whether the client owes bytes now (it may not pause here)."""
        if not self.chunked:
            return True
        if self.mode == _RAW:
            decoder = self.decoder
            return decoder is not None and not decoder.between_chunks
        return self.buf is not None

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _HalfClose(web.StreamResponse):
    """A response that may tell its channel when it has been written (aiohttp
    offers no other hook between writing a response and its lingering read)."""

    channel: _Channel | None = None

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.response_written()


class _Ok(_HalfClose, web.Response):
    pass


class _BadRequest(_HalfClose, web.HTTPBadRequest):
    pass


class _Timeout(_HalfClose, web.HTTPRequestTimeout):
    pass


class _TooLarge(_HalfClose, web.HTTPRequestEntityTooLarge):
    pass


class _Unsupported(_HalfClose, web.HTTPUnsupportedMediaType):
    pass


class _TooMany(_HalfClose, web.HTTPTooManyRequests):
    pass


_ERRORS: dict[int, Callable[..., _HalfClose]] = {
    400: _BadRequest,
    408: _Timeout,
    415: _Unsupported,
    429: _TooMany,
}


class _Tap(Forwarder):
    """Stands in front of aiohttp's protocol while a POST body is read: the
    body's raw bytes go to the channel first (or instead)."""

    __slots__ = ("_channel",)

    def __init__(self, inner: asyncio.BaseProtocol, channel: _Channel) -> None:
        super().__init__(inner)
        self._channel: _Channel | None = channel

    def data_received(self, data: bytes) -> None:
        if self._channel is not None:
            self._channel.feed(data)
        else:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.lost()


_NO_FLOW_CONTROL = (AttributeError, NotImplementedError, RuntimeError)  # or closing


def _pause(transport: asyncio.Transport) -> None:
    with contextlib.suppress(*_NO_FLOW_CONTROL):
        transport.pause_reading()


def _resume(transport: asyncio.Transport) -> None:
    with contextlib.suppress(*_NO_FLOW_CONTROL):
        transport.resume_reading()
