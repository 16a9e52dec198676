"""``RedisSync(sharded=True)``: a channel per topic, followed by interest —
against a real ``redis-server`` and a real Redis Cluster (3 primaries of
Debian's ``redis-server --cluster-enabled yes``, joined by ``redis-cli``),
instances in their own processes and in this one."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aiohttp_crossws_sse import sse_adapter
from aiohttp_crossws_sse._publication import Receipt
from aiohttp_crossws_sse.client import EventSourceClient
from aiohttp_crossws_sse.sync import MemoryHub, MemorySync, Relayed
from aiohttp_crossws_sse.sync._echo import Echoes
from aiohttp_crossws_sse.sync._shards import ShardNames, group_of
from tests.backplanes import (  # noqa: F401
    FAST_OPTIONS,
    LatencyProxy,
    Node,
    RedisClusterServers,
    RedisServer,
    check_adapter_publish,
    check_binary,
    check_namespaces,
    check_order,
    check_peer_publish,
    crossed,
    data_of,
    node_pair,
    opened,
    own_redis_cluster_fixture,
    own_redis_server_fixture,
    redis_cluster_fixture,
    redis_server_fixture,
    slow_pair,
    until,
)
from tests.conftest import wait_until
from tests.test_history_redis import Instance
from tests.test_ordered import check_causal_order

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")
from aiohttp_crossws_sse.sync import RedisSync  # noqa: E402

SHARDED: dict[str, Any] = dict(FAST_OPTIONS, sharded=True)


@contextlib.asynccontextmanager
async def instances(
    url: str, n: int, adapter: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[list[Node]]:
    """``n`` instances in their own processes, sharded, on one channel."""
    channel = f"sharded-{uuid.uuid4()}"
    nodes: list[Node] = []
    try:
        for _ in range(n):
            nodes.append(
                await asyncio.to_thread(Node, "redis", url, channel, adapter, **SHARDED, **options)
            )
        yield nodes
    finally:
        for node in nodes:
            await asyncio.to_thread(node.stop)


@contextlib.asynccontextmanager
async def streams(*opening: Any) -> AsyncIterator[list[EventSourceClient]]:
    """Open every stream and wait for each one's welcome."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(s) for s in opening]
        for client in clients:
            await opened(client)
        yield clients


async def followed(
    redis: RedisServer | RedisClusterServers, channel: str, topics: list[str], count: int
) -> None:
    """Wait until ``count`` instances follow each of ``topics`` on Redis. A
    topic's first subscriber on an instance gets the others' publishes once
    its instance's subscription is in place (a round trip later): a test
    that publishes right after a stream opened waits for it first."""

    async def done() -> bool:
        for topic in topics:
            if isinstance(redis, RedisServer):
                probe = redis_asyncio.Redis.from_url(redis.url)
                try:
                    [(_, n)] = await probe.pubsub_numsub(f"{channel}:{topic}")
                finally:
                    await probe.aclose()
            else:
                node = await asyncio.to_thread(redis.node_of, topic)
                name = ShardNames(channel, cluster=True).channel_of(topic).decode()
                reply = await asyncio.to_thread(redis.command, node, "PUBSUB", "SHARDNUMSUB", name)
                n = int(reply.split()[-1])
            if n < count:
                return False
        return True

    await until(done, timeout=30, interval=0.05)


@contextlib.asynccontextmanager
async def following(
    redis: RedisServer | RedisClusterServers,
    channel: str,
    nodes: list[Node],
    topics: list[str],
    session: aiohttp.ClientSession,
) -> AsyncIterator[None]:
    """Every node follows ``topics`` (a stream of its own holds them) while inside."""
    async with streams(*(node.stream(session, ",".join(topics)) for node in nodes)):
        await followed(redis, channel, topics, len(nodes))
        yield


def topic_on(cluster: RedisClusterServers, node: int, prefix: str) -> str:
    """A topic whose slot is on ``node`` (its channel hashes as the topic does)."""
    for i in range(1000):
        if cluster.node_of(f"{prefix}{i}") == node:
            return f"{prefix}{i}"
    raise LookupError(node)


# -- names, lanes, options -------------------------------------------------------------------


def test_a_topic_and_its_keys_share_a_hash_tag() -> None:
    names = ShardNames("app", cluster=True)
    assert names.channel_of("room42") == b"app:{room42}:room42"
    assert names.prefix("room42") == "app:{room42}"
    # a topic's own hash tag groups it with others (one id sequence)
    assert group_of("{room42}:chat") == group_of("{room42}:typing") == "room42"
    assert names.channel_of("{room42}:chat") == b"app:{room42}:{room42}:chat"
    # what cannot stand between braces is digested, the same way every time
    for odd in ("", "a}b", "{}x"):
        assert group_of(odd).startswith("#") and group_of(odd) == group_of(odd)
    assert group_of("a}b") != group_of("{}x")
    plain = ShardNames("app", cluster=False)
    assert plain.channel_of("room42") == b"app:room42"
    assert plain.prefix("room42") == "app"  # single-channel mode's keys: ids carry over
    with pytest.raises(ValueError, match="channel"):
        ShardNames("a{b}", cluster=True)


