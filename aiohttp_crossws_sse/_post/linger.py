"""Ending a POST's body for aiohttp: at its end, or early with a linger.

``_feed_eof`` tells aiohttp the body is over: it stops waiting for it (and
closes the connection after a response marked so). A response sent before
the body's end (``_end_early``) ends the connection, never aiohttp's
ten-second lingering read of a body that never ends: when the peer is gone or
the client has gone quiet, it closes right after the response. Otherwise — an
upload still under way, which a reset could destroy the response under — the
server half-closes (the client reads EOF right after the response; not over
TLS), drops what still comes, and closes once the client has been quiet for
``LINGER`` seconds, its body ends, or its peer closes.
"""

from __future__ import annotations

import contextlib

from .state import DROP, FORWARD, RAW, ChannelState
from .tap import half_close, resume_reading

__all__ = ["LINGER", "Lingering"]

#: Seconds of quiet from a client, still uploading a body its response has
#: refused, before its connection is closed (see the module docstring).
LINGER = 1.0


class Lingering(ChannelState):
    """The channel's ending of the body for aiohttp (see the module docstring)."""

    __slots__ = ()

    def _end_early(self, *, linger: bool) -> None:
        """The response comes before the body's end: drop the rest, and have
        aiohttp close the connection after the response (see the module
        docstring for when)."""
        if self.mode == FORWARD:
            # Whatever aiohttp parsed is dropped with the rest; with its buffer
            # empty, aiohttp neither parses nor reads the payload again.
            with contextlib.suppress(Exception):
                while self.content.read_nowait(-1):
                    pass
        if linger and self.mode == RAW and self.decoder is not None:
            self.decoder.discard = True  # following the framing: its end ends the wait
        else:
            self.mode = DROP
        self.paused = False
        if self.transport is not None:
            resume_reading(self.transport)
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
        half_close(transport)

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
