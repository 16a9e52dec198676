"""``RedisSync``: the backplane over Redis pub/sub (redis-py's asyncio client).

Install with the ``redis`` extra (``pip install aiohttp-crossws-sse[redis]``),
which brings redis-py and its ``hiredis`` parser (used automatically when
installed). With history on, the cluster's history is kept in Redis Streams
(``_redis_history.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff

from .._history import Replay
from .._publication import Publication, Receipt
from ._envelope import VERSION_IDS, publishes_with_ids, unpack_ids
from ._redis_history import StreamHistory
from ._redis_sharded import Sharded
from ._redis_target import Target
from ._redis_topology import discover
from ._relay import RelaySync, positive
from .base import Relayed, SyncLink


class _Closing(Protocol):
    def aclose(self) -> Awaitable[None]: ...


class _NoBackoff(AbstractBackoff):
    # redis-py's own NoBackoff is unannotated on some releases in our range
    def compute(self, failures: int) -> float:
        return 0.0


__all__ = ["RedisSync"]


class RedisSync(RelaySync):
    """Relays publishes between instances through one Redis pub/sub channel
    (or, with ``sharded=True``, one per topic).

    ``url_or_client``: any URL redis-py accepts (``redis://[[user]:password@]host
    [:port][/db]``, ``rediss://`` for TLS, ``unix:///path/to/redis.sock``), or a
    ready ``redis.asyncio.Redis`` client — then its connection settings (pool,
    retry policy, TLS, auth) are used as they are and it is left open on
    ``close``: it stays yours. A Redis Cluster needs ``sharded=True``: then
    also a ``redis.asyncio.RedisCluster`` client (its settings are used for
    connections of RedisSync's own to each primary; it is left open) or a list
    of its nodes' URLs; a URL or client of one node is found to be a cluster's.

    ``sharded`` (``False``): each topic on a channel of its own under
    ``channel``, subscribed only while the topic has a local subscriber
    (``Sync.interest``) or a replay reads it; on a Redis Cluster (7.0+) with
    sharded pub/sub, a topic's channel and history on one slot. Order is kept
    per publisher and topic; a topic's first local subscriber gets the
    others' publishes once the subscription is in place (a round trip), and a
    resuming client misses nothing (its replay waits for the subscription).
    With history, ids are per group of topics (one on a plain Redis; a
    topic's hash tag on a cluster): see the README, "Channels per topic".
    A cluster node's outage is reported as that node's; the other nodes'
    topics flow on.

    ``channel`` (required) scopes the cluster: every instance that should see
    the others' publishes uses the same one; apps sharing a Redis use
    different ones. Each instance holds two connections: one subscribed to
    ``channel``, one (from the client's pool) to publish on.

    Delivery is Redis pub/sub's: at most once, in the order each instance
    published, to the instances subscribed at that moment. An instance
    delivers its own publishes at once, the others' as they arrive — unless
    ``ordered=True``: then it delivers its own only when they come back from
    Redis, so every instance delivers one sequence (Redis's), at the cost of
    one round trip to Redis per publish's latency. With history on, every
    publish already comes back from Redis with its id: that is ordered
    anyway. What is published
    in one event-loop iteration leaves in one round trip, packed in as few
    Redis messages as fit 512 KiB each. An instance drops what it relayed
    itself (by ``SyncLink.instance_id``).

    A lost connection is reported (log and ``error`` hooks with ``peer``
    ``None``); local peers stay served; the instance reconnects with backoff
    and resubscribes by itself. Publishes made meanwhile reach local peers
    only, and are reported (at most every ``report_interval`` seconds, with
    a count); so are batches an instance missed from another one.
    ``start`` (app startup) raises ``ConnectionError`` when Redis cannot be
    reached at all.

    Tuning (keyword-only): ``heartbeat`` (15 s: silence after which the
    subscription is probed with a PING; no answer within as long again and
    the connection counts as lost), ``max_reconnect_delay`` (5 s: the cap of
    the exponential backoff between reconnect attempts, which starts at
    50 ms), ``report_interval`` (10 s: lost publishes and failed reconnect
    attempts are reported at most this often, with counts),
    ``send_timeout`` (10 s: a batch not sent by then counts as lost),
    ``max_pending`` (16 MiB: data queued and not yet sent beyond which
    further publishes are not relayed, and reported), ``fetch_timeout``
    (5 s, with history: a replay's read of the history not answered by then
    gives up, and the client's stream goes on without the replay),
    ``ordered`` (``False``: see above), ``sharded`` (``False``: see above).
    """

    kind = "Redis"
    max_body = 512 * 1024

    def __init__(
        self,
        url_or_client: str | Redis | RedisCluster | list[str],
        *,
        channel: str,
        heartbeat: float = 15.0,
        max_reconnect_delay: float = 5.0,
        report_interval: float = 10.0,
        send_timeout: float = 10.0,
        max_pending: int = 16 << 20,
        ordered: bool = False,
        fetch_timeout: float = 5.0,
        sharded: bool = False,
    ) -> None:
        super().__init__(
            channel=channel,
            heartbeat=heartbeat,
            max_reconnect_delay=max_reconnect_delay,
            report_interval=report_interval,
            send_timeout=send_timeout,
            max_pending=max_pending,
            ordered=ordered,
        )
        if not isinstance(sharded, bool):
            raise TypeError(f"option 'sharded' must be a bool, not {type(sharded).__name__}")
        target = self._target = Target(url_or_client, sharded)
        self._url, self._given, self._secrets = target.url, target.given, target.secrets
        self.fetch_timeout = positive("fetch_timeout", fetch_timeout)
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._silently_reconnected = False
        self._history = StreamHistory(channel)  # used when SyncLink.history > 0
        #: sharded mode (``_redis_sharded.py``): what it does in place of one channel
        self._shards = Sharded(self) if sharded else None
        self._topology: Any = None  # sharded: made on connect (_redis_topology.discover)
        self.tracks_gaps = not sharded
        self._tracker: StreamHistory | Any = self._history  # positions of delivered ids

    def describe(self) -> str:
        return f"{self._target.where()}, channel {self.channel!r}"

    # -- history (cluster-wide ids) -----------------------------------------------------

    async def start(self, link: SyncLink) -> None:
        self._history.size = link.history
        if self._shards is not None:
            self._shards.history.size = link.history
            self._tracker = self._shards.history
        self.assigns_ids = link.history > 0
        await super().start(link)

    async def _send_batch(self, batch: list[Relayed], data_bytes: int, receipt: Receipt) -> None:
        if self._shards is not None:
            await self._shards.send_batch(batch)
            return
        if not self.assigns_ids:
            await super()._send_batch(batch, data_bytes, receipt)
            return
        client = self._client
        assert client is not None
        receipt.ids = await self._history.publish(client, batch, self.max_body, self._id_header)

    def _id_header(self, count: int) -> str:
        """The next version-2 envelope header of this instance: its sequence
        numbers are those of ``header`` (one count, so gaps show either way)."""
        self._seq += 1
        return f"{VERSION_IDS}{self._own[1:]}{self._seq}\n"

    def deliver_id_body(self, body: str, remote: bool = True) -> None:
        """Hand the publishes of a version-2 body (with ids) to the local peers
        (``remote``: of another instance; with ids, this one's come back too)."""
        link = self._link
        if link is None:
            return
        try:
            epoch, first, flat = unpack_ids(body)
        except ValueError as exc:
            self._malformed(body, exc)
            return
        history = self._tracker
        for seq, message in publishes_with_ids(epoch, first, flat, remote):
            if message is None:
                self._malformed(body, None)
                continue
            history.delivered(epoch, message.topic, seq)
            try:
                link.deliver(message)
            except Exception as exc:
                self.report(exc)
        history.live_moved_on()

    async def fetch(
        self,
        topics: tuple[str, ...],
        position: tuple[str, int] | None,
        namespace: str | None,
        skip_sender: str | None,
    ) -> Replay:
        """The cluster's history after ``position`` on ``topics``, up to the
        newest publish delivered here (see ``Sync.assigns_ids``). Raises
        ``ConnectionError`` when Redis is unreachable or does not answer
        within ``fetch_timeout`` (the replay then gives up: the client's
        stream goes on without it)."""
        client = self._client
        if client is None and self._shards is None:
            return Replay([], False, 0, None)
        if not self._up:
            raise ConnectionError(
                f"cannot read the history: {self.describe()} is unreachable "
                f"({self.reason(self._down_cause)})"
            )
        try:
            if self._shards is not None:
                async with asyncio.timeout(self.fetch_timeout):
                    return await self._shards.fetch(topics, position, namespace, skip_sender)
            assert client is not None
            return await self._history.fetch(
                client, topics, position, namespace, skip_sender, self.fetch_timeout
            )
        except TimeoutError as exc:
            raise ConnectionError(
                f"reading the history from {self.describe()} took longer than "
                f"fetch_timeout={self.fetch_timeout} s"
            ) from exc

    def caught_up(self, replay: Replay) -> bool:
        """Whether live delivery continues right after ``replay`` (see ``fetch``)."""
        if self._shards is not None:
            return self._shards.history.caught_up(replay)
        return self._history.caught_up(replay)

    # -- sharded mode (``_redis_sharded.py``) -----------------------------------------

    def interest(self, topic: str, wanted: bool) -> None:
        """Sharded: follow ``topic`` while it has a local subscriber (``Sync.interest``)."""
        if self._shards is not None:
            (self._shards.interest.add if wanted else self._shards.interest.remove)((topic,))

    def publish(self, message: Relayed) -> Publication:
        shards = self._shards
        if shards is None:
            return super().publish(message)
        fresh = not self._pending
        return shards.published(message, super().publish(message), self._pending, fresh)

    def _batch_failed(self, batch: list[Relayed], receipt: Receipt, exc: Exception | None) -> None:
        if self._shards is None:
            super()._batch_failed(batch, receipt, exc)
            return
        self._shards.batch_failed(exc)
        receipt.fail(self.error(exc or ConnectionError("the backplane was closed")))

    def _unsent(self, batch: list[Relayed]) -> None:
        if self._shards is not None:
            self._shards.unsent(batch, self._down_cause)
        super()._unsent(batch)

    def _missed_meanwhile(self) -> int | None:
        # With history, the cluster's seq says exactly what was missed: the
        # gaps in the other instances' envelopes would say it again.
        missed = self._history.missed_meanwhile()
        if missed is not None:
            self._seqs.clear()
        return missed

    # -- publishing ----------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._given is not None:
            self._client = self._given
        elif self._url is not None:
            self._connect_url(self._url)
        if self._shards is not None:
            target = self._target
            self._topology = await discover(
                self.channel, self._client, target.cluster, target.urls, self.describe()
            )

    def _connect_url(self, url: str) -> None:
        # No silent retries: a dropped connection surfaces at once and is
        # reported; the listener reconnects with its own backoff. (A URL's
        # own query options, e.g. ?socket_connect_timeout=2, still win.)
        self._client = Redis.from_url(url, retry=Retry(_NoBackoff(), 0), socket_connect_timeout=5.0)

    async def _disconnect(self) -> None:
        self._history.disconnected()
        client, self._client = self._client, None
        if client is not None and client is not self._given:
            await client.aclose()

    async def _send(self, envelopes: list[str]) -> None:  # (sharded mode: _send_batch)
        client = self._client
        assert client is not None
        if len(envelopes) == 1:
            await client.publish(self.channel, envelopes[0])
            return
        async with client.pipeline(transaction=False) as pipe:
            for envelope in envelopes:
                pipe.publish(self.channel, envelope)
            await pipe.execute()

    # -- listening ---------------------------------------------------------------------

    async def _subscribe(self) -> None:
        if self._shards is not None:
            await self._shards.start(self._topology)
            return
        client = self._client
        assert client is not None
        pubsub = self._pubsub = client.pubsub()
        await pubsub.subscribe(self.channel)
        while True:  # subscribed once Redis confirms it
            message = await pubsub.get_message(timeout=self.heartbeat)
            if message is None:
                raise TimeoutError(f"Redis did not confirm the subscription in {self.heartbeat} s")
            if message["type"] == "subscribe":
                break
        self._silently_reconnected = False
        if self._history.size and self._client is not None:
            await self._history.read_position(self._client)
        if pubsub.connection is not None:
            # a client with a retry policy may reconnect (and resubscribe) inside
            # redis-py: notice it, since what was published meanwhile is lost
            pubsub.connection.register_connect_callback(self._reconnected)
            _skip_push_debug_log(pubsub.connection)

    def _reconnected(self, connection: Any) -> None:
        self._silently_reconnected = True

    async def _unsubscribe(self) -> None:
        if self._shards is not None:
            await self._shards.stop()
            return
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is None:
            return
        if pubsub.connection is not None:
            pubsub.connection.deregister_connect_callback(self._reconnected)
        # redis-py annotates PubSub.aclose on some releases and not on others:
        # this seam type-checks on every release in our range
        await cast(_Closing, pubsub).aclose()

    async def _listen(self) -> None:
        if self._shards is not None:
            await self._shards.run()  # every node handles its own outages
            return
        pubsub = self._pubsub
        assert pubsub is not None
        heartbeat = self.heartbeat
        own = self._own.encode()
        own_ids = VERSION_IDS + self._own[1:]  # this instance's envelopes with ids
        echoed = self.echoed
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=heartbeat)
            if self._silently_reconnected:
                # The client library resubscribed behind our back: what was
                # published meanwhile (own echoes included) is lost. Handled
                # as the outage it was: reported, own publishes in flight
                # delivered here, the position read again, streams resumed.
                self._silently_reconnected = False
                raise ConnectionError(
                    f"the connection to {self.describe()} dropped and the client "
                    "reconnected by itself: messages published meanwhile were missed"
                )
            if message is None:
                if loop.time() - heard >= 2 * heartbeat * 0.99:
                    raise TimeoutError(f"Redis did not answer for {loop.time() - heard:.0f} s")
                await pubsub.ping()
                continue
            heard = loop.time()
            if message["type"] == "message":
                data = message["data"]
                if isinstance(data, bytes):
                    if data.startswith(own):  # this instance's own: no need to decode it
                        if echoed:  # ordered: delivered now, from what was sent
                            self.heard_own(int(data[len(own) : data.index(b"\n")]))
                        continue
                    data = data.decode(errors="replace")  # garbage is reported, not fatal
                body = self.accept(data)
                if body is not None:
                    if data.startswith(VERSION_IDS):
                        self.deliver_id_body(body, not data.startswith(own_ids))
                    else:
                        self.deliver_body(body)


async def _passthrough(response: Any) -> Any:
    return response


def _skip_push_debug_log(connection: Any) -> None:
    """redis-py's hiredis parser hands every pub/sub message to a handler that
    builds ``"Push response: " + str(message)`` for a DEBUG log line, logged or
    not: for a large message that doubles the cost of receiving it. Replace
    that default handler (and only it) with one that just returns the message."""
    parser: Any = getattr(connection, "_parser", None)
    default = getattr(parser, "handle_pubsub_push_response", None)
    if default is not None and getattr(parser, "pubsub_push_handler_func", None) == default:
        parser.set_pubsub_push_handler(_passthrough)
