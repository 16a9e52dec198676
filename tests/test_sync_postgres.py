"""``PostgresSync`` against a real PostgreSQL: instances in separate processes,
and in-process checks of its contract."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import Peer, SSEError, define_hooks, sse_adapter
from aiohttp_crossws_sse.sync import Relayed, SyncLink
from tests.backplanes import (  # noqa: F401
    FAST_OPTIONS,
    Node,
    PostgresServer,
    check_adapter_publish,
    check_binary,
    check_isolation,
    check_namespaces,
    check_order,
    check_outage,
    check_peer_publish,
    data_of,
    node_pair,
    opened,
    own_postgres_server_fixture,
    postgres_server_fixture,
    until,
)
from tests.conftest import EventReader

asyncpg = pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
from aiohttp_crossws_sse.sync import PostgresSync  # noqa: E402


@pytest.fixture(scope="module")
def nodes(postgres_server: PostgresServer) -> Iterator[tuple[Node, Node]]:
    """Two instances, each its own process and aiohttp server, sharing one PostgreSQL."""
    with node_pair("postgres", postgres_server.dsn, **FAST_OPTIONS) as pair:
        yield pair


# -- two processes ------------------------------------------------------------------------


# The checks every backplane shares are in tests/test_sync_backplanes.py.


async def test_payloads_beyond_notify_limit_arrive_intact_in_order(
    nodes: tuple[Node, Node], session: aiohttp.ClientSession
) -> None:
    a, b = nodes
    big = "".join(chr(0x20 + i % 0x5F) for i in range(64 * 1024))  # 64 KiB of ASCII
    async with a.stream(session, "big") as on_a, b.stream(session, "big") as sender:
        await opened(on_a)
        await opened(sender)
        await sender.send({"topic": "big", "data": big})  # peer.publish
        assert await data_of(on_a, 1) == [big]
        # small and big (beyond 8000 bytes: 3-byte characters) in one loop iteration
        pads = [0, 22000, 1, 3000, 30000, 0]
        await b.publish(session, "big", "mix", n=len(pads), pads=",".join(map(str, pads)))
        expected = [f"mix{i}:" + "\u20ac" * pad for i, pad in enumerate(pads)]
        assert await data_of(on_a, len(pads)) == expected
        await b.publish(session, "big", "marker")
        assert await data_of(on_a, 1) == ["marker"]


async def test_channels_are_isolated(
    nodes: tuple[Node, Node],
    postgres_server: PostgresServer,
    session: aiohttp.ClientSession,
) -> None:
    other = Node("postgres", postgres_server.dsn, "another app", **FAST_OPTIONS)
    try:
        await check_isolation(*nodes, other, session)
    finally:
        other.stop()


async def test_postgres_stopped_and_restarted(
    own_postgres_server: PostgresServer,
    session: aiohttp.ClientSession,
) -> None:
    server = own_postgres_server
    a = Node("postgres", server.dsn, "main", **FAST_OPTIONS)
    b = Node("postgres", server.dsn, "main", **FAST_OPTIONS)
    try:
        kill = lambda: server.stop("immediate")  # noqa: E731
        await check_outage(a, b, session, kill, server.start, "Postgres")
    finally:
        a.stop()
        b.stop()


# -- in process -----------------------------------------------------------------------------


class Collected:
    def __init__(self) -> None:
        self.delivered: list[Relayed] = []
        self.reported: list[Exception] = []

    def link(self, instance_id: str = "test-instance") -> SyncLink:
        return SyncLink(instance_id, self.delivered.append, self.reported.append)


def test_options_are_validated() -> None:
    dsn = "postgresql://localhost/db"
    with pytest.raises(TypeError, match="channel"):
        PostgresSync(dsn)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="channel"):
        PostgresSync(dsn, channel="x" * 64)
    with pytest.raises(ValueError, match="table"):
        PostgresSync(dsn, channel="c", table="payloads; DROP TABLE x")
    with pytest.raises(ValueError, match="retention"):
        PostgresSync(dsn, channel="c", retention=0)
    with pytest.raises(ValueError, match="send_timeout"):
        PostgresSync(dsn, channel="c", send_timeout=-1)
    assert "secret" not in PostgresSync("postgresql://u:secret@h/db", channel="c").describe()


async def test_start_fails_clearly_when_unreachable(tmp_path: Any) -> None:
    sync = PostgresSync(f"postgresql://postgres@/postgres?host={tmp_path}", channel="c")
    with pytest.raises(ConnectionError, match="cannot connect to Postgres at"):
        await sync.start(Collected().link())
    await sync.close()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:hunter2@topsecret@/postgres?host={dir}",
        "postgresql://app:hunter2/topsecret@localhost:1/app",
        "host={dir} user=app password='hunter2 topsecret' dbname=app",
    ],
)
async def test_no_part_of_the_password_reaches_the_startup_error(tmp_path: Any, dsn: str) -> None:
    sync = PostgresSync(dsn.format(dir=tmp_path), channel="c", send_timeout=5)
    assert "***" in sync.describe()
    with pytest.raises(ConnectionError, match="cannot connect to Postgres at") as caught:
        await sync.start(Collected().link())
    text = "".join(traceback.format_exception(caught.value))
    assert "hunter2" not in text and "topsecret" not in text, text
    await sync.close()


async def test_stored_payload_rows_are_read_and_cleaned_up(
    postgres_server: PostgresServer,
) -> None:
    got, other = Collected(), Collected()
    table = "payloads_cleanup_test"
    one = PostgresSync(postgres_server.dsn, channel="rows", table=table, retention=0.05)
    two = PostgresSync(postgres_server.dsn, channel="rows", table=table, retention=0.05)
    await one.start(got.link("one"))
    await two.start(other.link("two"))
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        for i in range(3):
            two.publish(Relayed("t", f"{i}" * 9000, namespace="/n"))
            await until(lambda n=i: _true(len(got.delivered) == n + 1), timeout=10, interval=0.01)
            await asyncio.sleep(0.06)  # rows age beyond retention
        assert got.delivered == [Relayed("t", f"{i}" * 9000, namespace="/n") for i in range(3)]
        # each publisher deletes rows older than retention after storing one
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") < 3
        assert got.reported == other.reported == []
    finally:
        await conn.close()
        await one.close()
        await two.close()


async def test_without_a_table_too_big_fails_at_publish(
    postgres_server: PostgresServer,
    aiohttp_client: Any,
) -> None:
    errors: list[tuple[Peer | None, SSEError]] = []

    def open_(peer: Peer) -> None:
        peer.subscribe("t")
        peer.send("ready")

    sse = sse_adapter(
        define_hooks(open=open_, error=lambda p, e: errors.append((p, e))),
        sync=PostgresSync(postgres_server.dsn, channel="notable", table=None),
    )
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    reader = EventReader(await client.get("/sse"))
    assert (await reader.next()).data == "ready"
    sse.publish("t", "x" * 9000)  # reported, never raised
    assert (await reader.next()).data == "x" * 9000  # local delivery still happens
    await until(lambda: _true(bool(errors)), timeout=10, interval=0.01)
    (peer, err), *_ = errors
    assert peer is None
    assert isinstance(err.__cause__, ValueError)
    assert "does not fit a Postgres NOTIFY" in str(err.__cause__)
    reader.response.close()


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value
