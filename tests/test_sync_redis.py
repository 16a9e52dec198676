"""``RedisSync`` against a real ``redis-server``: instances in separate processes,
and in-process checks of its contract."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import Peer, SSEError, define_hooks, sse_adapter
from aiohttp_crossws_sse.client import connect
from aiohttp_crossws_sse.sync import Relayed, SyncLink
from tests.backplanes import (  # noqa: F401
    FAST_OPTIONS,
    LatencyProxy,
    Node,
    RedisServer,
    check_adapter_publish,
    check_binary,
    check_isolation,
    check_namespaces,
    check_order,
    check_outage,
    check_peer_publish,
    node_pair,
    own_redis_server_fixture,
    redis_server_fixture,
    running_redis,
    until,
)
from tests.conftest import EventReader

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")
from aiohttp_crossws_sse.sync import RedisSync  # noqa: E402


@pytest.fixture(scope="module")
def nodes(redis_server: RedisServer) -> Iterator[tuple[Node, Node]]:
    """Two instances, each its own process and aiohttp server, sharing one Redis."""
    with node_pair("redis", redis_server.url, **FAST_OPTIONS) as pair:
        yield pair


# -- two processes ------------------------------------------------------------------------


# The checks every backplane shares are in tests/test_sync_backplanes.py.


async def test_channels_are_isolated(
    nodes: tuple[Node, Node], redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    other = Node("redis", redis_server.url, "another app", **FAST_OPTIONS)
    try:
        await check_isolation(*nodes, other, session)
    finally:
        other.stop()


async def test_redis_killed_and_restarted(
    own_redis_server: RedisServer,
    session: aiohttp.ClientSession,
) -> None:
    a = Node("redis", own_redis_server.url, "main", **FAST_OPTIONS)
    b = Node("redis", own_redis_server.url, "main", **FAST_OPTIONS)
    try:
        await check_outage(a, b, session, own_redis_server.kill, own_redis_server.start, "Redis")
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
    with pytest.raises(TypeError, match="channel"):
        RedisSync("redis://localhost")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="channel"):
        RedisSync("redis://localhost", channel="")
    with pytest.raises(TypeError, match="Redis URL"):
        RedisSync(42, channel="c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heartbeat"):
        RedisSync("redis://localhost", channel="c", heartbeat=0)
    with pytest.raises(TypeError, match="max_pending"):
        RedisSync("redis://localhost", channel="c", max_pending=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bogus"):
        RedisSync("redis://localhost", channel="c", bogus=1)  # type: ignore[call-arg]


def test_backends_are_imported_lazily() -> None:
    code = (
        "import sys, aiohttp_crossws_sse, aiohttp_crossws_sse.sync as s\n"
        "assert 'redis' not in sys.modules and 'asyncpg' not in sys.modules, 'eager'\n"
        "s.RedisSync\n"
        "assert 'redis' in sys.modules and 'asyncpg' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_start_fails_clearly_when_unreachable(tmp_path: Any) -> None:
    sync = RedisSync(f"unix://{tmp_path}/nothing.sock", channel="c")
    with pytest.raises(ConnectionError, match="cannot connect to Redis at unix://"):
        await sync.start(Collected().link())
    await sync.close()  # harmless


async def test_a_given_client_is_used_as_is_and_left_open(redis_server: RedisServer) -> None:
    client = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    got, other = Collected(), Collected()
    one = RedisSync(client, channel="given")
    two = RedisSync(redis_server.url, channel="given")
    await one.start(got.link("one"))
    await two.start(other.link("two"))
    try:
        two.publish(Relayed("t", "hi", event="e", namespace="/ns"))
        await until(lambda: _true(len(got.delivered) == 1), timeout=10, interval=0.01)
        assert got.delivered == [Relayed("t", "hi", event="e", namespace="/ns")]
        assert other.delivered == []  # its own publish is not echoed
        assert "Redis at " in one.describe()
    finally:
        await one.close()
        await two.close()
    assert await client.ping()  # still open: it is the caller's
    await client.aclose()
    assert got.reported == other.reported == []


async def test_garbage_on_the_channel_is_reported_and_skipped(
    redis_server: RedisServer,
) -> None:
    got = Collected()
    sync = RedisSync(redis_server.url, channel="garbage", report_interval=0.1)
    await sync.start(got.link())
    client = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        for junk in ("no header", "1x 1\nnot json", "1y 1\n[1,2,3,4]", "1z 1\n[1,2]", b"\xff\xfe"):
            await client.publish("garbage", junk)
        await client.publish("garbage", '1w 1\n["t",null,null,"fine"]')
        await until(lambda: _true(len(got.delivered) == 1), timeout=10, interval=0.01)
        assert got.delivered == [Relayed("t", "fine")]
        assert len(got.reported) == 5
        assert all("malformed message" in str(e) for e in got.reported)
    finally:
        await client.aclose()
        await sync.close()


async def test_missed_batches_are_reported(redis_server: RedisServer) -> None:
    got = Collected()
    sync = RedisSync(redis_server.url, channel="gaps")
    await sync.start(got.link())
    client = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        await client.publish("gaps", '1peer 1\n["t",null,null,"a"]')
        await client.publish("gaps", '1peer 4\n["t",null,null,"b"]')
        await until(lambda: _true(len(got.delivered) == 2), timeout=10, interval=0.01)
        assert [str(e) for e in got.reported] == [
            "missed 2 message batches from instance peer on Redis at "
            f"{redis_server.url}, channel 'gaps' (the connection was lost meanwhile, "
            "or they were never sent)"
        ]
    finally:
        await client.aclose()
        await sync.close()


async def test_outage_publishes_are_reported_to_the_error_hook_never_raised(
    own_redis_server: RedisServer,
    aiohttp_client: Any,
) -> None:
    errors: list[tuple[Peer | None, SSEError]] = []

    def open_(peer: Peer) -> None:
        peer.subscribe("t")
        peer.send("ready")

    sync = RedisSync(own_redis_server.url, channel="hooks", **FAST_OPTIONS)
    sse = sse_adapter(
        define_hooks(open=open_, error=lambda p, e: errors.append((p, e))),
        sync=sync,
    )
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    reader = EventReader(await client.get("/sse"))
    assert (await reader.next()).data == "ready"
    own_redis_server.kill()
    await until(lambda: _true(bool(errors)), timeout=10, interval=0.02)
    sse.publish("t", "during the outage")  # never raises
    assert (await reader.next()).data == "during the outage"
    await until(lambda: _true(any("not relayed" in str(e.__cause__) for _, e in errors)))
    await until(lambda: _true(any("still cannot reach" in str(e.__cause__) for _, e in errors)))
    assert all(peer is None for peer, _ in errors)
    assert "lost the connection to Redis" in str(errors[0][1].__cause__)
    own_redis_server.start()
    await until(lambda: _true(sync._up), timeout=30, interval=0.02)
    reader.response.close()


SECRETS = ("hunter2", "topsecret")


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("redis://:hunter2@topsecret@db:6379/0", "redis://:***@db:6379/0"),
        ("redis://app:hunter2@db/1", "redis://app:***@db/1"),
        ("rediss://app:hunter2%40topsecret@db:6380", "rediss://app:***@db:6380"),
        ("redis://db:6379/0?password=hunter2&socket_timeout=2", None),
        ("unix://:hunter2@topsecret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://:hunter2/topsecret@db:6379", None),  # a '/' in it: ambiguous, all hidden
        ("redis://:hunter2@top/secret@db:6379", None),
        ("postgresql://app:hunter2@topsecret@db/app", "postgresql://app:***@db/app"),
        ("postgresql://app@/app?host=/run/pg&password=hunter2", None),
        (
            "host=db user=app password=hunter2 dbname=app",
            "host=db user=app password=*** dbname=app",
        ),
        ("host=db password = 'hunter2 topsecret' dbname=app", "host=db password=*** dbname=app"),
        ("host=db password='hunter2\\' topsecret' port=5", "host=db password=*** port=5"),
        ("host=db password='hunter2 topsecret", None),  # unterminated: nothing shown
    ],
)
def test_addresses_are_shown_without_any_part_of_a_credential(
    address: str, shown: str | None
) -> None:
    from aiohttp_crossws_sse.sync._redact import redact

    text = redact(address)
    assert not any(secret in text for secret in SECRETS), text
    if shown is not None:
        assert text == shown


async def test_no_part_of_the_password_reaches_a_report_or_the_log(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A password holding '@' (redis-py takes ``redis://:a@b@host``), against a
    real redis-server that requires it: the outage's reports (error hooks,
    their causes) and every log line, DEBUG tracebacks included, hold no part
    of it."""
    caplog.set_level(logging.DEBUG, "aiohttp_crossws_sse")
    errors: list[SSEError] = []
    with running_redis(password="hunter2@topsecret") as server:
        sync = RedisSync(server.url, channel="secret", **FAST_OPTIONS)
        sse = sse_adapter(define_hooks(error=lambda p, e: errors.append(e)), sync=sync)
        app = web.Application()
        sse.setup(app, "/sse")
        await aiohttp_client(app)
        assert "hunter2" not in sync.describe() and "Redis at unix://:***@" in sync.describe()
        server.kill()
        await until(lambda: _true(any("still cannot reach" in str(e) for e in errors)))
        sse.publish("t", "lost")
        await until(lambda: _true(any("not relayed" in str(e) for e in errors)))
        server.start()
        await until(lambda: _true(sync._up), timeout=30, interval=0.02)
    reports = [traceback.format_exception(e) for e in errors]
    for text in [*map("".join, reports), caplog.text]:
        assert not any(secret in text for secret in SECRETS), text


