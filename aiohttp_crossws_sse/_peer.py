"""``Peer`` and ``CloseDetails``: one open event stream and its outbox.

A frame goes straight to the transport when nothing is queued before it and
the transport takes data: the first publish of a loop iteration and every big
frame do that. Small frames pushed later in the same iteration queue and leave
joined, in one write per peer, at the end of it. While the transport is paused
(the client reads slower than we write) frames stay in the outbox, counted
against ``max_buffer``; beyond it the ``slow_consumer`` policy applies.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._frame import EAGER_WRITE, encode_event, unchunk
from ._hooks import Hooks, call, logger, report, wrap
from ._protocol import Forwarder
from ._registry import Namespace

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["CLOSED", "CLOSING", "CONNECTING", "OPEN", "CloseDetails", "Peer"]

CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3

# Close reasons the package itself gives (README "Close reasons").
REASON_LOST = "connection lost"
REASON_SLOW = "slow consumer"
REASON_STALLED = "send timeout"
REASON_TERMINATED = "terminated"
REASON_SHUTDOWN = "server shutdown"
REASON_OPEN_FAILED = "open hook failed"


MAX_EVENT_ID_LENGTH = 256

# Small frames pushed during one loop iteration are joined into writes of
# about this many bytes.
_COALESCE = EAGER_WRITE


def last_event_id(request: web.BaseRequest) -> str | None:
    """``Last-Event-ID`` (header, else ``lastEventId`` query); too long or NUL: ignored."""
    value = request.headers.get("Last-Event-ID")
    if value is None:
        value = request.query.get("lastEventId")
    if value is None or len(value) > MAX_EVENT_ID_LENGTH or "\0" in value:
        return None
    return value


class CloseDetails:
    """Why a peer closed: ``code`` and ``reason``, each possibly ``None``."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int | None = None, reason: str | None = None) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"CloseDetails(code={self.code!r}, reason={self.reason!r})"


class _PeerProtocol(Forwarder):
    """Forwards to aiohttp's protocol while a stream is open; the peer also
    learns of connection loss at once (aiohttp does not cancel handlers by
    default, and an idle stream would otherwise notice only at its next
    write) and of flow control."""

    __slots__ = ("_peer",)

    def __init__(self, inner: asyncio.BaseProtocol, peer: Peer) -> None:
        super().__init__(inner)
        self._peer = peer

    def pause_writing(self) -> None:
        super().pause_writing()
        self._peer._on_pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._peer._on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._peer._on_lost(exc)


