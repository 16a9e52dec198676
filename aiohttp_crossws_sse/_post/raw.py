"""``Mode.RAW``: the channel decodes a chunked body itself, from where
aiohttp's parser stood when the channel took over.

Under llhttp, because llhttp reports a chunk's end only when the CRLF after it
arrives — and Node's ``fetch`` sends that CRLF with the *next* chunk; under
the pure-Python parser, so that framing errors, limits and stalls are seen as
under llhttp (that parser gets the connection back at the body's end: it
stays reusable). ``takeover`` tells where the parser stood (``Located``);
a ``ChunkedDecoder`` (``decoder``) reads on from there, with the channel as
its ``Sink``: each chunk is one message, complete the moment its last data
byte arrives.
"""

from __future__ import annotations

from . import takeover
from .decoder import ChunkedDecoder, ChunkedError, State
from .messages import Messages
from .state import DROP, FORWARD, RAW

__all__ = ["RawReading"]


class RawReading(Messages):
    """The channel's reading in ``Mode.RAW`` (see the module docstring)."""

    __slots__ = ()

    def _take_over(self, python: takeover.PythonTakeover) -> None:
        """Decode from where aiohttp's Python parser stopped (its position is
        read, not probed); in an unknown state it just goes on (FORWARD)."""
        located = python.locate()
        if located is None:
            return
        self.mode = RAW
        self.handback = python
        if located.due > self.limit - (0 if self.buf is None else len(self.buf)):
            self._refuse(413)
            self.mode = DROP
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
            self.mode = DROP
            return
        if located.position.state == State.CR_OR_LF:
            self._emit()  # the chunk is complete; only its CRLF is due
        self.decoder = ChunkedDecoder(self, located.position)

    def _locate_at_line(self, ahead: bytes) -> None:
        assert self.llhttp is not None
        located = self.llhttp.at_line(ahead, self.limit)
        if located.due > self.limit:
            self._refuse(413)
            self.mode = DROP
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
            self.mode = DROP
            self.decoder = None
            return
        if decoder.state == State.DONE:
            rest = data[used:] if used < len(data) else b""
            handback = self.handback
            if (
                self.mode == RAW
                and self.status is None
                and handback is not None
                and handback.give_back()
            ):
                # aiohttp's Python parser is past the body now: it reads
                # what follows (a pipelined request), and keep-alive works.
                self.mode = FORWARD
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
