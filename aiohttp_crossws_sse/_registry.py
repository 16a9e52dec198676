"""Peers by id, namespaces, the topic → subscribers index, and local fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._boundary import LoopGuard
from ._errors import BackplaneError
from ._frame import KEEPALIVE_FRAME, encode_published, encode_text, to_text
from ._history import History, ReplaySource
from ._publication import DONE, Publication, Receipt
from ._stats import Stats
from ._write import Fanout, Scheduler
from .sync.base import Relayed, Sync

if TYPE_CHECKING:
    from ._options import Options
    from ._write import Outbox

__all__ = ["Member", "Namespace", "Registry", "Stats"]


class Member(Protocol):
    """A peer's connection as the registry sees it (``Connection``)."""

    namespace: Namespace | None
    topics: str | set[str] | None

    @property
    def peer(self) -> Any: ...  # its Peer (the registry reads its ``id``)

    @property
    def outbox(self) -> Outbox: ...

    def topic_list(self) -> tuple[str, ...]: ...


class Namespace:
    """Peers that can see each other, and their topics.

    ``interest``: told when a topic gains its first subscriber here and
    loses its last (``Sync.interest``; ``None`` when the backplane ignores it)."""

    __slots__ = ("connections", "interest", "name", "topics")

    def __init__(self, name: str, interest: Callable[[str, bool], None] | None = None) -> None:
        self.name = name
        self.connections: dict[str, Member] = {}
        self.topics: dict[str, Fanout] = {}
        self.interest = interest

    def join(self, topic: str, outbox: Outbox) -> None:
        entry = self.topics.get(topic)
        if entry is None:
            entry = self.topics[topic] = Fanout()
            if self.interest is not None:
                self.interest(topic, True)
        entry.add(outbox)

    def leave(self, topic: str, outbox: Outbox) -> None:
        entry = self.topics.get(topic)
        if entry is None:
            return
        entry.discard(outbox)
        if not len(entry):
            del self.topics[topic]  # no dead topics after churn
            if self.interest is not None:
                self.interest(topic, False)


M = TypeVar("M", bound=Member)


