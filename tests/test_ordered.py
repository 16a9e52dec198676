"""Awaited publishes and one order per topic across a cluster.

In one process: ``await publish(...)`` gives the event's id (the one on the
wire) or ``None``. In a cluster of two OS processes over a real Redis or
PostgreSQL: a publisher that alternates between the instances and awaits
each publish (over HTTP) before the next gets the same sequence on every
subscriber of both instances, with ``ordered=True`` and with history. An
awaited publish the backplane cannot take raises ``BackplaneError``, and the
local subscribers still get the event.
"""

from __future__ import annotations

import asyncio
import gc
import os
import warnings
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import BackplaneError, Peer, SSEError, define_hooks, sse_adapter
from aiohttp_crossws_sse.sync import MemoryHub, MemorySync
from aiohttp_crossws_sse.testing import EventReader
from tests.backplanes import (  # noqa: F401
    FAST_OPTIONS,
    LatencyProxy,
    Node,
    PostgresServer,
    RedisServer,
    data_of,
    node_pair,
    opened,
    own_redis_server_fixture,
    postgres_server_fixture,
    redis_server_fixture,
    slow_pair,
    until,
)

pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")
pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
from aiohttp_crossws_sse.sync import PostgresSync, RedisSync

EVENTS = 1000


def room_app(**options: Any) -> tuple[web.Application, Any]:
    """Streams subscribed to ``room`` (their first event, ``me``, is the peer
    id); ``POST /say`` awaits ``peer.publish`` from the stream ``?peer=<id>``
    (or ``sse.publish`` without one) and answers the id, or 503."""

    def open_(peer: Peer) -> None:
        peer.subscribe("room")
        peer.send(peer.id, event="me")

    sse = sse_adapter(define_hooks(open=open_), **options)

    async def say(request: web.Request) -> web.Response:
        text = await request.text()
        peer_id = request.query.get("peer")
        if peer_id is not None:
            published = sse.peers[peer_id].publish("room", text)
        else:
            published = sse.publish("room", text)
        try:
            return web.json_response({"id": await published})
        except BackplaneError as exc:
            return web.json_response({"error": str(exc)}, status=503)

    app = web.Application()
    sse.setup(app, "/sse")
    app.router.add_post("/say", say)
    return app, sse


async def joined(client: Any) -> tuple[EventReader, str]:
    """A stream subscribed to ``room``, and its peer id."""
    reader = EventReader(await client.get("/sse"))
    me = await reader.next()
    assert me.event == "me"
    return reader, me.data


# -- one process -------------------------------------------------------------------------


@pytest.mark.parametrize("history", [0, 10])
async def test_awaited_publish_gives_the_id_on_the_wire(aiohttp_client: Any, history: int) -> None:
    app, _ = room_app(history=history)
    client = await aiohttp_client(app)
    reader, _ = await joined(client)
    answer = await (await client.post("/say", data="hello")).json()
    event = await reader.next()
    assert event.data == "hello"
    if history:
        assert answer["id"] is not None and answer["id"] == event.id
    else:
        assert answer["id"] is None and not event.id


async def test_awaited_peer_publish_gives_the_id(aiohttp_client: Any) -> None:
    app, _ = room_app(history=10)
    client = await aiohttp_client(app)
    sender, sender_id = await joined(client)
    other, _ = await joined(client)
    answer = await (await client.post(f"/say?peer={sender_id}", data="from a peer")).json()
    event = await other.next()
    assert (event.data, event.id) == ("from a peer", answer["id"])
    answer = await (await client.post("/say", data="to all")).json()
    assert (await sender.next()).data == "to all"  # the sender never got its own


async def test_publish_not_awaited_warns_nothing(aiohttp_client: Any) -> None:
    """Fire-and-forget stays silent: no coroutine left un-awaited, no
    future's exception left unretrieved."""
    app, sse = room_app(history=5, sync=MemorySync(MemoryHub()))
    client = await aiohttp_client(app)
    reader, _ = await joined(client)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(3):
            sse.publish("room", f"e{i}")
        gc.collect()
    assert [(await reader.next()).data for _ in range(3)] == ["e0", "e1", "e2"]
    assert await sse.publish("room", "awaited") is not None  # MemorySync: at once


# -- two processes over a real backplane ---------------------------------------------------


