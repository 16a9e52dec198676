"""The write path: everything between an encoded frame and a peer's transport.

No other module touches a transport's write side. One ``Outbox`` per peer
owns its queue, the joined writes of a loop iteration, flow control
(pause/resume), the stall timer, the slow-consumer policy, drain waiting and
the hand-over of the connection from aiohttp and back. ``fanout`` is the one
fast loop that hands one frame to many outboxes.

Write strategy: publishes to a topic are batched once per topic per loop
iteration (a ``Fanout``): the frames are appended to one list, joined once,
and the same bytes are written to every subscriber with nothing else pending
at the end of the loop iteration (``call_soon``), so a burst of M events to
N subscribers costs about N + M steps, not N * M. A batch that grows past a
segment (256 KiB) is written out at once, so the clients read one segment
while the next is built.
A subscriber that has something else pending (a direct ``send``, a publish
on another topic, a paused transport) takes the batch's frames into its own
queue at that moment and follows per frame from then on, so each peer's
order is exactly the order of the calls. The first batch of an iteration
binds its subscribers only when something could change one of them
(``Scheduler.settle``); left alone, it is written after checks made in
passes without a Python step per subscriber, which is what a lone publish's
latency hangs on.

What is held for a peer — its queue plus the transport's own write buffer —
is bounded by ``max_buffer`` (plus at most one frame), whatever the timing of
the sends: beyond it the ``slow_consumer`` policy applies.

Writes go straight to the socket (``os.write``, one syscall, what a C
server does) when the transport holds nothing for it — a plain TCP or unix
socket, not TLS; the transport gets only what the kernel did not take, so
order is kept and the transport's flow control sees every byte it holds.
``transport.write`` costs about 1 µs more per call (uvloop or asyncio),
which is a third of what a 1,000-subscriber publish takes beyond the
syscalls themselves. A batch's writes to its subscribers run back to back
in one ``map`` (``_write_all``), after the checks they need were made in
passes of their own.

A Last-Event-ID replay ``hold``s the outbox: its queue is not flushed (what
the hooks send waits), and the replay is written ahead of it by
``write_with_backpressure``, which waits for a slow client instead of
applying the policy. A replaying peer joins no ``Fanout`` until its replay
has caught up (``Connection.replay``), so the fan-out never meets a holding
outbox and its fast path is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import attrgetter, methodcaller
from typing import TYPE_CHECKING, Protocol

from ._frame import EAGER_WRITE, unchunk
from ._logs import operator_log
from ._protocol import Forwarder

if TYPE_CHECKING:
    from ._options import Options
    from ._registry import Stats

__all__ = ["REASON_LOST", "REASON_SLOW", "REASON_STALLED", "Fanout", "Outbox", "Scheduler"]

# Close reasons the write path gives (README "Close reasons").
REASON_LOST = "connection lost"
REASON_SLOW = "slow consumer"
REASON_STALLED = "send timeout"

# Python ignores SIGPIPE: a write to a socket the client closed fails with
# EPIPE instead of killing the process.
_os_write = os.write
# The kernel has no room now: the transport takes the bytes and waits.
_RETRY = (BlockingIOError, InterruptedError)
# Outbox.fd when there is no socket to write to directly (TLS, or none); a
# socket whose transport may hold bytes is kept as -2 - fd (_spilled).
_NO_FD = -1
_is_closing: Callable[[asyncio.Transport], bool] = methodcaller("is_closing")


def _spilled(fd: int) -> int:
    """``Outbox.fd`` once the transport holds bytes for socket ``fd``."""
    return -2 - fd if fd >= 0 else fd


def _socket_fd(transport: asyncio.Transport) -> int:
    """The socket ``Outbox.write`` may write to directly, or -1: TLS (the bytes
    must be encrypted), no socket, or not POSIX."""
    if os.name != "posix" or transport.get_extra_info("sslcontext") is not None:
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (AttributeError, OSError, TypeError):
        return -1


# Small frames queued during one loop iteration are joined into writes of
# about this many bytes.
_COALESCE = EAGER_WRITE
# A topic's batch is written out (and started afresh) once it holds this
# much, or what max_buffer leaves room for, if less.
_SEGMENT = 256 * 1024
# A replay leaves in writes of about this many bytes.
_REPLAY_WRITE = 64 * 1024


class Owner(Protocol):
    """Who an outbox reports to when the stream must end now."""

    def end_abruptly(self, reason: str) -> None: ...

    def dropped_events(self, count: int) -> None: ...


class Scheduler:
    """Shared by an adapter's outboxes: the limits, the counters, and the
    outboxes to write out at the end of this loop iteration."""

    __slots__ = (
        "batches",
        "dirty",
        "drop_oldest",
        "handle",
        "high_water",
        "is_closing",
        "kinds",
        "lazy",
        "max_buffer",
        "room",
        "segment",
        "stats",
        "timeout",
    )

    def __init__(self, options: Options, stats: Stats) -> None:
        self.max_buffer = options.max_buffer
        self.drop_oldest = options.slow_consumer == "drop-oldest"
        self.timeout = options.send_timeout
        # The transport pauses us beyond this; what it holds below it is
        # counted against max_buffer as if it were full.
        self.high_water = min(65536, max(1, options.max_buffer // 2))
        # Queued bytes a peer whose transport is not paused may hold (one
        # shared int object: this is stored on every outbox).
        self.room = self.max_buffer - self.high_water
        # A batch never holds more than a subscriber bound to it may hold.
        self.segment = min(_SEGMENT, max(0, self.room))
        self.stats = stats
        self.dirty: list[Outbox] = []
        self.batches: list[Fanout] = []  # topics with a batch open in this iteration
        self.handle: asyncio.Handle | None = None
        # The kinds of transport attached so far, and ``is_closing`` for
        # them: the method itself while there is one kind (a call without a
        # lookup, for the fan-out's one pass over its subscribers).
        self.kinds: set[type] = set()
        self.is_closing: Callable[[asyncio.Transport], bool] = _is_closing
        # The batch opened by this iteration's first publish, its
        # subscribers not yet bound (see Fanout.publish).
        self.lazy: Fanout | None = None

    def settle(self) -> None:
        """Something may change for a subscriber (a send, a publish, a
        subscription...): bind the lazy batch's subscribers first, as its
        publish would have."""
        lazy = self.lazy
        if lazy is not None:
            self.lazy = None
            lazy.bind(None, self)

    def add_kind(self, transport: asyncio.Transport) -> None:
        """``transport`` is attached: keep ``is_closing`` right for it."""
        kind = type(transport)
        if kind not in self.kinds:
            self.kinds.add(kind)
            self.is_closing = kind.is_closing if len(self.kinds) == 1 else _is_closing

    def mark(self, outbox: Outbox) -> None:
        """Write ``outbox``'s queue out at the end of this loop iteration."""
        self.dirty.append(outbox)
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_soon(self._flush)

    def open_batch(self, fanout: Fanout) -> None:
        """``fanout`` has a batch to write out at the end of this iteration."""
        self.batches.append(fanout)
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.handle = None
        batches, self.batches = self.batches, []
        # One failure (a transport that raises) must cost that batch or that
        # peer only: the other topics' batches are still written, and no
        # batch stays half-open (its topic would never be written again).
        for fanout in batches:
            try:
                fanout.close_batch(self)
            except Exception:
                fanout.drop_batch()
                _log_failure("a topic's batch")
        dirty, self.dirty = self.dirty, []
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:
                outbox.abort()
                outbox.owner.end_abruptly(REASON_LOST)
                _log_failure("a peer's queue")


