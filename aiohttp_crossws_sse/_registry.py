"""Peers by id, namespaces, the topic → subscribers index, and local fan-out."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._frame import EAGER_WRITE, KEEPALIVE_FRAME, encode_text, to_text
from .sync.base import Relayed

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._options import Options
    from ._peer import Peer

__all__ = ["Namespace", "Registry", "Stats"]


class Stats:
    """Counters an operator asks for first (``SSEAdapter.stats()``)."""

    __slots__ = (
        "deliveries",
        "events_dropped",
        "frames_encoded",
        "messages_received",
        "peers_closed",
        "peers_opened",
        "peers_rejected",
        "slow_consumers",
    )

    def __init__(self) -> None:
        self.frames_encoded = 0  # events encoded: one per send, one per publish
        self.deliveries = 0  # frames queued for a peer (a publish to N peers counts N)
        self.events_dropped = 0  # discarded by the "drop-oldest" policy
        self.slow_consumers = 0  # peers closed by the "close" policy
        self.peers_opened = 0
        self.peers_closed = 0
        self.peers_rejected = 0  # refused by max_peers or while shutting down
        self.messages_received = 0  # bidirectional messages handed to hooks


class _Topic:
    """The subscribers of one topic; fan-out iterates an immutable snapshot."""

    __slots__ = ("members", "snapshot")

    def __init__(self) -> None:
        self.members: dict[Peer, None] = {}
        self.snapshot: tuple[Peer, ...] | None = None


class Namespace:
    """Peers that can see each other, and their topics."""

    __slots__ = ("name", "peers", "topics")

    def __init__(self, name: str) -> None:
        self.name = name
        self.peers: dict[str, Peer] = {}
        self.topics: dict[str, _Topic] = {}

    def join(self, topic: str, peer: Peer) -> None:
        entry = self.topics.get(topic)
        if entry is None:
            entry = self.topics[topic] = _Topic()
        entry.members[peer] = None
        entry.snapshot = None

    def leave(self, topic: str, peer: Peer) -> None:
        entry = self.topics.get(topic)
        if entry is None or peer not in entry.members:
            return
        del entry.members[peer]
        if entry.members:
            entry.snapshot = None
        else:
            del self.topics[topic]  # no dead topics after churn


class Registry:
    """Every open peer of one adapter, and the machinery to reach them."""

    def __init__(
        self,
        options: Options,
        on_relay_error: Callable[[Peer | None, Exception], None] | None = None,
    ) -> None:
        self.options = options
        self._on_relay_error = on_relay_error
        self.stats = Stats()
        self.peers: dict[str, Peer] = {}
        self.namespaces: dict[str, Namespace] = {}
        self._dirty: list[Peer] = []
        self._flush_handle: asyncio.Handle | None = None
        self._keepalive_handle: asyncio.TimerHandle | None = None

    # -- membership ---------------------------------------------------------

    def namespace(self, name: str) -> Namespace:
        ns = self.namespaces.get(name)
        if ns is None:
            ns = self.namespaces[name] = Namespace(name)
        return ns

    def add(self, peer: Peer) -> None:
        self.peers[peer.id] = peer
        ns = peer._namespace = self.namespace(peer._namespace.name)
        ns.peers[peer.id] = peer
        self.stats.peers_opened += 1
        if self._keepalive_handle is None:
            loop = asyncio.get_running_loop()
            self._keepalive_handle = loop.call_later(self.options.keepalive, self._keepalive)

    def remove(self, peer: Peer) -> None:
        """Forget a peer everywhere at once (idempotent)."""
        if self.peers.pop(peer.id, None) is None:
            return
        ns = peer._namespace
        ns.peers.pop(peer.id, None)
        for topic in peer._topics:
            ns.leave(topic, peer)
        if not ns.peers and not ns.topics and self.namespaces.get(ns.name) is ns:
            del self.namespaces[ns.name]
        if not self.peers and self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    def topic_count(self) -> int:
        return sum(len(ns.topics) for ns in self.namespaces.values())

    # -- delivery -------------------------------------------------------------

    def mark_dirty(self, peer: Peer) -> None:
        """Schedule ``peer``'s outbox to be written at the end of this loop iteration."""
        self._dirty.append(peer)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for peer in dirty:
            peer._flush()

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        event: str | None = None,
        namespace: str | None = None,
        sender: Peer | None = None,
    ) -> None:
        """Encode once, queue the same frame for every local subscriber, relay."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        text = to_text(data)
        self._deliver(topic, encode_text(text, event=event), namespace, sender)
        sync = self.options.sync
        if sync is not None:
            try:
                sync.publish(Relayed(topic, text, event=event, namespace=namespace))
            except Exception as exc:  # a backplane must not break a handler
                if self._on_relay_error is not None:
                    self._on_relay_error(sender, exc)

    def deliver_relayed(self, message: Relayed) -> None:
        """A publish made by another instance: local subscribers only, never relayed."""
        frame = encode_text(message.data, event=message.event, id=message.id)
        self._deliver(message.topic, frame, message.namespace, None)

    def _deliver(
        self, topic: str, frame: bytes, namespace: str | None, sender: Peer | None
    ) -> None:
        self.stats.frames_encoded += 1
        if namespace is None:
            for ns in tuple(self.namespaces.values()):
                self._fanout(ns, topic, frame, sender)
        elif (target := self.namespaces.get(namespace)) is not None:
            self._fanout(target, topic, frame, sender)

    def _fanout(self, ns: Namespace, topic: str, frame: bytes, sender: Peer | None) -> None:
        entry = ns.topics.get(topic)
        if entry is None:
            return
        members = entry.snapshot
        if members is None:
            members = entry.snapshot = tuple(entry.members)
        size = len(frame)
        self.stats.deliveries += len(members) - (sender is not None and sender in entry.members)
        if size >= EAGER_WRITE or self._flush_handle is None:
            # Big frames, and the first publish of a loop iteration, go to
            # each writable peer's transport at once (no second pass, no
            # added latency). The flush scheduled here marks the iteration:
            # small publishes after this one queue and leave joined.
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
            # Peer._write_or_queue inlined: this loop runs once per
            # subscriber per publish.
            for peer in members:
                if peer is sender:
                    continue
                if not peer._queue and not peer._paused and peer._chunked:
                    transport = peer._transport
                    if transport is not None and not transport.is_closing():
                        transport.write(frame)
                        continue
                peer._enqueue(frame)
            return
        limit = self.options.max_buffer
        dirty = self._dirty
        # Peer._enqueue inlined, for the same reason.
        for peer in members:
            if peer is sender:
                continue
            queue = peer._queue
            if not queue:
                dirty.append(peer)
            queue.append(frame)
            peer._queued += size
            if peer._paused and peer._queued > limit:
                peer._overflow()

    def _keepalive(self) -> None:
        self._keepalive_handle = None
        for peer in tuple(self.peers.values()):
            peer._push(KEEPALIVE_FRAME)
        if self.peers:
            loop = asyncio.get_running_loop()
            self._keepalive_handle = loop.call_later(self.options.keepalive, self._keepalive)

    def close(self) -> None:
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
