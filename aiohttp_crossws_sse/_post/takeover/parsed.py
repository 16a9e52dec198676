"""aiohttp's parser as the POST channel finds it: the request's parser, what
it has parsed already, and where it stood when the channel took over.

``read_parsed`` is how the channel drains what aiohttp parsed, split at
aiohttp's own chunk ends; call it only for a ``request.content`` that passed
``reads_chunk_ends``. ``Located`` is what both take-overs (``PythonTakeover``,
``LlhttpTakeover``) answer: where the channel's decoder starts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.streams import StreamReader

from ..decoder import Position

__all__ = ["Located", "read_parsed", "reads_chunk_ends", "request_parser"]


def request_parser(request: web.Request) -> Any:
    """The HTTP parser of the request's connection (``None`` if not found)."""
    protocol = request.protocol
    parser = getattr(protocol, "_parser", None)  # aiohttp 3.14
    if parser is None:
        parser = getattr(protocol, "_request_parser", None)  # aiohttp 3.12, 3.13
    return parser


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


class Located(NamedTuple):
    """Where aiohttp's parser stood: the ``Position`` to start a decoder at,
    how many data bytes the current chunk is known to hold still (a lower
    bound; more than the limit means the chunk is too large), and the bytes
    it had received but not parsed (the decoder reads them first)."""

    position: Position
    due: int
    unparsed: bytes = b""
