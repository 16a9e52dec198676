"""Writes that wait for the client instead of applying the slow-consumer
policy: a Last-Event-ID replay (``hold`` … ``write_with_backpressure`` …
``end_hold``), ``wait_for_drain``, and the drain before a graceful end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from .._frame import unchunk
from .direct import spilled
from .limits import HeldBytes

__all__ = ["Backpressure"]

# A replay leaves in writes of about this many bytes.
_REPLAY_WRITE = 64 * 1024


class Backpressure(HeldBytes):
    """Replays, drains and waits (``Outbox`` builds on it)."""

    __slots__ = ()

    def hold(self) -> None:
        """From now on queue everything (nothing is flushed) until
        ``end_hold``: a replay is written ahead of it with
        ``write_with_backpressure``."""
        self.sched.settle()
        if self.batch is not None:
            self.batch.release(self)
        self.holding = True
        self.hold_ended = False

    def end_hold(self) -> None:
        """End ``hold``: what was queued meanwhile follows the replay."""
        if not self.holding:
            return
        self.holding = False
        # What the replay would write from now on would follow what was
        # queued during it: out of order. Its writes are refused instead.
        self.hold_ended = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # What the transport holds now is the replay's: exempt from the
            # policy until it is out (check_overflow).
            self.live_unsent = 0 if transport.get_write_buffer_size() else None
        if self.queue:
            self.sched.mark(self)
        self._wake()

    async def write_with_backpressure(self, frames: Iterable[bytes]) -> bool:
        """Write ``frames`` after what is queued (ahead of it while holding),
        waiting while the client is slow instead of applying the
        slow-consumer policy (for replays). Frames leave joined in writes of
        about ``_REPLAY_WRITE`` bytes, and the loop runs other callbacks
        between two writes. Returns ``False`` if the stream ended first, or
        if the ``hold`` it was to be written under has ended (a graceful end
        while the replay was fetched: the replay is given up, never written
        after the live frames)."""
        if self.hold_ended:
            return False
        self.sched.settle()
        if self.batch is not None:
            self.batch.release(self)
        held = self.holding
        limit = min(_REPLAY_WRITE, self.sched.max_buffer)
        chunk: list[bytes] = []
        size = 0
        for frame in frames:
            if not self.chunked:
                frame = unchunk(frame)
            chunk.append(frame)
            size += len(frame)
            if size >= limit:
                if not await self._write_through(chunk, held):
                    return False
                chunk = []
                size = 0
        return not chunk or await self._write_through(chunk, held)

    async def _write_through(self, chunk: list[bytes], held: bool) -> bool:
        """Write ``chunk`` once the transport takes data; ``False`` when the
        stream ended first, or the hold it was written under ended."""
        while self.paused or (self.queue and not self.holding):
            transport = self.transport
            if transport is None or transport.is_closing() or self.discarded:
                return False
            if held and not self.holding:
                return False
            if self.paused:
                await self._progress()
            else:
                self.flush()
        transport = self.transport
        if transport is None or transport.is_closing() or self.discarded:
            return False
        if held and not self.holding:
            return False
        self.fd = spilled(self.fd)
        transport.write(chunk[0] if len(chunk) == 1 else b"".join(chunk))
        await asyncio.sleep(0)  # let the other peers' writes in between
        return True

    async def wait_for_drain(self, threshold: int, timeout: float | None) -> bool:
        """Wait until at most ``threshold`` bytes are held; ``False`` when the
        stream ended with held bytes thrown away (see ``Peer.wait_for_drain``)."""
        async with asyncio.timeout(timeout):
            while True:
                held = self.buffered_amount  # settles first: this may end the peer
                if self.discarded:
                    return False
                if held <= threshold:
                    return True
                if self.paused or self.queue:
                    await self._progress()
                else:
                    # Below the transport's low-water mark nothing signals
                    # progress; the kernel takes the rest within moments.
                    await asyncio.sleep(0.005)

    async def drain(self, timeout: float | None) -> None:
        """Before a graceful end: write out the queue and wait until the
        transport has handed everything to the kernel (so a loss meanwhile is
        seen: ``wait_for_drain`` then says ``False``); abort after ``timeout``."""
        self.sched.settle()
        if self.batch is not None:
            self.batch.release(self)
        self.holding = False  # a replay cut short: what is queued still goes
        transport = self.transport
        if transport is None:
            return
        # From now on the transport pauses us while it holds anything at all,
        # and resumes us when it is empty. high=1, not 0: asyncio's (and
        # uvloop's) SSL transport pauses when it holds >= high bytes, so 0
        # would pause an empty one for good, and nothing would resume it.
        transport.set_write_buffer_limits(high=1, low=0)
        try:
            async with asyncio.timeout(timeout):
                while self.queue or self.paused:
                    transport = self.transport
                    if transport is None:
                        return  # lost: on_lost counted what was thrown away
                    if transport.is_closing():
                        # The client half-closed: what is queued can no
                        # longer be written.
                        if self.queue:
                            self.abort()
                        return
                    if self.paused:
                        await self._progress()
                    else:
                        self.flush()
        except TimeoutError:
            self.abort()
