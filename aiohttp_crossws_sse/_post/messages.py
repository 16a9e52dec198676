"""Turning a POST's bytes into messages, and how that ends.

The message being read (``buf``) grows piece by piece up to
``max_message_size`` (one more byte: 413) and counts against the peer's
``max_receive_buffer`` as it grows (``held``); once complete it goes to the
inbox (``_emit``), which tells when it has been handled (``delivered``).
Reading ends at the body's end (``_body_end``), with a refusal (``_refuse``:
the status of the response), a failure of the body (``_failed``: 400, or the
connection is gone), or when the peer closes (``peer_ended``): all of them
through ``_close``, after which nothing more is taken.
"""

from __future__ import annotations

from .inbox import cost
from .linger import Lingering
from .state import FORWARD

__all__ = ["Messages"]


class Messages(Lingering):
    """The channel's messages and the end of its reading (see the module docstring)."""

    __slots__ = ()

    def delivered(self) -> None:
        """One of this POST's messages was handled (or dropped)."""
        self.pending -= 1
        if not self.pending:
            self._wake()

    def peer_ended(self) -> None:
        self.ended = True
        self._close()

    def _take(self, data: bytes) -> None:
        """Data of the message being read."""
        if not self.open:
            return
        buf = self.buf
        if buf is None:
            if len(data) > self.limit:
                self._refuse(413)
                return
            self.buf = data
        else:
            if len(buf) + len(data) > self.limit:
                self._refuse(413)
                return
            if isinstance(buf, bytes):
                # Pieces go into one growing buffer: many small pieces must not
                # cost an object (and its header) each.
                buf = self.buf = bytearray(buf)
            buf += data
        self._account()

    def _account(self) -> None:
        buf = self.buf
        held = 0 if buf is None else cost(buf)
        inbox = self.inbox
        if inbox is not None:
            inbox.held += held - self.held
        self.held = held

    def _emit(self) -> None:
        """The message being read is complete."""
        buf = self.buf
        data = b"" if buf is None else buf if isinstance(buf, bytes) else bytes(buf)
        self.buf = None
        self._account()
        inbox = self.inbox
        if not self.open or inbox is None:
            return
        self.pending += 1
        inbox.put(self, data)
        inbox.flow()

    def _body_end(self) -> None:
        """The body's end was read."""
        self.body_done = True
        if self.mode != FORWARD:
            self._feed_eof()
        self._close()

    def _refuse(self, status: int, reason: str = "") -> None:
        if self.status is None and self.open:
            self.status = status
            self.reason = reason
        if self.decoder is not None:
            self.decoder.discard = True
        self._close()

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionError):
            self.gone = True
            self._close()  # the connection is gone
        else:
            self._refuse(400, "invalid chunked body" if self.chunked else "invalid request body")

    def _close(self) -> None:
        """No more messages from this POST."""
        if self.open:
            self.open = False
            self._cancel_timer()
        self.raw = None
        if self.buf is not None:
            self.buf = None
            self._account()
        inbox = self.inbox
        if inbox is not None:
            inbox.flow()
        self._wake()
