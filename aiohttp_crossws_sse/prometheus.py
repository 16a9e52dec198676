"""Export ``SSEAdapter.stats()`` to Prometheus (the ``prometheus`` extra).

::

    from aiohttp_crossws_sse import prometheus

    sse.setup(app, "/sse")
    prometheus.register(sse)  # into prometheus_client.REGISTRY
    app.router.add_get("/metrics", prometheus.metrics_handler())

Nothing is counted on the hot path: every scrape reads ``adapter.stats()``.
Exported, each with an ``adapter`` label (the ``name`` given to
:func:`register`):

* gauges ``crossws_sse_peers`` (open streams) and ``crossws_sse_topics``;
* a counter ``crossws_sse_<key>_total`` for every other key of ``stats()``
  (``crossws_sse_deliveries_total``, ``crossws_sse_peers_opened_total``, ...),
  new keys included.

Importing this module needs ``prometheus-client``
(``pip install "aiohttp-crossws-sse[prometheus]"``); the package itself never
imports it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator

try:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "aiohttp_crossws_sse.prometheus needs prometheus-client>=0.20: "
        'pip install "aiohttp-crossws-sse[prometheus]"',
        name=exc.name,
    ) from exc

from aiohttp import web

from ._adapter import SSEAdapter

__all__ = [
    "DESCRIPTIONS",
    "GAUGES",
    "PREFIX",
    "SSECollector",
    "metrics_handler",
    "register",
    "unregister",
]

#: Every metric name starts with it.
PREFIX = "crossws_sse_"

#: The ``stats()`` keys that are current values; every other key is a counter.
GAUGES = frozenset({"peers", "topics"})

#: HELP text by ``stats()`` key (a key missing here gets a generic one).
DESCRIPTIONS: dict[str, str] = {
    "peers": "Open SSE streams (peers), now.",
    "topics": "Topics with at least one subscriber, now (summed over namespaces).",
    "peers_opened": "SSE streams opened (peers registered).",
    "peers_closed": "Peers closed (their close hooks ran), for any reason.",
    "peers_rejected": "Streams refused with 503: max_peers reached or shutting down.",
    "frames_encoded": "Events encoded: one per peer.send(), one per publish().",
    "deliveries": "Events queued for a peer (a publish to N subscribers counts N).",
    "events_dropped": "Queued events discarded for slow peers (slow_consumer='drop-oldest').",
    "slow_consumers": "Peers closed for holding more than max_buffer (slow_consumer='close').",
    "send_timeouts": "Peers aborted because their writes stayed blocked for send_timeout.",
    "messages_received": "Client messages (bidir POSTs) handed to the message hooks.",
}

_LABELS = ("adapter",)


class SSECollector(Collector):
    """A ``prometheus_client`` collector of one or more adapters' ``stats()``.

    One collector serves every adapter of a registry (:func:`register` finds
    or creates it), so each metric family appears once, with one series per
    adapter (label ``adapter``). Reads happen in whichever thread scrapes;
    :func:`metrics_handler` scrapes on the event loop, like the adapters run.
    """

    def __init__(self) -> None:
        self._adapters: dict[str, SSEAdapter] = {}
        self._lock = threading.Lock()

    @property
    def adapters(self) -> dict[str, SSEAdapter]:
        """A copy of the adapters exported, by label value."""
        with self._lock:
            return dict(self._adapters)

    def add(self, adapter: SSEAdapter, name: str) -> None:
        """Export ``adapter`` with the label ``adapter=name``.

        ``ValueError`` if ``name`` is taken or ``adapter`` is already exported."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, not {name!r}")
        with self._lock:
            if name in self._adapters:
                raise ValueError(
                    f"an adapter named {name!r} is already exported: give each "
                    "adapter its own name (register(adapter, name=...))"
                )
            for other, exported in self._adapters.items():
                if exported is adapter:
                    raise ValueError(f"this adapter is already exported as {other!r}")
            self._adapters[name] = adapter

    def remove(self, adapter: SSEAdapter) -> bool:
        """Stop exporting ``adapter``; whether it was exported."""
        with self._lock:
            for name, exported in self._adapters.items():
                if exported is adapter:
                    del self._adapters[name]
                    return True
        return False

    def collect(self) -> Iterator[Metric]:
        """One family per ``stats()`` key, one sample per adapter."""
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, adapter in self.adapters.items():
            for key, value in adapter.stats().items():
                family = families.get(key)
                if family is None:
                    family = families[key] = _family(key)
                family.add_metric([name], value)
        yield from families.values()

    def describe(self) -> list[Metric]:
        """The families :meth:`collect` yields, for the registry's name clash check."""
        return list(self.collect())


def _family(key: str) -> GaugeMetricFamily | CounterMetricFamily:
    doc = DESCRIPTIONS.get(key) or f"SSEAdapter.stats()[{key!r}]."
    if key in GAUGES:
        return GaugeMetricFamily(PREFIX + key, doc, labels=_LABELS)
    return CounterMetricFamily(PREFIX + key, doc, labels=_LABELS)  # "_total" is added


# One collector per registry, created on first use.
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, SSECollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register(
    adapter: SSEAdapter, *, name: str | None = None, registry: CollectorRegistry = REGISTRY
) -> SSECollector:
    """Export ``adapter.stats()`` from ``registry``, labelled ``adapter=name``
    (default: the adapter's route, ``adapter.path``, or ``"default"`` before
    ``setup``).

    Every adapter of one registry needs its own ``name``; a taken name or an
    adapter registered twice raises ``ValueError``. Returns the registry's
    collector (shared by its adapters), which holds the adapter until
    :func:`unregister`.
    """
    name = name or adapter.path or "default"
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is not None:
            collector.add(adapter, name)
            return collector
        collector = SSECollector()
        collector.add(adapter, name)
        registry.register(collector)  # ValueError if the names clash
        _collectors[registry] = collector
        return collector


def unregister(adapter: SSEAdapter, *, registry: CollectorRegistry = REGISTRY) -> bool:
    """Stop exporting ``adapter`` from ``registry``; whether it was exported.

    The collector leaves the registry with its last adapter."""
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None or not collector.remove(adapter):
            return False
        if not collector.adapters:
            registry.unregister(collector)
            del _collectors[registry]
        return True


def metrics_handler(
    registry: CollectorRegistry = REGISTRY,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving ``registry`` in the Prometheus text format::

        app.router.add_get("/metrics", metrics_handler())

    It serves every collector of ``registry`` (the default one includes the
    process and GC metrics), not only the adapters. Protect or hide the
    route yourself if it must not be public.
    """

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return metrics