async def test_a_malformed_address_is_not_quoted_in_the_startup_error() -> None:
    """redis-py's own message for an unencoded '/' in the password quotes part
    of it ("Port could not be cast to integer value as 'hunter2'")."""
    sync = RedisSync("redis://:hunter2/topsecret@127.0.0.1:1/0", channel="c")
    with pytest.raises(ConnectionError) as caught:
        await sync.start(Collected().link())
    text = "".join(traceback.format_exception(caught.value))
    assert not any(secret in text for secret in SECRETS), text


async def test_an_outage_is_logged_one_line_per_state_change(
    own_redis_server: RedisServer, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One instance loses Redis (a partition) while the other goes on
    publishing: its log says "lost" once and "reconnected" once, with what was
    not relayed and what it missed; tracebacks only at DEBUG."""
    caplog.set_level(logging.DEBUG, "aiohttp_crossws_sse")
    channel = "quiet-log"
    async with LatencyProxy(own_redis_server.socket, 0.0) as proxy:
        near, far = (
            RedisSync(proxy.url, channel=channel),
            RedisSync(own_redis_server.url, channel=channel),
        )
        apps = []
        for sync in (near, far):
            sse = sse_adapter(
                define_hooks(open=lambda peer: peer.subscribe("t")), history=100, sync=sync
            )
            app = web.Application()
            sse.setup(app, "/sse")
            apps.append((sse, await aiohttp_client(app)))
        (a, a_client), (b, _) = apps
        reader = EventReader(await a_client.get("/sse"))
        await until(lambda: _true(bool(a.peers)), timeout=10, interval=0.02)
        b.publish("t", "before")
        before = await reader.next()
        assert before.data == "before"
        caplog.clear()
        proxy.cut()
        await until(lambda: _true(not near._up), timeout=10, interval=0.02)
        for i in range(3):
            a.publish("t", f"local {i}")  # not relayed: local peers only
            b.publish("t", f"missed {i}")  # in Redis, not here
            await asyncio.sleep(0.01)
        proxy.restore()
        await until(lambda: _true(near._up), timeout=30, interval=0.02)
        # A missed B's publishes: the stream ends, so that its client resumes
        # from its last id instead of going on as if it had seen everything.
        assert [e.data for e in await reader.rest()] == ["local 0", "local 1", "local 2"]
        resumed = EventReader(await a_client.get("/sse", headers={"Last-Event-ID": before.id}))
        b.publish("t", "after")
        got = [(await resumed.next()).data for _ in range(4)]
        assert got == ["missed 0", "missed 1", "missed 2", "after"]
        assert await next(iter(a.peers.values())).wait_recovered() is True
        resumed.response.close()
        records = list(caplog.records)  # before the proxy closes (a new outage)
    above_debug = [r for r in records if r.levelno > logging.DEBUG]
    text = [caplog.handler.format(r) for r in above_debug]
    assert len(above_debug) == 3, text
    assert "lost the connection" in text[0] and above_debug[0].levelno == logging.ERROR
    assert "reconnected" in text[1]
    assert "local publishes not relayed meanwhile: 3" in text[1], text[1]
    assert "publishes of the cluster missed meanwhile: 3" in text[1], text[1]
    assert "ending 1 streams after the backplane outage" in text[2], text[2]
    assert not any("Traceback" in t or r.exc_info for t, r in zip(text, above_debug, strict=True))
    assert any(r.exc_info for r in records if r.levelno == logging.DEBUG)


async def test_a_publish_in_flight_when_redis_dies_is_counted_in_the_outage(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch fails before the listener notices the outage: it is counted
    in the outage's lines, not reported on a line of its own."""
    caplog.set_level(logging.INFO, "aiohttp_crossws_sse")
    got = Collected()
    sync = RedisSync(own_redis_server.url, channel="in-flight")
    await sync.start(got.link())
    try:
        sync.publish(Relayed("t", "in flight"))
        own_redis_server.kill()  # before the writer runs
        await until(lambda: _true(not sync._up), timeout=10, interval=0.02)
        own_redis_server.start()
        await until(lambda: _true(sync._up), timeout=30, interval=0.02)
    finally:
        await sync.close()
    reports = [str(e) for e in got.reported]
    assert len(reports) == 2, reports
    assert reports[0].startswith("lost the connection")
    assert "local publishes not relayed meanwhile: 1" in reports[1], reports


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value


async def test_the_cluster_example(redis_server: RedisServer, aiohttp_client: Any) -> None:
    spec = importlib.util.spec_from_file_location("examples_cluster", EXAMPLES / "cluster.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    one = await aiohttp_client(example.make_app(redis_server.url, "example"))
    two = await aiohttp_client(example.make_app(redis_server.url, "example"))
    async with (
        connect(one.make_url("/sse"), session=one.session) as alice,
        connect(two.make_url("/sse"), session=two.session) as bob,
    ):
        assert (await alice.next_event()).event == "worker"
        assert (await bob.next_event()).event == "worker"
        response = await one.post("/say", data="hello from the first worker")
        assert response.status == 200
        line = f"[worker {os.getpid()}] hello from the first worker"
        for client in (alice, bob):  # local to alice, relayed through Redis to bob
            event = await client.next_event()
            while event.event == "notice":  # the other one joined (or not yet)
                event = await client.next_event()
            assert event.data == line


async def test_a_hung_redis_is_noticed_by_the_heartbeat(own_redis_server: RedisServer) -> None:
    """SIGSTOP: the connection stays open but nothing answers (a silent network)."""
    got, other = Collected(), Collected()
    options: dict[str, Any] = {"heartbeat": 0.3, "send_timeout": 0.3, "report_interval": 0.1}
    one = RedisSync(own_redis_server.url, channel="hung", max_reconnect_delay=0.2, **options)
    two = RedisSync(own_redis_server.url, channel="hung", **options)
    await one.start(got.link("one"))
    await two.start(other.link("two"))
    assert own_redis_server.proc is not None
    try:
        own_redis_server.proc.send_signal(signal.SIGSTOP)
        two.publish(Relayed("t", "lost while hung"))  # times out: reported, not raised
        await until(lambda: _true(any("not relayed" in str(e) for e in other.reported)))
        await until(lambda: _true(any("did not answer" in str(e) for e in got.reported)))
        assert not one._up
    finally:
        own_redis_server.proc.send_signal(signal.SIGCONT)
    try:
        await until(lambda: _true(one._up), timeout=30, interval=0.02)

        async def relayed() -> bool:
            two.publish(Relayed("t", "after"))
            await asyncio.sleep(0.05)
            return bool(got.delivered)

        await until(relayed, timeout=30)
        # (the publish that timed out may or may not have been processed by Redis
        # after SIGCONT: a timeout cannot tell; it was reported either way)
        assert {m.data for m in got.delivered} <= {"after", "lost while hung"}
    finally:
        await one.close()
        await two.close()


async def test_a_silent_reconnect_by_the_clients_retry_policy_is_reported(
    own_redis_server: RedisServer,
) -> None:
    """A given client keeps its own retry policy: redis-py may then reconnect and
    resubscribe by itself, unseen by the listener; that is reported all the same,
    since what was published meanwhile was missed."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ConstantBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    client = redis_asyncio.Redis.from_url(  # retry_on_error: redis-py 5 retries nothing without it
        own_redis_server.url,
        retry=Retry(ConstantBackoff(0.2), 50),
        retry_on_error=[RedisConnectionError],
    )
    got, other = Collected(), Collected()
    one = RedisSync(client, channel="silent")
    two = RedisSync(own_redis_server.url, channel="silent", **FAST_OPTIONS)
    await one.start(got.link("one"))
    await two.start(other.link("two"))
    try:
        own_redis_server.kill()
        own_redis_server.start()

        async def relayed() -> bool:
            with contextlib.suppress(RuntimeError):
                two.publish(Relayed("t", "after"))
            await asyncio.sleep(0.05)
            return bool(got.delivered)

        await until(relayed, timeout=30)
        await until(lambda: _true(bool(got.reported)), timeout=10)
        assert "reconnected by itself" in str(got.reported[0]), got.reported
        # handled as the outage it was: the listener subscribes again itself
        await until(lambda: _true(one._up), timeout=30)
    finally:
        await one.close()
        await two.close()
        await client.aclose()
