"""The receive timeout: a POST that stalls in the middle of a message for
``receive_timeout`` seconds gets 408.

Only the client's stalls count: between messages a streamed POST may idle as
long as its peer lives, and time spent paused by the inbox (or in a pause
that just ended) is not the client's.
"""

from __future__ import annotations

from .messages import Messages
from .state import RAW

__all__ = ["ReceiveTimeout"]


class ReceiveTimeout(Messages):
    """The channel's receive timeout (see the module docstring); ``_arm`` starts it."""

    __slots__ = ()

    def _arm(self) -> None:
        if self.timeout is not None:
            self.timer = self.loop.call_at(self.last + self.timeout, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        timeout = self.timeout
        if not self.open or timeout is None:
            return
        now = self.loop.time()
        if self.paused or not self._mid_message():
            self.grace = now  # not a stall of the client's: the clock starts again
        elif now - max(self.last, self.grace) >= timeout:
            self._refuse(408, f"no data for {timeout:g} s in the middle of a message")
            return
        self.timer = self.loop.call_at(max(self.last, self.grace) + timeout, self._on_timer)

    def _mid_message(self) -> bool:
        """Whether the client owes bytes now (it may not pause here)."""
        if not self.chunked:
            return True
        if self.mode == RAW:
            decoder = self.decoder
            return decoder is not None and not decoder.between_chunks
        return self.buf is not None
