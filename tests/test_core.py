"""Core adapter: upgrade outcomes, hooks, peers, lifecycle, keep-alive — over real HTTP."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web

from aiohttp_crossws_sse import (
    CloseDetails,
    Peer,
    SSEAdapter,
    SSEError,
    define_hooks,
    sse_adapter,
)
from tests.conftest import EventReader, wait_until


def make_app(sse: SSEAdapter, path: str = "/sse") -> web.Application:
    app = web.Application()
    sse.setup(app, path)
    return app


class Recorder:
    """Hooks that record every call (as an object with hook attributes)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closed: dict[str, list[CloseDetails]] = {}
        self.errors: list[tuple[Peer | None, SSEError]] = []

    def open(self, peer: Peer) -> None:
        self.calls.append(("open", peer.id))
        peer.send(f"welcome {peer.id}")

    def close(self, peer: Peer, details: CloseDetails) -> None:
        self.calls.append(("close", peer.id))
        self.closed.setdefault(peer.id, []).append(details)

    def error(self, peer: Peer | None, err: SSEError) -> None:
        self.errors.append((peer, err))


# -- the stream ------------------------------------------------------------------


async def test_stream_headers_and_first_event(aiohttp_client: Any) -> None:
    rec = Recorder()
    sse = sse_adapter(rec)
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "x-crossws-id" not in resp.headers
    event = await EventReader(resp).next()
    (peer_id,) = sse.peers
    assert event.data == f"welcome {peer_id}"
    assert event.event == "message"
    resp.close()


async def test_upgrade_accept_with_header_overrides_and_context(aiohttp_client: Any) -> None:
    seen: dict[str, Any] = {}

    def upgrade(request: web.Request) -> dict[str, Any]:
        ctx = {"user": "alice"}
        seen["ctx"] = ctx
        return {
            "headers": {"x-powered-by": "cross-ws", "cache-control": "no-store"},
            "context": ctx,
        }

    def open_(peer: Peer) -> None:
        seen["peer_ctx"] = peer.context
        peer.send(peer.context["user"])

    sse = sse_adapter(define_hooks(upgrade=upgrade, open=open_))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert resp.status == 200
    assert resp.headers["x-powered-by"] == "cross-ws"
    assert resp.headers.getall("Cache-Control") == ["no-store"]  # one header, hook wins
    assert (await EventReader(resp).next()).data == "alice"
    assert seen["peer_ctx"] is seen["ctx"]
    resp.close()


async def test_upgrade_reject_by_returning_response(aiohttp_client: Any) -> None:
    rec = Recorder()

    def upgrade(request: web.Request) -> web.StreamResponse:
        return web.Response(status=403, text="go away")

    sse = sse_adapter(define_hooks(upgrade=upgrade, open=rec.open))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert resp.status == 403
    assert await resp.text() == "go away"
    assert rec.calls == []
    assert len(sse.peers) == 0


async def test_upgrade_reject_by_raising_http_exception(aiohttp_client: Any) -> None:
    async def upgrade(request: web.Request) -> None:
        if request.query.get("token") != "secret":
            raise web.HTTPUnauthorized(text="bad token")

    sse = sse_adapter(define_hooks(upgrade=upgrade))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert resp.status == 401
    assert await resp.text() == "bad token"
    ok = await client.get("/sse?token=secret")
    assert ok.status == 200
    ok.close()


async def test_upgrade_reject_by_exception_with_response(aiohttp_client: Any) -> None:
    class Denied(Exception):
        def __init__(self) -> None:
            super().__init__("denied")
            self.response = web.Response(status=429, text="slow down")

    def upgrade(request: web.Request) -> None:
        raise Denied()

    rec = Recorder()
    sse = sse_adapter(define_hooks(upgrade=upgrade, error=rec.error))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert resp.status == 429
    assert await resp.text() == "slow down"
    assert rec.errors == []


