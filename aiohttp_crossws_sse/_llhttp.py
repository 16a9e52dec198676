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
  (the probe swaps that object's class while it feeds llhttp);
- the pure-Python parser's position (``aiohttp.http_parser``, the same in all
  three versions): its ``_payload_parser``, an ``HttpPayloadParser`` whose
  ``payload`` is ``request.content``, ``_type`` (``ParseState``), ``_chunk``
  (``ChunkState``), ``_chunk_size``, ``_chunk_tail``, ``_trailer_lines``,
  ``_lax`` (and ``_more_data_available``, 3.14); to give that parser the
  connection back, ``_payload_parser`` is set to ``None`` (and
  ``_payload_has_more_data`` to ``False``, 3.14), after checking ``_upgraded``,
  ``_tail``, ``_lines`` (and ``_pending_upgrade``, 3.14).

Every entry point checks what it relies on and answers "unavailable"
(``None``/``False``) when something is missing or different; the channel then
falls back to aiohttp's public ``readchunk()`` (messages still arrive, whole
and in order, but a chunk whose CRLF comes with the next one — Node's
``fetch`` — is delivered when that CRLF arrives) or, when only the Python
parser's position is not recognised, to that parser's own chunk ends (on
time, but framing errors and limits as aiohttp sees them).

aiohttp's pure-Python parser (``AIOHTTP_NO_EXTENSIONS``, PyPy, platforms
without aiohttp's wheels) is taken over too — not because of when it reports
a chunk's end (as soon as the data is in) but so that the channel sees the
framing itself, as under llhttp: the data before a framing error is kept (the
parser's error makes ``request.content`` raise, not return what it had
buffered), a chunk over the
limit is refused from its size line, a stall inside a line is seen, and no
message is buffered twice. Its position is plain attributes: no probe
(``PythonTakeover.locate``; the bytes it received but had not parsed yet go
to the decoder first). And once the channel has read the body to its end,
with no byte after it, that parser is set past the body
(``PythonTakeover.give_back``): the connection stays reusable. Bytes after
the body's end that reached the channel (a pipelined request) are dropped and
the connection closes after the response, as under llhttp.

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

from aiohttp import http_parser, web
from aiohttp.streams import StreamReader

from ._post.decoder import More, Position, State

__all__ = [
    "WINDOW",
    "Located",
    "PythonTakeover",
    "Takeover",
    "llhttp_parser",
    "read_parsed",
    "reads_chunk_ends",
]

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


# -- aiohttp's pure-Python parser ------------------------------------------------------------


def _chunk_states() -> dict[Any, State]:
    """aiohttp's ``ChunkState`` members, as our decoder's states (empty if unknown)."""
    states = getattr(http_parser, "ChunkState", None)
    names = {
        "PARSE_CHUNKED_SIZE": State.SIZE,
        "PARSE_CHUNKED_CHUNK": State.DATA,
        "PARSE_CHUNKED_CHUNK_EOF": State.CR,
        "PARSE_TRAILERS": State.TRAILERS,
    }
    try:
        return {getattr(states, name): state for name, state in names.items()}
    except AttributeError:
        return {}


_CHUNK_STATES = _chunk_states()
_PARSE_CHUNKED: Any = getattr(getattr(http_parser, "ParseState", None), "PARSE_CHUNKED", object())


class PythonTakeover:
    """Takes a chunked body over from aiohttp's pure-Python parser, and gives
    that parser the connection back once the body has ended."""

    __slots__ = ("_parser", "_payload")

    def __init__(self, parser: Any, payload: Any) -> None:
        self._parser = parser
        self._payload = payload  # its HttpPayloadParser

    @classmethod
    def of(cls, request: web.Request) -> PythonTakeover | None:
        """For a chunked body that aiohttp's Python parser reads; ``None``
        otherwise (llhttp, or internals this module does not recognise)."""
        parser = _request_parser(request)
        payload = getattr(parser, "_payload_parser", None)
        python_parser = getattr(http_parser, "HttpRequestParserPy", None)
        if (
            not isinstance(python_parser, type)
            or not isinstance(parser, python_parser)
            or type(payload) is not getattr(http_parser, "HttpPayloadParser", None)
            or getattr(payload, "payload", None) is not request.content  # (not decompressed)
            or getattr(payload, "_type", None) != _PARSE_CHUNKED
            or getattr(payload, "_lax", True)  # (lax parsing is for responses)
            or not _CHUNK_STATES
            or not reads_chunk_ends(request.content)
        ):
            return None
        return cls(parser, payload)

    def locate(self) -> Located | None:
        """Where the parser stands, once all it parsed has been read from
        ``request.content``; it is left behind from then on (the bytes it holds
        unparsed move to ``Located.unparsed``). ``None``: a state this module
        does not recognise (the parser is left as it was)."""
        payload = self._payload
        state = _CHUNK_STATES.get(getattr(payload, "_chunk", None))
        size = getattr(payload, "_chunk_size", None)
        tail = getattr(payload, "_chunk_tail", None)
        lines = getattr(payload, "_trailer_lines", None)
        if (
            state is None
            or self._parser._payload_parser is not payload  # (checked by ``of``)
            or not isinstance(size, int)
            or not isinstance(tail, bytes)
            or not isinstance(lines, list)
            or getattr(payload, "_more_data_available", False)  # (3.14: a decompressor's)
        ):
            return None
        if state == State.DATA:
            if size <= 0:
                return None
            # (3.14: paused by flow control, it keeps the rest of a read,
            # from this chunk's data on, unparsed.)
            located = Located(Position(State.DATA, remaining=size), size, tail)
        elif state == State.TRAILERS:
            located = Located(Position(State.TRAILERS, trailers=len(lines)), 0, tail)
        else:  # in a size line (the tail: what came of it), or a CRLF due after data
            located = Located(Position(state), 0, tail)
        payload._chunk_tail = b""  # (aiohttp's parser resumes after a pause with it)
        return located

    def give_back(self) -> bool:
        """The body was read to its end, and no byte after it: set the parser
        past the body, as if it had read it itself, so that it reads the
        connection's next request. ``False``: it cannot (close the connection)."""
        parser = self._parser
        if (
            getattr(parser, "_payload_parser", None) is not self._payload
            or getattr(parser, "_upgraded", True)
            or getattr(parser, "_pending_upgrade", False)  # (3.14)
            or getattr(parser, "_tail", None) != b""
            or getattr(parser, "_lines", None) != []
        ):
            return False
        parser._payload_parser = None
        if getattr(parser, "_payload_has_more_data", False):  # (3.14)
            parser._payload_has_more_data = False
        return True


# -- llhttp ------------------------------------------------------------------------------


def _request_parser(request: web.Request) -> Any:
    protocol = request.protocol
    parser = getattr(protocol, "_parser", None)  # aiohttp 3.14
    if parser is None:
        parser = getattr(protocol, "_request_parser", None)  # aiohttp 3.12, 3.13
    return parser


def llhttp_parser(request: web.Request) -> Any | None:
    """The llhttp parser of the request's connection, or ``None`` (the
    pure-Python parser, or internals this module does not recognise)."""
    parser = _request_parser(request)
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
    """Where aiohttp's parser stood: the ``Position`` to start a decoder at,
    how many data bytes the current chunk is known to hold still (a lower
    bound; more than the limit means the chunk is too large), and the bytes
    it had received but not parsed (the decoder reads them first)."""

    position: Position
    due: int
    unparsed: bytes = b""


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

    # Any: aiohttp 3.14 returns a bool here, earlier releases None
    def feed_data(self, data: bytes, size: int = 0) -> Any:
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
