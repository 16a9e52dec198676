"""``RedisSync(sharded=True)``: a channel per topic, followed by interest —
against a real ``redis-server`` and a real Redis Cluster (3 primaries of
Debian's ``redis-server --cluster-enabled yes``, joined by ``redis-cli``),
instances in their own processes and in this one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aiohttp_crossws_sse import sse_adapter
from aiohttp_crossws_sse._publication import Receipt
from aiohttp_crossws_sse.client import EventSourceClient
from aiohttp_crossws_sse.sync import MemoryHub, MemorySync, Relayed, SyncLink
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
) -> AsyncIterator[tuple[str, list[Node]]]:
    """``n`` instances in their own processes, sharded, on one channel (given first)."""
    channel = f"sharded-{uuid.uuid4().hex[:8]}"
    nodes: list[Node] = []
    try:
        for _ in range(n):
            nodes.append(
                await asyncio.to_thread(
                    Node, "redis", url, channel, adapter, **{**SHARDED, **options}
                )
            )
        yield channel, nodes
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


# -- a Redis Cluster ----------------------------------------------------------------------


async def delta(
    nodes: list[Node], before: list[dict[str, int]], key: str, session: Any
) -> list[int]:
    return [(await n.stats(session))[key] - b[key] for n, b in zip(nodes, before, strict=True)]


async def test_a_publish_reaches_exactly_the_interested_instances(
    redis_cluster: RedisClusterServers, session: aiohttp.ClientSession
) -> None:
    """Three instances, each following a topic of its own (on three nodes):
    each receives its topic's publishes and nothing else (``relayed_in``)."""
    ta, tb, tc = (topic_on(redis_cluster, i, f"t{'abc'[i]}") for i in range(3))
    async with instances(redis_cluster.url, 3) as (channel, nodes):
        a, b, c = nodes
        async with streams(a.stream(session, ta), b.stream(session, tb), c.stream(session, tc)) as (
            on_a,
            on_b,
            on_c,
        ):
            for topic in (ta, tb, tc):
                await followed(redis_cluster, channel, [topic], 1)
            before = [await n.stats(session) for n in nodes]
            await c.publish_batch(
                session, [{"topic": t, "data": f"{t}-{i}"} for i in range(10) for t in (ta, tb)]
            )
            await b.publish(session, tc, f"{tc}-", n=5)
            assert await data_of(on_a, 10) == [f"{ta}-{i}" for i in range(10)]
            assert await data_of(on_b, 10) == [f"{tb}-{i}" for i in range(10)]
            assert await data_of(on_c, 5) == [f"{tc}-{i}" for i in range(5)]
            await until(lambda: _equal(delta(nodes, before, "relayed_in", session), [10, 10, 5]))
            assert await delta(nodes, before, "relayed_out", session) == [0, 5, 20]
            await asyncio.sleep(0.2)  # (anything more would show by now)
            assert await delta(nodes, before, "relayed_in", session) == [10, 10, 5]
        for node in nodes:
            assert await node.errors(session) == []


async def _equal(value: Any, expected: Any) -> bool:
    return await value == expected


async def _at_least(node: Node, session: Any, key: str, value: int) -> bool:
    return (await node.stats(session))[key] >= value


async def test_each_topic_keeps_its_order(
    redis_cluster: RedisClusterServers, session: aiohttp.ClientSession
) -> None:
    """1,000 publishes on each of four topics (on every node), interleaved in
    one loop iteration, then 1,000 one per iteration: each topic's arrive in
    publish order, none twice, none lost."""
    topics = [topic_on(redis_cluster, i % 3, f"order{i}-") for i in range(4)]
    async with (
        instances(redis_cluster.url, 2) as (channel, (a, b)),
        streams(b.stream(session, ",".join(topics))) as (on_b,),
    ):
        await followed(redis_cluster, channel, topics, 1)
        items = [
            {"topic": t, "data": f"{k}:{i}"} for i in range(1000) for k, t in enumerate(topics)
        ]
        await a.publish_batch(session, items)
        got = await data_of(on_b, 4000, timeout=30)
        for k in range(4):
            assert [d for d in got if d.startswith(f"{k}:")] == [f"{k}:{i}" for i in range(1000)]
        await a.publish(session, topics[0], "spread", n=1000, spread=1)
        assert await data_of(on_b, 1000, timeout=30) == [f"spread{i}" for i in range(1000)]