async def test_upgrade_failure_is_500_error_hook_and_log(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    boom = RuntimeError("boom")

    def upgrade(request: web.Request) -> None:
        raise boom

    rec = Recorder()
    sse = sse_adapter(define_hooks(upgrade=upgrade, error=rec.error))
    client = await aiohttp_client(make_app(sse))
    with caplog.at_level(logging.ERROR, logger="aiohttp_crossws_sse"):
        resp = await client.get("/sse")
    assert resp.status == 500
    assert len(rec.errors) == 1
    peer, err = rec.errors[0]
    assert peer is None
    assert isinstance(err, SSEError)
    assert err.__cause__ is boom
    assert any(
        r.name == "aiohttp_crossws_sse" and r.levelno == logging.ERROR for r in caplog.records
    )


async def test_upgrade_bad_return_value_is_500(aiohttp_client: Any) -> None:
    rec = Recorder()
    sse = sse_adapter(define_hooks(upgrade=lambda request: 42, error=rec.error))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert resp.status == 500
    assert isinstance(rec.errors[0][1].__cause__, TypeError)


async def test_namespace_default_is_path_without_query(aiohttp_client: Any) -> None:
    namespaces: list[str] = []
    sse = sse_adapter(define_hooks(open=lambda peer: namespaces.append(peer.namespace)))
    client = await aiohttp_client(make_app(sse, "/rooms/{room}"))
    resp = await client.get("/rooms/blue?x=1")
    await wait_until(lambda: bool(namespaces))
    assert namespaces == ["/rooms/blue"]
    resp.close()


async def test_namespace_from_upgrade_hook_and_option(aiohttp_client: Any) -> None:
    names: list[str] = []

    def upgrade(request: web.Request) -> dict[str, Any] | None:
        if "room" in request.query:
            return {"namespace": request.query["room"]}
        return None

    sse = sse_adapter(
        define_hooks(upgrade=upgrade, open=lambda p: names.append(p.namespace)),
        namespace=lambda request: "from-option",
    )
    client = await aiohttp_client(make_app(sse))
    a = await client.get("/sse?room=hook")
    b = await client.get("/sse")
    await wait_until(lambda: len(names) == 2)
    assert sorted(names) == ["from-option", "hook"]
    a.close()
    b.close()


# -- peer members ---------------------------------------------------------------


async def test_peer_members_inside_open(aiohttp_client: Any) -> None:
    seen: dict[str, Any] = {}

    def open_(peer: Peer) -> None:
        seen.update(
            ready_state=peer.ready_state,
            in_peers=peer.peers.get(peer.id) is peer,
            str=str(peer),
            remote=peer.remote_address,
            last_event_id=peer.last_event_id,
            topics=peer.topics,
            request_path=peer.request.path,
            buffered=peer.buffered_amount,
        )
        peer.send("ok")

    sse = sse_adapter(define_hooks(open=open_))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse", headers={"Last-Event-ID": "41"})
    await EventReader(resp).next()
    (peer,) = sse.peers.values()
    assert seen["ready_state"] == 1
    assert seen["in_peers"] is True
    assert seen["str"] == peer.id
    assert len(peer.id) == 36
    assert seen["remote"] == "127.0.0.1"
    assert seen["last_event_id"] == "41"
    assert seen["topics"] == frozenset()
    assert seen["request_path"] == "/sse"
    assert seen["buffered"] >= 0
    resp.close()


async def test_last_event_id_from_query_and_bounds(aiohttp_client: Any) -> None:
    ids: list[str | None] = []
    sse = sse_adapter(define_hooks(open=lambda p: ids.append(p.last_event_id)))
    client = await aiohttp_client(make_app(sse))
    a = await client.get("/sse?lastEventId=7")
    b = await client.get("/sse", headers={"Last-Event-ID": "x" * 4000})
    c = await client.get("/sse")
    await wait_until(lambda: len(ids) == 3)
    assert sorted(ids, key=str) == ["7", None, None]
    for r in (a, b, c):
        r.close()


# -- data on the wire -------------------------------------------------------------


CONVERSIONS: list[tuple[Any, str]] = [
    ("plain", "plain"),
    (b"\x00\x01binary", "data:application/octet-stream;base64,AAFiaW5hcnk="),
    (bytearray(b"ab"), "data:application/octet-stream;base64,YWI="),
    (memoryview(b"ab"), "data:application/octet-stream;base64,YWI="),
    ({"a": [1, "é"]}, '{"a":[1,"é"]}'),
    ([1, 2], "[1,2]"),
    (42, "42"),
    (1.5, "1.5"),
    (True, "True"),
    (None, ""),
]


async def test_every_conversion_row_round_trips(aiohttp_client: Any) -> None:
    def open_(peer: Peer) -> None:
        for value, _ in CONVERSIONS:
            peer.send(value)

    sse = sse_adapter(define_hooks(open=open_))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    events = await EventReader(resp).take(len(CONVERSIONS))
    assert [e.data for e in events] == [text for _, text in CONVERSIONS]
    resp.close()


async def test_multiline_and_cr_data_round_trip(aiohttp_client: Any) -> None:
    payloads = ["a\nb", "a\r\nb\r\nc", "cr\ronly", "\n\nlead", "trail\n", "\r", " spaced "]

    def open_(peer: Peer) -> None:
        for p in payloads:
            peer.send(p)
        peer.send("named", event="update", id="1", retry=2500)

    sse = sse_adapter(define_hooks(open=open_))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    reader = EventReader(resp)
    events = await reader.take(len(payloads) + 1)
    expected = [p.replace("\r\n", "\n").replace("\r", "\n") for p in payloads]
    assert [e.data for e in events[:-1]] == expected
    named = events[-1]
    assert (named.event, named.data, named.id) == ("update", "named", "1")
    assert reader.parser.retry == 2500
    assert b"data: a\ndata: b\n\n" in reader.raw  # never joined
    resp.close()


async def test_send_refuses_bad_fields(aiohttp_client: Any) -> None:
    outcomes: list[str] = []

    def open_(peer: Peer) -> None:
        for kwargs in (
            {"event": "a\nb"},
            {"event": "a\rb"},
            {"event": "a\0b"},
            {"id": "1\n2"},
            {"id": "1\0"},
            {"retry": -1},
        ):
            try:
                peer.send("x", **kwargs)
            except ValueError as exc:
                outcomes.append(f"ValueError:{next(iter(kwargs))}:{exc}")
        for data in (object(), {1, 2}, 1j):
            try:
                peer.send(data)
            except TypeError as exc:
                outcomes.append(f"TypeError:{exc}")
        peer.send("still open")

    sse = sse_adapter(define_hooks(open=open_))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert (await EventReader(resp).next()).data == "still open"
    assert len(outcomes) == 9
    for line in outcomes[:6]:
        field = line.split(":")[1]
        assert line.startswith("ValueError") and field in line.split(":", 2)[2]
    assert "object" in outcomes[6] and "set" in outcomes[7] and "complex" in outcomes[8]
    resp.close()


# -- hooks: sync, async, shapes, resolver ---------------------------------------------


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_sync_and_async_hooks(aiohttp_client: Any, style: str) -> None:
    calls: list[str] = []

    if style == "sync":

        def upgrade(request: web.Request) -> dict[str, Any]:
            calls.append("upgrade")
            return {"context": {"n": 1}}

        def open_(peer: Peer) -> None:
            calls.append("open")
            peer.send("hi")

        def close(peer: Peer, details: CloseDetails) -> None:
            calls.append("close")

    else:

        async def upgrade(request: web.Request) -> dict[str, Any]:
            await asyncio.sleep(0)
            calls.append("upgrade")
            return {"context": {"n": 1}}

        async def open_(peer: Peer) -> None:
            await asyncio.sleep(0)
            calls.append("open")
            peer.send("hi")

        async def close(peer: Peer, details: CloseDetails) -> None:
            await asyncio.sleep(0)
            calls.append("close")

    sse = sse_adapter(define_hooks(upgrade=upgrade, open=open_, close=close))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert (await EventReader(resp).next()).data == "hi"
    resp.close()
    await wait_until(lambda: "close" in calls)
    assert calls == ["upgrade", "open", "close"]


async def test_hooks_as_dict_and_object(aiohttp_client: Any) -> None:
    sse_dict = sse_adapter({"open": lambda p: p.send("dict")})

    class Hooks:
        def open(self, peer: Peer) -> None:
            peer.send("object")

    sse_obj = sse_adapter(Hooks())
    app = web.Application()
    sse_dict.setup(app, "/a")
    sse_obj.setup(app, "/b")
    client = await aiohttp_client(app)
    a = await client.get("/a")
    b = await client.get("/b")
    assert (await EventReader(a).next()).data == "dict"
    assert (await EventReader(b).next()).data == "object"
    a.close()
    b.close()
    with pytest.raises(TypeError, match="opn"):
        sse_adapter({"opn": print})


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_resolver_once_per_connection_global_first(aiohttp_client: Any, style: str) -> None:
    order: list[str] = []
    resolved_for: list[str] = []

    def global_upgrade(request: web.Request) -> dict[str, Any]:
        order.append("global.upgrade")
        return {"headers": {"x-a": "global", "x-b": "global"}, "context": {"a": 1, "b": 1}}

    def global_open(peer: Peer) -> None:
        order.append("global.open")

    def local_upgrade(request: web.Request) -> dict[str, Any]:
        order.append("local.upgrade")
        return {"headers": {"x-b": "local"}, "context": {"b": 2}, "namespace": "room"}

    def local_open(peer: Peer) -> None:
        order.append("local.open")
        peer.send(f"{peer.context} {peer.namespace}")

    local = define_hooks(upgrade=local_upgrade, open=local_open)

    if style == "sync":

        def resolve(request: web.Request) -> Any:
            resolved_for.append(request.path)
            return local

    else:

        async def resolve(request: web.Request) -> Any:
            resolved_for.append(request.path)
            return local

    sse = sse_adapter(define_hooks(upgrade=global_upgrade, open=global_open), resolve=resolve)
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    assert resp.headers["x-a"] == "global"
    assert resp.headers["x-b"] == "local"
    event = await EventReader(resp).next()
    assert event.data == "{'a': 1, 'b': 2} room"
    assert order == ["global.upgrade", "local.upgrade", "global.open", "local.open"]
    assert resolved_for == ["/sse"]
    resp.close()


async def test_resolver_rejection_and_none(aiohttp_client: Any) -> None:
    def resolve(request: web.Request) -> Any:
        if request.query.get("who") == "bad":
            return {"upgrade": lambda r: web.Response(status=403)}
        return None

    sse = sse_adapter(define_hooks(open=lambda p: p.send("global only")), resolve=resolve)
    client = await aiohttp_client(make_app(sse))
    bad = await client.get("/sse?who=bad")
    assert bad.status == 403
    good = await client.get("/sse")
    assert (await EventReader(good).next()).data == "global only"
    good.close()


# -- closing: exactly once, whatever ended it -----------------------------------------


async def test_close_hook_once_on_client_disconnect_cancelling_server(aiohttp_client: Any) -> None:
    rec = Recorder()
    sse = sse_adapter(rec)
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    await EventReader(resp).next()
    (peer_id,) = sse.peers
    resp.close()
    await wait_until(lambda: not sse.peers and peer_id in rec.closed, what="close hook")
    assert rec.closed[peer_id][0].reason == "connection lost"
    await asyncio.sleep(0.05)
    assert len(rec.closed[peer_id]) == 1


async def test_client_disconnect_noticed_under_run_app_defaults(
    run_app_server: Any, session: Any
) -> None:
    rec = Recorder()
    sse = sse_adapter(rec, keepalive=3600)  # no keep-alive write will reveal it
    server = await run_app_server(make_app(sse))
    resp = await session.get(server.url + "/sse")
    await EventReader(resp).next()
    (peer_id,) = sse.peers
    peer = sse.peers[peer_id]
    resp.close()  # idle stream: nothing is being written
    await wait_until(lambda: not sse.peers, timeout=2.0, what="peer to leave sse.peers")
    await asyncio.wait_for(peer.wait_closed(), 2.0)
    assert [d.reason for d in rec.closed[peer_id]] == ["connection lost"]
    assert peer.ready_state == 3


async def test_peer_close_flushes_then_ends_stream(aiohttp_client: Any) -> None:
    rec = Recorder()

    def open_(peer: Peer) -> None:
        for i in range(100):
            peer.send(f"event {i}")
        peer.close(4000, "bye")

    sse = sse_adapter(define_hooks(open=open_, close=rec.close))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    events = await EventReader(resp).rest()
    assert [e.data for e in events] == [f"event {i}" for i in range(100)]
    await wait_until(lambda: bool(rec.closed))
    ((details,),) = rec.closed.values()
    assert (details.code, details.reason) == (4000, "bye")


async def test_peer_terminate_aborts(aiohttp_client: Any) -> None:
    rec = Recorder()
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=lambda p: peers.append(p), close=rec.close))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    await wait_until(lambda: bool(peers))
    peers[0].terminate()
    await asyncio.wait_for(peers[0].wait_closed(), 5)
    assert [d.reason for d in rec.closed[peers[0].id]] == ["terminated"]
    with pytest.raises(Exception):  # noqa: B017 - the body was cut, not ended
        await asyncio.wait_for(resp.content.read(), 5)
    assert not sse.peers


