"""The state of one POST channel: every field (``ChannelState``) and how its
bytes are read (``Mode``).

The channel's behaviour is layered on this state, one concern per module,
each layer using only those below it:

- ``linger``: ``Lingering`` — ending the body for aiohttp, early or at its end;
- ``messages``: ``Messages`` — the message being read, complete messages to
  the inbox, and how reading ends (body end, refusal, failure);
- ``timeout``, ``forward``, ``raw``, ``basic``: ``ReceiveTimeout`` and one
  reading layer per ``Mode``;
- ``channel``: ``Channel``, the state machine that drives them all.

Only ``Channel`` is instantiated; the layers share these fields (slots) and
have none of their own.
"""

from __future__ import annotations

import asyncio
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

if TYPE_CHECKING:
    from .._connection import Connection
    from .._options import Options
    from .decoder import ChunkedDecoder
    from .inbox import Inbox
    from .takeover import LlhttpTakeover, PythonTakeover
    from .tap import Tap

__all__ = ["BASIC", "DROP", "FORWARD", "RAW", "ChannelState", "Mode"]


class Mode(IntEnum):
    """How a POST's bytes are read (``ChannelState.mode``).

    A POST starts in ``BASIC``; ``Channel.start`` moves it to ``FORWARD`` once
    the tap is in place, then to ``RAW`` where aiohttp's parser is taken over.
    ``DROP`` follows a refusal in ``RAW`` or a response before the body's end.
    ``RAW`` goes back to ``FORWARD`` when aiohttp's pure-Python parser takes
    the connection back at the body's end.
    """

    BASIC = 0  # aiohttp's public ``readchunk()``, in a task of its own (``basic``)
    FORWARD = 1  # aiohttp parses, the channel drains it after every read (``forward``)
    RAW = 2  # the channel's ChunkedDecoder reads what aiohttp's parser no longer sees (``raw``)
    DROP = 3  # bytes are ignored: refused, or the response came first


# The modes as module names: reading ``Mode.RAW`` costs ~100 ns more than a
# global on Python 3.11 (measured), and ``feed`` compares modes on every read.
BASIC, FORWARD, RAW, DROP = Mode.BASIC, Mode.FORWARD, Mode.RAW, Mode.DROP


class ChannelState:
    """The fields of one POST channel (see the module docstring)."""

    __slots__ = (
        "_ahead",
        "body_done",
        "buf",
        "chunked",
        "conn",
        "content",
        "decoder",
        "ended",
        "eof_fed",
        "gone",
        "grace",
        "handback",
        "held",
        "inbox",
        "inner",
        "last",
        "limit",
        "llhttp",
        "loop",
        "mode",
        "open",
        "paused",
        "pending",
        "raw",
        "raw_at",
        "reader",
        "reason",
        "request",
        "status",
        "tap",
        "timeout",
        "timer",
        "transport",
        "unpaused",
        "waiter",
    )

    def __init__(
        self,
        request: web.Request,
        conn: Connection | None,
        inbox: Inbox | None,
        options: Options,
    ) -> None:
        self.request = request
        self.conn = conn
        self.inbox = inbox
        self.content = request.content
        self.limit = options.max_message_size
        self.timeout = options.receive_timeout
        self.chunked = hdrs.TRANSFER_ENCODING in request.headers
        self.loop = asyncio.get_running_loop()
        self.mode = BASIC
        self.open = True  # still turning bytes into messages
        self.body_done = False  # the body's end was read
        self.ended = False  # the peer is closing
        self.gone = False  # the connection is gone
        self.status: int | None = None  # the body was refused with this status
        self.reason = ""
        self.buf: bytes | bytearray | None = None  # the message being read
        self.raw: bytes | None = None  # RAW: a read held back (paused) from raw_at on
        self.raw_at = 0
        self.held = 0  # what buf counts against the inbox
        self.pending = 0  # messages of this POST queued or being handled
        self.decoder: ChunkedDecoder | None = None
        self.llhttp: LlhttpTakeover | None = None  # RAW under llhttp
        self.handback: PythonTakeover | None = None  # RAW under the Python parser
        self._ahead = False  # RAW: llhttp's position is learnt from the first new bytes
        self.transport: asyncio.Transport | None = None
        self.inner: Any = None  # aiohttp's protocol
        self.tap: Tap | None = None
        self.paused = False  # throttled by the inbox
        self.unpaused: asyncio.Future[None] | None = None  # BASIC: the reader waits
        self.reader: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # the receive timeout's, or LINGER's
        self.eof_fed = False
        self.last = self.loop.time()  # when the client's last byte came
        self.grace = self.last  # receive_timeout: stalls count from here at the earliest

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