async def test_resume_on_another_instance_through_the_cluster(
    redis_cluster: RedisClusterServers, session: aiohttp.ClientSession
) -> None:
    """History in the cluster: a client cut on A resumes on B with its last
    id, and gets what it missed on its topics, in order, ``recovered`` True.
    The topics of one hash tag share the ids; a stream that also follows a
    topic of another group cannot be positioned there (``recovered`` False)."""
    chat, typing, other = "{room7}:chat", "{room7}:typing", "lobby"
    async with instances(redis_cluster.url, 2, {"history": 100}) as (channel, (a, b)):
        async with streams(a.stream(session, f"{chat},{typing}")) as (on_a,):
            await followed(redis_cluster, channel, [chat, typing], 1)
            ids = []
            for i, topic in enumerate([chat, typing, chat]):
                ids += await b.publish_awaited(session, topic, f"before{i}")
            got = [await on_a.next_event(10) for _ in range(3)]
            assert [(e.data, e.id) for e in got] == [(f"before{i}", ids[i]) for i in range(3)]
        for i, topic in enumerate([typing, chat, other, chat]):
            await b.publish_awaited(session, topic, f"after{i}")
        async with b.stream(session, f"{chat},{typing}", last_id=ids[-1], recovered=True) as s:
            events = [await s.next_event(10) for _ in range(5)]
            # the replay, then what open sent meanwhile, then the outcome
            assert [e.data for e in events] == ["after0", "after1", "after3", "welcome", "True"]
        async with b.stream(session, f"{chat},{other}", last_id=ids[-1], recovered=True) as s:
            events = [await s.next_event(10) for _ in range(5)]
            assert [e.data for e in events[-2:]] == ["welcome", "False"]
            # chat positioned by the id; lobby (another group) replayed whole
            assert sorted(e.data for e in events[:3]) == ["after1", "after2", "after3"]


async def test_a_subscriber_arriving_while_publishes_flow_misses_nothing(
    redis_cluster: RedisClusterServers, session: aiohttp.ClientSession
) -> None:
    """A client resumes on B, which follows no such topic yet, while A
    publishes one event per loop iteration: B subscribes for it, and its
    replay reads the history until B's own subscription has caught up —
    every event after its id arrives once, in order."""
    topic = "flow"
    n = 20000
    async with instances(redis_cluster.url, 2, {"history": 2 * n}) as (_, (a, b)):
        ids = await a.publish_awaited(session, topic, "first", n=3)
        out = (await a.stats(session))["relayed_out"]
        publishing = asyncio.ensure_future(a.publish(session, topic, "x", n=n, spread=1))
        try:
            # (arrive once the publishes flow: the replay has some to read)
            await until(lambda: _at_least(a, session, "relayed_out", out + 2000), interval=0.01)
            async with b.stream(session, topic, last_id=ids[-1], recovered=True) as resumed:
                await publishing
                await a.publish(session, topic, "end")
                got = []
                # (the outcome comes once the replay is written: before "end" or after)
                while "end" not in [e.data for e in got] or "recovered" not in [
                    e.event for e in got
                ]:
                    got.append(await resumed.next_event(30))
        finally:
            await publishing
        data = [e.data for e in got if e.event == "message" and e.data != "welcome"]
        assert data == [*(f"x{i}" for i in range(n)), "end"]
        assert [e.data for e in got if e.event == "recovered"] == ["True"]
        assert await b.errors(session) == []


