"""``Forwarder``: a protocol that stands in front of aiohttp's for one connection.

aiohttp tells a handler neither that its client went away (unless it cancels
handlers) nor when the connection's writes block, and it parses request
bodies only its own way. ``transport.set_protocol(forwarder)`` lets the
package see those events while aiohttp keeps receiving every one of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["Forwarder"]


class Forwarder(asyncio.Protocol):
    """Forwards every callback to ``inner`` (aiohttp's protocol); subclasses
    extend the ones they need and call ``super()``."""

    __slots__ = ("_inner",)

    def __init__(self, inner: asyncio.BaseProtocol | None = None) -> None:
        self._inner: Any = inner

    def install(self, transport: asyncio.BaseTransport) -> asyncio.BaseProtocol:
        """Stand in front of ``transport``'s protocol; returns that protocol."""
        inner = transport.get_protocol()
        self._inner = inner
        transport.set_protocol(self)
        return inner

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def uninstall(self, transport: asyncio.BaseTransport) -> None:
        """Give ``transport`` back to the protocol this one stands in front of."""
        if not transport.is_closing() and transport.get_protocol() is self:
            transport.set_protocol(self._inner)
