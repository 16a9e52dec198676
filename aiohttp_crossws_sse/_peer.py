"""``Peer`` and ``CloseDetails``: what hooks see of one connected client.

A ``Peer`` is the public face; the machinery behind it (lifecycle, topics,
outbox) is its ``Connection``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from ._boundary import on_the_loop
from ._frame import encode_event
from ._registry import Member
from ._wire import LAST_EVENT_ID_HEADER, LAST_EVENT_ID_QUERY, ReadyState

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = [
    "REASON_OPEN_FAILED",
    "REASON_RESUME",
    "REASON_SHUTDOWN",
    "REASON_TERMINATED",
    "CloseDetails",
    "Peer",
    "PeerAdapter",
    "PeerConnection",
    "PeerView",
    "gave_event_id",
    "last_event_id",
]

# Close reasons of the lifecycle (README "Close reasons"; the write path's
# own are in _write.ends).
REASON_TERMINATED = "terminated"
REASON_SHUTDOWN = "server shutdown"
#: After a backplane outage that may have cost this instance publishes (with
#: history): the client resumes from its last id.
REASON_RESUME = "backplane outage: resume"
REASON_OPEN_FAILED = "open hook failed"

MAX_EVENT_ID_LENGTH = 256


def _sent_event_id(request: web.BaseRequest) -> str | None:
    value = request.headers.get(LAST_EVENT_ID_HEADER)
    if value is None:
        value = request.query.get(LAST_EVENT_ID_QUERY)
    return value


def last_event_id(request: web.BaseRequest) -> str | None:
    """``Last-Event-ID`` (header, else ``lastEventId`` query); too long or NUL: ``None``,
    so that what apps see (and log) stays bounded."""
    value = _sent_event_id(request)
    if value is None or len(value) > MAX_EVENT_ID_LENGTH or "\0" in value:
        return None
    return value


def gave_event_id(request: web.BaseRequest) -> bool:
    """Whether the client sent a ``Last-Event-ID``, one ``last_event_id``
    hides included: an id it cannot prove is still one (``recovered False``)."""
    return bool(_sent_event_id(request))


class PeerAdapter(Protocol):
    """What ``Peer.adapter`` offers: the public surface of its ``SSEAdapter``
    (the object is that adapter; typed by its surface, so this module need
    not import the adapter's)."""

    @property
    def peers(self) -> Mapping[str, Peer]: ...

    @property
    def bidir(self) -> bool: ...

    def publish(
        self, topic: str, data: Any, *, event: str | None = None, namespace: str | None = None
    ) -> Awaitable[str | None]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> Awaitable[None]: ...


class PeerView(Mapping[str, "Peer"]):
    """A read-only ``Mapping[str, Peer]`` over connections by id."""

    __slots__ = ("_connections",)

    def __init__(self, connections: Mapping[str, Member]) -> None:
        self._connections = connections

    def __getitem__(self, key: str) -> Peer:
        peer: Peer = self._connections[key].peer
        return peer

    def __iter__(self) -> Iterator[str]:
        return iter(self._connections)

    def __len__(self) -> int:
        return len(self._connections)

    def __contains__(self, key: object) -> bool:
        return key in self._connections

    def __repr__(self) -> str:
        return f"<peers {list(self._connections)}>"


class PeerConnection(Member, Protocol):
    """What a ``Peer`` asks of the machinery behind it (``Connection``)."""

    @property
    def registry(self) -> Registry[Any]: ...

    @property
    def state(self) -> ReadyState: ...

    @property
    def recovered(self) -> bool | None: ...

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def end(self, details: CloseDetails, *, graceful: bool) -> None: ...

    async def wait_closed(self) -> None: ...

    async def wait_replayed(self) -> bool | None: ...


class CloseDetails:
    """Why a peer closed: ``code`` and ``reason``, each possibly ``None``."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int | None = None, reason: str | None = None) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"CloseDetails(code={self.code!r}, reason={self.reason!r})"


@on_the_loop(
    lambda peer: peer._conn.registry.guard,
    exempt=frozenset(),
    thread_only=frozenset({"publish"}),  # the write path settles a sender's publish itself
)
class Peer:
    """One connected client: an open event stream, its topics and its context.

    Call it from the adapter's event loop only: a call from another thread
    raises ``RuntimeError`` and changes nothing."""

    __slots__ = ("_conn", "_context", "id", "request")

    def __init__(
        self,
        conn: PeerConnection,
        request: web.Request,
        context: dict[str, Any] | None,
        peer_id: str,
    ) -> None:
        self.id = peer_id
        self.request = request
        self._conn = conn
        self._context = context  # created on first use: most peers never need one

    @property
    def adapter(self) -> PeerAdapter:
        """The ``SSEAdapter`` this peer belongs to (to publish or count from a hook)."""
        adapter: PeerAdapter = self._conn.registry.adapter
        return adapter

    @property
    def context(self) -> dict[str, Any]:
        """Per-peer state, shared with the upgrade hook's ``context``."""
        if self._context is None:
            self._context = {}
        return self._context

    @property
    def namespace(self) -> str:
        """The peer's namespace (default: the request path)."""
        ns = self._conn.namespace
        return ns.name if ns is not None else self.request.path

    @property
    def remote_address(self) -> str | None:
        """The client address (``request.remote``)."""
        return self.request.remote

    @property
    def topics(self) -> frozenset[str]:
        """The topics this peer is subscribed to."""
        return frozenset(self._conn.topic_list())

    @property
    def peers(self) -> Mapping[str, Peer]:
        """Open peers of this namespace, by id (this peer included while open)."""
        ns = self._conn.namespace
        return PeerView(ns.connections if ns is not None else {})

    @property
    def ready_state(self) -> ReadyState:
        """0 connecting, 1 open, 2 closing, 3 closed (a ``ReadyState``, an ``int``)."""
        return self._conn.state

    @property
    def last_event_id(self) -> str | None:
        """The client's ``Last-Event-ID`` header or ``lastEventId`` query parameter;
        ``None`` when absent, longer than 256 characters or containing NUL."""
        return last_event_id(self.request)

    @property
    def recovered(self) -> bool | None:
        """The outcome of the ``Last-Event-ID`` replay (option ``history``).

        ``None`` without history, without a ``Last-Event-ID``, and until the
        replay of the topics subscribed by the end of ``open`` has been
        written (it runs after ``open`` returns); then ``True`` when every
        event the client missed was replayed, ``False`` when some may be
        lost (the id is unknown, garbage, from a lost history, or events
        after it were evicted) — the app may then send a full refresh.
        See ``wait_recovered``."""
        return self._conn.recovered

    async def wait_recovered(self) -> bool | None:
        """Wait until the replay has been written; returns ``recovered``
        (``None`` at once when there is no replay, or if the peer closed
        first). Await it in a task the ``open`` hook starts, not in ``open``
        itself: the replay runs after ``open`` returns."""
        return await self._conn.wait_replayed()

    @property
    def buffered_amount(self) -> int:
        """Bytes held for this client and not yet handed to the kernel: its
        queue plus the transport's write buffer."""
        return self._conn.outbox.buffered_amount

    @property
    def dropped(self) -> int:
        """Events discarded by the ``"drop-oldest"`` policy for this peer."""
        return self._conn.outbox.dropped

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
        conn = self._conn
        if conn.state == ReadyState.OPEN:
            stats = conn.registry.stats
            stats.frames_encoded += 1
            stats.deliveries += 1
            conn.outbox.push(frame)

    def subscribe(self, topic: str) -> None:
        """Receive what is published to ``topic`` in this namespace. No-op once closing."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        self._conn.subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``."""
        self._conn.unsubscribe(topic)

    def publish(self, topic: str, data: Any, *, event: str | None = None) -> Awaitable[str | None]:
        """Publish to the other subscribers of ``topic`` in this namespace (and
        relay). Awaitable like ``SSEAdapter.publish``: ignore the result or
        ``await`` it for the event's id (``BackplaneError`` when the backplane
        could not take it)."""
        conn = self._conn
        return conn.registry.publish(
            topic, data, event=event, namespace=self.namespace, sender=conn
        )

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """End the stream gracefully once queued events are written."""
        self._conn.end(CloseDetails(code, reason), graceful=True)

    def terminate(self) -> None:
        """Abort the connection now; queued events are discarded."""
        self._conn.end(CloseDetails(None, REASON_TERMINATED), graceful=False)

    async def wait_closed(self) -> None:
        """Return once the peer is closed and its close hook has run."""
        await self._conn.wait_closed()

    async def wait_for_drain(self, threshold: int = 0, timeout: float | None = None) -> bool:
        """Wait until at most ``threshold`` bytes are held for this client
        (``buffered_amount``).

        Returns ``True`` once that holds — also after a graceful ``close()``,
        which ends the stream only once everything was handed to the kernel —
        and ``False`` when the peer was aborted (``terminate()``, a lost
        connection, the slow-consumer policy, a send timeout): what it held is
        lost. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        return await self._conn.outbox.wait_for_drain(threshold, timeout)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        # as it stands (no settling, no thread check): a repr may be made anywhere
        conn = self._conn
        namespace = conn.namespace.name if conn.namespace is not None else self.request.path
        return f"<Peer {self.id} {namespace!r} state={int(conn.state)}>"
