"""``Outbox``: one peer's frames on their way to its transport — the queue,
the joined writes of a loop iteration, direct socket writes, and the
hand-over of the connection from aiohttp and back.
"""

from __future__ import annotations

import asyncio

from .._frame import EAGER_WRITE, unchunk
from .backpressure import Backpressure
from .direct import NO_SOCKET, RETRY, socket_fd, spilled, unspilled
from .direct import os_write as _os_write
from .ends import REASON_LOST, REASON_STALLED

__all__ = ["Outbox"]

# Small frames queued during one loop iteration are joined into writes of
# about this many bytes.
_COALESCE = EAGER_WRITE


class Outbox(Backpressure):
    """One peer's frames on their way to its transport.

    While the stream is open it also stands in front of aiohttp's protocol
    (which still gets every callback), to learn of flow control and of
    connection loss at once: aiohttp does not cancel handlers by default, and
    an idle stream would otherwise notice only at its next write.
    """

    __slots__ = ()

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
        if fd != NO_SOCKET and not transport.is_closing():
            if fd < 0:
                if transport.get_write_buffer_size():
                    transport.write(data)
                    return
                fd = self.fd = unspilled(fd)
            try:
                sent = _os_write(fd, data)
            except RETRY:
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
        self.fd = spilled(self.fd)
        transport.write(data)

    def write_rest(self, transport: asyncio.Transport, data: bytes, sent: int) -> None:
        """A direct write took ``sent`` bytes of ``data``: the transport
        takes the rest, and holds bytes from now on."""
        self.fd = spilled(self.fd)
        transport.write(data[sent:] if sent else data)

    def write_failed(self, exc: OSError) -> None:
        """A direct write met the connection's error. The kernel reports some
        (ETIMEDOUT: ``send_timeout`` ran out) only once, so the transport
        would not learn the cause: end the stream here, as ``on_lost``
        would have."""
        self.fd = NO_SOCKET
        self.owner.end_abruptly(self._reason(exc))
        if self.transport is not None:  # the owner did not abort it
            self.transport.abort()

    def _reason(self, exc: BaseException | None) -> str:
        # ETIMEDOUT is the kernel's TCP user timeout, which aiohttp-sse sets
        # to send_timeout; without one, the kernel gave up on its own.
        if isinstance(exc, TimeoutError) and self.sched.timeout is not None:
            return REASON_STALLED
        return REASON_LOST

    # -- the connection -----------------------------------------------------------

    def attach(self, transport: asyncio.Transport) -> None:
        """Take over the transport's callbacks (aiohttp's protocol still gets them all)."""
        inner = self.install(transport)
        self.transport = transport
        self.sched.add_kind(transport)
        # HTTP/1.0 streams take no batch (its frames carry chunk framing).
        fd = socket_fd(transport) if self.chunked else NO_SOCKET
        # aiohttp wrote the headers: the transport may still hold them.
        self.fd = spilled(fd) if transport.get_write_buffer_size() else fd
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
        self.fd = NO_SOCKET
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
        self.fd = NO_SOCKET
        self.paused = False
        self.queue = None
        self.queued = 0
        # ETIMEDOUT: the kernel's TCP user timeout (send_timeout) gave up on it
        self.owner.end_abruptly(self._reason(exc))
        self._wake()