async def test_open_failure_error_hook_then_close_hook(aiohttp_client: Any) -> None:
    order: list[str] = []
    boom = ValueError("open failed")

    def open_(peer: Peer) -> None:
        peer.send("before")
        raise boom

    def error(peer: Peer | None, err: SSEError) -> None:
        assert peer is not None and err.__cause__ is boom
        order.append("error")

    def close(peer: Peer, details: CloseDetails) -> None:
        order.append(f"close:{details.reason}")

    sse = sse_adapter(define_hooks(open=open_, error=error, close=close))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    events = await EventReader(resp).rest()
    assert [e.data for e in events] == ["before"]
    await wait_until(lambda: len(order) == 2)
    assert order == ["error", "close:open hook failed"]


async def test_close_hook_state_and_publish_from_close(aiohttp_client: Any) -> None:
    seen: dict[str, Any] = {}
    by_name: dict[str, Peer] = {}

    def upgrade(request: web.Request) -> dict[str, Any]:
        return {"context": {"name": request.query["name"]}}

    def open_(peer: Peer) -> None:
        by_name[peer.context["name"]] = peer
        peer.subscribe("room")
        peer.send("joined")

    def close(peer: Peer, details: CloseDetails) -> None:
        seen["state"] = peer.ready_state
        seen["in_adapter"] = peer.id in sse.peers
        seen["in_peers"] = peer.id in peer.peers
        peer.publish("room", f"{peer.context['name']} left")

    sse = sse_adapter(define_hooks(upgrade=upgrade, open=open_, close=close))
    client = await aiohttp_client(make_app(sse))
    a = await client.get("/sse?name=a")
    b = await client.get("/sse?name=b")
    ra, rb = EventReader(a), EventReader(b)
    await ra.next()
    await rb.next()
    by_name["a"].close()
    assert await ra.rest() == []
    assert (await rb.next()).data == "a left"
    assert seen == {"state": 3, "in_adapter": False, "in_peers": False}
    assert list(sse.peers) == [by_name["b"].id]
    b.close()


