"""crossws's real JavaScript client (``crossws/websocket/sse``, ``WebSocketSSE``)
against our server: the wire protocol as crossws defines it, both directions.

Needs Node.js 20+ and npm; the npm packages (``tests/interop/node/package-lock.json``)
are installed by the ``node_client`` fixture. Without Node or npm the tests are
skipped, or fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from aiohttp_crossws_sse import CloseDetails, Message, Peer, define_hooks, sse_adapter
from tests.conftest import keepalives_written

pytestmark = pytest.mark.interop

NODE_DIR = Path(__file__).parent / "node"


def _unavailable(reason: str) -> Any:
    if os.environ.get("CI") == "true":
        pytest.fail(f"interop: {reason} (CI=true: a missing tool is a failure)")
    pytest.skip(f"interop: {reason}")


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    """The command that runs the client script, npm packages installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are not on PATH")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major = version.stdout.strip().lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 20:
        _unavailable(f"Node.js 20+ is needed, found {version.stdout.strip() or version.stderr}")
    lock = NODE_DIR / "package-lock.json"
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            _unavailable(f"npm ci failed:\n{done.stdout}\n{done.stderr}")
    return [node, str(NODE_DIR / "chat.mjs")]


def chat_app() -> tuple[web.Application, Any]:
    """The README's chat, plus ping/pong, echo and a binary message."""

    def open_(peer: Peer) -> None:
        peer.send(f"welcome {peer.id}")
        peer.subscribe("chat")
        peer.publish("chat", f"{peer.id} joined")

    def message(peer: Peer, msg: Message) -> None:
        text = msg.text()
        if text == "ping":
            peer.send("pong")
        elif text == "binary":
            peer.send(bytes([0, 1, 2, 0xFE, 0xFF]) + b"hi")
        elif text.startswith("echo:"):
            peer.send("echo-" + text[len("echo:") :])
        else:
            peer.publish("chat", f"{peer.id}: {text}")

    def close(peer: Peer, details: CloseDetails) -> None:
        peer.publish("chat", f"{peer.id} left")

    sse = sse_adapter(define_hooks(open=open_, message=message, close=close), bidir=True)
    app = web.Application()
    sse.setup(app, "/_ws")
    return app, sse


async def run_client(command: list[str], url: str) -> tuple[int, str]:
    # A subprocess of the event loop: the server keeps serving meanwhile.
    proc = await asyncio.create_subprocess_exec(
        *command,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=NODE_DIR,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -1, out.decode(errors="replace") + "\n(killed after 60 s)"
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_websocketsse_client_chats_with_our_server(
    aiohttp_server: Any, node_client: list[str]
) -> None:
    app, sse = chat_app()
    server = await aiohttp_server(app, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/_ws"
    code, output = await run_client(node_client, url)
    if code != 0:
        pytest.fail(f"the crossws client failed (exit {code}):\n{output}")
    assert output.rstrip().endswith("done"), output
    stats = sse.stats()
    # ping x2, five echoes, two chat lines, binary, unicode
    assert stats["messages_received"] == 11, (stats, output)


async def test_npm_eventsource_through_keepalives(
    aiohttp_server: Any, node_client: list[str]
) -> None:
    """npm ``eventsource`` (``node/keepalive.mjs``) on a stream whose events
    carry ids, with keep-alives (``: ping`` alone, no blank line) between
    them: no event for a keep-alive, no error, no reconnection."""
    peers: list[Peer] = []

    def open_(peer: Peer) -> None:
        peers.append(peer)
        peer.send("first", id="1")

    app = web.Application()
    sse_adapter(define_hooks(open=open_), keepalive=0.05).setup(app, "/sse")
    server = await aiohttp_server(app, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/sse"
    proc = await asyncio.create_subprocess_exec(
        node_client[0],
        str(NODE_DIR / "keepalive.mjs"),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=NODE_DIR,
    )
    assert proc.stdout is not None
    records: list[dict[str, Any]] = []

    async def record() -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, f"the client exited early: {records}"
        records.append(json.loads(line))
        return records[-1]

    try:
        while (await record()).get("data") != "first":
            pass
        await keepalives_written(url, 5)  # the client's stream got them too
        peers[0].send("later", id="2")
        peers[0].send("done", id="3")
        while "readyState" not in await record():
            pass
        assert await asyncio.wait_for(proc.wait(), 30) == 0, records
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert records == [
        {"open": 1},
        {"type": "message", "data": "first", "id": "1"},
        {"type": "message", "data": "later", "id": "2"},
        {"type": "message", "data": "done", "id": "3"},
        {"readyState": 1},
    ]
    assert len(peers) == 2  # the client's and keepalives_written's: no reconnection
