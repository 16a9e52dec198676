"""Sharded mode of ``RedisSync``: channels per topic, followed by interest.

The relay (``_relay.py``) still queues a loop iteration's publishes and has
its writer send them in one go; here that batch is split by topic, each
topic's publishes packed into envelopes of their own and published on the
topic's channel (``_shards.py``), each node's share in one pipeline, the
nodes' in parallel. Each topic of a batch has its own receipt: on a Redis
Cluster one node may fail while the others take theirs, and an awaited
publish answers for its own topic only (``ordered``: its echoes come back on
its topic's channel, a lane of its own in ``_echo.py``).

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
import contextlib
from typing import Any, Protocol

from redis.exceptions import ResponseError

from .._errors import BackplaneError
from .._history import Replay
from .._publication import Publication, Receipt
from ._echo import Echoes
from ._envelope import VERSION_IDS, pack_batch
from ._redis_nodes import Node
from ._redis_shard_history import GroupHistory
from ._redis_topology import Topology
from ._shards import Interest
from .base import Relayed, SyncLink

__all__ = ["ShardOwner", "Sharded"]

# Redis's errors of a cluster in motion: the map is read again, and the
# command tried again later
_CLUSTER_IN_MOTION = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


class ShardOwner(Protocol):
    """What sharded mode uses of its ``RedisSync``."""

    channel: str
    heartbeat: float
    max_reconnect_delay: float
    report_interval: float
    send_timeout: float
    fetch_timeout: float
    max_body: int
    assigns_ids: bool
    ordered: bool
    _own: str
    _echoes: Echoes
    _link: SyncLink | None

    def header(self, count: int) -> str: ...

    def _id_header(self, count: int) -> str: ...

    def heard_own(self, seq: int, lane: str | None = None) -> None: ...

    def accept(self, envelope: str) -> str | None: ...

    def deliver_body(self, body: str) -> None: ...

    def deliver_id_body(self, body: str, remote: bool = True) -> None: ...

    def report(self, exc: Exception) -> None: ...

    def describe(self) -> str: ...

    def reason(self, exc: BaseException | None) -> str: ...

    def caused(self, err: Exception, cause: BaseException | None) -> Exception: ...

    def error(self, cause: BaseException | None) -> BackplaneError: ...

    def _lost(self, count: int, cause: BaseException | None) -> None: ...

    def _deliver_locally(self, message: Relayed) -> str | None: ...


class _Group:
    """One topic's publishes of a batch, on their way."""

    __slots__ = ("count", "echoed", "messages", "receipt", "sizes", "topic")

    def __init__(self, topic: str, messages: list[Relayed], receipt: Receipt) -> None:
        self.topic = topic
        self.messages = messages
        self.receipt = receipt
        self.echoed = False  # its echoes are awaited (ordered)
        self.count = 0  # commands it takes in its node's pipeline
        self.sizes: list[int] = []  # with history: the publishes of each script call


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
        self._where: dict[str, Node] = {}  # wanted topic -> the node asked for it
        self._subs: dict[str, list[Any]] = {}  # topic -> [receipt, count], this batch
        self._subs_by_batch: dict[int, tuple[list[Relayed], dict[str, list[Any]]]] = {}
        self._unresolved: list[_Group] = []
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
        self._topology = topology
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
            read = await self.history.read_positions(node.client, topics)
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
        if text.startswith(_CLUSTER_IN_MOTION) or "slot" in text:
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

    # -- publishing ----------------------------------------------------------------------

    def published(
        self, message: Relayed, publication: Publication, pending: list[Relayed], fresh: bool
    ) -> Publication:
        """What ``publish`` returns for ``message``, queued in ``pending``:
        awaiting it waits for its topic's share of the batch."""
        if publication.receipt is None or publication.receipt.done:
            return publication  # refused
        if fresh:
            self._subs = {}
            self._subs_by_batch[id(pending)] = (pending, self._subs)
        entry = self._subs.get(message.topic)
        if entry is None:
            entry = self._subs[message.topic] = [Receipt(), 0]
        index = entry[1]
        entry[1] = index + 1
        return Publication(entry[0], index)

    def _receipts(self, batch: list[Relayed]) -> dict[str, list[Any]]:
        found = self._subs_by_batch.pop(id(batch), None)
        return found[1] if found is not None and found[0] is batch else {}

    async def send_batch(self, batch: list[Relayed]) -> None:
        """Send a loop iteration's publishes: each topic's on its channel,
        each node's in one pipeline, the nodes' in parallel."""
        receipts = self._receipts(batch)
        by_topic: dict[str, list[Relayed]] = {}
        for m in batch:
            messages = by_topic.get(m.topic)
            if messages is None:
                by_topic[m.topic] = [m]
            else:
                messages.append(m)
        plan: dict[Node | None, list[_Group]] = {}
        node_of = self.topology.node_of
        for topic, messages in by_topic.items():
            entry = receipts.get(topic)
            group = _Group(topic, messages, entry[0] if entry is not None else Receipt())
            plan.setdefault(node_of(topic), []).append(group)
        self._unresolved = [g for groups in plan.values() for g in groups]
        await asyncio.gather(*(self._send(node, groups) for node, groups in plan.items()))

    async def _send(self, node: Node | None, groups: list[_Group]) -> None:
        if node is None:
            self._failed(None, groups, ConnectionError("no node serves the topic's slot"))
            return
        if not node.up:
            self._failed(node, groups, node.down_cause)
            return
        owner = self.owner
        echoes = owner._echoes
        try:
            async with node.client.pipeline(transaction=False) as pipe:
                for group in groups:
                    if owner.assigns_ids:
                        sizes = await self.history.queue(
                            pipe,
                            node.publish_command,
                            group.topic,
                            group.messages,
                            owner.max_body,
                            owner._id_header,
                        )
                        group.sizes, group.count = sizes, len(sizes)
                        continue
                    if echoes.active and group.topic in self.ready:
                        echoes.sending(group.messages, group.receipt, group.topic)
                    envelopes = pack_batch(group.messages, owner.max_body, owner.header)
                    group.echoed = echoes.sent(group.receipt)
                    channel = self.topology.names.channel_of(group.topic)
                    for envelope in envelopes:
                        pipe.execute_command(node.publish_command, channel, envelope)
                    group.count = len(envelopes)
                results = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(node, groups, exc)
            return
        at = 0
        for group in groups:
            answers = results[at : at + group.count]
            at += group.count
            error = next((a for a in answers if isinstance(a, Exception)), None)
            if error is not None:
                self._failed(node, [group], error)
                if isinstance(error, ResponseError) and "MOVED" in str(error):
                    self.topology.moved(self, error)
                continue
            self._resolve(group)
            if owner.assigns_ids:
                ids: list[str | None] = []
                for (epoch, first), size in zip(answers, group.sizes, strict=True):
                    epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
                    ids += (f"{epoch_text}-{seq:x}" for seq in range(first, first + size))
                group.receipt.ids = ids
            elif group.echoed:
                continue  # settles when its echoes come back
            elif echoes.active:  # ordered, not subscribed here: nothing comes back
                for m in group.messages:
                    owner._deliver_locally(m)
            group.receipt.settle()

    def _resolve(self, group: _Group) -> None:
        with contextlib.suppress(ValueError):  # settled before
            self._unresolved.remove(group)

    def _failed(self, node: Node | None, groups: list[_Group], cause: BaseException | None) -> None:
        """``groups`` were not relayed: reported (in ``node``'s outage while it
        is down), their publishes delivered here when only what comes back
        would have been."""
        owner = self.owner
        for group in groups:
            self._resolve(group)
            n = len(group.messages)
            if node is not None and not node.up:
                node.outage.lost += n
            else:
                owner._lost(n, cause)
            self._not_sent(group, owner.error(cause))

    def _not_sent(self, group: _Group, error: BackplaneError) -> None:
        owner = self.owner
        group.receipt.fail(error)
        if group.echoed:
            owner._echoes.drop(group.receipt)
        elif owner.assigns_ids or owner.ordered:
            for m in group.messages:
                owner._deliver_locally(m)

    def batch_failed(self, exc: Exception | None) -> None:
        """``send_batch`` raised ``exc`` (timed out; ``None``: cancelled, the
        backplane is closing): the groups it had not settled."""
        owner = self.owner
        groups, self._unresolved = self._unresolved, []
        for group in groups:
            if exc is not None:
                owner._lost(len(group.messages), exc)
            cause = exc if exc is not None else ConnectionError("the backplane was closed")
            self._not_sent(group, owner.error(cause))

    def unsent(self, batch: list[Relayed], cause: BaseException | None) -> None:
        """``batch`` was never sent (the backplane closed first): its receipts fail."""
        error = self.owner.error(cause or ConnectionError("the backplane was closed"))
        for receipt, _ in self._receipts(batch).values():
            receipt.fail(error)

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
