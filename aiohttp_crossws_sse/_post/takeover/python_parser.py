"""``PythonTakeover``: a chunked body taken over from aiohttp's pure-Python
parser, and the connection given back to that parser at the body's end.

That parser (``AIOHTTP_NO_EXTENSIONS``, PyPy, platforms without aiohttp's
wheels) is taken over — not because of when it reports a chunk's end (as soon
as the data is in) but so that the channel sees the framing itself, as under
llhttp: the data before a framing error is kept (the parser's error makes
``request.content`` raise, not return what it had buffered), a chunk over the
limit is refused from its size line, a stall inside a line is seen, and no
message is buffered twice. Its position is plain attributes: no probe
(``PythonTakeover.locate``; the bytes it received but had not parsed yet go
to the decoder first). And once the channel has read the body to its end,
with no byte after it, that parser is set past the body
(``PythonTakeover.give_back``): the connection stays reusable. Bytes after
the body's end that reached the channel (a pipelined request) are dropped and
the connection closes after the response, as under llhttp.
"""

from __future__ import annotations

from typing import Any

from aiohttp import http_parser, web

from ..decoder import Position, State
from .parsed import Located, reads_chunk_ends, request_parser

__all__ = ["PythonTakeover"]


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
        otherwise (llhttp, or internals this package does not recognise)."""
        parser = request_parser(request)
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
        unparsed move to ``Located.unparsed``). ``None``: a state this package
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
