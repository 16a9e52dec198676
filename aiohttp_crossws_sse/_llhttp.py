"""What the POST channel needs to know of aiohttp's internals — all of it, and only here.

No other module of the package touches a private attribute of aiohttp. What is
used, per aiohttp version (3.12, 3.13 and 3.14 are supported):

- the request's HTTP parser: ``RequestHandler._parser`` (3.14) or
  ``RequestHandler._request_parser`` (3.12, 3.13); whether it is llhttp (the
  C parser, ``aiohttp._http_parser.HttpRequestParser``) or the pure-Python one;
- where aiohttp's parser saw chunk ends: ``StreamReader._http_chunk_splits``
  (a ``deque`` since 3.13, a ``list`` before; both only indexed and ``del``-ed
  here) and ``StreamReader._cursor``;
- that the llhttp parser holds ``request.content`` itself as its payload
  (the probe swaps that object's class while it feeds llhttp).

Every entry point checks what it relies on and answers "unavailable"
(``None``/``False``) when something is missing or different; the channel then
falls back to aiohttp's public ``readchunk()`` (messages still arrive, whole
and in order, but a chunk whose CRLF comes with the next one — Node's
``fetch`` — is delivered when that CRLF arrives).

Why llhttp needs a probe: it reports the end of a chunk only once the CRLF
after the data has arrived, so the channel reads the chunked framing itself
(``_chunked``) from the moment its handler runs. What llhttp parsed before
that is in ``request.content``; what is missing is llhttp's position inside
the framing — how much of the current chunk is still due, or how much of a
chunk-size line it has read. ``Takeover`` learns it by feeding llhttp crafted
bytes (never real ones) and recording, through a stand-in payload, what llhttp
reports: data, a chunk header, the end of the message. llhttp is not fed real
bytes again, so that connection is not reused after the response.

Cost of a probe: a few bytes, plus — where llhttp is inside a chunk's data —
data-like bytes in pieces of ``WINDOW``: one piece up front, then one piece per
``WINDOW`` bytes that really arrive (``Position.more``). Memory is one piece,
whatever ``max_message_size``; CPU follows what the client sends. Only when
llhttp stopped inside a chunk-size line must the digits read so far be
counted out in full (up to ``max_message_size``; still in pieces).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.streams import StreamReader

from ._chunked import More, Position, State

__all__ = ["WINDOW", "Located", "Takeover", "llhttp_parser", "read_parsed", "reads_chunk_ends"]

#: Data-like bytes fed to llhttp per probe step (one shared, preallocated piece).
WINDOW = 65536
_XS = b"x" * WINDOW
_LF = 10
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


# -- what aiohttp's parser already parsed -------------------------------------------------


def reads_chunk_ends(content: object) -> bool:
    """Whether ``read_parsed`` works for ``content`` (aiohttp's ``StreamReader``
    with the attributes it uses)."""
    return (
        type(content) is StreamReader
        and hasattr(content, "_http_chunk_splits")
        and isinstance(getattr(content, "_cursor", None), int)
    )


def read_parsed(content: StreamReader) -> tuple[bytes, bool]:
    """A synchronous ``readchunk()``: what aiohttp has parsed and buffered, up
    to the next chunk end, and whether it reaches that end. ``(b"", True)``: a
    chunk end with no data since the previous one; ``(b"", False)``: nothing
    buffered. Raises the payload's exception, as ``read_nowait()`` does.

    Only for ``content`` that passed ``reads_chunk_ends``.
    """
    c: Any = content
    splits = c._http_chunk_splits  # None until a chunked body's first chunk
    if splits:
        n = splits[0] - c._cursor
        if n <= 0:
            del splits[0]
            return b"", n == 0
        data = content.read_nowait(n)
        # (Reading may make aiohttp parse more and append ends: ours stays first.)
        if splits and splits[0] == c._cursor:
            del splits[0]
            return data, True
        return data, False
    return content.read_nowait(-1), False


# -- llhttp ------------------------------------------------------------------------------


def llhttp_parser(request: web.Request) -> Any | None:
    """The llhttp parser of the request's connection, or ``None`` (the
    pure-Python parser, or internals this module does not recognise)."""
    protocol = request.protocol
    parser = getattr(protocol, "_parser", None)  # aiohttp 3.14
    if parser is None:
        parser = getattr(protocol, "_request_parser", None)  # aiohttp 3.12, 3.13
    cls = type(parser)
    if (
        cls.__module__ != "aiohttp._http_parser"
        or cls.__name__ != "HttpRequestParser"
        or not callable(getattr(parser, "feed_data", None))
        or not reads_chunk_ends(request.content)
        or not _swappable(request.content)
    ):
        return None
    return parser


class Located(NamedTuple):
    """Where llhttp stood: the ``Position`` to start a decoder at, and how many
    data bytes the current chunk is known to hold still (a lower bound; more
    than the limit means the chunk is too large)."""

    position: Position
    due: int


class Takeover:
    """Learns llhttp's position in a chunked body whose reading the channel
    takes over. One call of ``in_data`` or ``at_line`` per body."""

    __slots__ = ("_content", "_parser", "_probe")

    def __init__(self, parser: Any, content: StreamReader) -> None:
        self._parser = parser
        self._content = content
        self._probe: _Probe | None = None

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

    def _start(self) -> _Probe:
        if self._probe is not None:
            raise RuntimeError("llhttp was probed already")
        self._probe = _Probe(self._parser, self._content)
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


# -- the probe ------------------------------------------------------------------------------


class _Probe:
    """Feeds llhttp crafted bytes and records what it reports (see the module docstring)."""

    __slots__ = ("_content", "_parser", "begun", "dead", "eof", "fed")

    def __init__(self, parser: Any, content: StreamReader) -> None:
        self._parser = parser
        self._content = content
        self.begun = False  # llhttp read a chunk-size line
        self.fed = 0  # data bytes llhttp passed on
        self.eof = False  # llhttp saw the end of the message
        self.dead = False  # llhttp refused a byte: it has said all it can

    def feed(self, data: bytes) -> None:
        global _recording
        content = self._content
        # The parser holds this very object as its payload: with the class
        # swapped, llhttp's callbacks land in the recorder and keep nothing.
        content.__class__ = _ProbeReader
        _recording = self
        try:
            self._parser.feed_data(data)
        except Exception:
            self.dead = True  # a parse error: by design, where the probe meets real framing
        finally:
            _recording = None
            content.__class__ = StreamReader

    def data_until(self, target: int) -> None:
        """Feed data-like bytes until llhttp has passed on ``target`` data bytes
        in all, or refuses one (the chunk ended), or the message ended."""
        while not self.dead and not self.eof and self.fed < target:
            before = self.fed
            n = min(WINDOW, target - before)
            self.feed(_XS if n == WINDOW else _XS[:n])
            if self.fed == before:
                # No data taken: llhttp is not (or no longer) inside a chunk.
                # (aiohttp 3.14 may pause llhttp after some data, keeping the
                # rest of a feed for the next: that only defers bytes.)
                self.dead = True

    def more(self) -> More | None:
        """``Position.more`` while llhttp still takes data: one more window."""
        if self.dead or self.eof:
            return None

        def more() -> tuple[int, bool]:
            before = self.fed
            self.data_until(before + WINDOW)
            return self.fed - before, self.dead or self.eof

        return more


_recording: _Probe | None = None  # a probe runs synchronously: one at a time


class _ProbeReader(StreamReader):
    """Stands in for ``request.content`` while llhttp parses a probe: records
    what llhttp reports, keeps nothing, never pauses the connection."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        if _recording is not None:
            _recording.fed += len(data)
        return False  # aiohttp 3.14: "no more data pending"

    def begin_http_chunk_receiving(self) -> None:
        if _recording is not None:
            _recording.begun = True

    def end_http_chunk_receiving(self) -> None:
        pass

    def feed_eof(self) -> None:
        if _recording is not None:
            _recording.eof = True


def _swappable(content: StreamReader) -> bool:
    try:
        content.__class__ = _ProbeReader
        content.__class__ = StreamReader
    except TypeError:
        return False
    return True