async def check_causal_order(a: Node, b: Node, ids: str, events: int) -> None:
    """A publisher alternates between the instances and awaits each publish;
    two subscribers on each instance see exactly 0..events-1. ``ids``:
    ``"cluster"`` (history in Redis: the same id everywhere), ``"instance"``
    (each instance's own history: an awaited id is the one its instance's
    subscribers get) or ``"none"``."""
    nodes = (a, b)
    async with aiohttp.ClientSession() as session:
        streams = [a.stream(session, "seq"), a.stream(session, "seq"),
                   b.stream(session, "seq"), b.stream(session, "seq")]  # fmt: skip
        clients = [await s.__aenter__() for s in streams]
        try:
            for client in clients:
                await opened(client)
            awaited: list[str | None] = []
            for i in range(events):
                awaited += await nodes[i % 2].publish_awaited(session, "seq", str(i))
            expected = [str(i) for i in range(events)]
            for n, client in enumerate(clients):
                got = [await client.next_event(30) for _ in range(events)]
                assert [e.data for e in got] == expected
                if ids == "none":
                    assert awaited == [None] * events
                elif ids == "cluster":
                    assert [e.id for e in got] == awaited
                else:  # published through this subscriber's instance: its id
                    mine = range(n // 2, events, 2)
                    assert [got[i].id for i in mine] == [awaited[i] for i in mine]
        finally:
            for s in reversed(streams):
                await s.__aexit__(None, None, None)


# B reaches the backplane through a proxy that delays every byte this long
# each way: B hears A's publishes late. Unordered, B delivers its own
# publishes at once, before A's earlier one arrives: each inversion shows.
SLOW_LINK = 0.01
SLOW_EVENTS = 200


@pytest.mark.parametrize("mode", ["ordered", "history", "ordered+history"])
async def test_redis_cluster_delivers_one_causal_order(
    redis_server: RedisServer, mode: str
) -> None:
    history = "history" in mode
    options: dict[str, Any] = dict(FAST_OPTIONS, ordered="ordered" in mode)
    adapter = {"history": 2 * EVENTS} if history else None
    ids = "cluster" if history else "none"
    async with LatencyProxy(redis_server.socket, SLOW_LINK) as proxy:
        channel = f"causal-slow-{mode}"
        async with slow_pair("redis", redis_server.url, proxy.url, channel, adapter, **options) as (
            a,
            b,
        ):
            await check_causal_order(a, b, ids, SLOW_EVENTS)
    channel = f"causal-{mode}"
    with node_pair("redis", redis_server.url, channel, adapter, **options) as (a, b):
        await check_causal_order(a, b, ids, EVENTS)


@pytest.mark.parametrize("history", [False, True])
async def test_postgres_ordered_cluster_delivers_one_causal_order(
    postgres_server: PostgresServer, history: bool
) -> None:
    adapter = {"history": 2 * EVENTS} if history else None
    ids = "instance" if history else "none"
    options: dict[str, Any] = dict(FAST_OPTIONS, ordered=True)
    socket = os.path.join(postgres_server.dir, ".s.PGSQL.5432")
    async with LatencyProxy(socket, SLOW_LINK) as proxy:
        slow_dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres?sslmode=disable"
        channel = f"causal_slow_{int(history)}"
        async with slow_pair(
            "postgres", postgres_server.dsn, slow_dsn, channel, adapter, **options
        ) as (a, b):
            await check_causal_order(a, b, ids, SLOW_EVENTS)
    channel = f"causal_{int(history)}"
    with node_pair("postgres", postgres_server.dsn, channel, adapter, **options) as (a, b):
        await check_causal_order(a, b, ids, EVENTS)


# -- a backplane that cannot take the event ------------------------------------------------


@pytest.mark.parametrize("mode", ["unordered", "ordered", "history"])
async def test_awaited_publish_while_redis_is_down_raises(
    aiohttp_client: Any, own_redis_server: RedisServer, mode: str
) -> None:
    errors: list[SSEError] = []
    sync = RedisSync(own_redis_server.url, channel=f"down-{mode}", ordered=mode == "ordered",
                     **FAST_OPTIONS)  # fmt: skip

    def open_(peer: Peer) -> None:
        peer.subscribe("room")

    sse = sse_adapter(
        define_hooks(open=open_, error=lambda peer, err: errors.append(err)),
        sync=sync,
        history=10 if mode == "history" else 0,
    )
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    reader = EventReader(await client.get("/sse"))

    async def subscribed() -> bool:
        return any("room" in p.topics for p in sse.peers.values())

    await until(subscribed, 10, 0.01)
    first = await sse.publish("room", "while up")
    assert (await reader.next()).data == "while up"
    assert (first is not None) == (mode == "history")
    own_redis_server.kill()

    async def noticed() -> bool:
        return any("backplane failed" in str(e) for e in errors)

    await until(noticed, 30, 0.05)
    with pytest.raises(BackplaneError) as caught:
        await sse.publish("room", "while down")
    assert "Redis at" in str(caught.value) and "did not take the publish" in str(caught.value)
    assert (await reader.next()).data == "while down"  # delivered here all the same
    # Not awaited: reported, never raised.
    sse.publish("room", "not awaited")
    assert (await reader.next()).data == "not awaited"


async def test_postgres_refusal_raises_when_awaited(
    aiohttp_client: Any, postgres_server: PostgresServer
) -> None:
    """``table=None`` and a publish too big for a NOTIFY: an awaited publish
    raises ``BackplaneError`` naming the backplane and the cause."""
    sync = PostgresSync(postgres_server.dsn, channel="refusal", table=None, ordered=True)
    app, sse = room_app(sync=sync)
    client = await aiohttp_client(app)
    reader, _ = await joined(client)
    with pytest.raises(BackplaneError, match=r"PostgresSync did not take the publish.*NOTIFY"):
        await sse.publish("room", "x" * 10_000)
    assert (await reader.next()).data == "x" * 10_000
    assert await sse.publish("room", "small") is None
    assert (await reader.next()).data == "small"


async def test_options_are_validated() -> None:
    with pytest.raises(TypeError, match="'ordered' must be a bool"):
        RedisSync("redis://127.0.0.1", channel="c", ordered="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'ordered' must be a bool"):
        PostgresSync("postgresql://127.0.0.1/x", channel="c", ordered=1)  # type: ignore[arg-type]


async def test_cancelled_awaiter_does_not_cancel_the_others(
    aiohttp_client: Any, redis_server: RedisServer
) -> None:
    """Two awaiters of one round trip: cancelling one leaves the other's wait."""
    app, sse = room_app(sync=RedisSync(redis_server.url, channel="cancel", ordered=True))
    client = await aiohttp_client(app)
    reader, _ = await joined(client)
    first = asyncio.ensure_future(sse.publish("room", "one"))
    second = asyncio.ensure_future(sse.publish("room", "two"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second is None
    assert [(await reader.next()).data for _ in range(2)] == ["one", "two"]


async def test_postgres_ordered_history_never_replays_a_peers_own_publish(
    aiohttp_client: Any, postgres_server: PostgresServer
) -> None:
    """A resuming peer that publishes from its open hook (the quick start's
    "joined") while its replay is written must not get its own publish back
    from the history: an ordered instance records its own publishes when
    they come back, with their sender."""

    def open_(peer: Peer) -> None:
        peer.subscribe("chat")
        if peer.last_event_id:
            peer.publish("chat", f"joined:{peer.id}")

    sync = PostgresSync(postgres_server.dsn, channel="own_replay", ordered=True)
    sse = sse_adapter(define_hooks(open=open_), sync=sync, history=1000)
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    first = await sse.publish("chat", "start")
    assert first is not None
    for i in range(0, 160, 20):  # ~8 MB of history: a replay long enough to overlap the echo
        await asyncio.gather(
            *(sse.publish("chat", f"{j}:" + "x" * 50_000) for j in range(i, i + 20))
        )
    response = await client.get("/sse", headers={"Last-Event-ID": first})
    peer = next(iter(sse.peers.values()))
    await asyncio.sleep(0.5)  # not reading yet: the replay waits on backpressure
    reader = EventReader(response)
    got = [(await reader.next(timeout=30)).data for _ in range(160)]
    assert [d.split(":")[0] for d in got] == [str(j) for j in range(160)]
    assert await peer.wait_recovered() is True
    sse.publish("chat", "after")
    assert (await reader.next(timeout=30)).data == "after"  # and nothing of its own before it
    response.close()
