"""The chunked transfer coding (RFC 9112, section 7.1), read incrementally.

Bytes in, events out: ``ChunkedDecoder.feed()`` takes the body's bytes as they
arrive, split anywhere, and tells its ``Sink`` what it found. The event that
matters is ``chunk_ended``: it fires in the very ``feed()`` call that brings a
chunk's last data byte — not when the CRLF after the data arrives, which
Node's ``fetch`` sends together with the *next* chunk. (aiohttp's C parser
waits for that CRLF; this decoder is why the POST channel delivers each
message on time.)

Pure: no I/O, no asyncio, no aiohttp. A decoder can also start in the middle
of a body (``Position``), for a body whose beginning another parser read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

__all__ = [
    "MAX_LINE",
    "MAX_TRAILERS",
    "ChunkedDecoder",
    "ChunkedError",
    "Position",
    "Sink",
    "State",
]

#: Longest chunk-size or trailer line, CRLF excluded (aiohttp's own ``max_line_size``).
MAX_LINE = 8190
#: Most trailer fields after the last chunk (aiohttp's own ``max_headers``).
MAX_TRAILERS = 128

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CR, _LF = 13, 10


class ChunkedError(ValueError):
    """The body is not valid chunked framing; the message says what is wrong."""


class Sink(Protocol):
    """What a ``ChunkedDecoder`` reports, in wire order."""

    def chunk_started(self, size: int) -> None:
        """A chunk-size line was read: ``size`` (> 0) data bytes follow."""

    def chunk_data(self, data: bytes) -> None:
        """Some (non-empty) data of the current chunk."""

    def chunk_ended(self) -> bool:
        """The current chunk's last data byte has been fed (its CRLF may still be
        due). Return ``False`` to have ``feed()`` stop right after that byte."""

    def body_ended(self) -> None:
        """The last chunk and the trailers were read: the body is complete."""


class State(IntEnum):
    """Where the decoder stands in the framing."""

    SIZE = 0  # reading a chunk-size line (digits, extensions, CRLF)
    SIZE_LF = 1  # a chunk-size line lacks only its LF
    DATA = 2  # inside a chunk's data
    CR = 3  # after a chunk's data: CR due
    LF = 4  # after a chunk's data and CR: LF due
    CR_OR_LF = 5  # after a chunk's data, whether its CR was read is unknown
    TRAILERS = 6  # after the last chunk: reading trailer lines up to an empty one
    TRAILERS_LF = 7  # a trailer line lacks only its LF
    END_LF = 8  # the empty line ending the body lacks only its LF
    DONE = 9  # the body is complete; any further byte is not the body's


#: A lower bound of a chunk's remaining data grows: ``more()`` returns how many
#: further data bytes are known to be due, and whether that count is exact.
More = Callable[[], tuple[int, bool]]


@dataclass(frozen=True, slots=True)
class Position:
    """Where in a body a decoder starts (the default: at its beginning).

    ``remaining`` (``DATA``) and ``size`` (``SIZE_LF``): the data still due of
    the current chunk. With ``more`` set that count is only a lower bound:
    when it is used up, the decoder calls ``more()`` to learn how much further
    the chunk goes. ``prefix`` (``SIZE``): the value of the size digits
    already read by someone else; ``in_ext``: that reader stopped inside a
    chunk extension, so the rest of the line holds no digits. ``trailers``
    (``TRAILERS``): the trailer fields already read (they count towards
    ``MAX_TRAILERS``).
    """

    state: State = State.SIZE
    remaining: int = 0
    size: int = 0
    prefix: int | None = None
    in_ext: bool = False
    more: More | None = None
    trailers: int = 0


_START = Position()
_BETWEEN = frozenset({State.CR, State.LF, State.CR_OR_LF, State.DONE})


class ChunkedDecoder:
    """Reads chunked framing from raw bytes and reports it to ``sink``.

    ``feed()`` raises ``ChunkedError`` for malformed framing (after reporting
    whatever came before the fault); the decoder must not be fed again then.
    Set ``discard`` to keep following the framing without ``chunk_data``
    calls (say, after a chunk was refused as too large).
    """

    __slots__ = (
        "_in_ext",
        "_line",
        "_more",
        "_prefix",
        "_remaining",
        "_sink",
        "_size",
        "_trailers",
        "discard",
        "state",
    )

    def __init__(self, sink: Sink, start: Position = _START) -> None:
        self._sink = sink
        self.state = start.state
        self.discard = False
        self._line = bytearray()
        self._remaining = start.remaining
        self._size = start.size
        self._prefix = start.prefix
        self._in_ext = start.in_ext
        self._more = start.more
        self._trailers = start.trailers

    @property
    def between_chunks(self) -> bool:
        """True where a client may rightly pause: before a chunk-size line, after
        a chunk's data (its CRLF may come with the next chunk), or at the end."""
        if self.state == State.SIZE:
            return not self._line and self._prefix is None
        return self.state in _BETWEEN

    def feed(self, data: bytes, start: int = 0) -> int:
        """Read ``data[start:]``, the next bytes of the body (any length, split anywhere).

        Returns where reading stopped: ``len(data)``, unless the sink asked to
        stop after a chunk (feed the rest later, say with ``start`` there), or
        the body ended (what follows it is not the body's).
        """
        i, n = start, len(data)
        sink = self._sink
        while i < n:
            state = self.state
            if state == State.DATA:
                take = min(self._remaining, n - i)
                if take and not self.discard:
                    sink.chunk_data(data if take == n else data[i : i + take])
                i += take
                self._remaining -= take
                if not self._remaining and not self._extend():
                    self.state = State.CR
                    if not sink.chunk_ended():
                        return i
            elif state == State.SIZE or state == State.TRAILERS:
                j = data.find(b"\n", i)
                end = n if j < 0 else j
                if len(self._line) + end - i > MAX_LINE + 1:  # + 1: the CR
                    raise ChunkedError("chunk-size or trailer line too long")
                self._line += data[i:end]
                if j < 0:
                    return n
                i = j + 1
                if not self._line.endswith(b"\r"):
                    raise ChunkedError("line ends with a bare LF, not CRLF")
                line = bytes(self._line[:-1])
                self._line.clear()
                if state == State.SIZE:
                    self._chunk(self._parse_size(line))
                elif line:
                    self._trailers += 1
                    if self._trailers > MAX_TRAILERS:
                        raise ChunkedError("too many trailer fields")
                else:
                    self.state = State.DONE
                    sink.body_ended()
                    return i
            elif state == State.DONE:
                return i  # bytes after the body are someone else's
            else:
                self._step(data[i])
                i += 1
                if self.state == State.DONE:
                    return i
        return n

    def _step(self, byte: int) -> None:
        """One byte of a state that expects a CR or an LF."""
        state = self.state
        if state == State.CR and byte == _CR:
            self.state = State.LF
        elif state in (State.LF, State.CR_OR_LF) and byte == _LF:
            self.state = State.SIZE
        elif state == State.CR_OR_LF and byte == _CR:
            self.state = State.LF
        elif state == State.SIZE_LF and byte == _LF:
            self._chunk(self._size)
        elif state == State.TRAILERS_LF and byte == _LF:
            self.state = State.TRAILERS
        elif state == State.END_LF and byte == _LF:
            self.state = State.DONE
            self._sink.body_ended()
        else:
            what = "LF" if state in (State.LF, State.SIZE_LF, State.TRAILERS_LF) else "CRLF"
            raise ChunkedError(f"{what} expected after chunk data or line, got {bytes([byte])!r}")

    def _extend(self) -> bool:
        """The known part of a chunk is used up: does the chunk go on?"""
        more = self._more
        if more is None:
            return False
        extra, exact = more()
        if exact:
            self._more = None
        if extra <= 0:
            return False
        self._remaining = extra
        return True

    def _parse_size(self, line: bytes) -> int:
        prefix, self._prefix = self._prefix, None
        in_ext, self._in_ext = self._in_ext, False
        if in_ext and prefix is not None:
            return prefix  # the rest of an extension another parser had begun
        semi = line.find(b";")
        # BWS (optional whitespace) may precede an extension's ";"
        digits = line if semi < 0 else line[:semi].rstrip(b" \t")
        if prefix is None:
            if not _HEX.fullmatch(digits):
                raise ChunkedError(f"bad chunk size {digits[:20]!r}")
            return int(digits, 16)
        if digits and not _HEX.fullmatch(digits):
            raise ChunkedError(f"bad chunk size {digits[:20]!r}")
        size = (prefix << 4 * len(digits)) + (int(digits, 16) if digits else 0)
        if size >= 1 << 64:
            raise ChunkedError("chunk size too large")
        return size

    def _chunk(self, size: int) -> None:
        if not size:
            self.state = State.TRAILERS
            return
        self._remaining = size
        self.state = State.DATA
        self._sink.chunk_started(size)