def test_echoes_come_back_per_lane() -> None:
    """Envelopes of one batch on two channels: one channel's echo coming back
    first delivers that channel's publishes only; the other's wait for theirs."""
    delivered: list[str] = []
    echoes = Echoes(lambda m: delivered.append(m.data) or None)
    echoes.active = True
    x, y = [Relayed("x", "x1")], [Relayed("y", "y1")]
    rx, ry = Receipt(), Receipt()
    for seq, (batch, receipt, lane) in enumerate([(x, rx, "x"), (y, ry, "y")], start=5):
        echoes.sending(batch, receipt, lane)
        echoes.expect(seq, 1)
        assert echoes.sent(receipt)
    echoes.heard(6, "y")  # y's channel answered first
    assert delivered == ["y1"] and ry.done and not rx.done
    echoes.heard(5, "x")
    assert delivered == ["y1", "x1"] and rx.done


def test_options_are_validated() -> None:
    with pytest.raises(TypeError, match="sharded"):
        RedisSync("redis://localhost", channel="c", sharded=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sharded=True"):
        RedisSync(["redis://localhost:7000"], channel="c")
    cluster = redis_asyncio.RedisCluster(host="localhost", port=7000)
    with pytest.raises(TypeError, match="sharded=True"):
        RedisSync(cluster, channel="c")
    assert ":7000, channel" in RedisSync(cluster, channel="c", sharded=True).describe()
    with pytest.raises(TypeError, match="RedisCluster"):
        RedisSync([], channel="c", sharded=True)


# -- stats ------------------------------------------------------------------------------------


async def test_relayed_counts_without_sharding(aiohttp_client: Any) -> None:
    """``relayed_out``/``relayed_in`` with any backplane: a publish counts out
    on its instance and in on the others."""
    hub = MemoryHub()
    a = sse_adapter(sync=MemorySync(hub))
    b = sse_adapter(sync=MemorySync(hub))
    for sse in (a, b):
        await sse.start()
    try:
        assert a.stats()["relayed_out"] == a.stats()["relayed_in"] == 0
        for i in range(3):
            a.publish("t", str(i))
        await wait_until(lambda: b.stats()["relayed_in"] == 3)
        assert a.stats()["relayed_out"] == 3 and a.stats()["relayed_in"] == 0
        assert b.stats()["relayed_out"] == 0
    finally:
        for sse in (a, b):
            await sse.close()
    assert sse_adapter().stats()["relayed_out"] == 0  # present without a backplane


# -- a plain Redis --------------------------------------------------------------------------


async def test_plain_redis_relays_like_one_channel(
    redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """Every scenario of the single channel, over channels per topic."""
    with node_pair("redis", redis_server.url, "sharded-plain", **SHARDED) as (a, b):
        topics = ["adapter", "peer", "ns", "order", "bin"]
        async with following(redis_server, "sharded-plain", [a, b], topics, session):
            await check_adapter_publish(a, b, session)
            await check_peer_publish(a, b, session)
            await check_namespaces(a, b, session)  # namespace=None: on the topic's channel
            await check_order(a, b, session)
            await check_binary(a, b, session)


@pytest.mark.parametrize("mode", ["ordered", "history"])
async def test_plain_redis_keeps_one_causal_order(redis_server: RedisServer, mode: str) -> None:
    """``ordered`` (own envelopes come back on their topic's channel) and
    history, one instance behind a slow link (see ``tests/test_ordered.py``)."""
    options = dict(SHARDED, ordered=mode == "ordered")
    adapter = {"history": 400} if mode == "history" else None
    async with LatencyProxy(redis_server.socket, 0.01) as proxy, aiohttp.ClientSession() as session:
        channel = f"sharded-causal-{mode}"
        async with (
            slow_pair("redis", redis_server.url, proxy.url, channel, adapter, **options) as (a, b),
            following(redis_server, channel, [a, b], ["seq"], session),
        ):
            await check_causal_order(a, b, "cluster" if mode == "history" else "none", 200)


async def test_churn_within_one_iteration_costs_redis_nothing(
    own_redis_server: RedisServer, aiohttp_client: Any
) -> None:
    """Interest is applied once per loop iteration: a topic followed and
    left in the same iteration is never subscribed on Redis."""
    url = own_redis_server.url
    instance = await Instance(url, "churn", 0, sharded=True).serve(aiohttp_client)
    reader = await instance.stream("p", topics="kept")
    peer = instance.peers["p"]
    for i in range(50):
        peer.subscribe(f"flap{i}")
    for i in range(50):
        peer.unsubscribe(f"flap{i}")
    probe = redis_asyncio.Redis.from_url(url)
    try:

        async def kept_only() -> bool:
            counts = await probe.pubsub_numsub("churn:kept", "churn:flap0")
            return [n for _, n in counts] == [1, 0]

        await until(kept_only, timeout=10, interval=0.02)
        await asyncio.sleep(0.2)  # (a flap subscribed late would show now)
        stats = await probe.info("commandstats")
        assert stats["cmdstat_subscribe"]["calls"] == 1  # "kept", alone
        assert "cmdstat_unsubscribe" not in stats
    finally:
        await probe.aclose()
        reader.response.close()
