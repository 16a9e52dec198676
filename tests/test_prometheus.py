"""The Prometheus exporter: real SSE clients, then a scrape of the real ``/metrics``."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aiohttp_crossws_sse import ADAPTER_KEY, Peer, SSEAdapter, define_hooks, sse_adapter
from aiohttp_crossws_sse.client import SSEClientError, connect
from aiohttp_crossws_sse.testing import SSEClientFactory, next_event, wait_until

pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from aiohttp_crossws_sse import prometheus as prom


def news_adapter(**options: Any) -> SSEAdapter:
    """Every peer subscribes to "news" and gets a welcome event."""

    def open_(peer: Peer) -> None:
        peer.subscribe("news")
        peer.send("welcome")

    return sse_adapter(define_hooks(open=open_), **options)


def make_app(registry: CollectorRegistry, **adapters: SSEAdapter) -> web.Application:
    """Each adapter at ``/<key>``, exported as ``adapter="/<key>"``; ``/metrics``."""
    app = web.Application()
    for key, sse in adapters.items():
        sse.setup(app, f"/{key}")
        prom.register(sse, name=f"/{key}", registry=registry)
    app.router.add_get("/metrics", prom.metrics_handler(registry))
    return app


Scrape = dict[str, dict[str, Any]]


async def scrape(sse_client: SSEClientFactory, app: web.Application) -> Scrape:
    """GET /metrics; ``{family name: {"type", "help", "samples": {(name, adapter): value}}}``."""
    url = (await sse_client.server(app=app)).make_url("/metrics")
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        # what prometheus_client's own handler answers to this Accept
        accept = resp.request_info.headers["Accept"]
        assert resp.headers["Content-Type"] == choose_encoder(accept)[1]
        text = await resp.text()
    return {
        family.name: {
            "type": family.type,
            "help": family.documentation,
            "samples": {(s.name, s.labels["adapter"]): s.value for s in family.samples},
        }
        for family in text_string_to_metric_families(text)
    }


def value(metrics: Scrape, sample: str, adapter: str = "/sse") -> float:
    family = sample.removesuffix("_total")
    return float(metrics[family]["samples"][sample, adapter])


async def test_scrape_counts_peers_and_deliveries(sse_client: SSEClientFactory) -> None:
    registry = CollectorRegistry()
    sse = news_adapter(max_peers=3)
    app = make_app(registry, sse=sse)

    clients = [await sse_client(app=app) for _ in range(3)]
    for client in clients:
        assert (await next_event(client)).data == "welcome"
    with pytest.raises(SSEClientError) as refused:  # max_peers
        await sse_client(app=app)
    assert refused.value.status == 503
    sse.publish("news", "one")
    sse.publish("news", "two")
    for client in clients:
        assert [(await next_event(client)).data for _ in range(2)] == ["one", "two"]

    metrics = await scrape(sse_client, app)
    assert metrics["crossws_sse_peers"]["type"] == "gauge"
    assert value(metrics, "crossws_sse_peers") == 3
    assert value(metrics, "crossws_sse_topics") == 1
    assert metrics["crossws_sse_deliveries"]["type"] == "counter"
    assert metrics["crossws_sse_deliveries"]["help"] == prom.DESCRIPTIONS["deliveries"]
    assert value(metrics, "crossws_sse_peers_opened_total") == 3
    assert value(metrics, "crossws_sse_peers_rejected_total") == 1
    assert value(metrics, "crossws_sse_peers_closed_total") == 0
    # 3 welcomes, 2 publishes
    assert value(metrics, "crossws_sse_frames_encoded_total") == 5
    # 3 welcomes, 2 publishes to 3 subscribers
    assert value(metrics, "crossws_sse_deliveries_total") == 9
    # Every key of stats() is exported, under its conventional name.
    for key, current in sse.stats().items():
        sample = f"crossws_sse_{key}" + ("" if key in prom.GAUGES else "_total")
        assert value(metrics, sample) == current, sample
        assert metrics[f"crossws_sse_{key}"]["help"] == prom.DESCRIPTIONS[key]

    await clients[0].close()
    await wait_until(lambda: sse.stats()["peers_closed"] == 1, what="the first peer closed")
    metrics = await scrape(sse_client, app)
    assert value(metrics, "crossws_sse_peers") == 2
    assert value(metrics, "crossws_sse_peers_closed_total") == 1
    assert value(metrics, "crossws_sse_peers_opened_total") == 3


async def test_adapters_on_two_routes_are_labelled(sse_client: SSEClientFactory) -> None:
    registry = CollectorRegistry()
    chat, feed = news_adapter(), news_adapter()
    app = make_app(registry, chat=chat, feed=feed)

    chat_clients = [await sse_client(app=app, path="/chat") for _ in range(2)]
    feed_client = await sse_client(app=app, path="/feed")
    for client in [*chat_clients, feed_client]:
        await next_event(client)
    feed.publish("news", "only the feed")
    assert (await next_event(feed_client)).data == "only the feed"

    metrics = await scrape(sse_client, app)
    assert metrics["crossws_sse_peers"]["samples"] == {
        ("crossws_sse_peers", "/chat"): 2,
        ("crossws_sse_peers", "/feed"): 1,
    }
    assert value(metrics, "crossws_sse_deliveries_total", "/chat") == 2
    assert value(metrics, "crossws_sse_deliveries_total", "/feed") == 2

    assert prom.unregister(feed, registry=registry)
    assert not prom.unregister(feed, registry=registry)
    metrics = await scrape(sse_client, app)
    assert set(metrics["crossws_sse_peers"]["samples"]) == {("crossws_sse_peers", "/chat")}

    assert prom.unregister(chat, registry=registry)  # the last one: the collector leaves
    assert not any(f.startswith("crossws_sse_") for f in await scrape(sse_client, app))


async def test_new_stats_keys_are_exported(
    sse_client: SSEClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = CollectorRegistry()
    sse = news_adapter()
    app = make_app(registry, sse=sse)
    stats = sse.stats
    monkeypatch.setattr(sse, "stats", lambda: {**stats(), "widgets_made": 7})

    metrics = await scrape(sse_client, app)
    assert metrics["crossws_sse_widgets_made"]["type"] == "counter"
    assert value(metrics, "crossws_sse_widgets_made_total") == 7
    assert "widgets_made" in metrics["crossws_sse_widgets_made"]["help"]
    assert value(metrics, "crossws_sse_peers") == 0


def test_names_are_unique_per_registry() -> None:
    registry = CollectorRegistry()
    first, second = sse_adapter(), sse_adapter()
    collector = prom.register(first, registry=registry)
    assert collector.adapters == {"default": first}
    with pytest.raises(ValueError, match="already exported"):
        prom.register(second, registry=registry)  # "default" again
    with pytest.raises(ValueError, match="already exported as 'default'"):
        prom.register(first, name="again", registry=registry)
    assert prom.register(second, name="second", registry=registry) is collector
    routed = sse_adapter()
    routed.setup(web.Application(), "/feed")
    prom.register(routed, registry=registry)  # named by its route
    assert collector.adapters["/feed"] is routed
    # Another registry gets its own collector.
    assert prom.register(first, registry=CollectorRegistry()) is not collector


def test_package_does_not_import_prometheus_client() -> None:
    code = (
        "import sys\n"
        "import aiohttp_crossws_sse\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import aiohttp_crossws_sse.prometheus\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert 'pip install "aiohttp-crossws-sse[prometheus]"' in out


# -- an app factory, a fresh app per test (README "Testing your app") ------------------


def metrics_app() -> web.Application:
    """The README's pattern: ``register`` into the default registry, in a factory."""
    sse = news_adapter()
    app = web.Application()
    sse.setup(app, "/sse")
    prom.register(sse)
    app.router.add_get("/metrics", prom.metrics_handler())
    return app