class Registry(Generic[M]):
    """Every open peer of one adapter, and the machinery to reach them."""

    def __init__(
        self,
        options: Options,
        on_relay_error: Callable[[Any, Exception], None] | None = None,
    ) -> None:
        self.options = options
        self._on_relay_error = on_relay_error
        self.stats = Stats()
        self.scheduler = Scheduler(options, self.stats)
        #: Every public call goes through it (thread check, then settle).
        self.guard = LoopGuard(self.scheduler)
        #: The SSEAdapter these peers belong to (``Peer.adapter``).
        self.adapter: Any = None
        self.connections: dict[str, M] = {}
        self.namespaces: dict[str, Namespace] = {}
        #: Event ids and replay (option ``history``); ``None`` when off.
        self.history: History | None = (
            History(options.history, options.history_max_age) if options.history else None
        )
        #: What a Last-Event-ID replay reads: ``history``, or the backplane
        #: when it keeps the cluster's history (``Sync.assigns_ids``).
        self.replay_source: ReplaySource | None = self.history
        #: A publish is delivered here only when it comes back from the
        #: backplane: it assigns the ids (``use_backplane_ids``) or is
        #: ``ordered`` (``Sync.ordered``).
        self.backplane_delivers = False
        sync = options.sync
        #: The backplane's ``interest``, when it implements one (it then
        #: follows only the topics that have a local subscriber).
        self._interest: Callable[[str, bool], None] | None = (
            sync.interest if sync is not None and type(sync).interest is not Sync.interest else None
        )
        self._keepalive_handle: asyncio.TimerHandle | None = None

    # -- membership ---------------------------------------------------------

    def add(self, conn: M, namespace: str) -> Namespace:
        """Register an open peer; returns its namespace."""
        ns = self.namespaces.get(namespace)
        if ns is None:
            ns = self.namespaces[namespace] = Namespace(namespace, self._interest)
        self.connections[conn.peer.id] = conn
        ns.connections[conn.peer.id] = conn
        self.stats.peers_opened += 1
        if self._keepalive_handle is None:
            loop = asyncio.get_running_loop()
            self._keepalive_handle = loop.call_later(self.options.keepalive, self._keepalive)
        return ns

    def remove(self, conn: M) -> None:
        """Forget a peer everywhere at once (idempotent)."""
        peer_id = conn.peer.id
        if self.connections.pop(peer_id, None) is None:
            return
        ns = conn.namespace
        if ns is None:
            return
        ns.connections.pop(peer_id, None)
        for topic in conn.topic_list():
            ns.leave(topic, conn.outbox)
        conn.topics = None  # it left them: ``peer.topics`` says so from now on
        if not ns.connections and not ns.topics and self.namespaces.get(ns.name) is ns:
            del self.namespaces[ns.name]
        if not self.connections and self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    def use_backplane_ids(self, source: ReplaySource) -> None:
        """The backplane keeps the cluster's history and gives the ids
        (``Sync.assigns_ids``): it is the replay source from now on."""
        self.backplane_delivers = True
        self.history = None
        self.replay_source = source

    def hears_everything(self) -> bool:
        """Whether every publish of the cluster reaches this instance now:
        without a backplane, or while it is connected. (A replay from this
        instance's own history cannot prove itself complete otherwise.)"""
        sync = self.options.sync
        return sync is None or bool(sync.up)

    def history_gap(self) -> None:
        """This instance may have missed publishes (a backplane outage): its
        own history can no longer prove a replay complete, so it starts a new
        epoch (ids from before give ``recovered`` False)."""
        if self.history is not None:
            self.history = History(self.options.history, self.options.history_max_age)
            self.replay_source = self.history

    def topic_count(self) -> int:
        # A copy: a metrics scrape may run in another thread while the loop
        # adds and removes namespaces.
        return sum(len(ns.topics) for ns in tuple(self.namespaces.values()))

    # -- delivery -------------------------------------------------------------

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        event: str | None = None,
        namespace: str | None = None,
        sender: M | None = None,
    ) -> Publication:
        """Encode once, hand the same frame to every local subscriber, relay.
        Returns what the publisher may await (``_publication.py``)."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str or None, not {type(namespace).__name__}")
        text = to_text(data)
        sync = self.options.sync
        if self.backplane_delivers:
            if event is not None:
                encode_text("", event=event)  # a bad event name raises here, not on delivery
            message = Relayed(
                topic,
                text,
                event=event,
                namespace=namespace,
                sender=sender.peer.id if sender is not None else None,
            )
            try:
                taken: Publication = sync.publish(message)
            except Exception as exc:  # local peers are still served (no id)
                self.deliver_relayed(message)
                return self._not_relayed(sync, sender, exc)
            self._count_relayed(taken)
            return taken
        history = self.history
        event_id = None
        if history is None:
            frame = encode_text(text, event=event)
        else:
            frame = history.record(
                topic, namespace, text, event, sender.peer.id if sender is not None else None
            )
            event_id = history.last_id()
        self._deliver(topic, frame, namespace, sender)
        if sync is None:
            return DONE if event_id is None else Publication(id=event_id)
        try:
            relayed: Publication = sync.publish(
                Relayed(topic, text, event=event, namespace=namespace)
            )
        except Exception as exc:  # a backplane must not break a handler
            return self._not_relayed(sync, sender, exc)
        self._count_relayed(relayed)
        if event_id is None:
            return relayed
        return Publication(relayed.receipt, relayed.index, event_id)

    def _count_relayed(self, publication: Publication) -> None:
        """``stats()["relayed_out"]``: a publish the backplane took (one it
        refused at once, unreachable or over ``max_pending``, is not counted)."""
        receipt = publication.receipt
        if receipt is None or receipt.error is None:
            self.stats.relayed_out += 1

    def _not_relayed(self, sync: Any, sender: M | None, exc: Exception) -> Publication:
        """The backplane refused a publish: reported, and raised by an await."""
        if self._on_relay_error is not None:
            self._on_relay_error(sender.peer if sender is not None else None, exc)
        error = BackplaneError(f"{type(sync).__name__} did not take the publish: {exc}")
        error.__cause__ = exc
        return Publication(Receipt.failed(error))

    def deliver_relayed(self, message: Relayed) -> str | None:
        """A publish that came from the backplane: local subscribers only,
        never relayed. Returns its id (``None`` without history)."""
        if message.remote:
            self.stats.relayed_in += 1
        history = self.history
        event_id = message.id
        if history is not None and event_id is None:
            # ids of this instance's history (other instances give their own)
            frame = history.record(
                message.topic, message.namespace, message.data, message.event, message.sender
            )
            event_id = history.last_id()
        elif event_id is not None:
            frame = encode_published(message.data, event=message.event, id=event_id)
        else:
            frame = encode_text(message.data, event=message.event)
        sender = self.connections.get(message.sender) if message.sender is not None else None
        self._deliver(message.topic, frame, message.namespace, sender)
        return event_id

    def _deliver(self, topic: str, frame: bytes, namespace: str | None, sender: M | None) -> None:
        self.stats.frames_encoded += 1
        if namespace is None:
            for ns in tuple(self.namespaces.values()):
                self._fanout(ns, topic, frame, sender)
        elif (target := self.namespaces.get(namespace)) is not None:
            self._fanout(target, topic, frame, sender)

    def _fanout(self, ns: Namespace, topic: str, frame: bytes, sender: M | None) -> None:
        entry = ns.topics.get(topic)
        if entry is None:
            return
        skip = sender.outbox if sender is not None else None
        self.stats.deliveries += entry.receivers(skip)
        entry.publish(frame, skip, self.scheduler)

    def _keepalive(self) -> None:
        self._keepalive_handle = None
        for conn in tuple(self.connections.values()):
            conn.outbox.push(KEEPALIVE_FRAME)
        if self.connections:
            loop = asyncio.get_running_loop()
            self._keepalive_handle = loop.call_later(self.options.keepalive, self._keepalive)

    def close(self) -> None:
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
