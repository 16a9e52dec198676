"""``Mode.FORWARD``: aiohttp's parser reads the body, the channel drains it.

After every read that the tap forwards to aiohttp, ``_pull`` takes what aiohttp
parsed, split at aiohttp's own chunk ends (``takeover.read_parsed``); a plain
body needs no chunk ends and is one message. aiohttp's parser stays intact, so
the connection stays reusable after the body.
"""

from __future__ import annotations

from . import takeover
from .messages import Messages

__all__ = ["ForwardReading"]


class ForwardReading(Messages):
    """The channel's reading in ``Mode.FORWARD`` (see the module docstring)."""

    __slots__ = ()

    def _pull(self, *, stop_when_paused: bool = True) -> None:
        """Turn what aiohttp parsed into messages, split at aiohttp's chunk ends
        (the rest waits in aiohttp's buffer when the inbox pauses this POST)."""
        content = self.content
        try:
            while self.open:
                if self.chunked:
                    data, end = takeover.read_parsed(content)
                else:  # a plain body needs no chunk ends (nor aiohttp's internals)
                    data, end = content.read_nowait(-1), False
                if data:
                    self._take(data)
                if end:
                    if self.buf is not None:
                        self._emit()
                        if self.paused and stop_when_paused:
                            break
                elif not data:
                    break
        except Exception as exc:  # the payload's exception
            self._failed(exc)
            return
        if self.open and content.at_eof():
            if not self.chunked or self.buf is not None:
                self._emit()  # a plain body is one message, even an empty one
            self._body_end()
