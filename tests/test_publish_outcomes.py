"""What an awaited publish says is what happened, at the edges: a hung
backplane, a silent reconnect inside the client library, a refusal between
queued publishes, a round trip that fails part-way.

Each case was a review finding, reproduced against a real server first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from aiohttp_crossws_sse import BackplaneError, SSEAdapter, define_hooks, sse_adapter
from aiohttp_crossws_sse.testing import EventReader
from tests.backplanes import (  # noqa: F401
    PostgresServer,
    RedisServer,
    own_postgres_server_fixture,
    own_redis_server_fixture,
    redis_server_fixture,
    until,
)

pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")
asyncpg = pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
from redis.asyncio import Redis  # noqa: E402
from redis.asyncio.retry import Retry  # noqa: E402
from redis.backoff import ConstantBackoff  # noqa: E402

from aiohttp_crossws_sse.sync import PostgresSync, RedisSync  # noqa: E402


def room(sync: Any, **options: Any) -> tuple[web.Application, SSEAdapter]:
    sse = sse_adapter(define_hooks(open=lambda peer: peer.subscribe("room")), sync=sync, **options)
    app = web.Application()
    sse.setup(app, "/sse")
    return app, sse


async def subscriber(client: Any, sse: SSEAdapter) -> EventReader:
    reader = EventReader(await client.get("/sse"))

    async def subscribed() -> bool:
        return any("room" in p.topics for p in sse.peers.values())

    await until(subscribed, 10, 0.01)
    return reader


@pytest.fixture
async def resumed_redis(own_redis_server: RedisServer) -> AsyncIterator[RedisServer]:
    """``own_redis_server``, never left stopped (SIGCONT) by a test."""
    try:
        yield own_redis_server
    finally:
        proc = own_redis_server.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


async def test_ordered_publish_to_a_hung_redis_never_reports_success(
    aiohttp_client: Any, resumed_redis: RedisServer
) -> None:
    """Redis hangs (SIGSTOP) with a publish in flight; the listener's
    heartbeat gives up first and delivers what was sent locally. The await
    must not claim the backplane took it: Redis never ran the PUBLISH."""
    sync = RedisSync(resumed_redis.url, channel="hung", ordered=True, heartbeat=0.2,
                     send_timeout=3.0, max_reconnect_delay=0.2, report_interval=0.2)  # fmt: skip
    app, sse = room(sync)
    client = await aiohttp_client(app)
    reader = await subscriber(client, sse)
    assert await sse.publish("room", "warm-up") is None
    assert (await reader.next()).data == "warm-up"
    assert resumed_redis.proc is not None
    resumed_redis.proc.send_signal(signal.SIGSTOP)
    with pytest.raises(BackplaneError):
        await sse.publish("room", "in flight")
    assert (await reader.next()).data == "in flight"  # delivered here all the same
    resumed_redis.proc.send_signal(signal.SIGKILL)  # it never runs the PUBLISH
    resumed_redis.proc.wait(5)


async def test_ordered_publish_across_a_silent_reconnect_settles(
    aiohttp_client: Any, redis_server: RedisServer
) -> None:
    """A client given with a retry policy re-subscribes inside redis-py: an
    own envelope published meanwhile never comes back. The publish must
    still reach the local subscriber and its await end (the silent
    reconnect is handled as the outage it is)."""
    given = Redis(unix_socket_path=redis_server.socket, client_name="silent",
                  retry=Retry(ConstantBackoff(0.3), 3))  # fmt: skip
    admin = Redis(unix_socket_path=redis_server.socket)
    try:
        app, sse = room(RedisSync(given, channel="silent", ordered=True, max_reconnect_delay=0.2))
        client = await aiohttp_client(app)
        reader = await subscriber(client, sse)
        assert await sse.publish("room", "warm-up") is None
        assert (await reader.next()).data == "warm-up"
        for conn in await admin.client_list():  # the subscribed connection, ours only
            if conn.get("name") == "silent" and int(conn.get("sub", 0)) > 0:
                await admin.client_kill_filter(_id=conn["id"])
        published = sse.publish("room", "x")
        # lost with the connection: it may say so, but must not hang
        with contextlib.suppress(BackplaneError):
            await asyncio.wait_for(published, 30)
        assert (await reader.next(timeout=30)).data == "x"
    finally:
        await admin.aclose()
        await given.aclose()


async def test_ordered_refusal_keeps_the_publishers_order(
    aiohttp_client: Any, redis_server: RedisServer
) -> None:
    """A then B in one loop iteration, B over max_pending (refused, local
    only): the local subscriber still reads A before B."""
    app, sse = room(RedisSync(redis_server.url, channel="refusal", ordered=True, max_pending=10))
    client = await aiohttp_client(app)
    reader = await subscriber(client, sse)
    a = sse.publish("room", "A" * 20)  # queued: 20 bytes pending > max_pending
    b = sse.publish("room", "B")  # refused
    with pytest.raises(BackplaneError):
        await b
    assert await a is None
    assert [(await reader.next()).data[:1] for _ in range(2)] == ["A", "B"]


@pytest.mark.parametrize("ordered", [False, True])
async def test_postgres_partial_round_trip_fails_only_what_was_not_taken(
    aiohttp_client: Any, own_postgres_server: PostgresServer, ordered: bool
) -> None:
    """One round trip: a small event (NOTIFY, committed), then one too big
    for a NOTIFY whose storing fails (the payload table is gone). The small
    one's await returns — the other instance delivered it — and only the
    big one's raises."""
    dsn = own_postgres_server.dsn
    app_a, a = room(PostgresSync(dsn, channel="partial", ordered=ordered))
    app_b, b = room(PostgresSync(dsn, channel="partial", ordered=ordered))
    await aiohttp_client(app_a)
    client_b = await aiohttp_client(app_b)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("DROP TABLE aiohttp_crossws_sse_payloads")
    finally:
        await admin.close()
    reader = await subscriber(client_b, b)
    small = a.publish("room", "s1")
    big = a.publish("room", "b2:" + "x" * 9000)
    with pytest.raises(BackplaneError):
        await big
    assert await small is None
    assert (await reader.next()).data == "s1"