@pytest.mark.parametrize("mode", ["ordered", "history"])
async def test_a_batch_over_many_nodes_keeps_one_order_per_topic(
    redis_cluster: RedisClusterServers, session: aiohttp.ClientSession, mode: str
) -> None:
    """Both instances publish batches over topics on every node and await
    them; with ``ordered`` (their envelopes come back on as many channels, in
    any interleaving across them) or history, every subscriber of a topic on
    either instance sees one sequence, and an awaited publish returns once
    its own topic's share came back."""
    topics = [topic_on(redis_cluster, i, f"lane{i}-") for i in range(3)]
    options: dict[str, Any] = {"ordered": mode == "ordered"}
    adapter = {"history": 1000} if mode == "history" else None
    async with instances(redis_cluster.url, 2, adapter, **options) as (channel, (a, b)):
        subscribed = [n.stream(session, ",".join(topics)) for n in (a, b, a, b)]
        async with streams(*subscribed) as clients:
            await followed(redis_cluster, channel, topics, 2)
            for round_ in range(20):
                node = (a, b)[round_ % 2]
                items = [
                    {"topic": t, "data": f"{t}:{round_}.{i}"} for i in range(5) for t in topics
                ]
                await node.publish_batch(session, items)
                await node.publish_awaited(
                    session, topics[round_ % 3], f"{topics[round_ % 3]}:w{round_}"
                )
            await a.publish_awaited(session, topics[0], "end")
            seen = []
            for client in clients:
                got = []
                while not got or got[-1] != "end":
                    got.append((await client.next_event(30)).data)
                seen.append({t: [d for d in got if d.startswith(f"{t}:")] for t in topics})
            for k, topic in enumerate(topics):
                sequences = [s[topic] for s in seen]
                assert all(s == sequences[0] for s in sequences), topic
                # every one, none twice
                assert sorted(sequences[0]) == sorted(
                    [f"{topic}:{r}.{i}" for r in range(20) for i in range(5)]
                    + [f"{topic}:w{r}" for r in range(k, 20, 3)]
                )
        for node in (a, b):
            assert await node.errors(session) == []


async def test_one_primary_killed(
    own_redis_cluster: RedisClusterServers, session: aiohttp.ClientSession
) -> None:
    """One primary of three is killed: the topics of the other slots keep
    flowing, the lost slot's publishes are refused (an awaited one raises)
    and reported; once the node is back (empty: no persistence), delivery
    resumes by itself, the instance that lost a subscription ends its
    streams, and a client resuming on the lost slot's topic gets
    ``recovered`` False — on the others', everything it missed."""
    cluster = own_redis_cluster
    lost, kept = topic_on(cluster, 0, "lost"), topic_on(cluster, 1, "kept")
    async with instances(cluster.url, 2, {"history": 100}) as (channel, (a, b)):
        async with streams(a.stream(session, lost), a.stream(session, kept)) as (on_lost, on_kept):
            await followed(cluster, channel, [lost, kept], 1)
            [lost_id] = await b.publish_awaited(session, lost, "l0")
            [kept_id] = await b.publish_awaited(session, kept, "k0")
            assert (await on_lost.next_event(10)).id == lost_id
            assert (await on_kept.next_event(10)).id == kept_id

            await asyncio.to_thread(cluster.kill, 0)
            [kept_id] = await b.publish_awaited(session, kept, "k1")  # the others flow
            assert await data_of(on_kept, 1) == ["k1"]
            async with session.get(
                b.url + "/publish", params={"topic": lost, "data": "l1", "wait": "1"}
            ) as response:
                assert response.status == 503, await response.text()  # BackplaneError

            async def reported(node: Node) -> bool:
                errors = " ".join(await node.errors(session))
                return f"lost the connection to Redis node 127.0.0.1:{cluster.ports[0]}" in errors

            await until(lambda: reported(a))
            await until(lambda: reported(b))

            await asyncio.to_thread(cluster.start_node, 0)
            # a had lost its subscription (and Redis the slot's history): its
            # streams end so that their clients resume from their last ids
            for client in (on_lost, on_kept):
                with pytest.raises(Exception, match="ended"):
                    while True:
                        await client.next_event(60)
        async with (
            a.stream(session, lost, last_id=lost_id, recovered=True) as resumed_lost,
            a.stream(session, kept, last_id=kept_id, recovered=True) as resumed_kept,
        ):
            assert [(await resumed_lost.next_event(30)).data for _ in range(2)] == [
                "welcome",
                "False",
            ]
            assert [(await resumed_kept.next_event(30)).data for _ in range(2)] == [
                "welcome",
                "True",
            ]
            await followed(cluster, channel, [lost], 1)
            await crossed(b, resumed_lost, session, lost, "back", timeout=60)
            await b.publish(session, kept, "k2")
            assert await data_of(resumed_kept, 1) == ["k2"]
        errors = await a.errors(session)
        assert len(errors) < 10, errors  # one line per change of state, not per attempt
        assert "lost the history of 1 topics" in " ".join(errors)
        # b's refused publish is in its line saying the node is back
        errors = " ".join(await b.errors(session))
        assert f"reconnected to Redis node 127.0.0.1:{cluster.ports[0]}" in errors
        assert "local publishes not relayed meanwhile: 1" in errors


# -- in process: clients, a hung Redis ------------------------------------------------------


