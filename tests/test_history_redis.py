"""History in a cluster: ``RedisSync`` keeps it in Redis Streams and gives the
ids, so a client resumes on any instance — against a real ``redis-server``,
two adapters each behind its own real aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import Peer, SSEAdapter, SSEError, define_hooks, sse_adapter
from aiohttp_crossws_sse.client import SSEClientError
from aiohttp_crossws_sse.testing import ServerSentEvent
from tests.backplanes import (  # noqa: F401
    FAST_OPTIONS,
    LatencyProxy,
    RedisServer,
    own_redis_server_fixture,
    redis_server_fixture,
)
from tests.conftest import EventReader, wait_until

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")
from aiohttp_crossws_sse.sync import RedisSync, Relayed, SyncLink  # noqa: E402


class Instance:
    def __init__(self, url: str, channel: str, history: int, **options: Any) -> None:
        self.peers: dict[str, Peer] = {}
        self.errors: list[tuple[Peer | None, SSEError]] = []

        def open_(peer: Peer) -> None:
            self.peers[peer.request.query.get("name", "")] = peer
            for topic in peer.request.query.get("topics", "t").split(","):
                peer.subscribe(topic)
            if "publish" in peer.request.query:
                peer.publish("t", peer.request.query["publish"])

        def error(peer: Peer | None, err: SSEError) -> None:
            self.errors.append((peer, err))

        self.sync = RedisSync(url, channel=channel, **{**FAST_OPTIONS, **options})
        self.sse: SSEAdapter = sse_adapter(
            define_hooks(open=open_, error=error), history=history, sync=self.sync
        )
        self.app = web.Application()
        self.sse.setup(self.app, "/sse")
        self.client: Any = None

    async def serve(self, aiohttp_client: Any) -> Instance:
        self.client = await aiohttp_client(self.app)
        return self

    async def stream(self, name: str, last_id: str | None = None, **query: str) -> EventReader:
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        resp = await self.client.get("/sse", params={"name": name, **query}, headers=headers)
        assert resp.status == 200
        await wait_until(lambda: name in self.peers and self.peers[name].ready_state == 1)
        return EventReader(resp)


async def two_instances(url: str, aiohttp_client: Any, history: int = 2000) -> list[Instance]:
    channel = f"history-{uuid.uuid4()}"
    return [await Instance(url, channel, history).serve(aiohttp_client) for _ in range(2)]


async def test_every_instance_sends_the_same_ids(
    redis_server: RedisServer, aiohttp_client: Any
) -> None:
    a, b = await two_instances(redis_server.url, aiohttp_client)
    on_a = await a.stream("x")
    on_b = await b.stream("y")
    for i in range(5):
        a.sse.publish("t", str(i))
    b.sse.publish("t", "from b")
    got_a = await on_a.take(6)
    got_b = await on_b.take(6)
    assert [(e.id, e.data) for e in got_a] == [(e.id, e.data) for e in got_b]
    # each instance's publishes in its order; the two instances' interleave as Redis got them
    assert [e.data for e in got_a if e.data != "from b"] == ["0", "1", "2", "3", "4"]
    assert "from b" in [e.data for e in got_a]
    assert len({e.id for e in got_a}) == 6 and all(e.id for e in got_a)
    on_a.response.close()
    on_b.response.close()


async def test_the_publisher_does_not_get_its_own_publish(
    redis_server: RedisServer, aiohttp_client: Any
) -> None:
    a, b = await two_instances(redis_server.url, aiohttp_client)
    watcher = await b.stream("w")
    author = await a.stream("p", publish="hello")
    assert (await watcher.next()).data == "hello"
    a.sse.publish("t", "next")
    assert (await author.next()).data == "next"  # not its own "hello"
    watcher.response.close()
    author.response.close()


async def test_cut_on_one_instance_resume_on_the_other(
    redis_server: RedisServer, aiohttp_client: Any
) -> None:
    a, b = await two_instances(redis_server.url, aiohttp_client)
    first = await a.stream("first")
    for i in range(1, 401):
        a.sse.publish("t", str(i))
    got = [await first.next() for _ in range(300)]
    connection = first.response.connection
    assert connection is not None and connection.transport is not None
    connection.transport.abort()
    first.response.close()
    await wait_until(lambda: not a.sse.peers)
    for i in range(401, 701):
        a.sse.publish("t", str(i))

    async def keep_publishing() -> None:
        for i in range(701, 1001):
            a.sse.publish("t", str(i))
            await asyncio.sleep(0)

    publisher = asyncio.get_running_loop().create_task(keep_publishing())
    second = await b.stream("second", got[-1].id)
    rest: list[ServerSentEvent] = []
    while not rest or rest[-1].data != "1000":
        rest.append(await second.next(timeout=10))
    await publisher
    assert [int(e.data) for e in got + rest] == list(range(1, 1001))
    assert len({e.id for e in got + rest}) == 1000
    await wait_until(lambda: b.peers["second"].recovered is not None)
    assert b.peers["second"].recovered is True
    b.sse.publish("t", "live")
    assert (await second.next()).data == "live"
    second.response.close()


async def test_evicted_in_redis_is_not_recovered(
    redis_server: RedisServer, aiohttp_client: Any
) -> None:
    a, b = await two_instances(redis_server.url, aiohttp_client, history=5)
    first = await a.stream("first")
    a.sse.publish("t", "1")
    last = (await first.next()).id
    first.response.close()
    await wait_until(lambda: not a.sse.peers)
    for i in range(2, 12):
        a.sse.publish("t", str(i))
    watcher = await b.stream("watcher")  # b has delivered them all once this sees "end"
    a.sse.publish("t", "end")
    while (await watcher.next()).data != "end":
        pass
    second = await b.stream("second", last)
    assert [e.data for e in await second.take(5)] == ["8", "9", "10", "11", "end"]
    await wait_until(lambda: b.peers["second"].recovered is not None)
    assert b.peers["second"].recovered is False
    watcher.response.close()
    second.response.close()


async def test_redis_restarted_without_persistence_is_not_recovered(
    own_redis_server: RedisServer, aiohttp_client: Any
) -> None:
    a, b = await two_instances(own_redis_server.url, aiohttp_client)
    first = await a.stream("first")
    a.sse.publish("t", "before")
    last = (await first.next()).id
    first.response.close()
    await wait_until(lambda: not a.sse.peers)
    own_redis_server.kill()
    own_redis_server.start()
    watcher = await b.stream("watcher")

    for _ in range(60):  # until the cluster relays again (with a new epoch)
        a.sse.publish("t", "after")
        try:
            if (await watcher.next(timeout=0.5)).data == "after":
                break
        except TimeoutError:
            pass
        except SSEClientError:  # B missed A's publishes meanwhile: it ended the stream
            watcher = await b.stream("watcher")
    else:
        pytest.fail("the cluster did not relay again after Redis restarted")
    second = await b.stream("second", last)
    await wait_until(lambda: b.peers["second"].recovered is not None, timeout=10)
    assert b.peers["second"].recovered is False
    event = await second.next()
    assert event.data == "after" and event.id.split("-")[0] != last.split("-")[0]
    watcher.response.close()
    second.response.close()


async def test_publishes_beyond_max_pending_still_reach_local_subscribers(
    redis_server: RedisServer, aiohttp_client: Any
) -> None:
    """``max_pending`` limits relaying, never local delivery: a publish refused
    for relaying reaches this instance's subscribers without an id, as during
    an outage (and is reported)."""
    channel = f"pending-{uuid.uuid4()}"
    one = await Instance(redis_server.url, channel, 100, max_pending=1000).serve(aiohttp_client)
    reader = await one.stream("x")
    for digit in "012":  # one loop iteration: the third finds 1200 bytes pending
        one.sse.publish("t", digit * 600)
    got = {e.data[0]: e for e in await reader.take(3)}
    assert sorted(got) == ["0", "1", "2"]
    blocks = _blocks(reader.raw)
    assert b"id:" in blocks["0"] and b"id:" in blocks["1"]
    assert b"id:" not in blocks["2"]  # not replayable: it never reached Redis
    await wait_until(lambda: any("not relayed" in str(e) for _, e in one.errors))
    reader.response.close()


async def _resume_while_unreachable(one: Instance, last: str) -> EventReader:
    """Resume on ``one`` while its Redis is unreachable: the stream must be
    served fresh — recovered False, the error hook told with the peer — and
    go on live."""
    resumed = await one.stream("resumed", last)
    await wait_until(lambda: one.peers["resumed"].recovered is not None, timeout=30)
    assert one.peers["resumed"].recovered is False
    (peer, err), *_ = [(p, e) for p, e in one.errors if p is not None]
    assert peer is one.peers["resumed"] and isinstance(err, SSEError)
    assert "replay failed" in str(err)
    one.peers["resumed"].send("direct")
    assert (await resumed.next()).data == "direct"
    return resumed


async def test_a_replay_while_redis_is_down_serves_the_stream_fresh(
    own_redis_server: RedisServer, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    one = await Instance(own_redis_server.url, f"down-{uuid.uuid4()}", 100).serve(aiohttp_client)
    first = await one.stream("first")
    one.sse.publish("t", "before")
    last = (await first.next()).id
    first.response.close()
    own_redis_server.kill()
    await wait_until(lambda: not one.sync._up, timeout=10)
    resumed = await _resume_while_unreachable(one, last)
    one.sse.publish("t", "live")  # local peers are served during an outage, without ids
    assert (await resumed.next()).data == "live"
    assert not [r for r in caplog.records if r.name.startswith("aiohttp.")]  # no handler error
    resumed.response.close()


async def test_a_replay_while_redis_hangs_gives_up_after_fetch_timeout(
    own_redis_server: RedisServer, aiohttp_client: Any
) -> None:
    """SIGSTOP, unnoticed by the heartbeat yet: the fetch has its own bound."""
    one = await Instance(
        own_redis_server.url, f"hung-{uuid.uuid4()}", 100, heartbeat=60.0, fetch_timeout=0.5
    ).serve(aiohttp_client)
    first = await one.stream("first")
    one.sse.publish("t", "before")
    last = (await first.next()).id
    first.response.close()
    assert own_redis_server.proc is not None
    own_redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        resumed = await _resume_while_unreachable(one, last)
        assert one.sync._up  # not noticed: the fetch's own timeout ended the wait
        assert "fetch_timeout" in str(one.errors[-1][1])
    finally:
        own_redis_server.proc.send_signal(signal.SIGCONT)
    resumed.response.close()


async def test_a_replay_waits_for_this_instance_without_polling_redis(
    own_redis_server: RedisServer, aiohttp_client: Any
) -> None:
    """A client resumes with an id this instance never delivered (a pub/sub
    message it missed): the replay waits for the live position without
    asking Redis again, and gives up after ``fetch_timeout`` (recovered False)."""
    channel = f"stale-{uuid.uuid4()}"
    one = await Instance(own_redis_server.url, channel, 100, fetch_timeout=1.0).serve(
        aiohttp_client
    )
    first = await one.stream("first")
    one.sse.publish("t", "seen")
    epoch = (await first.next()).id.split("-")[0]
    first.response.close()
    raw = redis_asyncio.Redis.from_url(own_redis_server.url)
    try:
        # a publish as the Lua script makes it, but whose message never came
        await raw.incr(f"{channel}:seq")
        await raw.xadd(f"{channel}:history:t", {"r": '[null,null,"missed",null]'}, id="0-2")
        await raw.config_resetstat()
        resumed = await one.stream("resumed", f"{epoch}-2")
        await wait_until(lambda: one.peers["resumed"].recovered is not None, timeout=30)
        assert one.peers["resumed"].recovered is False
        assert "fetch_timeout" in str(one.errors[-1][1])
        stats = await raw.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] <= 2, stats["cmdstat_evalsha"]
    finally:
        await raw.aclose()
    one.sse.publish("t", "live")
    assert (await resumed.next()).data == "live"
    resumed.response.close()


async def test_a_replay_behind_the_client_goes_on_once_this_instance_catches_up(
    redis_server: RedisServer, aiohttp_client: Any
) -> None:
    """The client comes from an instance ahead of this one: the replay waits
    for this instance's live position, then goes on (recovered True)."""
    channel = f"behind-{uuid.uuid4()}"
    one = await Instance(redis_server.url, channel, 100).serve(aiohttp_client)
    first = await one.stream("first")
    one.sse.publish("t", "seen")
    epoch = (await first.next()).id.split("-")[0]
    first.response.close()
    raw = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        await raw.incr(f"{channel}:seq")  # seq 2: published, its message not here yet
        await raw.xadd(f"{channel}:history:t", {"r": '[null,null,"late",null]'}, id="0-2")
        resumed = await one.stream("resumed", f"{epoch}-2")
        one.sse.publish("t", "next")  # seq 3: brings this instance past the client
        assert (await resumed.next()).data == "next"
        await wait_until(lambda: one.peers["resumed"].recovered is not None, timeout=30)
        assert one.peers["resumed"].recovered is True
    finally:
        await raw.aclose()
    resumed.response.close()


