"""README "Metrics (Prometheus)" under gunicorn: one scrape shows the whole server.

gunicorn runs ``tests/apps/metrics_node.py`` with ``deploy/gunicorn.conf.py``
(two workers, ``PROMETHEUS_MULTIPROC_DIR`` in its environment) behind
Debian's nginx running ``deploy/nginx.conf``. The streams go through nginx;
the scrapes go to gunicorn's address, the port every worker shares, as
Prometheus would (nginx faces the internet). A worker is paused (SIGSTOP,
by its PID) so that the other one takes the next connections: that is how
the streams are spread and how each worker is made to answer a scrape.
Waits poll with a deadline; nothing is timed.

Under ``CI=true`` a missing nginx or gunicorn fails the test; elsewhere it
skips with the reason (tests/test_deploy.py's helpers).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from aiohttp_crossws_sse.client import EventSourceClient, connect
from tests.test_deploy import Gunicorn, Nginx, exited, gunicorn_installed, nginx_binary

pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
from prometheus_client.parser import text_string_to_metric_families

WAIT = 20.0  # bound of every wait; workers write their figures every second
PEERS = "crossws_sse_peers"
OPENED = "crossws_sse_peers_opened_total"
CLOSED = "crossws_sse_peers_closed_total"

Figures = dict[str, float]  # sample name -> value, adapter="/sse"


async def open_stream(url: str, session: aiohttp.ClientSession) -> tuple[int, EventSourceClient]:
    """A stream through nginx; the PID of the worker that holds it."""
    client = connect(url + "/sse", session=session, timeout=30)
    try:
        first = await client.next_event(30)
    except BaseException:
        await client.close()
        raise
    assert first.event == "worker", first
    return int(first.data), client


async def scrape(url: str) -> tuple[int, Figures]:
    """One GET /metrics on a new connection (any worker may take it): the
    worker that answered, and the figures of adapter "/sse"."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url + "/metrics") as response,
    ):
        assert response.status == 200, await response.text()
        text = await response.text()
        worker = int(response.headers["X-Worker"])
    figures = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("adapter") == "/sse"
    }
    return worker, figures


async def scrape_until(
    url: str, what: str, wanted: Callable[[Figures], bool]
) -> tuple[int, Figures]:
    """Scrape until one shows what is ``wanted`` (other workers' figures
    are up to a write interval old); fails after ``WAIT`` with the last."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        worker, figures = await scrape(url)
        if wanted(figures):
            return worker, figures
        if loop.time() > deadline:
            raise AssertionError(
                f"no scrape showed {what} within {WAIT}s; worker {worker}: {figures}"
            )
        await asyncio.sleep(0.1)


def is_ours(server: Gunicorn, pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1]) == server.proc.pid


async def test_gunicorn_two_workers_one_scrape_shows_every_peer(tmp_path: Path) -> None:
    gunicorn_installed()
    binary = nginx_binary()
    metrics_dir = tmp_path / "prometheus"  # gunicorn.conf.py's on_starting makes it
    server = Gunicorn(
        ["-c", "deploy/gunicorn.conf.py", "tests.apps.metrics_node:create_app"],
        {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "WEB_CONCURRENCY": "2"},
    )
    proxy = Nginx(binary)
    try:
        await server.listening()
        await proxy.start(server.port)
        url, metrics = proxy.url, server.url
        async with aiohttp.ClientSession() as session:
            streams: list[tuple[int, EventSourceClient]] = []
            try:
                # 6 streams, 3 on each worker
                streams.append(await open_stream(url, session))
                a = streams[0][0]
                with server.paused(a):
                    streams += [await open_stream(url, session) for _ in range(3)]
                b = streams[1][0]
                with server.paused(b):
                    streams += [await open_stream(url, session) for _ in range(2)]
                assert [pid for pid, _ in streams] == [a, b, b, b, a, a]

                # one scrape shows all 6 (once both workers wrote their figures) ...
                _, figures = await scrape_until(metrics, "6 peers", lambda f: f.get(PEERS) == 6)
                assert figures[OPENED] == 6, figures
                assert figures[CLOSED] == 0, figures
                # ... whichever worker answers it (a paused one writes nothing new)
                for worker, other in ((a, b), (b, a)):
                    with server.paused(other):
                        answered, again = await scrape(metrics)
                    assert answered == worker
                    for name in (PEERS, OPENED, CLOSED):
                        assert again[name] == figures[name], (worker, again)

                # a worker killed: gunicorn's child_exit takes its streams out of
                # the gauge; its counts stay in the totals
                assert is_ours(server, a)
                os.kill(a, signal.SIGKILL)
                _, figures = await scrape_until(metrics, "3 peers", lambda f: f.get(PEERS) == 3)
                assert figures[OPENED] == 6, figures
            finally:
                for _, client in streams:
                    await client.close()
            # b's streams closed by their clients
            _, figures = await scrape_until(
                metrics, "0 peers, 3 closed", lambda f: f.get(PEERS) == 0 and f.get(CLOSED) == 3
            )
            assert figures[OPENED] == 6, figures

        server.proc.send_signal(signal.SIGTERM)
        assert await exited(server.proc, 30) == 0, server.output()
        output = server.output()
        for bad in ("Traceback", "Task was destroyed", "Unclosed", "never retrieved"):
            assert bad not in output, output
    finally:
        await proxy.stop()
        await server.close()