class Collected:
    def __init__(self) -> None:
        self.delivered: list[Relayed] = []
        self.reported: list[Exception] = []

    def link(self, instance_id: str, history: int = 0) -> SyncLink:
        def deliver(message: Relayed) -> str | None:
            self.delivered.append(message)
            return message.id

        return SyncLink(instance_id, deliver, self.reported.append, history=history)


async def _relayed(one: RedisSync, got: Collected, topic: str) -> None:
    """Publish on ``one`` until ``got`` receives it (its subscription is in place)."""

    async def arrived() -> bool:
        one.publish(Relayed(topic, "probe"))
        await asyncio.sleep(0.05)
        return any(m.topic == topic for m in got.delivered)

    await until(arrived, timeout=30)


@pytest.mark.parametrize("given", ["client", "urls"])
async def test_a_cluster_client_or_node_urls(
    redis_cluster: RedisClusterServers, given: str
) -> None:
    """A ``RedisCluster`` client (its settings and nodes are used; it stays
    the caller's), or the URLs of a cluster's nodes."""
    cluster = redis_asyncio.RedisCluster.from_url(redis_cluster.url)
    target: Any = cluster if given == "client" else redis_cluster.urls[1:]
    channel = f"given-{given}"
    one = RedisSync(target, channel=channel, sharded=True, **FAST_OPTIONS)
    two = RedisSync(target, channel=channel, sharded=True, **FAST_OPTIONS)
    got = Collected()
    await one.start(Collected().link("one"))
    await two.start(got.link("two"))
    try:
        topics = [topic_on(redis_cluster, i, "given") for i in range(3)]
        for topic in topics:
            two.interest(topic, True)
        for topic in topics:
            await _relayed(one, got, topic)
        assert "Redis Cluster at" in one.describe()
    finally:
        await one.close()
        await two.close()
        await cluster.aclose()  # left open by RedisSync: it is the caller's


async def test_a_hung_redis_is_noticed_by_the_heartbeat(own_redis_server: RedisServer) -> None:
    """SIGSTOP: the connection stays open but nothing answers (a silent
    network): the watchdog's PING gets no answer, the node counts as lost,
    and once Redis answers again the topics flow again."""
    got = Collected()
    options: dict[str, Any] = {"heartbeat": 0.3, "send_timeout": 0.3, "report_interval": 0.1}
    url = own_redis_server.url
    one = RedisSync(url, channel="hung", sharded=True, max_reconnect_delay=0.2, **options)
    two = RedisSync(url, channel="hung", sharded=True, **options)
    await one.start(got.link("one"))
    await two.start(Collected().link("two"))
    one.interest("t", True)
    assert own_redis_server.proc is not None
    try:
        await _relayed(two, got, "t")
        own_redis_server.proc.send_signal(signal.SIGSTOP)
        await until(lambda: _true(any("did not answer" in str(e) for e in got.reported)))
    finally:
        own_redis_server.proc.send_signal(signal.SIGCONT)
    try:
        got.delivered.clear()
        await _relayed(two, got, "t")
    finally:
        await one.close()
        await two.close()


async def _true(value: bool) -> bool:
    return value


async def test_a_slot_moving_to_another_primary_is_followed(
    own_redis_cluster: RedisClusterServers, session: aiohttp.ClientSession
) -> None:
    """Resharding moves a topic's slot to another node: Redis unsubscribes the
    old node's subscribers and answers the publisher MOVED; both read the map
    again and follow the topic, which flows again by itself (what was
    published meanwhile is reported)."""
    cluster = own_redis_cluster
    topic = topic_on(cluster, 0, "moving")
    async with (
        instances(cluster.url, 2) as (channel, (a, b)),
        streams(a.stream(session, topic)) as (on_a,),
    ):
        await followed(cluster, channel, [topic], 1)
        await b.publish(session, topic, "before")
        assert await data_of(on_a, 1) == ["before"]
        await asyncio.to_thread(cluster.move_slot, topic, 2)
        await crossed(b, on_a, session, topic, "moved", timeout=60)
        # a's subscription is on the new owner now
        name = ShardNames(channel, cluster=True).channel_of(topic).decode()
        reply = await asyncio.to_thread(cluster.command, 2, "PUBSUB", "SHARDNUMSUB", name)
        assert reply.split()[-1] == "1"
        for node in (a, b):
            assert node.alive(), node.output()
            assert (await node.health(session))["handler_errors"] == 0
