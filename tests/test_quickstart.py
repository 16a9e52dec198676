"""DESIGN.md's quick start, verbatim in docs/migrating.md ("The crossws example"), works
as written."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aiohttp_crossws_sse.testing import EventReader, next_event, wait_for_event
from tests.test_docs import doc_block


def quick_start_app() -> web.Application:
    source = doc_block("crossws-example")
    assert source.rstrip().endswith("web.run_app(app)")
    namespace: dict[str, Any] = {}
    exec(compile(source.replace("web.run_app(app)", ""), "docs/migrating.md", "exec"), namespace)
    app: web.Application = namespace["app"]
    return app


async def test_quick_start_as_written(aiohttp_client: Any) -> None:
    client = await aiohttp_client(quick_start_app())
    refused = await client.get("/sse")
    assert refused.status == 401
    assert await refused.text() == "bad token"

    alice = await client.get("/sse?token=secret")
    assert alice.headers["x-powered-by"] == "cross-ws"
    alice_id = alice.headers["x-crossws-id"]
    a = EventReader(alice)
    first = await next_event(a)
    assert (first.event, first.data) == ("crossws-id", alice_id)
    assert (await next_event(a)).data == f"Welcome to the server {alice_id}!"

    bob = EventReader(await client.get("/sse?token=secret"))
    await wait_for_event(bob, lambda e: e.data.startswith("Welcome"))
    bob_id = bob.response.headers["x-crossws-id"]
    assert (await next_event(a)).data == f"{bob_id} joined!"

    # messages go through the upgrade hook too, then to everyone else in "chat"
    assert (await client.post("/sse", data="hi", headers={"x-crossws-id": bob_id})).status == 401
    sent = await client.post(
        "/sse?token=secret", data="hello alice", headers={"x-crossws-id": bob_id}
    )
    assert sent.status == 200
    assert (await next_event(a)).data == "hello alice"

    bob.response.close()
    assert (await next_event(a)).data == f"{bob_id} left (connection lost)"
    alice.close()
