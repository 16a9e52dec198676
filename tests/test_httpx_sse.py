"""httpx-sse, a common Python SSE client, reading our streams over real HTTP.

httpx-sse 0.4.3 dispatches an event on every blank line once the stream has
carried an ``id:`` (WHATWG says not to dispatch an empty data buffer): a
keep-alive ending in a blank line (``: ping\\n\\n``) would reach it as an empty
event each time. Our keep-alive is the comment line alone (``: ping\\n``).

Not in the floors step of ``.ci/run``: httpx and httpx-sse are test tools of
``uv.lock``, outside the floors venv, and test no floor.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from aiohttp import web
from httpx_sse import aconnect_sse
from pytest_aiohttp import AiohttpServer

from aiohttp_crossws_sse import Peer, define_hooks, sse_adapter
from aiohttp_crossws_sse.testing import wait_until
from tests.conftest import keepalives_written

WAIT = 10.0  # bound of every wait; nothing is asserted about timing


async def test_httpx_sse_gets_no_empty_events_from_keepalives(
    aiohttp_server: AiohttpServer,
) -> None:
    peers: list[Peer] = []
    sse = sse_adapter(define_hooks(open=peers.append), keepalive=0.05)
    app = web.Application()
    sse.setup(app, "/sse")
    url = str((await aiohttp_server(app)).make_url("/sse"))

    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(WAIT)) as http,
        aconnect_sse(http, "GET", url) as source,
        contextlib.aclosing(source.aiter_sse()) as events,
    ):
        await wait_until(lambda: peers, WAIT, "the httpx-sse client's peer")
        (peer,) = peers
        peer.send("one", id="1")
        first = await asyncio.wait_for(anext(events), WAIT)
        assert (first.event, first.data, first.id) == ("message", "one", "1")

        await keepalives_written(url, 3)  # after an id, before the next event
        peer.send("two", id="2")
        second = await asyncio.wait_for(anext(events), WAIT)
        assert (second.event, second.data, second.id) == ("message", "two", "2"), (
            "an empty event for a keep-alive"
        )
