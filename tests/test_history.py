"""Event ids, history and Last-Event-ID replay (option ``history``) — over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from aiohttp_crossws_sse import Peer, SSEAdapter, define_hooks, sse_adapter
from aiohttp_crossws_sse._history import History, format_id, parse_id
from aiohttp_crossws_sse.client import connect as client_connect
from aiohttp_crossws_sse.testing import ServerSentEvent, next_event
from tests.conftest import EventReader, wait_until


def replaying_adapter(**options: Any) -> tuple[SSEAdapter, dict[str, Peer]]:
    """Peers subscribe to the comma-separated ``topics`` query (default ``t``);
    ``peers`` maps the ``name`` query to the peer. A peer whose replay turns
    out incomplete gets a ``refresh`` event (the app's full-state reaction)."""
    peers: dict[str, Peer] = {}

    async def react(peer: Peer) -> None:
        if await peer.wait_recovered() is False:
            peer.send("refresh", event="refresh")

    def open_(peer: Peer) -> None:
        peers[peer.request.query.get("name", "")] = peer
        for topic in peer.request.query.get("topics", "t").split(","):
            peer.subscribe(topic)
        if peer.last_event_id is not None:
            asyncio.get_running_loop().create_task(react(peer))

    options.setdefault("history", 100)
    return sse_adapter(define_hooks(open=open_), **options), peers


def app_for(sse: SSEAdapter) -> web.Application:
    app = web.Application()
    sse.setup(app, "/sse")
    return app


async def open_stream(
    client: Any, name: str, last_id: str | None = None, topics: str = "t"
) -> EventReader:
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    resp = await client.get(f"/sse?name={name}&topics={topics}", headers=headers)
    assert resp.status == 200
    return EventReader(resp)


async def test_cut_mid_stream_and_resume_gets_exactly_every_event(aiohttp_client: Any) -> None:
    sse, peers = replaying_adapter(history=2000)
    client = await aiohttp_client(app_for(sse))
    first = await open_stream(client, "a")
    await wait_until(lambda: "a" in peers)
    for i in range(1, 401):
        sse.publish("t", str(i))
    got = [await first.next() for _ in range(300)]
    # cut abruptly: the client drops the connection, no graceful end
    assert first.response.connection is not None
    transport = first.response.connection.transport
    assert transport is not None
    transport.abort()
    first.response.close()
    await wait_until(lambda: not sse.peers)
    for i in range(401, 701):  # while the client is away
        sse.publish("t", str(i))

    async def keep_publishing() -> None:  # during the reconnect and its replay
        for i in range(701, 1001):
            sse.publish("t", str(i))
            await asyncio.sleep(0)

    publisher = asyncio.get_running_loop().create_task(keep_publishing())
    second = await open_stream(client, "b", got[-1].id)
    rest: list[ServerSentEvent] = []
    while not rest or rest[-1].data != "1000":
        rest.append(await second.next())
    await publisher
    received = [int(e.data) for e in got + rest]
    assert received == list(range(1, 1001))
    ids = [e.id for e in got + rest]
    assert len(set(ids)) == 1000
    assert peers["b"].recovered is True
    assert peers["b"].last_event_id == got[-1].id
    # live events follow, and nothing else was queued (no refresh)
    sse.publish("t", "live")
    assert (await second.next()).data == "live"
    second.response.close()


async def test_ids_are_opaque_strictly_increasing_and_shared_across_topics(
    aiohttp_client: Any,
) -> None:
    sse, _ = replaying_adapter()
    client = await aiohttp_client(app_for(sse))
    reader = await open_stream(client, "a", topics="x,y")
    await wait_until(lambda: sse.peers)
    sse.publish("x", "1")
    sse.publish("y", "2")
    sse.publish("x", "3")
    events = await reader.take(3)
    epochs = {e.id.rsplit("-", 1)[0] for e in events}
    seqs = [int(e.id.rsplit("-", 1)[1]) for e in events]
    assert len(epochs) == 1 and all(epochs)
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    reader.response.close()


async def test_one_id_positions_every_topic_in_order(aiohttp_client: Any) -> None:
    sse, peers = replaying_adapter()
    client = await aiohttp_client(app_for(sse))
    first = await open_stream(client, "a", topics="x,y")
    await wait_until(lambda: "a" in peers)
    sse.publish("x", "x1")
    last = (await first.next()).id
    first.response.close()
    await wait_until(lambda: not sse.peers)
    sse.publish("y", "y1")
    sse.publish("z", "not subscribed")
    sse.publish("x", "x2")
    sse.publish("y", "y2")
    second = await open_stream(client, "b", last, topics="x,y")
    assert [e.data for e in await second.take(3)] == ["y1", "x2", "y2"]
    await wait_until(lambda: peers["b"].recovered is not None)
    assert peers["b"].recovered is True
    sse.publish("x", "live")
    assert (await second.next()).data == "live"
    second.response.close()


async def test_evicted_id_is_not_recovered_and_the_app_reacts(aiohttp_client: Any) -> None:
    sse, peers = replaying_adapter(history=5)
    client = await aiohttp_client(app_for(sse))
    first = await open_stream(client, "a")
    await wait_until(lambda: "a" in peers)
    sse.publish("t", "1")
    last = (await first.next()).id
    first.response.close()
    await wait_until(lambda: not sse.peers)
    for i in range(2, 12):
        sse.publish("t", str(i))
    second = await open_stream(client, "b", last)
    # everything still held, then the app's refresh
    assert [e.data for e in await second.take(6)] == ["7", "8", "9", "10", "11", "refresh"]
    assert peers["b"].recovered is False
    second.response.close()


async def test_garbage_id_is_unknown(aiohttp_client: Any) -> None:
    sse, peers = replaying_adapter()
    client = await aiohttp_client(app_for(sse))
    sse.publish("t", "held")
    for n, garbage in enumerate(["nonsense", "-1", "abc-", "x-1-2", "9" * 200]):
        reader = await open_stream(client, f"g{n}", garbage)
        assert [e.data for e in await reader.take(2)] == ["held", "refresh"]
        assert peers[f"g{n}"].recovered is False
        reader.response.close()


@pytest.mark.parametrize(
    ("header", "query"),
    [
        ("9" * 257, None),  # one over MAX_EVENT_ID_LENGTH
        ("9" * 8000, None),
        (None, "x" * 5000),
        (None, "abcd-1\0"),  # a NUL: no browser sends it
    ],
    ids=["header-257", "header-8000", "query-5000", "query-nul"],
)
async def test_oversize_or_nul_id_is_garbage_too(
    aiohttp_client: Any, header: str | None, query: str | None
) -> None:
    sse, peers = replaying_adapter()
    client = await aiohttp_client(app_for(sse))
    sse.publish("t", "held")
    params = {"name": "g"} if query is None else {"name": "g", "lastEventId": query}
    headers = {} if header is None else {"Last-Event-ID": header}
    resp = await client.get("/sse", params=params, headers=headers)
    assert resp.status == 200
    reader = EventReader(resp)
    assert (await reader.next()).data == "held"  # everything held, as for garbage
    await wait_until(lambda: peers["g"].recovered is not None)
    assert peers["g"].recovered is False
    assert peers["g"].last_event_id is None  # not shown: nothing huge reaches logs
    reader.response.close()


async def test_id_from_before_a_restart_is_not_recovered(aiohttp_client: Any) -> None:
    old, _ = replaying_adapter()
    client = await aiohttp_client(app_for(old))
    reader = await open_stream(client, "a")
    await wait_until(lambda: old.peers)
    old.publish("t", "before")
    last = (await reader.next()).id
    reader.response.close()
    # the server restarts: a new adapter, a new (empty) history
    new, peers = replaying_adapter()
    client2 = await aiohttp_client(app_for(new))
    new.publish("t", "after")
    reader = await open_stream(client2, "b", last)
    assert [e.data for e in await reader.take(2)] == ["after", "refresh"]
    assert peers["b"].recovered is False
    reader.response.close()


async def test_id_of_a_future_event_is_unknown(aiohttp_client: Any) -> None:
    sse, peers = replaying_adapter()
    client = await aiohttp_client(app_for(sse))
    reader = await open_stream(client, "a")
    await wait_until(lambda: sse.peers)
    sse.publish("t", "1")
    epoch = (await reader.next()).id.rsplit("-", 1)[0]
    reader.response.close()
    reader = await open_stream(client, "b", f"{epoch}-99")
    assert [e.data for e in await reader.take(2)] == ["1", "refresh"]
    assert peers["b"].recovered is False
    reader.response.close()


async def test_nothing_missed_is_recovered_and_query_parameter_works(
    aiohttp_client: Any,
) -> None:
    sse, peers = replaying_adapter()
    client = await aiohttp_client(app_for(sse))
    reader = await open_stream(client, "a")
    await wait_until(lambda: "a" in peers)
    assert peers["a"].recovered is None  # no Last-Event-ID
    sse.publish("t", "1")
    last = (await reader.next()).id
    reader.response.close()
    resp = await client.get("/sse", params={"name": "b", "topics": "t", "lastEventId": last})
    second = EventReader(resp)
    await wait_until(lambda: "b" in peers and peers["b"].recovered is not None)
    assert peers["b"].last_event_id == last
    assert peers["b"].recovered is True
    sse.publish("t", "2")
    assert (await second.next()).data == "2"
    resp.close()


async def test_replay_then_direct_sends_then_live(aiohttp_client: Any) -> None:
    """Direct sends are never replayed; those made in ``open`` follow the replay."""

    async def open_(peer: Peer) -> None:
        peer.subscribe("t")
        peer.send("hello")

    sse = sse_adapter(define_hooks(open=open_), history=10)
    client = await aiohttp_client(app_for(sse))
    first = EventReader(await client.get("/sse"))
    assert (await first.next()).data == "hello"
    sse.publish("t", "1")
    one = await first.next()
    assert one.data == "1" and one.id
    first.response.close()
    await wait_until(lambda: not sse.peers)
    sse.publish("t", "2")
    second = EventReader(await client.get("/sse", headers={"Last-Event-ID": one.id}))
    assert [e.data for e in await second.take(2)] == ["2", "hello"]
    sse.publish("t", "3")
    assert (await second.next()).data == "3"
    second.response.close()


async def test_namespaces_are_replayed_apart(aiohttp_client: Any) -> None:
    def upgrade(request: web.Request) -> dict[str, Any]:
        return {"namespace": request.query["ns"]}

    def open_(peer: Peer) -> None:
        peer.subscribe("t")

    sse = sse_adapter(define_hooks(upgrade=upgrade, open=open_), history=10)
    client = await aiohttp_client(app_for(sse))
    first = EventReader(await client.get("/sse?ns=a"))
    await wait_until(lambda: sse.peers)
    sse.publish("t", "a1", namespace="a")
    last = (await first.next()).id
    first.response.close()
    await wait_until(lambda: not sse.peers)
    sse.publish("t", "b1", namespace="b")
    sse.publish("t", "all")
    sse.publish("t", "a2", namespace="a")
    second = EventReader(await client.get("/sse?ns=a", headers={"Last-Event-ID": last}))
    assert [e.data for e in await second.take(2)] == ["all", "a2"]
    second.response.close()


async def test_own_publishes_during_open_are_not_replayed_to_the_publisher(
    aiohttp_client: Any,
) -> None:
    def open_(peer: Peer) -> None:
        peer.subscribe("t")
        peer.publish("t", f"{peer.request.query['name']} joined")

    sse = sse_adapter(define_hooks(open=open_), history=10)
    client = await aiohttp_client(app_for(sse))
    a = EventReader(await client.get("/sse?name=a"))
    await wait_until(lambda: len(sse.peers) == 1)
    sse.publish("t", "x")
    last = (await a.next()).id
    b = EventReader(await client.get("/sse?name=b", headers={"Last-Event-ID": last}))
    assert (await a.next()).data == "b joined"
    sse.publish("t", "y")
    assert (await b.next()).data == "y"  # not its own "b joined"
    a.response.close()
    b.response.close()


async def test_retry_hint_is_sent_once_at_the_start(aiohttp_client: Any) -> None:
    sse = sse_adapter(define_hooks(open=lambda peer: peer.send("hi")), retry=2500)
    client = await aiohttp_client(app_for(sse))
    reader = EventReader(await client.get("/sse"))
    assert (await reader.next()).data == "hi"
    assert reader.parser.retry == 2500
    assert reader.raw.count(b"retry:") == 1
    reader.response.close()


async def test_retry_hint_follows_the_crossws_id_event(aiohttp_client: Any) -> None:
    sse = sse_adapter(define_hooks(open=lambda peer: peer.send("hi")), bidir=True, retry=0)
    client = await aiohttp_client(app_for(sse))
    reader = EventReader(await client.get("/sse"))
    assert (await reader.next()).event == "crossws-id"
    assert (await reader.next()).data == "hi"
    assert reader.parser.retry == 0
    assert reader.raw.index(b"crossws-id") < reader.raw.index(b"retry: 0") < reader.raw.index(b"hi")
    reader.response.close()


async def test_without_history_no_ids_and_recovered_is_none(aiohttp_client: Any) -> None:
    seen: list[Any] = []

    def open_(peer: Peer) -> None:
        peer.subscribe("t")
        seen.append(peer)

    sse = sse_adapter(define_hooks(open=open_))
    client = await aiohttp_client(app_for(sse))
    reader = EventReader(await client.get("/sse", headers={"Last-Event-ID": "1"}))
    await wait_until(lambda: seen)
    sse.publish("t", "x")
    event = await reader.next()
    assert event.id == ""  # the event carries none
    assert b"id:" not in reader.raw
    assert seen[0].recovered is None
    assert await seen[0].wait_recovered() is None
    reader.response.close()


async def test_wait_recovered_in_open_is_refused(aiohttp_client: Any) -> None:
    errors: list[BaseException] = []

    async def open_(peer: Peer) -> None:
        peer.subscribe("t")
        try:
            await peer.wait_recovered()
        except RuntimeError as exc:
            errors.append(exc)
        peer.send("ok")

    sse = sse_adapter(define_hooks(open=open_), history=3)
    client = await aiohttp_client(app_for(sse))
    reader = EventReader(await client.get("/sse", headers={"Last-Event-ID": "x"}))
    assert (await reader.next()).data == "ok"
    assert len(errors) == 1
    reader.response.close()


async def test_slow_client_replay_never_trips_the_slow_consumer_policy(
    aiohttp_client: Any,
) -> None:
    closed: list[Any] = []
    sse = sse_adapter(
        define_hooks(
            open=lambda peer: peer.subscribe("t"),
            close=lambda peer, details: closed.append(details.reason),
        ),
        history=3000,
        max_buffer=8192,
    )
    client = await aiohttp_client(app_for(sse))
    for i in range(3000):
        sse.publish("t", f"{i:04d} " + "x" * 100)
    resp = await client.get("/sse", headers={"Last-Event-ID": "unknown"})
    reader = EventReader(resp)
    await asyncio.sleep(0.2)  # not a measurement: let the server fill the socket
    events = await reader.take(3000)
    assert [e.data[:4] for e in events] == [f"{i:04d}" for i in range(3000)]
    assert not closed
    assert sse.stats()["slow_consumers"] == 0
    resp.close()


async def test_python_client_reconnects_with_last_event_id(aiohttp_client: Any) -> None:
    sse, peers = replaying_adapter()
    client = await aiohttp_client(app_for(sse))
    url = client.make_url("/sse?name=a")
    source = client_connect(url, reconnect=True, retry=0.01)
    try:
        await source.connected()
        await wait_until(lambda: sse.peers)
        sse.publish("t", "1")
        first = await next_event(source)
        assert first.data == "1"
        for peer in list(sse.peers.values()):
            peer.terminate()
        await wait_until(lambda: not sse.peers)
        sse.publish("t", "2")
        second = await next_event(source)
        assert second.data == "2"
        await wait_until(lambda: peers["a"].recovered is True)
    finally:
        await source.close()


# -- the store (no I/O) -------------------------------------------------------------


def test_history_bounds_and_eviction_marks() -> None:
    history = History(3, epoch="e")
    for i in range(5):
        history.record("t", None, str(i), None)
    assert history.held() == 3
    assert history.position("e-2") == 2
    replay = history.since(["t"], 2, None)
    assert replay.complete and len(replay.frames) == 3
    assert not history.since(["t"], 1, None).complete
    assert history.since(["t"], 5, None) == ([], True, 5, None)
    assert history.position("e-6") is None
    assert history.position("f-1") is None
    assert history.position("e-01") is None


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 6),
    publishes=st.lists(st.sampled_from("abc"), max_size=40),
    topics=st.sets(st.sampled_from("abcd")),
    after=st.integers(0, 45),
)
def test_history_replay_matches_a_model(
    size: int, publishes: list[str], topics: set[str], after: int
) -> None:
    history = History(size, epoch="e")
    frames = [history.record(topic, None, str(n), None) for n, topic in enumerate(publishes, 1)]
    after = min(after, len(publishes))
    assert history.position(format_id("e", after)) == (after or None)
    assert parse_id(format_id("e", after)) == (("e", after) if after else None)
    replay = history.since(sorted(topics), after, None)
    # the model: per topic, the newest `size` publishes are held
    held = {
        n for topic in "abc" for n in [i for i, t in enumerate(publishes, 1) if t == topic][-size:]
    }
    wanted = [n for n, t in enumerate(publishes, 1) if t in topics and n > after]
    assert replay.frames == [frames[n - 1] for n in wanted if n in held]
    assert replay.complete == all(n in held for n in wanted)
    assert replay.upto == len(publishes)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"history": 1.5}, TypeError, "history"),
        ({"history_max_age": 5}, ValueError, "history_max_age"),
        ({"history": 5, "history_max_age": 0}, ValueError, "history_max_age"),
        ({"retry": -1}, ValueError, "retry"),
        ({"retry": 1.5}, TypeError, "retry"),
    ],
)
def test_history_options_are_validated(
    kwargs: dict[str, Any], exc: type[Exception], name: str
) -> None:
    with pytest.raises(exc, match=name):
        sse_adapter(**kwargs)


