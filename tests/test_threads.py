"""Threads at the public boundary: a call from a thread other than the
loop's is refused before it changes anything; ``stats()`` (and so a
Prometheus scrape in its own thread) reads a snapshot and never mutates."""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import Peer, SSEAdapter, define_hooks, sse_adapter
from tests.conftest import EventReader, wait_until

# Every public member of Peer and of SSEAdapter, with the arguments of a
# call. A member added later must be listed here (the first test says so):
# the boundary guards it on its own, and this proves it does.
PEER_CALLS: dict[str, tuple[Any, ...] | None] = {  # None: a property
    "adapter": None,
    "context": None,
    "namespace": None,
    "remote_address": None,
    "topics": None,
    "peers": None,
    "ready_state": None,
    "last_event_id": None,
    "recovered": None,
    "buffered_amount": None,
    "dropped": None,
    "send": ("from a thread",),
    "subscribe": ("elsewhere",),
    "unsubscribe": ("t",),
    "publish": ("t", "from a thread"),
    "close": (),
    "terminate": (),
    "wait_closed": (),
    "wait_recovered": (),
    "wait_for_drain": (),
}
ADAPTER_CALLS: dict[str, tuple[Any, ...] | None] = {
    "peers": None,
    "publish": ("t", "from a thread"),
    "close": (),
}
# Plain attributes (set once, never changed) and the exempt members.
PEER_PLAIN = {"id", "request"}
EVENTS = 200
ADAPTER_EXEMPT = {"stats", "handler", "start", "setup", "bidir", "options", "instance_id", "path"}


def public_members(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def in_a_thread(fn: Callable[[], Any]) -> BaseException | None:
    """Run ``fn`` in another thread (the loop waits); what it raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            result = fn()
            if inspect.iscoroutine(result):
                result.close()
                raise AssertionError("a coroutine was made: the call was not refused")
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return raised[0] if raised else None


async def test_every_public_call_from_another_thread_is_refused(aiohttp_client: Any) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))))
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    reader = EventReader(await client.get("/sse"))
    await wait_until(lambda: bool(peers))
    peer = peers[0]
    assert public_members(peer) == set(PEER_CALLS) | PEER_PLAIN, "list new members here"
    assert public_members(sse) == set(ADAPTER_CALLS) | ADAPTER_EXEMPT, "list new members here"
    calls = [(peer, name, args) for name, args in PEER_CALLS.items()]
    calls += [(sse, name, args) for name, args in ADAPTER_CALLS.items()]
    for target, name, args in calls:

        def call(target: Any = target, name: str = name, args: Any = args) -> Any:
            member = getattr(target, name)
            return member if args is None else member(*args)

        raised = in_a_thread(call)
        assert isinstance(raised, RuntimeError), f"{name}: {raised!r}"
        assert "call_soon_threadsafe" in str(raised), f"{name}: {raised}"
        assert name in str(raised)
    # nothing changed: the peer is open, subscribed to "t" only, got nothing
    assert peer.ready_state == 1 and peer.topics == {"t"}
    sse.publish("t", "from the loop")
    assert (await reader.next()).data == "from the loop"
    reader.response.close()


async def test_a_publish_from_another_thread_leaves_the_topic_working(
    aiohttp_client: Any,
) -> None:
    """A thread's publish used to leave a half-open batch behind; later
    publishes from the loop to that topic were never delivered."""
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))))
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    readers = [EventReader(await client.get("/sse")) for _ in range(3)]
    await wait_until(lambda: len(peers) == 3)
    raised = in_a_thread(lambda: sse.publish("t", "from a thread"))
    assert isinstance(raised, RuntimeError)
    raised = in_a_thread(lambda: peers[0].publish("t", "from a thread"))
    assert isinstance(raised, RuntimeError)
    for i in range(3):
        sse.publish("t", f"loop {i}")
        await asyncio.sleep(0)
    for reader in readers:
        assert [e.data for e in await reader.take(3)] == ["loop 0", "loop 1", "loop 2"]
        reader.response.close()
    assert sse.stats()["frames_encoded"] == 3


async def test_stats_from_another_thread_is_a_snapshot_that_changes_nothing(
    aiohttp_client: Any,
) -> None:
    """While a publish's batch is still unbound, ``stats()`` from a scrape
    thread leaves it unbound (binding it from there raced the loop), and
    every client still gets the event."""
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))))
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    readers = [EventReader(await client.get("/sse")) for _ in range(5)]
    await wait_until(lambda: len(peers) == 5)
    scheduler = sse._registry.scheduler
    sse.publish("t", "one")
    pending = scheduler.lazy
    assert pending is not None  # the unbound first publish of this iteration
    seen: list[dict[str, int]] = []
    assert in_a_thread(lambda: seen.append(sse.stats())) is None
    assert scheduler.lazy is pending, "stats() from a thread bound the batch"
    assert seen[0]["peers"] == 5
    for reader in readers:
        assert (await reader.next()).data == "one"
        reader.response.close()


async def test_a_prometheus_scrape_thread_never_disturbs_delivery(aiohttp_client: Any) -> None:
    """``prometheus_client.start_http_server`` scrapes in a thread: a thread
    scraping in a loop while 300 subscribers get 30 publishes — each gets
    each event exactly once, in order, and every scrape succeeds."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from aiohttp_crossws_sse import prometheus as prom

    registry = prometheus_client.CollectorRegistry()
    sse = sse_adapter(define_hooks(open=lambda p: p.subscribe("t")))
    prom.register(sse, name="/sse", registry=registry)
    app = web.Application()
    sse.setup(app, "/sse")
    client = await aiohttp_client(app)
    n = 300
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    responses = [await http.get(client.make_url("/sse")) for _ in range(n)]
    await wait_until(lambda: len(sse.peers) == n)
    stop = threading.Event()
    scrapes: list[int] = []
    failures: list[BaseException] = []

    def scrape() -> None:
        while not stop.is_set():
            try:
                prometheus_client.generate_latest(registry)
                scrapes.append(1)
            except BaseException as exc:
                failures.append(exc)

    thread = threading.Thread(target=scrape)
    # Switch threads as often as the interpreter can: a scrape that mutated
    # the write path would then race the loop within a few runs.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread.start()
    try:
        for i in range(EVENTS):
            sse.publish("t", f"e{i}")
            await asyncio.sleep(0)
        expected = b"".join(f"data: e{i}\n\n".encode() for i in range(EVENTS))

        async def body(resp: aiohttp.ClientResponse) -> bytes:
            got = b""
            while got.count(b"data: ") < EVENTS:
                got += await resp.content.readany()
            return got

        bodies = await asyncio.wait_for(asyncio.gather(*(body(r) for r in responses)), 60)
    finally:
        stop.set()
        thread.join(10)
        sys.setswitchinterval(interval)
    for got in bodies:
        events = b"".join(part + b"\n\n" for part in got.split(b"\n\n") if part.startswith(b"data"))
        assert events == expected
    assert not failures, failures[:3]
    assert scrapes
    for resp in responses:
        resp.close()
    await http.close()
    prom.unregister(sse, registry=registry)


def test_the_adapter_and_peer_classes_are_guarded() -> None:
    """The guard wraps the classes themselves: new members are covered."""
    assert getattr(SSEAdapter.publish, "__wrapped__", None) is not None
    assert getattr(Peer.send, "__wrapped__", None) is not None
    assert getattr(SSEAdapter.stats, "__wrapped__", None) is None  # the thread-safe one