def crossws_families(text: str) -> Scrape:
    families = text_string_to_metric_families(text)
    return {
        f.name: {"samples": {(s.name, s.labels["adapter"]): s.value for s in f.samples}}
        for f in families
        if f.name.startswith("crossws_sse_")
    }


async def scrape_url(url: str) -> Scrape:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return crossws_families(await resp.text())


async def test_a_factory_builds_one_app_after_another() -> None:
    """Each app's cleanup unexports its adapter: the next app of the same
    factory registers under the same name, and a scrape shows its own figures."""
    for round in range(3):
        app = metrics_app()  # raised "an adapter named '/sse' is already exported"
        sse = app[ADAPTER_KEY]
        async with TestServer(app) as server:
            client = connect(str(server.make_url("/sse")))
            try:
                assert (await client.next_event()).data == "welcome"
                metrics = await scrape_url(str(server.make_url("/metrics")))
            finally:
                await client.close()
        assert value(metrics, "crossws_sse_peers") == 1, round
        assert value(metrics, "crossws_sse_peers_opened_total") == 1, round  # this app's
        assert sse.stats()["peers"] == 0
        # the cleanup took it out of the default registry
        assert not any(m.name.startswith("crossws_sse_") for m in REGISTRY.collect())
        assert not prom.unregister(sse)