class Noise:
    """``n`` more instances of the cluster, each publishing about every
    millisecond to a topic of its own (no client follows them)."""

    def __init__(self, url: str, channel: str, n: int) -> None:
        self.syncs = [RedisSync(url, channel=channel) for _ in range(n)]
        self.published = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Noise:
        for i, sync in enumerate(self.syncs):
            await sync.start(SyncLink(f"noise{i}", lambda m: None, self._failed, history=1000))
            self._tasks.append(asyncio.get_running_loop().create_task(self._run(sync, i)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for sync in self.syncs:
            await sync.close()

    async def flowing(self) -> None:
        """Returns once the noise has gone on (a bounded wait)."""
        before = self.published
        await wait_until(lambda: self.published > before + 100, timeout=30)

    def _failed(self, exc: Exception) -> None:
        raise AssertionError(f"noise instance failed: {exc}")

    async def _run(self, sync: RedisSync, i: int) -> None:
        while not self._stop.is_set():
            sync.publish(Relayed(f"noise{i}", "x" * 32))
            self.published += 1
            await asyncio.sleep(0.001)


async def test_a_replay_catches_up_under_unrelated_traffic(
    redis_server: RedisServer, aiohttp_client: Any
) -> None:
    """Redis 5 ms away, three other instances publishing about every
    millisecond to topics the client does not follow: a client resuming
    while its own topic is quiet catches up (and joins it live), and gets
    every event once."""
    channel = f"noise-{uuid.uuid4()}"
    async with LatencyProxy(redis_server.socket, 0.005) as proxy:
        one = await Instance(proxy.url, channel, 1000).serve(aiohttp_client)
        first = await one.stream("first")
        for i in range(5):
            one.sse.publish("t", str(i))
        seen = await first.take(5)
        first.response.close()
        await wait_until(lambda: one.peers["first"].ready_state == 3)
        async with Noise(redis_server.url, channel, 3) as noise:
            for i in range(5, 10):
                one.sse.publish("t", str(i))  # missed
            await noise.flowing()
            resumed = await one.stream("resumed", seen[-1].id)
            replayed = await resumed.take(5, timeout=30)
            await wait_until(lambda: one.peers["resumed"].recovered is not None, timeout=30)
            await noise.flowing()  # it caught up while the traffic went on
            assert one.peers["resumed"].recovered is True
            one.sse.publish("t", "live")
            assert (await resumed.next(timeout=30)).data == "live"
    assert [e.data for e in seen + replayed] == [str(i) for i in range(10)]
    assert len({e.id for e in seen + replayed}) == 10
    resumed.response.close()


async def test_many_replays_at_once_share_their_frames(redis_server: RedisServer) -> None:
    """150 clients resuming at once — more than redis-py's default pool of 100
    connections: every fetch succeeds, and the replays share one encoded
    frame per event instead of a copy each."""
    delivered: list[Relayed] = []
    reported: list[Exception] = []
    sync = RedisSync(redis_server.url, channel=f"herd-{uuid.uuid4()}")
    await sync.start(SyncLink("one", delivered.append, reported.append, history=100))
    try:
        for i in range(100):
            sync.publish(Relayed("t", f"event {i}"))
        await wait_until(lambda: len(delivered) == 100, timeout=10)
        epoch = delivered[0].id.split("-")[0] if delivered[0].id else ""
        replays = await asyncio.gather(
            *(sync.fetch(("t",), (epoch, 1), None, None) for _ in range(150))
        )
        assert all(len(replay.frames) == 99 for replay in replays)
        assert len({id(frame) for replay in replays for frame in replay.frames}) == 99
        assert reported == []
    finally:
        await sync.close()


def _blocks(raw: bytes | bytearray) -> dict[str, bytes]:
    """The raw SSE blocks of a stream, by the first character of their data."""
    out: dict[str, bytes] = {}
    for block in bytes(raw).split(b"\n\n"):
        start = block.find(b"data: ")
        if start >= 0:
            out[chr(block[start + 6])] = block
    return out


# -- across processes ------------------------------------------------------------------


class HistoryNode:
    """This module run as a cluster instance (see ``node_main``), by its PID."""

    def __init__(self, url: str, channel: str, history: int) -> None:
        config = json.dumps({"url": url, "channel": channel, "history": history})
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_history_redis", config],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            line = self.proc.stdout.readline() if sel.select(30) else b""
        if not line.startswith(b"port="):
            self.stop()
            raise RuntimeError(f"node did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line[5:])}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()

    async def publish(self, session: aiohttp.ClientSession, start: int, n: int, **q: str) -> None:
        params = {"start": str(start), "n": str(n), **q}
        async with session.get(self.url + "/publish", params=params) as response:
            assert response.status == 200

    async def peer(self, session: aiohttp.ClientSession, name: str) -> dict[str, Any]:
        """``{"open": bool, "recovered": bool | None}`` of the peer called ``name``."""
        async with session.get(self.url + "/recovered", params={"name": name}) as response:
            result: dict[str, Any] = await response.json()
            return result


async def test_across_processes_resume_on_the_other_instance(redis_server: RedisServer) -> None:
    channel = f"history-{uuid.uuid4()}"
    a = HistoryNode(redis_server.url, channel, 2000)
    try:
        b = HistoryNode(redis_server.url, channel, 2000)
    except BaseException:
        a.stop()
        raise
    try:
        async with aiohttp.ClientSession() as session:
            first = EventReader(await session.get(a.url + "/sse?name=first"))
            await wait_until(lambda: _open(a.peer(session, "first")), timeout=10, what="first open")
            await a.publish(session, 1, 400)
            got = [await first.next() for _ in range(300)]
            connection = first.response.connection
            assert connection is not None and connection.transport is not None
            connection.transport.abort()
            first.response.close()
            await a.publish(session, 401, 300)
            publisher = asyncio.ensure_future(a.publish(session, 701, 300, spread="1"))
            second = EventReader(
                await session.get(b.url + "/sse?name=second", headers={"Last-Event-ID": got[-1].id})
            )
            rest: list[ServerSentEvent] = []
            while not rest or rest[-1].data != "1000":
                rest.append(await second.next(timeout=10))
            await publisher
            assert [int(e.data) for e in got + rest] == list(range(1, 1001))
            assert len({e.id for e in got + rest}) == 1000
            state = await wait_until(
                lambda: _replayed(b.peer(session, "second")), timeout=10, what="the replay"
            )
            assert state["recovered"] is True
            second.response.close()
    finally:
        a.stop()
        b.stop()


async def _open(state: Any) -> bool:
    return bool((await state)["open"])


async def _replayed(state: Any) -> dict[str, Any] | None:
    result: dict[str, Any] = await state
    return result if result["recovered"] is not None else None


def node_main(config: dict[str, Any]) -> None:
    """One cluster instance: ``GET /sse?name=`` (subscribed to ``t``),
    ``GET /publish?start=&n=&spread=`` (publishes ``str(i)``),
    ``GET /recovered?name=`` (``{"recovered": ...}``, ``false``-y ``open``
    until that peer is open)."""
    peers: dict[str, Peer] = {}

    def open_(peer: Peer) -> None:
        peers[peer.request.query.get("name", "")] = peer
        peer.subscribe("t")

    sse = sse_adapter(
        define_hooks(open=open_),
        history=config["history"],
        sync=RedisSync(config["url"], channel=config["channel"], **FAST_OPTIONS),
    )

    async def publish(request: web.Request) -> web.Response:
        start, n = int(request.query["start"]), int(request.query["n"])
        for i in range(start, start + n):
            sse.publish("t", str(i))
            if request.query.get("spread"):
                await asyncio.sleep(0)
        return web.Response(text="ok")

    async def recovered(request: web.Request) -> web.Response:
        peer = peers.get(request.query["name"])
        if peer is None or peer.ready_state != 1:
            return web.json_response({"recovered": None, "open": False})
        return web.json_response({"recovered": peer.recovered, "open": True})

    async def main() -> None:
        app = web.Application()
        sse.setup(app, "/sse")
        app.router.add_get("/publish", publish)
        app.router.add_get("/recovered", recovered)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"port={port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


if __name__ == "__main__":
    node_main(json.loads(sys.argv[1]))


async def test_missed_before_redis_lost_its_data_still_ends_the_streams(
    own_redis_server: RedisServer, aiohttp_client: Any
) -> None:
    """A is cut off; B publishes (Redis takes it, A cannot get it); then Redis
    restarts without persistence. A cannot prove it missed nothing: once back,
    it ends its streams (1012) so that its clients resume (recovered False)."""
    channel = f"lost-{uuid.uuid4()}"
    async with LatencyProxy(own_redis_server.socket, 0.0) as proxy:
        a = await Instance(proxy.url, channel, 10).serve(aiohttp_client)
        b = await Instance(own_redis_server.url, channel, 10).serve(aiohttp_client)
        reader = await a.stream("watcher")
        await b.sse.publish("t", "before")
        assert (await reader.next()).data == "before"
        proxy.cut()
        await wait_until(lambda: not a.sync._up, timeout=10)
        await b.sse.publish("t", "missed")  # in Redis; A is cut off
        own_redis_server.kill()
        own_redis_server.start()  # no persistence: the history is gone
        proxy.restore()
        with pytest.raises(SSEClientError):  # the stream ends once A is back
            await reader.next(timeout=30)
        resumed = await a.stream("resumed", "x")  # any id of the lost history
        assert await a.peers["resumed"].wait_recovered() is False
        resumed.response.close()
