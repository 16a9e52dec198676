"""``Mode.BASIC``: the body read through aiohttp's public ``readchunk()``.

The fallback when the tap cannot be put in place or aiohttp's internals are
not recognised (``takeover``): correct, but a chunk whose CRLF comes with the
next one (Node's ``fetch``) arrives one message late. It reads in a task of
its own (``reader``), which the channel cancels when it stops.
"""

from __future__ import annotations

import asyncio

from .messages import Messages

__all__ = ["BasicReading"]


class BasicReading(Messages):
    """The channel's reading in ``Mode.BASIC`` (see the module docstring)."""

    __slots__ = ()

    async def _read_basic(self) -> None:
        content = self.content
        try:
            while self.open:
                if self.paused:
                    waiter = self.unpaused = self.loop.create_future()
                    try:
                        await waiter
                    finally:
                        self.unpaused = None
                    continue
                data, end = await content.readchunk()
                self.last = self.loop.time()
                if not self.open:
                    break
                if data:
                    self._take(data)
                if end and self.chunked:
                    if self.buf is not None:
                        self._emit()
                elif not data and not end:  # readchunk()'s EOF
                    if not self.chunked or self.buf is not None:
                        self._emit()
                    self._body_end()
                if self.inbox is not None:
                    self.inbox.flow()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
