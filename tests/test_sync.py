"""The backplane seam, exercised with the in-process ``MemorySync``."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from aiohttp_crossws_sse import Peer, SSEAdapter, SSEError, define_hooks, sse_adapter
from aiohttp_crossws_sse.sync import MemoryHub, MemorySync, Relayed, Sync, SyncLink
from tests.conftest import EventReader


def instance(hub: MemoryHub, errors: list[Any] | None = None) -> SSEAdapter:
    def open_(peer: Peer) -> None:
        peer.subscribe("chat")
        peer.send("ready")

    def error(peer: Peer | None, err: SSEError) -> None:
        if errors is not None:
            errors.append((peer, err))

    return sse_adapter(define_hooks(open=open_, error=error), sync=MemorySync(hub))


def app_for(sse: SSEAdapter) -> web.Application:
    app = web.Application()
    sse.setup(app, "/sse")
    return app


async def two_instances(
    aiohttp_client: Any,
) -> tuple[SSEAdapter, SSEAdapter, EventReader, EventReader]:
    """Two adapters on one hub, each served by its own app, with a stream open on each."""
    hub = MemoryHub()
    a, b = instance(hub), instance(hub)
    client_a = await aiohttp_client(app_for(a))
    client_b = await aiohttp_client(app_for(b))
    on_a = EventReader(await client_a.get("/sse"))
    on_b = EventReader(await client_b.get("/sse"))
    return a, b, on_a, on_b


async def test_publishes_reach_other_instances_once_in_order(aiohttp_client: Any) -> None:
    a, b, on_a, on_b = await two_instances(aiohttp_client)
    assert (await on_a.next()).data == "ready"
    assert (await on_b.next()).data == "ready"
    for i in range(100):
        a.publish("chat", f"a{i}")
    b.publish("chat", "from b", event="note")
    from_a = [f"a{i}" for i in range(100)]
    # each instance's own publish is local and immediate; relayed ones follow
    # in the order their instance made them
    assert [e.data for e in await on_a.take(101)] == [*from_a, "from b"]
    assert [e.data for e in await on_b.take(101)] == ["from b", *from_a]
    # nothing arrives twice: a marker is next on both
    a.publish("chat", "marker")
    assert (await on_a.next()).data == "marker"
    assert (await on_b.next()).data == "marker"
    assert on_b.events[1].event == "note"  # after "ready"


async def test_peer_publish_is_relayed_without_echo(aiohttp_client: Any) -> None:
    a, b, on_a, on_b = await two_instances(aiohttp_client)
    await on_a.next()
    await on_b.next()
    (peer_a,) = a.peers.values()
    peer_a.publish("chat", "hello from a peer")
    assert (await on_b.next()).data == "hello from a peer"
    b.publish("chat", "marker")
    assert (await on_a.next()).data == "marker"  # the sender never got its own


async def test_namespace_travels_with_the_publish(aiohttp_client: Any) -> None:
    hub = MemoryHub()
    a, b = instance(hub), instance(hub)
    client_a = await aiohttp_client(app_for(a))
    client_b = await aiohttp_client(app_for(b))
    on_b = EventReader(await client_b.get("/sse"))
    await on_b.next()
    a.publish("chat", "elsewhere", namespace="/other")
    a.publish("chat", "here", namespace="/sse")
    assert (await on_b.next()).data == "here"
    await client_a.close()


class BrokenSync(Sync):
    async def start(self, link: SyncLink) -> None:
        return None

    def publish(self, message: Relayed) -> None:
        raise ConnectionError("backplane down")

    async def close(self) -> None:
        return None


async def test_failing_backplane_is_reported_never_raised(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[Peer | None, SSEError]] = []
    sse = sse_adapter(
        define_hooks(
            open=lambda p: (p.subscribe("chat"), p.send("ready")),
            error=lambda p, e: errors.append((p, e)),
        ),
        sync=BrokenSync(),
    )
    client = await aiohttp_client(app_for(sse))
    reader = EventReader(await client.get("/sse"))
    await reader.next()
    sse.publish("chat", "local still works")
    assert (await reader.next()).data == "local still works"
    (peer,) = sse.peers.values()
    peer.publish("chat", "from the peer")
    await client.get("/nothing")  # let the error hooks run
    assert [p for p, _ in errors] == [None, peer]
    assert all(isinstance(e.__cause__, ConnectionError) for _, e in errors)
    assert "backplane publish failed" in caplog.text


def test_memory_sync_validates_channel() -> None:
    with pytest.raises(ValueError, match="channel"):
        MemorySync(channel="")
