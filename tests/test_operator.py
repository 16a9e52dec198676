"""What an app and an operator reach: the adapter from a handler
(``ADAPTER_KEY``, ``get_adapter``) and the package's rate-limited log lines."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web

from aiohttp_crossws_sse import (
    ADAPTER_KEY,
    Peer,
    SSEAdapter,
    define_hooks,
    get_adapter,
    sse_adapter,
)
from aiohttp_crossws_sse._logs import operator_log
from tests.conftest import EventReader, wait_until
from tests.test_reliability import RawClient, url_of

LOGGER = "aiohttp_crossws_sse"


@pytest.fixture(autouse=True)
def fresh_log_windows() -> None:
    operator_log.clear()  # the limiter is per process: start each test at zero


# -- reaching the adapter -----------------------------------------------------------------


async def test_get_adapter_from_a_handler_and_app_key(aiohttp_client: Any) -> None:
    sse = sse_adapter(define_hooks(open=lambda p: p.subscribe("news")))

    async def announce(request: web.Request) -> web.Response:
        adapter: SSEAdapter = get_adapter(request)  # typed, no AppKey of one's own
        adapter.publish("news", await request.text())
        return web.Response(text=str(adapter.stats()["peers"]))

    app = web.Application()
    sse.setup(app, "/sse")
    app.router.add_post("/announce", announce)
    assert app[ADAPTER_KEY] is sse
    assert get_adapter(app) is sse
    client = await aiohttp_client(app)
    reader = EventReader(await client.get("/sse"))
    await wait_until(lambda: len(sse.peers) == 1)
    resp = await client.post("/announce", data="hello")
    assert (resp.status, await resp.text()) == (200, "1")
    assert (await reader.next()).data == "hello"
    reader.response.close()


async def test_get_adapter_in_a_sub_app_and_with_bare_handler(aiohttp_client: Any) -> None:
    sse = sse_adapter()
    seen: list[SSEAdapter] = []

    async def where(request: web.Request) -> web.Response:
        seen.append(get_adapter(request))
        return web.Response(text="ok")

    api = web.Application()
    api.router.add_route("*", "/sse", sse.handler)
    api.router.add_get("/where", where)
    sse.setup(api)  # lifecycle only: the bare handler's line
    app = web.Application()
    app.add_subapp("/api", api)
    client = await aiohttp_client(app)
    assert (await client.get("/api/where")).status == 200
    assert seen == [sse]


async def test_get_adapter_errors_name_the_fix() -> None:
    app = web.Application()
    with pytest.raises(LookupError, match=r"sse.setup\(app"):
        get_adapter(app)
    one, two = sse_adapter(), sse_adapter()
    one.setup(app, "/one")
    two.setup(app, "/two")
    with pytest.raises(LookupError, match="app_key"):
        get_adapter(app)  # two adapters under one key: refuse to guess
    other = web.AppKey("other", SSEAdapter)
    app2 = web.Application()
    one2, two2 = sse_adapter(), sse_adapter()
    one2.setup(app2, "/one")
    two2.setup(app2, "/two", app_key=other)
    assert get_adapter(app2) is one2
    assert get_adapter(app2, other) is two2
    one2.setup(app2, "/again")  # the same adapter twice is not ambiguous
    assert get_adapter(app2) is one2


# -- what the operator sees ---------------------------------------------------------------


def app_for(sse: SSEAdapter) -> web.Application:
    app = web.Application()
    sse.setup(app, "/sse")
    return app


def warnings_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_slow_consumer_storm_is_logged_with_ids_and_rate_limited(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    peers: list[Peer] = []
    sse = sse_adapter(
        define_hooks(open=lambda p: (p.subscribe("t"), peers.append(p))), max_buffer=16384
    )
    client = await aiohttp_client(app_for(sse))
    storm = operator_log.burst + 15
    raws = [await RawClient.open(url_of(client), rcvbuf=4096) for _ in range(storm)]
    await wait_until(lambda: len(sse.peers) == storm)
    while sse.peers:  # nobody reads: every one of them goes over max_buffer
        sse.publish("t", "x" * 8192)
        await asyncio.sleep(0)
    assert sse.stats()["slow_consumers"] == storm
    lines = warnings_with(caplog, "slow consumer")
    assert len(lines) == operator_log.burst  # the rest of the storm is suppressed
    assert all("max_buffer=16384" in line for line in lines)
    assert {line.split()[2] for line in lines} <= {p.id for p in peers}
    for raw in raws:
        await raw.close()


async def test_drop_oldest_and_send_timeout_are_logged(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    sse = sse_adapter(
        define_hooks(open=lambda p: p.subscribe("t")),
        max_buffer=16384,
        slow_consumer="drop-oldest",
        send_timeout=0.2,
    )
    client = await aiohttp_client(app_for(sse))
    raw = await RawClient.open(url_of(client), rcvbuf=4096)
    await wait_until(lambda: len(sse.peers) == 1)
    (peer,) = sse.peers.values()

    async def keep_publishing() -> None:  # drops while it is paused, then the timeout
        while peer.ready_state == 1:
            sse.publish("t", "x" * 65536)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(asyncio.gather(keep_publishing(), peer.wait_closed()), 20)
    dropped = warnings_with(caplog, "drop-oldest")
    assert dropped and peer.id in dropped[0] and len(dropped) <= operator_log.burst
    (stalled,) = warnings_with(caplog, "send timeout")
    assert peer.id in stalled and "send_timeout=0.2" in stalled
    assert sse.stats()["send_timeouts"] == 1
    await raw.close()


async def test_refused_streams_are_logged(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    sse = sse_adapter(max_peers=1)
    client = await aiohttp_client(app_for(sse))
    first = await client.get("/sse")
    refused = [await client.get("/sse") for _ in range(operator_log.burst + 5)]
    assert {r.status for r in refused} == {503}
    lines = warnings_with(caplog, "max_peers=1")
    assert len(lines) == operator_log.burst
    first.close()
    await sse.close()
    assert (await client.get("/sse")).status == 503
    info = [
        r for r in caplog.records if r.levelno == logging.INFO and "shutting down" in r.getMessage()
    ]
    assert len(info) == 1


def test_suppressed_lines_are_counted_in_the_next_window(caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp_crossws_sse._logs import RateLimitedLog

    caplog.set_level(logging.INFO, LOGGER)
    log = RateLimitedLog(logging.getLogger(LOGGER), burst=2, period=0.0)
    log.log("k", logging.WARNING, "one")
    # period 0: every line opens a new window, so none is suppressed
    log.log("k", logging.WARNING, "two")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]
    caplog.clear()
    log = RateLimitedLog(logging.getLogger(LOGGER), burst=1, period=3600.0)
    for i in range(5):
        log.log("k", logging.WARNING, "line %d", i)
    log.log("other", logging.WARNING, "another kind")
    assert [r.getMessage() for r in caplog.records] == ["line 0", "another kind"]
    log.period = 0.0  # the window is over: the next line says what was held back
    log.log("k", logging.WARNING, "line %d", 5)
    assert caplog.records[-1].getMessage() == "line 5 (4 similar lines suppressed in the last 0 s)"


async def test_get_adapter_finds_the_nearest_app(aiohttp_client: Any) -> None:
    """A sub-app's own adapter wins, even when its parent has two under the key."""
    outer_one, outer_two, inner = sse_adapter(), sse_adapter(), sse_adapter()
    seen: list[SSEAdapter] = []

    async def where(request: web.Request) -> web.Response:
        seen.append(get_adapter(request))
        return web.Response(text="ok")

    sub = web.Application()
    inner.setup(sub, "/sse")
    sub.router.add_get("/where", where)
    app = web.Application()
    outer_one.setup(app, "/one")
    outer_two.setup(app, "/two")
    app.add_subapp("/sub", sub)
    client = await aiohttp_client(app)
    assert (await client.get("/sub/where")).status == 200
    assert seen == [inner]
