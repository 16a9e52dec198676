"""``PostgresSync`` against a real PostgreSQL: instances in separate processes,
and in-process checks of its contract."""

from __future__ import annotations

import asyncio
import json
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


@pytest.fixture(scope="module")
def tableless_nodes(postgres_server: PostgresServer) -> Iterator[tuple[Node, Node]]:
    """Two instances with ``table=None``: nothing over a NOTIFY's limit is relayed."""
    with node_pair("postgres", postgres_server.dsn, "no table", table=None, **FAST_OPTIONS) as pair:
        yield pair


def json_size(topic: str, namespace: str | None, event: str | None, data: str) -> int:
    """UTF-8 bytes of the JSON body that carries one publish (the relay's encoding)."""
    fields = [topic, namespace, event, data]
    return len(json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode())


# Publishes whose data and topic are well under 8000 bytes as text (UTF-8), but
# whose envelope body, as JSON, is over it: escapes inflate them, and namespace
# and event travel in the body too.
INFLATED: dict[str, dict[str, str]] = {
    "quotes": {"topic": "edge", "data": '"' * 5000},  # \" : 2 bytes each
    "control": {"topic": "edge", "data": "\x01" * 1500},  # \u0001 : 6 bytes each
    "non-ascii": {"topic": "edge", "data": '"\u00e9' * 2000},  # 6000 bytes as text
    "topic": {"topic": '"' * 4000, "data": "x"},
    "namespace": {"topic": "edge", "ns": "n" * 4000, "data": "x" * 3990},
    "event": {"topic": "edge", "event": "e" * 4000, "data": "x" * 3990},
}


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


@pytest.mark.parametrize("name", list(INFLATED))
async def test_without_a_table_an_inflated_publish_is_refused_alone(
    name: str, tableless_nodes: tuple[Node, Node], session: aiohttp.ClientSession
) -> None:
    """A publish over NOTIFY's limit once JSON-encoded is refused at publish
    (reported on the publishing instance, delivered to its own peers); the
    other publishes of its loop iteration still reach the other instance."""
    a, b = tableless_nodes
    bad = INFLATED[name]
    size = json_size(bad["topic"], bad.get("ns"), bad.get("event"), bad["data"])
    assert len(bad["data"].encode()) + len(bad["topic"]) < 7000 < 8000 < size
    before, after = f"{name} before", f"{name} after"
    async with a.stream(session, "edge") as on_a, b.stream(session, "edge") as on_b:
        await opened(on_a)
        await opened(on_b)
        known = len(await b.errors(session))
        await b.publish_batch(
            session,
            [{"topic": "edge", "data": before}, dict(bad), {"topic": "edge", "data": after}],
        )
        assert await data_of(on_a, 2) == [before, after]
        local = [(before, "message"), (after, "message")]
        if bad["topic"] == "edge" and "ns" not in bad:  # B's own peer is subscribed to it
            local.insert(1, (bad["data"], bad.get("event", "message")))
        got = [await on_b.next_event(10) for _ in local]
        assert [(e.data, e.event) for e in got] == local
        await b.publish(session, "edge", "marker")
        assert await data_of(on_a, 1) == ["marker"]
        assert await data_of(on_b, 1) == ["marker"]

        async def refused() -> bool:
            return len(await b.errors(session)) > known

        await until(refused, timeout=10)
        (error,) = (await b.errors(session))[known:]
        assert "does not fit a Postgres NOTIFY" in error, error
        assert f"{size} bytes" in error and "table=None" in error, error
        assert await a.errors(session) == []  # no batch missed, nothing malformed


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