async def test_app_shutdown_closes_every_peer_once(run_app_server: Any, session: Any) -> None:
    rec = Recorder()
    sse = sse_adapter(rec, shutdown_retry=1500)
    server = await run_app_server(make_app(sse))
    responses = [await session.get(server.url + "/sse") for _ in range(5)]
    readers = [EventReader(r) for r in responses]
    for r in readers:
        await r.next()
    await server.close()
    assert not sse.peers
    assert len(rec.closed) == 5
    assert all(len(v) == 1 and v[0].reason == "server shutdown" for v in rec.closed.values())
    assert all(v[0].code == 1001 for v in rec.closed.values())
    for reader in readers:
        await reader.rest()
        assert reader.parser.retry == 1500


async def test_adapter_close_is_idempotent_and_refuses_new_streams(aiohttp_client: Any) -> None:
    rec = Recorder()
    sse = sse_adapter(rec)
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    await EventReader(resp).next()
    await asyncio.gather(sse.close(), sse.close())
    await sse.close()
    assert len(rec.closed) == 1
    late = await client.get("/sse")
    assert late.status == 503
    assert "Retry-After" in late.headers


async def test_send_after_close_is_a_noop(aiohttp_client: Any) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=peers.append))
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    await wait_until(lambda: bool(peers))
    peer = peers[0]
    peer.close()
    await peer.wait_closed()
    peer.send("ignored")
    peer.subscribe("ignored")
    assert peer.topics == frozenset()
    assert await EventReader(resp).rest() == []


