"""Publishing in sharded mode: a loop iteration's batch, split by topic.

Each topic's publishes of a batch are packed into envelopes of their own and
published on the topic's channel; each node's share leaves in one pipeline,
the nodes' in parallel. Each topic of a batch has a receipt of its own: on a
Redis Cluster one node may fail while the others take theirs, and an awaited
publish answers for its own topic only (``ordered``: its echoes come back on
its topic's channel, a lane of its own in ``_echo.py``; a topic this
instance does not follow sends no echo back: delivered here at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from .._errors import BackplaneError
from .._publication import Publication, Receipt
from ._echo import Echoes
from ._envelope import pack_batch
from ._redis_nodes import Node
from ._redis_shard_history import GroupHistory
from ._redis_topology import Topology, in_motion
from .base import Relayed, SyncLink

__all__ = ["ShardOwner", "ShardSender"]


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

    __slots__ = ("count", "echoed", "messages", "receipt", "settled", "sizes", "topic")

    def __init__(self, topic: str, messages: list[Relayed], receipt: Receipt) -> None:
        self.topic = topic
        self.messages = messages
        self.receipt = receipt
        self.echoed = False  # its echoes are awaited (ordered)
        self.count = 0  # commands it takes in its node's pipeline
        self.sizes: list[int] = []  # with history: the publishes of each script call
        self.settled = False  # its receipt was settled or failed by the sender


class ShardSender:
    """The publishing side of sharded mode (see the module docstring)."""

    def __init__(
        self,
        owner: ShardOwner,
        history: GroupHistory,
        ready: set[str],
        moved: Callable[[BaseException], None],
    ) -> None:
        """``moved``: Redis answered that a slot moved (read the map again)."""
        self.owner = owner
        self.moved = moved
        self.history = history
        self.ready = ready  # the topics followed here (their echoes come back)
        self.topology: Topology | None = None  # set on start
        self._subs: dict[str, list[Any]] = {}  # topic -> [receipt, count], this batch
        self._subs_by_batch: dict[int, tuple[list[Relayed], dict[str, list[Any]]]] = {}
        self._unresolved: list[_Group] = []

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
        assert self.topology is not None
        node_of = self.topology.node_of
        for topic, messages in by_topic.items():
            entry = receipts.get(topic)
            group = _Group(topic, messages, entry[0] if entry is not None else Receipt())
            plan.setdefault(node_of(topic), []).append(group)
        self._unresolved = [g for groups in plan.values() for g in groups]
        if len(plan) == 1:  # one Redis (or one node's topics): no gather
            [(node, groups)] = plan.items()
            await self._send(node, groups)
        else:
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
        topology = self.topology
        assert topology is not None
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
                    channel = topology.names.channel_of(group.topic)
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
                if in_motion(error):
                    self.moved(error)
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
        group.settled = True  # (batch_failed leaves it alone)

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
            if group.settled:
                continue
            if exc is not None:
                owner._lost(len(group.messages), exc)
            cause = exc if exc is not None else ConnectionError("the backplane was closed")
            self._not_sent(group, owner.error(cause))

    def unsent(self, batch: list[Relayed], cause: BaseException | None) -> None:
        """``batch`` was never sent (the backplane closed first): its receipts fail."""
        error = self.owner.error(cause or ConnectionError("the backplane was closed"))
        for receipt, _ in self._receipts(batch).values():
            receipt.fail(error)
