"""``Inbox``: one peer's client messages on their way to its ``message`` hooks,
and the per-peer bounds of its POSTs (how many, how many bytes held).

One inbox per peer (in ``Connection.inbox``, made by its first POST): it
hands the messages of all that peer's POSTs to its ``message`` hooks one at a
time, in arrival order, in a task of its own — a dropped POST never cancels a
hook half-way.

Bounds: at most ``max_posts_per_peer`` open POSTs (``full``). The bytes held
for them — messages waiting for the hooks plus the message each POST is
reading, at their real size plus ``MESSAGE_OVERHEAD`` each (``cost``) — past
``max_receive_buffer`` pause the POSTs (``flow``) until the hooks catch up; one
message may always be completed, so a message as large as
``max_message_size`` gets through whatever that bound.

What the caller must know: a POST adds the cost of the message it is reading
to ``held`` itself and calls ``flow`` after any change; the inbox sees a POST
only as a ``Post`` or, for a queued message, its ``Owner`` (the inbox
does not know the channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from .._hooks import run_hooks
from .._message import Message
from .._wire import ReadyState

if TYPE_CHECKING:
    from .._connection import Connection
    from .._options import Options

__all__ = ["MESSAGE_OVERHEAD", "Inbox", "Owner", "Post", "Spawn", "Stats", "cost"]

Spawn = Callable[[Coroutine[Any, Any, Any]], object]

#: Bytes counted per message on top of its data's real size (``sys.getsizeof``):
#: the queue slots and allocator rounding of a queued message.
MESSAGE_OVERHEAD = 48


class Stats(Protocol):
    messages_received: int


class Owner(Protocol):
    """What the inbox asks of the POST a queued message came from."""

    def delivered(self) -> None:
        """One of its messages was handled (or dropped)."""

    def peer_ended(self) -> None:
        """The peer is closing: no more messages."""


class Post(Owner, Protocol):
    """What the inbox asks of one of its peer's open POSTs (``channel.Channel``)."""

    @property
    def held(self) -> int:
        """Bytes of the message it is reading, as counted in ``Inbox.held``."""

    def throttle(self, paused: bool) -> None:
        """Stop (or resume) reading from the client."""


def cost(data: bytes | bytearray) -> int:
    """What one message counts against ``max_receive_buffer``."""
    return sys.getsizeof(data) + MESSAGE_OVERHEAD


class Inbox:
    """One peer's messages on their way to its ``message`` hooks (see the
    module docstring); also the per-peer bounds of its POSTs."""

    __slots__ = (
        "_channels",
        "_conn",
        "_finisher",
        "_handling",
        "_limit",
        "_max_posts",
        "_over",
        "_owners",
        "_queue",
        "_spawn",
        "_stats",
        "_task",
        "closed",
        "held",
    )

    def __init__(self, conn: Connection, options: Options, stats: Stats, spawn: Spawn) -> None:
        self._conn = conn
        self._stats = stats
        self._spawn = spawn
        self._limit = options.max_receive_buffer
        self._max_posts = options.max_posts_per_peer
        self._queue: deque[bytes] = deque()
        self._owners: deque[Owner] = deque()  # the POST each queued message came from
        self._channels: list[Post] = []  # open POSTs, oldest first
        self._finisher: Post | None = None  # may read on past the limit (see flow)
        self._handling = False  # the hook task is running (or about to)
        self._task: asyncio.Task[Any] | None = None
        self.closed = False  # the peer is closing: nothing is accepted any more
        self.held = 0  # bytes counted against max_receive_buffer
        self._over = False  # held went past the limit and not yet back to half

    @classmethod
    def of(cls, conn: Connection, options: Options, stats: Stats, spawn: Spawn) -> Inbox | None:
        """The peer's inbox (made on its first POST); ``None`` once it is closing."""
        inbox: Inbox | None = conn.inbox
        if inbox is None:
            if conn.ended.done() or conn.peer.ready_state != ReadyState.OPEN:
                return None
            inbox = conn.inbox = cls(conn, options, stats, spawn)
            conn.ended.add_done_callback(inbox._on_end)
        return None if inbox.closed else inbox

    @property
    def max_posts(self) -> int | None:
        return self._max_posts

    def full(self) -> bool:
        """No room for one more POST."""
        return self._max_posts is not None and len(self._channels) >= self._max_posts

    def attach(self, channel: Post) -> None:
        self._channels.append(channel)

    def detach(self, channel: Post) -> None:
        with contextlib.suppress(ValueError):
            self._channels.remove(channel)
        if self._finisher is channel:
            self._finisher = None
        self.flow()

    def put(self, channel: Owner, data: bytes) -> None:
        """Queue one complete message of ``channel``."""
        self._queue.append(data)
        self._owners.append(channel)
        self.held += cost(data)
        if not self._handling:
            self._handling = True
            self._spawn(self._run())

    async def _run(self) -> None:
        self._task = asyncio.current_task()
        conn, queue, owners = self._conn, self._queue, self._owners
        peer = conn.peer
        try:
            while queue and not self.closed and peer.ready_state == ReadyState.OPEN:
                data = queue.popleft()
                owner = owners.popleft()
                self._stats.messages_received += 1
                try:
                    # Failures are logged and reported to the error hooks there.
                    await run_hooks(conn.hooks, "message", peer, Message(peer, data))
                finally:
                    self.held -= cost(data)
                    owner.delivered()
                self.flow()
        finally:
            self._task = None
            self._handling = False
            if not self.closed:
                self.flow()  # the hooks are idle now: that may let a POST read on

    def flow(self) -> None:
        """Pause or resume the peer's POSTs after ``held`` changed.

        Under the limit (once past it: under half of it) every POST reads.
        Over it, while the hooks have work
        (which frees memory), none does. Over it with the hooks idle, the
        excess is messages still being read: one POST — the one furthest into
        its message — finishes that message, so progress never stalls.
        """
        channels = self._channels
        if self._over:
            self._over = self.held > self._limit // 2  # hysteresis: resume at half
        else:
            self._over = self.held > self._limit
        if not self._over:
            self._finisher = None
            for channel in channels:
                channel.throttle(False)
            return
        if self._queue or self._handling:
            self._finisher = None
            for channel in channels:
                channel.throttle(True)
            return
        finisher = self._finisher
        if finisher is None or not finisher.held:
            finisher = None
            for channel in channels:
                if channel.held and (finisher is None or channel.held > finisher.held):
                    finisher = channel
            self._finisher = finisher
        for channel in channels:
            channel.throttle(channel is not finisher)

    def _on_end(self, _: asyncio.Future[bool]) -> None:
        """The peer is closing: drop what waits, end its POSTs."""
        self.closed = True
        owners = list(self._owners)
        self._queue.clear()
        self._owners.clear()
        for channel in (*self._channels, *owners):
            channel.peer_ended()
        self._channels.clear()
        self._finisher = None
        if self._task is not None:
            # A hook still running may finish while the close hooks run; it
            # must not outlive the peer, so it is cancelled once they are done.
            self._spawn(self._cancel_when_closed(self._task))

    async def _cancel_when_closed(self, task: asyncio.Task[Any]) -> None:
        await self._conn.peer.wait_closed()
        task.cancel()
