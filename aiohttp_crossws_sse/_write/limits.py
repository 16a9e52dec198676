"""What is held for one peer and the limits on it: the queue's state, the
slow-consumer policy (``max_buffer``, ``slow_consumer``), the stall timer
(``send_timeout``), and the waiters that wake on progress.

``Outbox`` (``outbox``) builds on it with the writes and the connection;
``Backpressure`` (``backpressure``) in between, with replays and drains.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from .._protocol import Forwarder
from .direct import NO_SOCKET
from .ends import REASON_SLOW, REASON_STALLED, Owner

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["HeldBytes", "Release"]


class Release(Protocol):
    """The topic batch an outbox is bound to (``Fanout``), as the outbox sees it."""

    # (Any: the batch takes the Outbox this base is part of)
    def release(self, outbox: Any) -> None: ...

    def pending_for(self, outbox: Any) -> int: ...


class HeldBytes(Forwarder):
    """What is held for one peer, and the limits on it (``Outbox`` builds on it).

    While the stream is open it also stands in front of aiohttp's protocol
    (which still gets every callback), to learn of flow control and of
    connection loss at once: aiohttp does not cancel handlers by default, and
    an idle stream would otherwise notice only at its next write.
    """

    __slots__ = (
        "batch",
        "chunked",
        "discarded",
        "dropped",
        "fd",
        "hold_ended",
        "holding",
        "live_unsent",
        "owner",
        "paused",
        "queue",
        "queued",
        "room",
        "sched",
        "stall_timer",
        "transport",
        "waiter",
    )

    def __init__(self, sched: Scheduler, owner: Owner, *, chunked: bool) -> None:
        super().__init__()
        self.sched = sched
        self.owner = owner
        self.chunked = chunked  # HTTP/1.1: frames carry their chunk framing
        self.transport: asyncio.Transport | None = None
        # The socket to write to directly while the transport holds nothing
        # for it; -2 - socket while it may hold bytes; -1: none (see write()).
        self.fd = NO_SOCKET
        # None while empty: an idle peer (most of them) holds no list.
        self.queue: list[bytes] | None = None
        self.queued = 0
        # Queued bytes allowed before the exact check: max_buffer less an
        # upper bound of what the transport holds.
        self.room = sched.max_buffer
        self.paused = False
        self.discarded = False  # ended with what was held thrown away
        self.dropped = 0  # events discarded by the "drop-oldest" policy
        # A replay is being written: the queue waits behind it (see hold()).
        self.holding = False
        self.hold_ended = False  # a hold ended: its replay writes are refused
        # While a replay's bytes may still be in the transport: the bytes
        # written to it after them (the transport is FIFO, so of what it
        # holds, at most this much is live and counts against max_buffer).
        self.live_unsent: int | None = None
        self.stall_timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        # The topic batch this outbox takes whole at the end of the iteration
        # (its queue is then empty: anything else pending releases it first).
        self.batch: Release | None = None

    @property
    def buffered_amount(self) -> int:
        """Queued bytes (a topic batch's included) plus those in the
        transport's write buffer."""
        self.sched.settle()
        held = self.queued
        if self.batch is not None:
            held += self.batch.pending_for(self)
        transport = self.transport
        if transport is None or transport.is_closing():
            return held
        return held + transport.get_write_buffer_size()

    def flush(self) -> None:
        """Hand the queue to the transport (``Outbox.flush``)."""
        raise NotImplementedError

    def settled(self) -> None:
        """Apply what this loop iteration's unbound batch does to this peer
        (bind it, as its publish would have) before its state is read."""
        if self.sched.lazy is not None:
            self.sched.settle()

    def abort(self) -> None:
        """Throw away what is held and abort the connection now."""
        self.discarded = True
        self.queue = None
        self.queued = 0
        self.fd = NO_SOCKET
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    # -- the slow-consumer policy ---------------------------------------------------

    def check_overflow(self) -> None:
        """The queue outgrew ``room``: apply the policy if what is held,
        counted exactly, is over ``max_buffer``."""
        if self.discarded:
            return
        sched = self.sched
        transport = self.transport
        unsent = 0
        if transport is not None and not transport.is_closing() and not self.holding:
            # (while holding, the transport holds only the replay's bytes,
            # which never count: a replay is written with backpressure)
            unsent = transport.get_write_buffer_size()
            live = self.live_unsent
            if live is not None:
                if unsent <= live:
                    self.live_unsent = None  # the replay's bytes are out
                else:
                    unsent = live
        limit = sched.max_buffer
        if self.queued + unsent <= limit:
            return
        if sched.drop_oldest:
            queue = self.queue or []
            drop = 0
            size = self.queued
            while size + unsent > limit and drop < len(queue):
                size -= len(queue[drop])
                drop += 1
            del queue[:drop]
            self.queued = size
            self.dropped += drop
            sched.stats.events_dropped += drop
            if drop:
                self.owner.dropped_events(drop)
        else:
            sched.stats.slow_consumers += 1
            self.owner.end_abruptly(REASON_SLOW)

    def _on_stalled(self) -> None:
        self.stall_timer = None
        if self.paused:
            self.owner.end_abruptly(REASON_STALLED)

    def _stop_stall_timer(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    async def _progress(self) -> None:
        """Until the next flush, resume, detach or abort."""
        if self.waiter is None:
            self.waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self.waiter)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
