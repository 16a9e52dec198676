"""The probe: crafted bytes fed to llhttp, and what llhttp reports of them.

While a probe feeds llhttp, ``request.content`` (which llhttp holds as its
payload) has its class swapped for a recorder that keeps nothing: only
``swappable`` content may be probed. Probes run synchronously, one at a time.

Cost of a probe: a few bytes, plus — where llhttp is inside a chunk's data —
data-like bytes in pieces of ``WINDOW``: one piece up front, then one piece per
``WINDOW`` bytes that really arrive (``Position.more``). Memory is one piece,
whatever ``max_message_size``; CPU follows what the client sends. Only when
llhttp stopped inside a chunk-size line must the digits read so far be
counted out in full (up to ``max_message_size``; still in pieces).
"""

from __future__ import annotations

from typing import Any

from aiohttp.streams import StreamReader

from ..decoder import More

__all__ = ["WINDOW", "Probe", "swappable"]

#: Data-like bytes fed to llhttp per probe step (one shared, preallocated piece).
WINDOW = 65536
_XS = b"x" * WINDOW


class Probe:
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


_recording: Probe | None = None  # a probe runs synchronously: one at a time


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


def swappable(content: StreamReader) -> bool:
    """Whether ``content``'s class can be swapped for the probe's recorder."""
    try:
        content.__class__ = _ProbeReader
        content.__class__ = StreamReader
    except TypeError:
        return False
    return True