class Peer:
    """One connected client: an open event stream, its topics and its context."""

    __slots__ = (
        "_chunked",
        "_closed",
        "_context",
        "_details",
        "_dropped",
        "_ended",
        "_finalized",
        "_hooks",
        "_namespace",
        "_paused",
        "_protocol",
        "_queue",
        "_queued",
        "_registry",
        "_resumed",
        "_stall_timer",
        "_state",
        "_topics",
        "_transport",
        "id",
        "request",
    )

    def __init__(
        self,
        request: web.Request,
        registry: Registry,
        namespace: str,
        hooks: tuple[Hooks, ...],
        context: dict[str, Any] | None,
    ) -> None:
        self.id: str = str(uuid.uuid4())
        self.request = request
        self._context = context  # created on first use: most peers never need one
        self._registry = registry
        self._namespace = Namespace(namespace)  # replaced by the registry's on add
        self._hooks = hooks
        # A tuple: most peers hold a topic or two, and an empty set alone
        # costs 216 bytes per connection.
        self._topics: tuple[str, ...] = ()
        self._state = CONNECTING
        self._transport: asyncio.Transport | None = None
        self._protocol: _PeerProtocol | None = None
        self._queue: list[bytes] = []
        self._queued = 0
        self._paused = False
        self._dropped = 0
        self._ended: asyncio.Future[bool] | None = None  # result: end gracefully
        self._details: CloseDetails | None = None
        self._finalized = 0  # 1: close hooks running, 2: done
        self._chunked = request.version >= (1, 1)
        self._closed: asyncio.Future[None] | None = None
        self._resumed: asyncio.Future[None] | None = None
        self._stall_timer: asyncio.TimerHandle | None = None

    # -- public surface ---------------------------------------------------

    @property
    def context(self) -> dict[str, Any]:
        """Per-peer state, shared with the upgrade hook's ``context``."""
        if self._context is None:
            self._context = {}
        return self._context

    @property
    def namespace(self) -> str:
        """The peer's namespace (default: the request path)."""
        return self._namespace.name

    @property
    def remote_address(self) -> str | None:
        """The client address (``request.remote``)."""
        return self.request.remote

    @property
    def topics(self) -> frozenset[str]:
        """The topics this peer is subscribed to."""
        return frozenset(self._topics)

    @property
    def peers(self) -> Mapping[str, Peer]:
        """Open peers of this namespace, by id (this peer included while open)."""
        return MappingProxyType(self._namespace.peers)

    @property
    def ready_state(self) -> int:
        """0 connecting, 1 open, 2 closing, 3 closed."""
        return self._state

    @property
    def last_event_id(self) -> str | None:
        """The client's ``Last-Event-ID`` header or ``lastEventId`` query parameter."""
        return last_event_id(self.request)

    @property
    def recovered(self) -> bool | None:
        """Replay outcome; ``None`` without history (replay is not enabled yet)."""
        return None

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this client and not yet handed to the kernel."""
        transport = self._transport
        pending = self._queued
        if transport is not None and not transport.is_closing():
            pending += transport.get_write_buffer_size()
        return pending

    @property
    def dropped(self) -> int:
        """Events discarded by the ``"drop-oldest"`` policy for this peer."""
        return self._dropped

    def send(
        self,
        data: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> None:
        """Queue one event for this client; never blocks. A no-op once closing."""
        frame = encode_event(data, event=event, id=id, retry=retry)
        if self._state == OPEN:
            stats = self._registry.stats
            stats.frames_encoded += 1
            stats.deliveries += 1
            self._push(frame)

    def subscribe(self, topic: str) -> None:
        """Receive what is published to ``topic`` in this namespace. No-op once closing."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        if self._state > OPEN:
            return
        if topic not in self._topics:
            self._topics = (*self._topics, topic)
            self._namespace.join(topic, self)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``."""
        if topic in self._topics:
            self._topics = tuple(t for t in self._topics if t != topic)
            self._namespace.leave(topic, self)

    def publish(self, topic: str, data: Any, *, event: str | None = None) -> None:
        """Publish to the other subscribers of ``topic`` in this namespace (and relay)."""
        self._registry.publish(topic, data, event=event, namespace=self.namespace, sender=self)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """End the stream gracefully once queued events are written."""
        self._end(CloseDetails(code, reason), graceful=True)

    def terminate(self) -> None:
        """Abort the connection now; queued events are discarded."""
        self._end(CloseDetails(None, REASON_TERMINATED), graceful=False)

    async def wait_closed(self) -> None:
        """Return once the peer is closed and its close hook has run."""
        if self._finalized == 2:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed)

    async def wait_for_drain(self, threshold: int = 0, timeout: float | None = None) -> bool:
        """Wait until at most ``threshold`` bytes are buffered for this client.

        Returns ``True`` when drained, ``False`` when the peer closed first;
        raises ``TimeoutError`` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while self._state <= CLOSING and self._transport is not None:
                if self.buffered_amount <= threshold:
                    return True
                if self._paused or self._queue:
                    if self._resumed is None:
                        self._resumed = asyncio.get_running_loop().create_future()
                    await asyncio.shield(self._resumed)
                else:
                    # Below the transport's low-water mark nothing signals
                    # progress; the kernel takes the rest within moments.
                    await asyncio.sleep(0.005)
        return self._state <= CLOSING

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.namespace!r} state={self._state}>"

    # -- outbox -----------------------------------------------------------

    def _push(self, frame: bytes) -> None:
        if len(frame) >= EAGER_WRITE:
            self._write_or_queue(frame)
        else:
            self._enqueue(frame)

    def _write_or_queue(self, frame: bytes) -> None:
        """Write now when nothing is queued before the frame and the transport
        takes data; otherwise queue it."""
        if not self._queue and not self._paused and self._chunked:
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.write(frame)
                return
        self._enqueue(frame)

    def _enqueue(self, frame: bytes) -> None:
        queue = self._queue
        if not queue:
            self._registry.mark_dirty(self)
        queue.append(frame)
        self._queued += len(frame)
        if self._paused and self._queued > self._registry.options.max_buffer:
            self._overflow()

    def _flush(self) -> None:
        """Hand every queued frame to the transport (when it accepts data), small ones joined."""
        queue = self._queue
        if not queue or self._paused:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        queued = self._queued
        self._queue = []
        self._queued = 0
        if not self._chunked:  # HTTP/1.0: close-delimited, no chunk framing
            transport.write(b"".join(unchunk(f) for f in queue))
        elif len(queue) == 1:
            transport.write(queue[0])
        elif queued <= _COALESCE:
            transport.write(b"".join(queue))
        else:
            # Big frames go one write each: the transport hands each to the
            # kernel at once while the client reads the previous one; small
            # ones are joined into writes of about _COALESCE bytes.
            start = size = 0
            for end, frame in enumerate(queue, 1):
                size += len(frame)
                if size >= _COALESCE:
                    transport.write(frame if end - start == 1 else b"".join(queue[start:end]))
                    start, size = end, 0
            if start < len(queue):
                transport.write(b"".join(queue[start:]))
        self._wake()

    def _overflow(self) -> None:
        options = self._registry.options
        if options.slow_consumer == "drop-oldest":
            queue = self._queue
            limit = options.max_buffer
            drop = 0
            size = self._queued
            while size > limit and drop < len(queue):
                size -= len(queue[drop])
                drop += 1
            del queue[:drop]
            self._queued = size
            self._dropped += drop
            self._registry.stats.events_dropped += drop
        else:
            self._registry.stats.slow_consumers += 1
            self._end(CloseDetails(None, REASON_SLOW), graceful=False)

    def _on_pause(self) -> None:
        self._paused = True
        timeout = self._registry.options.send_timeout
        if timeout is not None and self._stall_timer is None:
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(timeout, self._on_stalled)

    def _on_resume(self) -> None:
        self._paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._queue:
            self._registry.mark_dirty(self)
        self._wake()

    def _on_stalled(self) -> None:
        self._stall_timer = None
        if self._paused:
            self._end(CloseDetails(None, REASON_STALLED), graceful=False)

    def _wake(self) -> None:
        if self._resumed is not None:
            if not self._resumed.done():
                self._resumed.set_result(None)
            self._resumed = None

    # -- lifecycle (driven by the adapter's handler) ------------------------

    def _attach(self, transport: asyncio.Transport) -> asyncio.Future[bool]:
        """Take over the transport's callbacks; returns the future the handler awaits."""
        inner = transport.get_protocol()
        self._transport = transport
        self._protocol = _PeerProtocol(inner, self)
        transport.set_protocol(self._protocol)
        self._paused = bool(getattr(inner, "writing_paused", False))
        high = min(65536, max(1024, self._registry.options.max_buffer // 2))
        transport.set_write_buffer_limits(high=high)
        self._ended = asyncio.get_running_loop().create_future()
        self._state = OPEN
        return self._ended

    def _detach(self) -> None:
        """Give the transport back to aiohttp (keep-alive may reuse the connection)."""
        transport, protocol = self._transport, self._protocol
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if transport is not None and protocol is not None and not transport.is_closing():
            transport.set_protocol(protocol._inner)
        self._protocol = None
        self._wake()

    def _end(self, details: CloseDetails, *, graceful: bool) -> None:
        """Start closing: leave the registry and wake the handler."""
        if self._state >= CLOSING:
            return
        self._state = CLOSING
        self._details = details
        self._registry.remove(self)
        if not graceful:
            self._queue = []
            self._queued = 0
            if self._transport is not None:
                self._transport.abort()
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(graceful)
        self._wake()

    def _on_lost(self, exc: Exception | None = None) -> None:
        self._transport = None
        self._paused = False
        # ETIMEDOUT: the kernel's TCP user timeout (send_timeout) gave up on it
        reason = REASON_STALLED if isinstance(exc, TimeoutError) else REASON_LOST
        self._end(CloseDetails(None, reason), graceful=False)
        self._wake()  # a graceful end may be waiting to drain

    async def _drain(self, timeout: float | None) -> None:
        """Write out the outbox before a graceful end; abort after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while self._queue and self._transport is not None:
                    if self._paused:
                        if self._resumed is None:
                            self._resumed = asyncio.get_running_loop().create_future()
                        await asyncio.shield(self._resumed)
                    else:
                        self._flush()
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()

    async def _finalize(self) -> None:
        """Mark closed and run the close hooks, exactly once."""
        if self._finalized:
            return
        self._finalized = 1
        self._state = CLOSED
        self._registry.remove(self)
        details = self._details or CloseDetails(None, REASON_LOST)
        try:
            for hooks in self._hooks:
                if hooks.close is not None:
                    try:
                        await call(hooks.close, self, details)
                    except Exception as exc:
                        logger.exception("close hook failed for peer %s", self.id)
                        await report(self._hooks, self, wrap("close hook failed", exc))
        finally:
            self._finalized = 2
            self._registry.stats.peers_closed += 1
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            self._closed = None