# -- keep-alive, adapters side by side, options ---------------------------------------


async def test_keepalive_comment_with_short_interval(aiohttp_client: Any) -> None:
    sse = sse_adapter(keepalive=0.05)
    client = await aiohttp_client(make_app(sse))
    resp = await client.get("/sse")
    reader = EventReader(resp)
    assert await reader.comment() == " ping"
    # The comment line alone, no blank line after it: a blank line after an
    # ``id:`` makes some clients (httpx-sse 0.4.3) dispatch an empty event.
    assert reader.raw == b": ping\n" * reader.raw.count(b": ping\n")
    resp.close()


async def test_two_adapters_do_not_see_each_others_peers(aiohttp_client: Any) -> None:
    one = sse_adapter(define_hooks(open=lambda p: p.subscribe("t")))
    two = sse_adapter(define_hooks(open=lambda p: p.subscribe("t")))
    app = web.Application()
    one.setup(app, "/one")
    two.setup(app, "/two")
    client = await aiohttp_client(app)
    a = await client.get("/one")
    b = await client.get("/two")
    await wait_until(lambda: len(one.peers) == 1 and len(two.peers) == 1)
    assert set(one.peers).isdisjoint(two.peers)
    (p1,) = one.peers.values()
    assert list(p1.peers) == [p1.id]
    one.publish("t", "for one")
    two.publish("t", "for two")
    assert (await EventReader(a).next()).data == "for one"
    assert (await EventReader(b).next()).data == "for two"
    a.close()
    b.close()