@pytest.mark.parametrize(
    "data",
    ["x" * 9000, '"' * 5000, "\x1f" * 1500],
    ids=["long", "escaped-quotes", "escaped-controls"],
)
async def test_without_a_table_too_big_fails_at_publish(
    data: str,
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
    sse.publish("t", data)  # reported, never raised
    assert (await reader.next()).data == data  # local delivery still happens
    await until(lambda: _true(bool(errors)), timeout=10, interval=0.01)
    (peer, err), *_ = errors
    assert peer is None
    assert isinstance(err.__cause__, ValueError)
    assert "does not fit a Postgres NOTIFY" in str(err.__cause__)
    assert f"{json_size('t', None, None, data)} bytes" in str(err.__cause__)
    reader.response.close()


async def test_without_a_table_the_limit_is_the_encoded_body(
    postgres_server: PostgresServer,
) -> None:
    """``publish`` refuses a message exactly when its JSON body is over
    ``max_body`` bytes (UTF-8, escapes, every field counted); a refused one
    changes nothing (no sequence number: no batch reported missed), and the
    rest of its loop iteration is relayed in order."""
    got, other = Collected(), Collected()
    one = PostgresSync(postgres_server.dsn, channel="encoded", table=None)
    two = PostgresSync(postgres_server.dsn, channel="encoded", table=None)
    await one.start(got.link("one"))
    await two.start(other.link("two"))
    try:
        limit = two.max_body
        room = limit - json_size("t", None, None, "") - 2  # "\n" is 2 bytes as JSON
        fits = "\n" + "\u00e9" * (room // 2) + "x" * (room % 2)  # 2-byte characters
        assert json_size("t", None, None, fits) == limit
        refused = [
            Relayed("t", fits + "x"),
            Relayed("t", '"' * 5000),
            Relayed('"' * 4000, "x"),
            Relayed("t", "x" * 3990, namespace="n" * 4000),
            Relayed("t", "x" * 3990, event="e" * 4000),
        ]
        accepted = [Relayed("t", "first"), Relayed("t", fits), Relayed("t", "last")]
        two.publish(accepted[0])
        for message in refused:  # in the same loop iteration as the accepted ones
            size = json_size(message.topic, message.namespace, message.event, message.data)
            with pytest.raises(ValueError, match=rf"{size} bytes .* table=None"):
                two.publish(message)
        two.publish(accepted[1])
        two.publish(accepted[2])
        await until(lambda: _true(len(got.delivered) == 3), timeout=10, interval=0.01)
        two.publish(Relayed("t", "marker"))  # alone: its sequence number follows on
        await until(lambda: _true(len(got.delivered) == 4), timeout=10, interval=0.01)
        assert got.delivered == [*accepted, Relayed("t", "marker")]
        assert got.reported == other.reported == []
    finally:
        await one.close()
        await two.close()


async def test_with_a_table_what_outgrows_notify_once_encoded_is_stored(
    postgres_server: PostgresServer,
) -> None:
    """Publishes under 8000 bytes with their envelope header as text, but over
    it as JSON, go through the table, never inline; the small ones around
    them go inline, all in order."""
    got, other = Collected(), Collected()
    table = "payloads_inflated_test"
    one = PostgresSync(postgres_server.dsn, channel="inflated", table=table)
    two = PostgresSync(postgres_server.dsn, channel="inflated", table=table)
    await one.start(got.link("one"))
    await two.start(other.link("two"))
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        header = len("1two 99\n")  # this batch's envelopes have sequence numbers < 99
        overhead = json_size("t", None, None, "")
        inflated = [
            '"' * 4000,  # 4000 bytes as text, 8000 escaped
            "x" * (8000 - header - overhead + 2),  # over only with the JSON around it
            "\u00e9" * ((8000 - header - overhead) // 2 + 1),  # 2 bytes each
        ]
        for data in inflated:
            assert len(data.encode()) + header < 8000 <= json_size("t", None, None, data) + 7
        batch = [Relayed("t", "a")]
        for i, data in enumerate(inflated):
            batch += [Relayed("t", data), Relayed("t", f"small {i}")]
        for message in batch:  # one loop iteration
            two.publish(message)
        await until(lambda: _true(len(got.delivered) == len(batch)), timeout=10, interval=0.01)
        assert got.delivered == batch
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == len(inflated)
        assert got.reported == other.reported == []
    finally:
        await conn.close()
        await one.close()
        await two.close()


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value


async def test_after_an_outage_streams_resume_and_the_local_history_tells_the_gap(
    own_postgres_server: PostgresServer, aiohttp_client: Any
) -> None:
    """With history, an instance that lost Postgres may have missed others'
    publishes, and its own history cannot prove otherwise: its streams end
    (code 1012), and a resume with an id from before gives ``recovered``
    False (a new epoch) instead of a replay that claims to be complete."""
    closes: list[Any] = []

    def open_(peer: Peer) -> None:
        peer.subscribe("t")

    sse = sse_adapter(
        define_hooks(open=open_, close=lambda peer, details: closes.append(details)),
        history=100,
        sync=PostgresSync(own_postgres_server.dsn, channel="gap", **FAST_OPTIONS),
    )
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    reader = EventReader(await client.get("/sse"))
    await until(lambda: _true(bool(sse.peers)), timeout=10, interval=0.02)
    sse.publish("t", "before")
    before = await reader.next()
    own_postgres_server.stop("immediate")
    await until(lambda: _true(not sse.options.sync._up), timeout=30, interval=0.05)
    own_postgres_server.start()
    assert await reader.rest(timeout=60) == []  # ended once the backplane is back
    assert [(d.code, d.reason) for d in closes] == [(1012, "backplane outage: resume")]
    resumed = EventReader(await client.get("/sse", headers={"Last-Event-ID": before.id}))
    await until(lambda: _true(bool(sse.peers)), timeout=10, interval=0.02)
    assert await next(iter(sse.peers.values())).wait_recovered() is False
    sse.publish("t", "after")
    event = await resumed.next()
    assert event.data == "after" and event.id.split("-")[0] != before.id.split("-")[0]
    resumed.response.close()


async def test_a_resume_during_an_outage_is_not_recovered(
    own_postgres_server: PostgresServer, aiohttp_client: Any
) -> None:
    """While the backplane is down, others' publishes may be missing from
    this instance's own history: a resume then gives ``recovered`` False."""

    def open_(peer: Peer) -> None:
        peer.subscribe("t")

    sse = sse_adapter(
        define_hooks(open=open_),
        history=100,
        sync=PostgresSync(own_postgres_server.dsn, channel="partition", **FAST_OPTIONS),
    )
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    first = await sse.publish("t", "before")
    assert first is not None
    own_postgres_server.stop("immediate")
    await until(lambda: _true(not sse.options.sync.up), timeout=30, interval=0.05)
    resumed = EventReader(await client.get("/sse", headers={"Last-Event-ID": first}))
    await until(lambda: _true(bool(sse.peers)), timeout=10, interval=0.02)
    assert await next(iter(sse.peers.values())).wait_recovered() is False
    resumed.response.close()
    own_postgres_server.start()
