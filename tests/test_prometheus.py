"""The Prometheus exporter: real SSE clients, then a scrape of the real ``/metrics``."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import Peer, SSEAdapter, define_hooks, sse_adapter
from aiohttp_crossws_sse.client import SSEClientError
from aiohttp_crossws_sse.testing import SSEClientFactory, next_event, wait_until

pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
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
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
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
