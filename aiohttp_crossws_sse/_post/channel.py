"""``Channel``: one POST body turned into messages for its peer's inbox — the
state machine that drives the layers of ``state`` (one per concern).

The handler's side, in order: ``precheck`` (refusals decided by the headers:
then ``reject``), ``start`` (take what aiohttp parsed, put the tap in place,
choose the ``Mode``), ``wait`` (until no more messages will come and those
that did were handled), ``stop`` (leave the connection sane), ``response``.
The inbox's side: ``throttle`` (and ``delivered``, ``peer_ended``). The tap's
side: ``feed`` (every read, as it arrives) and ``lost``.

Responses: 200 once the body has ended and its messages were handled, or
when the peer closes (then at once); 400 for malformed framing, 413 for a
message over ``max_message_size``, 415 for a compressed chunked body, 408 for
a stall (``timeout``), 429 past ``max_posts_per_peer``. A response before the
body's end ends the connection (``linger``).
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from . import responses, takeover
from .basic import BasicReading
from .forward import ForwardReading
from .raw import RawReading
from .state import BASIC, DROP, FORWARD, RAW
from .tap import Tap, pause_reading, resume_reading
from .timeout import ReceiveTimeout

__all__ = ["Channel"]


class Channel(ReceiveTimeout, ForwardReading, RawReading, BasicReading):
    """One POST body (see the module docstring)."""

    __slots__ = ()

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
            self.mode = FORWARD  # what aiohttp parsed is drained, then dropped
            self._install_tap()
            self._end_early(linger=self.inbox is not None)
        return self.response()

    # -- the handler's side ----------------------------------------------------------------

    def start(self) -> None:
        """Take what aiohttp parsed already and put the tap in place."""
        content = self.content
        # (takeover's functions are looked up on the package each time: the
        # tests replace them there.)
        if self._tap_possible() and (not self.chunked or takeover.reads_chunk_ends(content)):
            parser = takeover.llhttp_parser(self.request) if self.chunked else None
            python = None
            if self.chunked and parser is None:
                python = takeover.PythonTakeover.of(self.request)
            self.mode = FORWARD
            self._install_tap()
            # Before aiohttp's parser is left behind, everything it parsed (or
            # holds back, paused) must be taken, whatever the inbox says: it
            # is not read again (llhttp, once probed, cannot give any of it back).
            self._pull(stop_when_paused=parser is None and python is None)
            if self.open and python is not None:
                self._take_over(python)
            elif self.open and parser is not None:
                self.mode = RAW
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
            if self.mode == FORWARD:
                # aiohttp's parser is intact: give it the connection back
                # (keep-alive works, pipelined requests are served).
                self._uninstall_tap()
            else:
                # llhttp was probed, or the body was refused: bytes after it
                # are lost, and the connection closes after the response.
                self.mode = DROP
            return
        self._end_early(linger=not self.ended)

    def response(self) -> web.StreamResponse:
        """The POST's response (raised for errors, as aiohttp wants HTTPExceptions)."""
        resp = responses.for_status(self.status or 200, self.reason, self.limit)
        # After llhttp was probed (or bytes after the body were dropped), or
        # with the body unfinished, aiohttp cannot parse a next request here.
        if not (self.body_done and self.mode in (FORWARD, BASIC)):
            resp.force_close()
        if self.tap is not None and not self.eof_fed and not self.gone:
            resp.channel = self  # still reading the upload: half-close once it is sent
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    # -- the inbox's side --------------------------------------------------------------------

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
        if self.mode == BASIC:
            waiter = self.unpaused
            if not paused and waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif transport is None:
            pass
        elif paused:
            pause_reading(transport)
        elif self.open and self.mode in (RAW, FORWARD):
            # What was held back is read before anything new (and outside the
            # inbox's loop over its POSTs).
            self.loop.call_soon(self._continue)
        else:
            resume_reading(transport)

    def _continue(self) -> None:
        """Unpaused: read what was held back, then let the client send more."""
        transport = self.transport
        if self.paused or transport is None or self.tap is None:
            return
        if self.open:
            if self.mode == RAW:
                raw = self.raw
                if raw is not None:
                    self.raw = None
                    self._decode(raw, self.raw_at)
            elif self.mode == FORWARD:
                self._pull()
            if self.open and self.inbox is not None:
                self.inbox.flow()
        (pause_reading if self.paused else resume_reading)(transport)

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
        self.tap = Tap(self.inner, self)
        transport.set_protocol(self.tap)

    def _uninstall_tap(self) -> None:
        tap, transport = self.tap, self.transport
        self.tap = None
        if tap is not None and transport is not None:
            tap.uninstall(transport)

    def feed(self, data: bytes) -> None:
        """Bytes from the client (``Tap.data_received``)."""
        self.last = self.loop.time()
        mode = self.mode
        if mode == FORWARD:
            self.inner.data_received(data)
            if self.open:
                self._pull()
        elif mode == RAW:
            self._decode(data)
        elif mode == DROP:
            return
        inbox = self.inbox
        if self.open and inbox is not None:
            inbox.flow()
        if self.paused and self.transport is not None:
            # aiohttp resumes reading as its buffer empties; the inbox says otherwise.
            pause_reading(self.transport)

    def lost(self) -> None:
        """The connection is gone (``Tap.connection_lost``)."""
        self.gone = True
        self.transport = None
        self.tap = None
        self.paused = False
        self._cancel_timer()
        # aiohttp may be lingering on a body no one feeds it any more.
        self._feed_eof()
        self._close()
