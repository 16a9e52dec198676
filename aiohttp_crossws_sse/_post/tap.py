"""The tap: a POST channel's hold on its connection while it reads a body.

``Tap`` stands in front of aiohttp's protocol (``transport.set_protocol``), so
that the body's raw bytes reach the channel as they arrive, first or instead
of aiohttp, and the channel learns when the connection is lost. The functions
pause, resume and half-close the transport; they tolerate a transport without
flow control or already closing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from .._protocol import Forwarder

__all__ = ["Receiver", "Tap", "half_close", "pause_reading", "resume_reading"]


class Receiver(Protocol):
    """What the tap hands the connection's events to (``channel.Channel``)."""

    def feed(self, data: bytes) -> None: ...

    def lost(self) -> None: ...


class Tap(Forwarder):
    """Stands in front of aiohttp's protocol while a POST body is read: the
    body's raw bytes go to the channel first (or instead)."""

    __slots__ = ("_channel",)

    def __init__(self, inner: asyncio.BaseProtocol, channel: Receiver) -> None:
        super().__init__(inner)
        self._channel: Receiver | None = channel

    def data_received(self, data: bytes) -> None:
        if self._channel is not None:
            self._channel.feed(data)
        else:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.lost()


_NO_FLOW_CONTROL = (AttributeError, NotImplementedError, RuntimeError)  # or closing


def pause_reading(transport: asyncio.Transport) -> None:
    with contextlib.suppress(*_NO_FLOW_CONTROL):
        transport.pause_reading()


def resume_reading(transport: asyncio.Transport) -> None:
    with contextlib.suppress(*_NO_FLOW_CONTROL):
        transport.resume_reading()


def half_close(transport: asyncio.Transport) -> None:
    """Send FIN where the transport can (the client reads EOF, the server
    still reads what it sends)."""
    with contextlib.suppress(*_NO_FLOW_CONTROL):  # (TLS cannot half-close)
        if transport.can_write_eof():
            transport.write_eof()
