"""Pub/sub: topics, namespaces, self-exclusion, ordering, cleanup, encode-once — over real HTTP."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aiohttp_crossws_sse import Peer, SSEAdapter, define_hooks, sse_adapter
from tests.conftest import EventReader, wait_until


def subscribing_adapter(**options: Any) -> SSEAdapter:
    """Peers subscribe to the comma-separated ``topics`` query and get a ``ready`` event."""

    def upgrade(request: web.Request) -> dict[str, Any]:
        result: dict[str, Any] = {"context": {"name": request.query.get("name", "")}}
        if "ns" in request.query:
            result["namespace"] = request.query["ns"]
        return result

    def open_(peer: Peer) -> None:
        for topic in filter(None, peer.request.query.get("topics", "").split(",")):
            peer.subscribe(topic)
        peer.send("ready")

    return sse_adapter(define_hooks(upgrade=upgrade, open=open_), **options)


async def connect(client: Any, query: str) -> EventReader:
    reader = EventReader(await client.get("/sse?" + query))
    assert (await reader.next()).data == "ready"
    return reader


def app_for(sse: SSEAdapter) -> web.Application:
    app = web.Application()
    sse.setup(app, "/sse")
    return app


def by_name(sse: SSEAdapter, name: str) -> Peer:
    return next(p for p in sse.peers.values() if p.context["name"] == name)


async def test_topic_isolation_and_topics_view(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    a = await connect(client, "name=a&topics=red")
    b = await connect(client, "name=b&topics=blue")
    both = await connect(client, "name=both&topics=red,blue")
    assert by_name(sse, "both").topics == frozenset({"red", "blue"})
    sse.publish("red", "r1")
    sse.publish("blue", "b1")
    sse.publish("green", "nobody")
    sse.publish("red", "r2")
    assert [e.data for e in await a.take(2)] == ["r1", "r2"]
    assert [e.data for e in await b.take(1)] == ["b1"]
    assert [e.data for e in await both.take(3)] == ["r1", "b1", "r2"]
    # a marker proves nothing else was queued before it
    sse.publish("red", "end")
    sse.publish("blue", "end")
    assert (await a.next()).data == "end"
    assert (await b.next()).data == "end"


async def test_unsubscribe_stops_delivery(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    a = await connect(client, "name=a&topics=t,marker")
    peer = by_name(sse, "a")
    peer.unsubscribe("t")
    peer.unsubscribe("never-subscribed")
    assert peer.topics == frozenset({"marker"})
    sse.publish("t", "lost")
    sse.publish("marker", "m")
    assert (await a.next()).data == "m"


async def test_namespace_isolation_and_publish_everywhere(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    one = await connect(client, "name=one&ns=room1&topics=chat")
    two = await connect(client, "name=two&ns=room2&topics=chat")
    assert set(by_name(sse, "one").peers) == {by_name(sse, "one").id}
    assert len(sse.peers) == 2
    sse.publish("chat", "only room1", namespace="room1")
    sse.publish("chat", "room3 has nobody", namespace="room3")
    sse.publish("chat", "everyone")
    assert [e.data for e in await one.take(2)] == ["only room1", "everyone"]
    assert [e.data for e in await two.take(1)] == ["everyone"]
    # peer.publish stays in the peer's namespace
    by_name(sse, "one").publish("chat", "from one")
    sse.publish("chat", "marker")
    assert (await two.next()).data == "marker"


async def test_peer_publish_excludes_itself_and_carries_event(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    a = await connect(client, "name=a&topics=chat")
    b = await connect(client, "name=b&topics=chat")
    by_name(sse, "a").publish("chat", {"from": "a"}, event="said")
    event = await b.next()
    assert (event.event, event.data) == ("said", '{"from":"a"}')
    sse.publish("chat", "marker")
    assert (await a.next()).data == "marker"  # a never got its own publish


async def test_order_of_1000_publishes_per_subscriber(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    readers = [await connect(client, f"name=r{i}&topics=seq") for i in range(5)]
    for i in range(1000):
        sse.publish("seq", str(i))
    for reader in readers:
        assert [int(e.data) for e in await reader.take(1000)] == list(range(1000))


async def test_send_and_publish_keep_call_order(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    a = await connect(client, "name=a&topics=t")
    peer = by_name(sse, "a")
    big = "x" * 40_000  # big frames take the eager write path
    peer.send("send 1")
    sse.publish("t", "publish 2")
    peer.send(big)
    sse.publish("t", "publish 4")
    sse.publish("t", big)
    peer.send("send 6")
    got = [e.data for e in await a.take(6)]
    assert got == ["send 1", "publish 2", big, "publish 4", big, "send 6"]


async def test_topics_freed_after_churn(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    for round_ in range(20):
        readers = [
            await connect(client, f"name=c{round_}-{i}&ns=ns{i % 3}&topics=t{round_},shared")
            for i in range(5)
        ]
        assert sse.stats()["topics"] > 0
        for reader in readers:
            reader.response.close()
        await wait_until(lambda: not sse.peers, what="all peers gone")
    stats = sse.stats()
    assert stats["topics"] == 0
    assert stats["peers"] == 0
    assert sse._registry.namespaces == {}
    assert stats["peers_opened"] == stats["peers_closed"] == 100


async def test_frame_encoded_once_per_publish(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    readers = [await connect(client, f"name=r{i}&topics=t") for i in range(20)]
    before = sse.stats()
    for i in range(10):
        sse.publish("t", f"event {i}")
    for reader in readers:
        assert len(await reader.take(10)) == 10
    after = sse.stats()
    assert after["frames_encoded"] - before["frames_encoded"] == 10
    assert after["deliveries"] - before["deliveries"] == 200


async def test_publish_validates_before_delivering(aiohttp_client: Any) -> None:
    sse = subscribing_adapter()
    client = await aiohttp_client(app_for(sse))
    a = await connect(client, "name=a&topics=t")
    for bad, exc in ((object(), TypeError), ("x", ValueError)):
        try:
            if exc is ValueError:
                sse.publish("t", bad, event="a\nb")
            else:
                sse.publish("t", bad)
        except exc:
            pass
        else:
            raise AssertionError("bad publish accepted")
    try:
        sse.publish(1, "x")  # type: ignore[arg-type]
    except TypeError as err:
        assert "topic" in str(err)
    sse.publish("t", "fine")
    assert (await a.next()).data == "fine"