class Outbox(Forwarder):
    """One peer's frames on their way to its transport.

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
        self.fd = _NO_FD
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
        # While a replay's bytes may still be in the transport: the bytes
        # written to it after them (the transport is FIFO, so of what it
        # holds, at most this much is live and counts against max_buffer).
        self.live_unsent: int | None = None
        self.stall_timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        # The topic batch this outbox takes whole at the end of the iteration
        # (its queue is then empty: anything else pending releases it first).
        self.batch: Fanout | None = None

    # -- what the peer and the registry call ------------------------------------

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

    def push(self, frame: bytes) -> None:
        """One frame for this peer alone (``send``, keep-alive)."""
        if len(frame) >= EAGER_WRITE:
            self.write_or_queue(frame)
        else:
            self.enqueue(frame)

    def write_now(self, frame: bytes) -> None:
        """Hand ``frame`` to the transport ahead of any policy (the
        ``crossws-id`` event: it must never be dropped)."""
        self.sched.settle()
        transport = self.transport
        if self.queue or self.batch or transport is None or transport.is_closing():
            self.enqueue(frame)
        else:
            self.write(transport, frame if self.chunked else unchunk(frame))

    def write_or_queue(self, frame: bytes) -> None:
        """Write now when nothing is queued before ``frame`` and the transport
        takes data; otherwise queue it."""
        self.sched.settle()
        if (
            not self.queue
            and not self.paused
            and self.chunked
            and self.batch is None
            and not self.holding
        ):
            transport = self.transport
            if transport is not None and not transport.is_closing():
                self.write(transport, frame)
                return
        self.enqueue(frame)

    def enqueue(self, frame: bytes) -> None:
        self.sched.settle()  # first: it may end this peer
        if self.discarded:  # ended abruptly: nothing more is held for it
            return
        if self.batch is not None:
            self.batch.release(self)
            if self.discarded:  # the batch's frames put it over max_buffer
                return
        queue = self.queue
        if not queue:
            self.sched.mark(self)
            if queue is None:
                queue = self.queue = []
        queue.append(frame)
        self.queued += len(frame)
        if self.queued > self.room:
            self.check_overflow()

    def take(self, frames: list[bytes]) -> None:
        """Queue ``frames`` (a batch's, when this outbox leaves it)."""
        self.sched.settle()
        if not frames or self.discarded:
            return
        queue = self.queue
        if not queue:
            self.sched.mark(self)
            if queue is None:
                queue = self.queue = []
        queue.extend(frames)
        self.queued += sum(map(len, frames))
        if self.queued > self.room:
            self.check_overflow()

    def flush(self) -> None:
        """Hand every queued frame to the transport (when it takes data), small ones joined."""
        queue = self.queue
        if not queue or self.paused or self.holding:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        queued = self.queued
        self.queue = None
        self.queued = 0
        write = self.write
        if not self.chunked:  # HTTP/1.0: close-delimited, no chunk framing
            write(transport, b"".join(unchunk(f) for f in queue))
        elif len(queue) == 1:
            write(transport, queue[0])
        elif queued <= _COALESCE:
            write(transport, b"".join(queue))
        else:
            # Big frames go one write each: the transport hands each to the
            # kernel at once while the client reads the previous one; small
            # ones are joined into writes of about _COALESCE bytes.
            start = size = 0
            for end, frame in enumerate(queue, 1):
                size += len(frame)
                if size >= _COALESCE:
                    write(transport, frame if end - start == 1 else b"".join(queue[start:end]))
                    start, size = end, 0
            if start < len(queue):
                write(transport, b"".join(queue[start:]))
        self._wake()

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        """``transport.write(data)``, but straight to the socket when the
        transport holds nothing (see the module docstring). Never once the
        transport is closing: uvloop closes the socket at once, and its
        number may then be reused by another connection.

        ``fd`` says which: every ``transport.write`` here marks it spilled
        (the package is the transport's only writer while the stream is
        open), and a write that finds the transport empty again unmarks it,
        so the common case asks the transport nothing."""
        if self.live_unsent is not None:
            self._write_after_replay(transport, data)
            return
        fd = self.fd
        if fd != _NO_FD and not transport.is_closing():
            if fd < 0:
                if transport.get_write_buffer_size():
                    transport.write(data)
                    return
                fd = self.fd = -2 - fd
            try:
                sent = _os_write(fd, data)
            except _RETRY:
                sent = 0
            except OSError as exc:
                self.write_failed(exc)
                return
            if sent != len(data):
                self.write_rest(transport, data, sent)
            return
        transport.write(data)

    def _write_after_replay(self, transport: asyncio.Transport, data: bytes) -> None:
        """``write`` while a replay's bytes may still be in the transport:
        through the transport (order), counting what is live."""
        if transport.get_write_buffer_size() <= (self.live_unsent or 0):
            self.live_unsent = None  # the replay's bytes are out
            self.write(transport, data)
            return
        self.live_unsent = (self.live_unsent or 0) + len(data)
        self.fd = _spilled(self.fd)
        transport.write(data)

    def write_rest(self, transport: asyncio.Transport, data: bytes, sent: int) -> None:
        """A direct write took ``sent`` bytes of ``data``: the transport
        takes the rest, and holds bytes from now on."""
        self.fd = _spilled(self.fd)
        transport.write(data[sent:] if sent else data)

    def write_failed(self, exc: OSError) -> None:
        """A direct write met the connection's error. The kernel reports some
        (ETIMEDOUT: ``send_timeout`` ran out) only once, so the transport
        would not learn the cause: end the stream here, as ``on_lost``
        would have."""
        self.fd = _NO_FD
        self.owner.end_abruptly(self._reason(exc))
        if self.transport is not None:  # the owner did not abort it
            self.transport.abort()

    def _reason(self, exc: BaseException | None) -> str:
        # ETIMEDOUT is the kernel's TCP user timeout, which aiohttp-sse sets
        # to send_timeout; without one, the kernel gave up on its own.
        if isinstance(exc, TimeoutError) and self.sched.timeout is not None:
            return REASON_STALLED
        return REASON_LOST

    def hold(self) -> None:
        """From now on queue everything (nothing is flushed) until
        ``end_hold``: a replay is written ahead of it with
        ``write_with_backpressure``."""
        self.sched.settle()
        if self.batch is not None:
            self.batch.release(self)
        self.holding = True

    def end_hold(self) -> None:
        """End ``hold``: what was queued meanwhile follows the replay."""
        if not self.holding:
            return
        self.holding = False
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
        between two writes. Returns ``False`` if the stream ended first."""
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
        self.fd = _spilled(self.fd)
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

    def abort(self) -> None:
        """Throw away what is held and abort the connection now."""
        self.discarded = True
        self.queue = None
        self.queued = 0
        self.fd = _NO_FD
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    # -- the connection -----------------------------------------------------------

    def attach(self, transport: asyncio.Transport) -> None:
        """Take over the transport's callbacks (aiohttp's protocol still gets them all)."""
        inner = self.install(transport)
        self.transport = transport
        self.sched.add_kind(transport)
        # HTTP/1.0 streams take no batch (its frames carry chunk framing).
        fd = _socket_fd(transport) if self.chunked else _NO_FD
        # aiohttp wrote the headers: the transport may still hold them.
        self.fd = _spilled(fd) if transport.get_write_buffer_size() else fd
        transport.set_write_buffer_limits(high=self.sched.high_water)
        self.paused = bool(getattr(inner, "writing_paused", False))
        self.room = self.sched.room
        if self.paused:
            self.on_pause()

    def detach(self) -> None:
        """Give the transport back to aiohttp (keep-alive may reuse the connection)."""
        transport = self.transport
        self._stop_stall_timer()
        if transport is not None:
            self.uninstall(transport)
            if not transport.is_closing():
                transport.set_write_buffer_limits()  # aiohttp's (asyncio's) defaults
        # The connection is aiohttp's again (it may serve another request).
        self.transport = None
        self.fd = _NO_FD
        self._wake()

    # -- protocol callbacks (aiohttp's protocol gets them too) ------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self.on_pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.on_lost(exc)

    def on_pause(self) -> None:
        self.paused = True
        transport = self.transport
        if transport is not None:
            self.room = self.sched.max_buffer - transport.get_write_buffer_size()
        timeout = self.sched.timeout
        if timeout is not None and self.stall_timer is None:
            loop = asyncio.get_running_loop()
            self.stall_timer = loop.call_later(timeout, self._on_stalled)

    def on_resume(self) -> None:
        self.paused = False
        self.room = self.sched.room
        self._stop_stall_timer()
        if self.queue:
            self.sched.mark(self)
        self._wake()

    def on_lost(self, exc: Exception | None) -> None:
        # Whatever was held, here or in the transport, is gone.
        self.discarded = True
        self.transport = None
        self.fd = _NO_FD
        self.paused = False
        self.queue = None
        self.queued = 0
        # ETIMEDOUT: the kernel's TCP user timeout (send_timeout) gave up on it
        self.owner.end_abruptly(self._reason(exc))
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


class Fanout:
    """The subscribers of one topic (in one namespace), and the batch of frames
    published to it in this loop iteration.

    ``members`` is the subscriber set; fan-out iterates an immutable
    snapshot of it. While a batch is open, the subscribers in ``bound`` whose
    ``batch`` is this fanout take it whole (from frame 0, or from
    ``starts[outbox]`` for the few that joined late or sent a publish), and
    ``laggards`` get every later frame queued one by one. An outbox that
    leaves the batch only clears its ``batch``: ``bound`` is a plain list,
    and the write skips it.
    """

    __slots__ = (
        "bound",
        "frames",
        "laggards",
        "left",
        "members",
        "rebound",
        "size",
        "snapshot",
        "starts",
    )

    def __init__(self) -> None:
        self.members: dict[Outbox, None] = {}
        self.snapshot: tuple[Outbox, ...] | None = None
        self.frames: list[bytes] | None = None  # None: no batch open
        self.size = 0
        self.bound: list[Outbox] = []
        self.starts: dict[Outbox, int] = {}
        self.rebound = False  # an outbox may stand in ``bound`` twice
        self.left = False  # an outbox in ``bound`` has left the batch since
        self.laggards: dict[Outbox, None] = {}  # insertion-ordered, O(1) removal

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, outbox: object) -> bool:
        return outbox in self.members

    def add(self, outbox: Outbox) -> None:
        outbox.sched.settle()
        if outbox.discarded:  # the settling ended it: it joins nothing
            return
        self.members[outbox] = None
        self.snapshot = None
        frames = self.frames
        if frames is not None:  # joins mid-batch: gets what is published from now on
            if _idle(outbox):
                outbox.batch = self
                self.bound.append(outbox)
                self.starts[outbox] = len(frames)
                self.rebound = True
            else:
                self.laggards[outbox] = None

    def discard(self, outbox: Outbox) -> None:
        if outbox not in self.members:
            return
        outbox.sched.settle()
        del self.members[outbox]
        self.snapshot = None
        if self.frames is not None:
            if outbox.batch is self:
                self.release(outbox)  # keeps what was published while subscribed
            self.laggards.pop(outbox, None)

    def publish(self, frame: bytes, skip: Outbox | None, sched: Scheduler) -> None:
        """Hand ``frame`` to every subscriber but ``skip``."""
        lazy = sched.lazy
        if lazy is not None:
            if lazy is self and skip is None and self.size + len(frame) <= sched.segment:
                (self.frames or []).append(frame)  # a burst, still unbound
                self.size += len(frame)
                return
            sched.settle()
        frames = self.frames
        if frames is not None:  # the batch of this iteration: O(laggards)
            frames.append(frame)
            self.size += len(frame)
            if skip is not None and skip.batch is self:
                start = self.starts.pop(skip, 0)
                skip.batch = None
                self.left = True
                self.laggards[skip] = None
                skip.take(frames[start:-1])
            # A copy: a laggard over max_buffer may end, and leave the list.
            for outbox in tuple(self.laggards):
                if outbox is not skip:
                    outbox.enqueue(frame)
            if self.size > sched.segment:
                self.write_batch(reopen=True)
            return
        if self.snapshot is None:
            self.snapshot = tuple(self.members)
        # Open this iteration's batch: idle subscribers bind to it, the
        # others queue this frame and follow frame by frame. It is written
        # at the end of the loop iteration (call_soon), so a burst leaves in
        # one write per subscriber (per segment, for big bursts).
        self.frames = [frame]
        self.size = len(frame)
        if skip is None and not sched.batches and self.size <= sched.segment:
            # The first publish of the iteration binds nobody yet, nor do
            # more publishes to this topic: if nothing else happens before
            # the batch is written, each subscriber's state is checked there,
            # in passes without Python steps, and the write starts that much
            # sooner. Anything that could change a subscriber's state first
            # settles the batch (binds its subscribers, as the first publish
            # would have).
            sched.open_batch(self)
            sched.lazy = self
            return
        sched.open_batch(self)
        self.bind(skip, sched)

    def bind(self, skip: Outbox | None, sched: Scheduler) -> None:
        """Bind the idle subscribers to the batch just opened (one frame, or
        an unbound burst being settled); the others queue its frames (but
        ``skip``) and follow frame by frame."""
        frames = self.frames or []
        frame = frames[0] if len(frames) == 1 else None
        members = self.snapshot or ()
        bind = self.bound.append
        laggards = self.laggards
        for outbox in members:
            # _idle() written out: this loop runs once per subscriber.
            if (
                not outbox.queue
                and not outbox.paused
                and outbox.chunked
                and outbox.batch is None
                and (transport := outbox.transport) is not None
                # closing: queued instead, so that drain() sees what is lost
                and not transport.is_closing()
            ):
                outbox.batch = self
                bind(outbox)
            else:
                # In the list before the frame: one over max_buffer ends and
                # leaves it (discard) at once.
                laggards[outbox] = None
                if frame is None:
                    outbox.take(frames)
                elif outbox is not skip:
                    outbox.enqueue(frame)
        if skip is not None and skip.batch is self:
            self.starts[skip] = 1  # the sender skips its own publish
        if self.size > sched.segment:  # one big frame
            self.write_batch(reopen=True)

    def drop_batch(self) -> None:
        """Forget this iteration's batch after a failure while writing it:
        its subscribers are unbound, so the topic is written again from the
        next publish on."""
        for outbox in self.bound:
            if outbox.batch is self:
                outbox.batch = None
        for outbox in self.laggards:
            if outbox.batch is self:
                outbox.batch = None
        self.frames = None
        self.size = 0
        self.bound = []
        self.starts = {}
        self.laggards = {}
        self.rebound = False
        self.left = False

    def pending_for(self, outbox: Outbox) -> int:
        """Bytes of the batch that ``outbox`` (bound to it) has yet to get."""
        frames = self.frames
        if frames is None or outbox.batch is not self:
            return 0
        return sum(map(len, frames[self.starts.get(outbox, 0) :]))

    def release(self, outbox: Outbox) -> None:
        """``outbox`` must take something else: it queues the batch's frames
        so far and follows frame by frame."""
        start = self.starts.pop(outbox, 0)
        outbox.batch = None
        self.left = True
        frames = self.frames
        if frames is not None:
            self.laggards[outbox] = None
            outbox.take(frames[start:])

    def write_batch(self, *, reopen: bool) -> None:
        """Write the batch to every bound subscriber — the joined bytes built
        once (once per distinct start) — and, at the end of the iteration,
        unbind them in the same pass."""
        frames = self.frames or []
        starts = self.starts
        whole = frames[0] if len(frames) == 1 else b"".join(frames)
        if not reopen and not starts and not self.rebound and whole:
            self._write_whole(whole)
            return
        joined: dict[int, bytes] = {}
        keep: list[Outbox] = []
        bound: Iterable[Outbox] = self.bound
        if self.rebound:
            bound = dict.fromkeys(bound)
            self.rebound = False
        for outbox in bound:
            if outbox.batch is not self:
                continue  # it left the batch (released) since
            data = whole
            if starts:
                start = starts.get(outbox, 0)
                if start:
                    data = joined.get(start, b"")
                    if start not in joined:
                        data = joined[start] = b"".join(frames[start:])
            if data:
                transport = outbox.transport
                if transport is not None and not transport.is_closing():
                    outbox.write(transport, data)
            if not reopen:
                outbox.batch = None
            elif outbox.paused:
                # Its transport paused on that write: frame by frame from now on.
                outbox.batch = None
                self.laggards[outbox] = None
            else:
                keep.append(outbox)
        self.starts = {}
        self.size = 0
        self.left = False
        if reopen:  # still in the iteration: a fresh, empty batch
            self.frames = []
            self.bound = keep
        else:
            self.frames = None
            self.bound = []
            self.laggards = {}

    def _write_whole(self, whole: bytes) -> None:
        """``write_batch`` at the end of the iteration when every bound
        subscriber takes the whole batch (no late joiner, no sender skipped):
        the common case, and the loop a lone publish's latency hangs on.

        When every subscriber still takes it straight to its socket, the
        checks are made first, in passes that make no system call (so their
        memory loads overlap), and the writes then run back to back in
        ``map``: per subscriber, one ``write(2)`` and no Python step; what a
        write does not take is dealt with afterwards, one by one."""
        bound = self.bound
        if self.left:
            bound = [outbox for outbox in bound if outbox.batch is self]
        self.size = 0
        self.frames = None
        self.bound = []
        self.laggards = {}
        self.left = False
        if not bound:
            return
        fds = list(map(_fd_of, bound))
        transports = list(map(_transport_of, bound))
        # min(): each a socket the transport holds nothing for (so none is
        # None either); then one pass asks if any is closing.
        if min(fds) >= 0 and not any(map(bound[0].sched.is_closing, transports)):
            for outbox in bound:
                outbox.batch = None
            _write_each(bound, transports, fds, whole)
            return
        for outbox in bound:
            outbox.batch = None
            transport = outbox.transport
            if transport is not None and not transport.is_closing():
                outbox.write(transport, whole)

    def close_batch(self, sched: Scheduler) -> None:
        """End of the loop iteration."""
        if self.frames is None:
            return
        if sched.lazy is self:
            sched.lazy = None
            if self._write_unbound(sched):
                return
            self.bind(None, sched)
        self.write_batch(reopen=False)

    def _write_unbound(self, sched: Scheduler) -> bool:
        """Write the one frame of a batch nobody was bound to, if every
        subscriber takes it straight to its socket (else ``False``: nothing
        was done)."""
        members = self.snapshot or ()
        frames = self.frames or []
        if members:
            fds = list(map(_fd_of, members))
            # min(): each a socket the transport holds nothing for (so
            # chunked, and with a transport).
            if min(fds) < 0 or any(map(_queue_of, members)) or any(map(_paused_of, members)):
                return False
            transports = list(map(_transport_of, members))
            if any(map(sched.is_closing, transports)):
                return False
        self.size = 0
        self.frames = None
        if members:
            whole = frames[0] if len(frames) == 1 else b"".join(frames)
            _write_each(members, transports, fds, whole)
        return True


def _log_failure(what: str) -> None:
    # logging.exception's traceback, rate-limited: a bug here must be seen,
    # not flood the log
    operator_log.log(
        "write path failure",
        logging.ERROR,
        "the write path failed writing %s (dropped; the other peers are served)",
        what,
        exc_info=True,
    )


def _idle(outbox: Outbox) -> bool:
    """Nothing pending and a transport that takes data: it may bind to a batch."""
    if outbox.queue or outbox.paused or not outbox.chunked or outbox.batch is not None:
        return False
    transport = outbox.transport
    return transport is not None and not transport.is_closing()


_fd_of = attrgetter("fd")
_transport_of = attrgetter("transport")
_queue_of = attrgetter("queue")
_paused_of = attrgetter("paused")


def _write_each(
    outboxes: Sequence[Outbox], transports: list[asyncio.Transport], fds: list[int], data: bytes
) -> None:
    """Write ``data`` to each of ``fds`` (the outboxes' sockets) back to
    back, then deal with what a write did not take, one by one."""
    sent, errors = _write_all(fds, data)
    size = len(data)
    if sent.count(size) != len(sent):
        for i, done in enumerate(sent):
            if i in errors:
                outboxes[i].write_failed(errors[i])
            elif done != size:
                outboxes[i].write_rest(transports[i], data, done)


def _write_all(fds: list[int], data: bytes) -> tuple[list[int], dict[int, OSError]]:
    """``os.write(fd, data)`` for each of ``fds`` in order, without a Python
    step between two. Returns what each took (0 when the kernel had no
    room) and the errors, by index."""
    sent: list[int] = []
    errors: dict[int, OSError] = {}
    remaining = iter(fds)
    again = repeat(data)
    while True:
        try:
            # On an exception map has consumed that fd, and sent holds the
            # results before it: carry on after it.
            sent.extend(map(_os_write, remaining, again))
            return sent, errors
        except _RETRY:
            sent.append(0)
        except OSError as exc:
            errors[len(sent)] = exc
            sent.append(0)