def test_history_max_age_expires_events_and_forgets_empty_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("aiohttp_crossws_sse._history.time.monotonic", lambda: now[0])
    history = History(10, max_age=5.0, epoch="e")
    history.record("old", None, "1", None)
    history.record("t", None, "2", None)
    now[0] += 10
    history.record("t", None, "3", None)
    replay = history.since(["t"], 0, None)
    assert len(replay.frames) == 1 and not replay.complete  # "2" expired
    assert history.since(["t"], 2, None).complete
    history.sweep()
    assert "old" not in history.topics
    # a topic forgotten whole: an id from before it cannot be recovered
    assert not history.since(["old"], 0, None).complete
    assert history.since(["old"], 1, None).complete


class _Clock:
    """The clock of ``_history`` alone (the event loop keeps the real one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def history_clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr("aiohttp_crossws_sse._history.time", clock)
    return clock


async def test_sweep_on_a_publish_to_a_new_topic_keeps_the_event(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sweep on every record: each publish here opens a topic that has no
    # entry yet, the case the periodic sweep once deleted under the event.
    monkeypatch.setattr("aiohttp_crossws_sse._history._SWEEP_EVERY", 1)
    sse, peers = replaying_adapter(history_max_age=3600)
    client = await aiohttp_client(app_for(sse))
    first = await open_stream(client, "a", topics="x,y")
    await wait_until(lambda: "a" in peers)
    sse.publish("x", "x1")
    last = (await first.next()).id
    first.response.close()
    await wait_until(lambda: not sse.peers)
    sse.publish("y", "y1")
    sse.publish("z", "z1")  # not subscribed: a sweep between the two
    sse.publish("x", "x2")
    second = await open_stream(client, "b", last, topics="x,y")
    assert [e.data for e in await second.take(2)] == ["y1", "x2"]
    await wait_until(lambda: peers["b"].recovered is not None)
    assert peers["b"].recovered is True
    sse.publish("x", "live")
    assert (await second.next()).data == "live"  # no refresh queued before it
    second.response.close()


async def test_topic_forgotten_by_the_sweep_then_published_again_is_not_recovered(
    aiohttp_client: Any, history_clock: _Clock
) -> None:
    sse, peers = replaying_adapter(history_max_age=5)
    history = sse._registry.history
    assert history is not None
    client = await aiohttp_client(app_for(sse))
    first = await open_stream(client, "a")
    await wait_until(lambda: "a" in peers)
    sse.publish("t", "1")
    seen_one = (await first.next()).id
    sse.publish("t", "2")
    seen_two = (await first.next()).id
    first.response.close()
    await wait_until(lambda: not sse.peers)
    history_clock.now += 10  # "1" and "2" expire
    history.sweep()  # and the topic is forgotten
    assert "t" not in history.topics
    sse.publish("t", "3")
    # missed "2", which expired: the app is told to refresh
    second = await open_stream(client, "b", seen_one)
    assert [e.data for e in await second.take(2)] == ["3", "refresh"]
    assert peers["b"].recovered is False
    second.response.close()
    # saw everything up to the topic's end: nothing was lost
    third = await open_stream(client, "c", seen_two)
    assert (await third.next()).data == "3"
    await wait_until(lambda: peers["c"].recovered is not None)
    assert peers["c"].recovered is True
    sse.publish("t", "live")
    assert (await third.next()).data == "live"
    third.response.close()


# -- a real browser -----------------------------------------------------------------

_PAGE = """<!doctype html><meta charset="utf-8"><title>resume</title><script>
window.got = []; window.opens = 0;
const source = new EventSource("/sse");
source.onopen = () => { window.opens += 1; };
source.onmessage = (e) => { window.got.push(e.data); };
</script>"""


@pytest.mark.browser
async def test_a_browser_eventsource_resumes_after_the_server_drops_it(
    run_app_server: Any,
) -> None:
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, require_browser

    require_browser()
    from playwright.async_api import async_playwright

    peers: list[Peer] = []

    def open_(peer: Peer) -> None:
        peer.subscribe("t")
        peers.append(peer)

    sse = sse_adapter(define_hooks(open=open_), history=100, retry=50)
    app = web.Application()
    sse.setup(app, "/sse")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    app.router.add_get("/", page)
    server = await run_app_server(app)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            tab = await browser.new_page()
            await tab.goto(server.url + "/")
            await wait_until(lambda: len(peers) == 1 and peers[0].ready_state == 1, 10)
            for i in range(1, 4):
                sse.publish("t", str(i))
            await tab.wait_for_function("window.got.length === 3", timeout=10_000)
            peers[0].terminate()  # the server drops it: the browser reconnects by itself
            for i in range(4, 6):
                sse.publish("t", str(i))  # missed while it is away
            await wait_until(lambda: len(peers) == 2 and peers[1].recovered is not None, 10)
            assert peers[1].last_event_id is not None
            assert peers[1].recovered is True
            sse.publish("t", "6")
            await tab.wait_for_function("window.got.length >= 6", timeout=10_000)
            assert await tab.evaluate("window.got") == ["1", "2", "3", "4", "5", "6"]
            assert await tab.evaluate("window.opens") == 2
        finally:
            await browser.close()
