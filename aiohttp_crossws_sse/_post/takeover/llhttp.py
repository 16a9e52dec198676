"""``LlhttpTakeover``: a chunked body taken over from llhttp, aiohttp's C
parser, whose position is learnt by a probe.

Why llhttp needs a probe: it reports the end of a chunk only once the CRLF
after the data has arrived, so the channel reads the chunked framing itself
(``decoder``) from the moment its handler runs. What llhttp parsed before
that is in ``request.content``; what is missing is llhttp's position inside
the framing — how much of the current chunk is still due, or how much of a
chunk-size line it has read. ``LlhttpTakeover`` learns it by feeding llhttp
crafted bytes (never real ones; ``probe``) and recording what llhttp reports:
data, a chunk header, the end of the message. llhttp is not fed real bytes
again, so that connection is not reused after the response.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader

from ..decoder import Position, State
from .parsed import Located, reads_chunk_ends, request_parser
from .probe import WINDOW, Probe, swappable

__all__ = ["LlhttpTakeover", "llhttp_parser"]

_LF = 10
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


def llhttp_parser(request: web.Request) -> Any | None:
    """The llhttp parser of the request's connection, or ``None`` (the
    pure-Python parser, or internals this package does not recognise)."""
    parser = request_parser(request)
    cls = type(parser)
    if (
        cls.__module__ != "aiohttp._http_parser"
        or cls.__name__ != "HttpRequestParser"
        or not callable(getattr(parser, "feed_data", None))
        or not reads_chunk_ends(request.content)
        or not swappable(request.content)
    ):
        return None
    return parser


class LlhttpTakeover:
    """Learns llhttp's position in a chunked body whose reading the channel
    takes over. One call of ``in_data`` or ``at_line`` per body."""

    __slots__ = ("_content", "_parser", "_probe")

    def __init__(self, parser: Any, content: StreamReader) -> None:
        self._parser = parser
        self._content = content
        self._probe: Probe | None = None

    @property
    def probed(self) -> bool:
        """llhttp was fed probe bytes: it can parse nothing real any more."""
        return self._probe is not None

    def in_data(self, budget: int) -> Located:
        """llhttp stopped after feeding some data of a chunk whose end it has
        not reported: how much of that chunk is still due (``CR_OR_LF``: none,
        only its CRLF). ``budget``: data bytes the chunk may still hold."""
        probe = self._start()
        probe.data_until(min(budget + 1, WINDOW))
        if probe.dead and not probe.fed:
            return Located(Position(State.CR_OR_LF), 0)
        return Located(Position(State.DATA, remaining=probe.fed, more=probe.more()), probe.fed)

    def at_line(self, ahead: bytes, budget: int) -> Located:
        """llhttp stopped with no chunk data pending: between chunks, inside a
        chunk-size line or the trailers, or after a size line (all data due).
        ``ahead``: the first real bytes that followed (not empty); which bytes
        can end llhttp's current line tells which probe sorts these out."""
        probe = self._start()
        if ahead[0] == _LF:
            probe.feed(b"\n")
            if probe.begun:  # the size line lacked only its LF: measure that chunk
                probe.data_until(min(budget + 1, WINDOW))
                return Located(
                    Position(State.SIZE_LF, size=probe.fed, more=probe.more()), probe.fed
                )
            if probe.fed:  # inside data: the LF was data too
                probe.data_until(min(budget + 1, WINDOW))
                return Located(
                    Position(State.DATA, remaining=probe.fed, more=probe.more()), probe.fed
                )
            if probe.eof:  # the CRLF ending the body lacked its LF
                return Located(Position(State.END_LF), 0)
            if probe.dead:  # an LF where a size line starts: the decoder refuses it
                return Located(Position(State.SIZE), 0)
            return Located(Position(State.TRAILERS_LF), 0)  # a trailer line lacked its LF
        lead, in_ext = _line_ending(ahead)
        probe.feed(lead)
        if probe.begun:
            # llhttp was inside a size line; the lead ended it, and what llhttp
            # takes as data now is the value of the digits it had read. That
            # value is needed exactly (more digits may follow), so it is
            # counted out in full — up to the limit.
            probe.data_until(budget + 1)
            return Located(Position(State.SIZE, prefix=probe.fed, in_ext=in_ext), probe.fed)
        if probe.fed:  # after a size line: the lead was data, and so is all the chunk
            probe.data_until(min(budget + 1, WINDOW))
            return Located(Position(State.DATA, remaining=probe.fed, more=probe.more()), probe.fed)
        if probe.eof:  # in the trailers
            return Located(Position(State.TRAILERS), 0)
        # At the start of a size line (or garbage: the decoder refuses it).
        return Located(Position(State.SIZE), 0)

    def _start(self) -> Probe:
        if self._probe is not None:
            raise RuntimeError("llhttp was probed already")
        self._probe = Probe(self._parser, self._content)
        return self._probe


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