async def test_a_closed_adapter_is_no_longer_exported(sse_client: SSEClientFactory) -> None:
    registry = CollectorRegistry()
    old, live = news_adapter(), news_adapter()
    prom.register(old, name="/old", registry=registry)  # no app: closed by hand
    app = make_app(registry, sse=live)
    assert (await next_event(await sse_client(app=app))).data == "welcome"
    assert set(value_of(await scrape(sse_client, app), "crossws_sse_peers")) == {"/old", "/sse"}

    await old.close()
    metrics = await scrape(sse_client, app)
    assert set(value_of(metrics, "crossws_sse_peers")) == {"/sse"}
    assert value(metrics, "crossws_sse_peers") == 1
    # and its name is free again
    again = news_adapter()
    prom.register(again, name="/old", registry=registry)
    assert value(await scrape(sse_client, app), "crossws_sse_peers", "/old") == 0


def value_of(metrics: Scrape, family: str) -> dict[str, float]:
    """``{adapter label: value}`` of one family."""
    return {adapter: v for (_, adapter), v in metrics[family]["samples"].items()}


# -- content negotiation, as prometheus_client's own handler does it -------------------


async def test_openmetrics_gzip_and_name_filter_are_negotiated(
    sse_client: SSEClientFactory,
) -> None:
    registry = CollectorRegistry()
    sse = news_adapter()
    app = make_app(registry, sse=sse)
    assert (await next_event(await sse_client(app=app))).data == "welcome"
    url = (await sse_client.server(app=app)).make_url("/metrics")
    openmetrics = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"

    async def get(headers: dict[str, str], query: Any = None) -> tuple[Any, bytes]:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(url, headers=headers, params=query) as resp,
        ):
            assert resp.status == 200
            return resp.headers, await resp.read()

    # OpenMetrics when asked for (what Prometheus asks for first)
    headers, body = await get({"Accept": openmetrics, "Accept-Encoding": "identity"})
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert "Content-Encoding" not in headers
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_parser.text_string_to_metric_families(text)}
    assert families["crossws_sse_peers"].samples[0].value == 1
    assert families["crossws_sse_deliveries"].type == "counter"
    assert {s.name for s in families["crossws_sse_deliveries"].samples} == {
        "crossws_sse_deliveries_total"
    }

    # gzip when accepted, in either format
    headers, body = await get({"Accept": openmetrics, "Accept-Encoding": "gzip, deflate"})
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).decode() == text
    headers, body = await get({"Accept": "text/plain", "Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("text/plain")
    plain = crossws_families(gzip.decompress(body).decode())
    assert value(plain, "crossws_sse_peers") == 1

    # name[] picks series, as prometheus_client's handler does
    headers, body = await get(
        {"Accept-Encoding": "identity"},
        [("name[]", "crossws_sse_peers"), ("name[]", "crossws_sse_deliveries_total")],
    )
    assert set(crossws_families(body.decode())) == {"crossws_sse_peers", "crossws_sse_deliveries"}


# -- bad input, and multiprocess mode in a process of its own ---------------------------


async def test_register_refuses_bad_input_naming_it() -> None:
    registry = CollectorRegistry()
    sse = news_adapter()
    with pytest.raises(TypeError, match="adapter must be an SSEAdapter"):
        prom.register("sse", registry=registry)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval must be > 0"):
        prom.register(sse, registry=registry, interval=0)
    with pytest.raises(TypeError, match="interval must be a number"):
        prom.register(sse, registry=registry, interval="1")  # type: ignore[arg-type]
    app = web.Application()
    sse.setup(app, "/sse")
    async with TestServer(app):
        with pytest.raises(RuntimeError, match="before the app starts"):
            prom.register(sse, registry=registry)
    assert not prom.unregister(sse, registry=registry)  # nothing was exported


MULTIPROCESS_SCRIPT = """
import asyncio, os
import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp_crossws_sse import define_hooks, prometheus, sse_adapter
from aiohttp_crossws_sse.client import connect

def create_app():
    sse = sse_adapter(define_hooks(open=lambda peer: peer.send("hi")))
    app = web.Application()
    sse.setup(app, "/sse")
    prometheus.register(sse, interval=0.05)
    app.router.add_get("/metrics", prometheus.metrics_handler())
    return app

async def peers(server):
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/metrics")) as resp:
            text = await resp.text()
    wanted = ("crossws_sse_peers{", "crossws_sse_peers_opened_total{")
    return sorted(line for line in text.splitlines() if line.startswith(wanted))

async def main():
    print(os.getpid())
    try:
        prometheus.register(sse_adapter())
    except RuntimeError as exc:
        print(exc)
    for _ in range(2):  # one app after another, as in a test suite
        app = create_app()
        async with TestServer(app) as server:
            client = connect(str(server.make_url("/sse")))
            await client.next_event()
            print(await peers(server))
            await client.close()
    print(len(asyncio.all_tasks()) - 1, "tasks left")
    scraper = web.Application()  # every app closed: the files still hold the counts
    scraper.router.add_get("/metrics", prometheus.metrics_handler())
    async with TestServer(scraper) as server:
        print(await peers(server))

asyncio.run(main())
"""


def run_script(code: str, env: dict[str, str]) -> list[str]:
    """``code`` in a fresh interpreter (warnings are errors); its output lines."""
    base = {k: v for k, v in os.environ.items() if k != prom.MULTIPROC_ENV}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True, text=True, timeout=60, env={**base, **env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_multiprocess_mode_follows_each_app(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR set: the figures go through the files; one app
    after another registers again; no writer task outlives its app."""
    pid, unset, first, second, tasks, after = run_script(
        MULTIPROCESS_SCRIPT, {prom.MULTIPROC_ENV: str(tmp_path)}
    )
    assert unset.startswith("in multiprocess mode (PROMETHEUS_MULTIPROC_DIR) call sse.setup")
    peers, opened = (
        'crossws_sse_peers{adapter="/sse"}',
        'crossws_sse_peers_opened_total{adapter="/sse"}',
    )
    assert first == str([f"{opened} 1.0", f"{peers} 1.0"])
    # the next app's adapter continues this process's counts
    assert second == str([f"{opened} 2.0", f"{peers} 1.0"])
    assert tasks == "0 tasks left"
    assert after == str([f"{opened} 2.0", f"{peers} 0.0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"counter_{pid}.db",
        f"gauge_livesum_{pid}.db",
    ]


@pytest.mark.parametrize("case", ["set-after-import", "not-a-directory"])
def test_multiprocess_mode_half_on_says_so(tmp_path: Path, case: str) -> None:
    late = f"os.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(tmp_path)!r}\n"
    code = (
        "import os\n"
        "import prometheus_client\n"
        + (late if case == "set-after-import" else "")
        + "from aiohttp_crossws_sse import prometheus\n"
        "try:\n"
        "    prometheus.metrics_handler()\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    missing = {prom.MULTIPROC_ENV: str(tmp_path / "missing")}
    [said] = run_script(code, {} if case == "set-after-import" else missing)
    if case == "set-after-import":
        assert said.startswith("PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imp")
    else:
        assert said.startswith(f"PROMETHEUS_MULTIPROC_DIR={str(tmp_path / 'missing')!r} is not a")