async def test_setup_returns_routes_and_handler_works_with_add_route(aiohttp_client: Any) -> None:
    sse = sse_adapter(define_hooks(open=lambda p: p.send("bare")))
    app = web.Application()
    app.router.add_route("*", "/bare", sse.handler)
    routes = sse_adapter().setup(web.Application(), "/x")
    assert [r.method for r in routes] == ["GET"]
    client = await aiohttp_client(app)
    resp = await client.get("/bare")
    assert (await EventReader(resp).next()).data == "bare"
    assert (await client.post("/bare")).status == 405
    resp.close()
    await sse.close()


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"keepalive": 0}, ValueError, "keepalive"),
        ({"keepalive": "1"}, TypeError, "keepalive"),
        ({"max_buffer": -1}, ValueError, "max_buffer"),
        ({"slow_consumer": "drop"}, ValueError, "slow_consumer"),
        ({"send_timeout": 0}, ValueError, "send_timeout"),
        ({"max_peers": 0}, ValueError, "max_peers"),
        ({"max_message_size": 1.5}, TypeError, "max_message_size"),
        ({"namespace": "x"}, TypeError, "namespace"),
        ({"sync": object()}, TypeError, "sync"),
        ({"history": -1}, ValueError, "history"),
        ({"shutdown_retry": -5}, ValueError, "shutdown_retry"),
        ({"bogus": 1}, TypeError, "bogus"),
    ],
)
def test_options_are_validated(kwargs: dict[str, Any], exc: type[Exception], name: str) -> None:
    with pytest.raises(exc, match=name):
        sse_adapter(**kwargs)


def test_defaults() -> None:
    options = sse_adapter().options
    assert options.keepalive == 15.0
    assert options.max_buffer == 1_048_576
    assert options.slow_consumer == "close"
    assert options.send_timeout == 30.0
    assert options.max_peers is None
    assert options.max_message_size == 1_048_576
    assert options.namespace is None
    assert options.sync is None
    assert options.history == 0


async def test_hooks_reach_the_adapter_through_the_peer(aiohttp_client: Any) -> None:
    """``peer.adapter`` is the adapter: a hook can publish or count through it."""
    seen: list[object] = []

    def open_(peer: Peer) -> None:
        seen.append(peer.adapter)
        peer.subscribe("t")
        peer.adapter.publish("t", f"{len(peer.adapter.peers)} here")

    sse = sse_adapter(define_hooks(open=open_))
    client = await aiohttp_client(make_app(sse))
    reader = EventReader(await client.get("/sse"))
    assert (await reader.next()).data == "1 here"
    assert seen == [sse]
    reader.response.close()


async def test_the_close_hook_sees_a_peer_that_left_its_topics(aiohttp_client: Any) -> None:
    """When ``close`` runs the peer has left ``peers`` and its topics."""
    seen: list[tuple[frozenset[str], bool, int]] = []

    def close(peer: Peer, details: CloseDetails) -> None:
        seen.append((peer.topics, peer.id in peer.adapter.peers, peer.ready_state))

    sse = sse_adapter(
        define_hooks(open=lambda p: (p.subscribe("a"), p.subscribe("b")), close=close)
    )
    client = await aiohttp_client(make_app(sse))
    reader = EventReader(await client.get("/sse"))
    await wait_until(lambda: len(sse.peers) == 1)
    (peer,) = sse.peers.values()
    assert peer.topics == {"a", "b"}
    peer.close()
    await peer.wait_closed()
    assert seen == [(frozenset(), False, 3)]
    assert sse.stats()["topics"] == 0
    reader.response.close()
