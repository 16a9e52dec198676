"""Sharded mode of ``RedisSync``: channels per topic, followed by interest.

The relay (``_relay.py``) still queues a loop iteration's publishes and has
its writer send them in one go; ``_redis_shard_send.py`` splits that batch
by topic onto the topics' channels (``_shards.py``).

This instance subscribes only to the topics that have a reason to be
followed here (``Interest``); a replay holds its topics as such a reason
while it reads, and reads only once they are subscribed (``ready``), so a
peer never misses a publish between its own subscription and this
instance's. Subscriptions live on the nodes (``_redis_nodes.py``); the
cluster's map of slots to primaries is read with ``CLUSTER SLOTS`` at start
and again whenever a node is lost or Redis says a slot moved
(``_redis_topology.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._history import Replay
from .._publication import Publication
from ._envelope import VERSION_IDS
from ._redis_nodes import Node
from ._redis_shard_history import GroupHistory
from ._redis_shard_send import ShardOwner, ShardSender
from ._redis_topology import Topology, in_motion
from ._shards import Interest
from .base import Relayed

__all__ = ["ShardOwner", "Sharded"]


class Sharded:
    """The sharded side of one ``RedisSync`` (see the module docstring)."""

    def __init__(self, owner: ShardOwner) -> None:
        self.owner = owner
        self.heartbeat = owner.heartbeat
        self.max_reconnect_delay = owner.max_reconnect_delay
        self.report_interval = owner.report_interval
        self.send_timeout = owner.send_timeout
        self._topology: Topology | None = None
        self.interest = Interest(self._changed)
        self.history = GroupHistory()
        self.ready: set[str] = set()  # subscribed (and positioned, with history)
        self.sender = ShardSender(owner, self.history, self.ready, self._moved)
        self._where: dict[str, Node] = {}  # wanted topic -> the node asked for it
        self._refused: set[str] = set()  # topics whose refusal was reported
        self._started = False
        self._stopped: asyncio.Future[None] | None = None
        self._own1 = b""
        self._own2 = ""

    # -- lifecycle (RelaySync's _subscribe, _listen, _unsubscribe) --------------------

    @property
    def topology(self) -> Topology:
        assert self._topology is not None, "not started"
        return self._topology

    async def start(self, topology: Topology) -> None:
        """Connect ``topology``'s nodes; then follow every topic of interest."""
        owner = self.owner
        self._own1 = owner._own.encode()
        self._own2 = VERSION_IDS + owner._own[1:]
        self._topology = self.sender.topology = topology
        self.history.connected(topology.names)
        self._stopped = asyncio.get_running_loop().create_future()
        await topology.start(self)
        self.history.scripts(topology.any_client())
        self._started = True
        self._changed(set(self.interest.counts))

    async def run(self) -> None:
        """Until stopped: the nodes handle their own outages."""
        assert self._stopped is not None
        await asyncio.shield(self._stopped)

    async def stop(self) -> None:
        self._started = False
        self.interest.cancel()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        if self._topology is not None:
            await self._topology.stop()
        self.ready.clear()
        self._where.clear()
        self.history.disconnected()

    # -- interest ----------------------------------------------------------------------

    def _changed(self, topics: set[str]) -> None:
        """Topics gained or lost every reason to be followed here (applied
        once per loop iteration, by each node's worker)."""
        if not self._started:
            return
        names = self.topology.names
        touched: set[Node] = set()
        for topic in topics:
            old = self._where.pop(topic, None)
            if old is not None:
                old.wants.pop(topic, None)
                touched.add(old)
            if topic in self.interest:
                node = self.topology.node_of(topic)
                if node is not None:
                    node.wants[topic] = names.channel_of(topic)
                    self._where[topic] = node
                    touched.add(node)
        for node in touched:
            node.changed()

    def rerouted(self) -> list[str]:
        """The cluster's map changed: move every wanted topic to its slot's
        node now; returns the topics that moved."""
        moved = []
        for topic in list(self.interest.counts):
            node = self.topology.node_of(topic)
            if self._where.get(topic) is not node:
                moved.append(topic)
        if moved:
            self._changed(set(moved))
        return moved

    # -- NodeOwner ---------------------------------------------------------------------

    def on_message(self, topic: str, data: Any) -> None:
        owner = self.owner
        if isinstance(data, bytes):
            own = self._own1
            if data.startswith(own):  # this instance's own: never decoded
                if owner._echoes.active:
                    owner.heard_own(int(data[len(own) : data.index(b"\n")]), topic)
                return
            data = data.decode(errors="replace")
        body = owner.accept(data)
        if body is not None:
            if data.startswith(VERSION_IDS):
                owner.deliver_id_body(body, not data.startswith(self._own2))
            else:
                owner.deliver_body(body)

    async def on_subscribed(self, node: Node, topics: list[str]) -> int | None:
        missed: int | None = None
        if self.owner.assigns_ids:
            try:
                read = await self.history.read_positions(node.client, topics)
            except Exception as exc:  # the node tries again later
                if in_motion(exc):
                    self.topology.moved(self, exc)
                raise
            await node.barrier()  # what was pushed before the read is delivered by now
            read = {t: r for t, r in read.items() if node.channels.get(node.wants.get(t, b""))}
            missed, gone = self.history.ready(read)
            topics = list(read)
            if gone:
                self.owner.report(
                    ConnectionError(
                        f"{node.name} lost the history of {len(gone)} topics (say, restarted "
                        "without its data): clients resuming on them get recovered False"
                    )
                )
        self.ready.update(topics)
        self._refused.difference_update(topics)
        self.history.live_moved_on()
        return missed

    def on_left(self, node: Node, topics: list[str], lost: bool) -> None:
        if not topics:
            return
        self.ready.difference_update(topics)
        # their echoes will not come back: what was sent is delivered here now
        self.owner._echoes.flush(topics)
        self.history.forget(topics, lost)

    def on_refused(self, node: Node, topic: str, exc: Exception) -> None:
        """Redis refused to subscribe ``topic`` on ``node`` (the node tries
        again): the cluster in motion (a slot moved, a node rejoining) reads
        the map again; anything else (an ACL) is reported, once per topic."""
        text = str(exc)
        if in_motion(exc) or "slot moved" in text:
            self.topology.moved(self, exc)
        elif topic not in self._refused:
            if len(self._refused) < 4096:
                self._refused.add(topic)
            self.owner.report(
                ConnectionError(f"cannot subscribe to topic {topic!r} on {node.name}: {text}")
            )

    async def relocate(self, node: Node) -> bool:
        await self.topology.refresh(self)
        return node.serving

    def resync(self) -> None:
        link = self.owner._link
        if link is not None and link.resync is not None:
            link.resync()

    def report(self, exc: Exception) -> None:
        self.owner.report(exc)

    def reason(self, exc: BaseException | None) -> str:
        return self.owner.reason(exc)

    def caused(self, err: Exception, cause: BaseException | None) -> Exception:
        return self.owner.caused(err, cause)

    # -- publishing (``_redis_shard_send.py``) --------------------------------------------

    def published(
        self, message: Relayed, publication: Publication, pending: list[Relayed], fresh: bool
    ) -> Publication:
        return self.sender.published(message, publication, pending, fresh)

    async def send_batch(self, batch: list[Relayed]) -> None:
        await self.sender.send_batch(batch)

    def batch_failed(self, exc: Exception | None) -> None:
        self.sender.batch_failed(exc)

    def unsent(self, batch: list[Relayed], cause: BaseException | None) -> None:
        self.sender.unsent(batch, cause)

    def _moved(self, exc: BaseException) -> None:
        self.topology.moved(self, exc)

    # -- replays -------------------------------------------------------------------------

    async def fetch(
        self,
        topics: tuple[str, ...],
        position: tuple[str, int] | None,
        namespace: str | None,
        skip_sender: str | None,
    ) -> Replay:
        """One read of a replay (see ``GroupHistory.fetch``), once every topic
        is subscribed here: held meanwhile, so that it stays subscribed."""
        self.interest.add(topics)
        self.interest.flush()  # subscribe now, not at the end of this iteration
        try:
            while not self.ready.issuperset(topics):
                await self.history.moved()
            return await self.history.fetch(
                self._client_of, topics, position, namespace, skip_sender
            )
        finally:
            self.interest.remove(topics)  # applied at the end of this iteration

    def _client_of(self, topic: str) -> Any:
        node = self.topology.node_of(topic)
        if node is None or not node.up:
            raise ConnectionError(f"no node of {self.owner.describe()} serves topic {topic!r}")
        return node.client
