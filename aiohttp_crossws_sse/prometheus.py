"""Export ``SSEAdapter.stats()`` to Prometheus (the ``prometheus`` extra).

::

    from aiohttp_crossws_sse import prometheus

    sse.setup(app, "/sse")
    prometheus.register(sse)  # into prometheus_client.REGISTRY, until app cleanup
    app.router.add_get("/metrics", prometheus.metrics_handler())

Nothing is counted on the hot path: figures are read from ``adapter.stats()``.
Exported, each with an ``adapter`` label (the ``name`` given to
[register][]): gauges ``crossws_sse_peers`` (open streams) and
``crossws_sse_topics``; a counter ``crossws_sse_<key>_total`` for every other
key of ``stats()``, new keys included.

One process: a scrape reads ``stats()``. Several (gunicorn workers), with
``PROMETHEUS_MULTIPROC_DIR`` in the environment the server starts with:
prometheus_client's multiprocess mode. Each worker writes its figures to its
files there (every ``interval`` seconds, and before each scrape it serves);
a scrape, whichever worker answers it, sums the live workers' figures.

Importing this module needs ``prometheus-client``
(``pip install "aiohttp-crossws-sse[prometheus]"``); the package itself never
imports it.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

try:
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import choose_encoder, gzip_accepted
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "aiohttp_crossws_sse.prometheus needs prometheus-client>=0.20: "
        'pip install "aiohttp-crossws-sse[prometheus]"',
        name=exc.name,
    ) from exc

from aiohttp import hdrs, web

from ._adapter import SSEAdapter
from ._prometheus_files import (
    DESCRIPTIONS,
    GAUGES,
    LABELS,
    MULTIPROC_ENV,
    PREFIX,
    doc,
    multiprocess_dir,
    process_figures,
)

__all__ = [
    "DESCRIPTIONS",
    "GAUGES",
    "MULTIPROC_ENV",
    "PREFIX",
    "SSECollector",
    "metrics_handler",
    "multiprocess_dir",
    "register",
    "unregister",
]

log = logging.getLogger("aiohttp_crossws_sse")


def _closed(adapter: SSEAdapter) -> bool:
    # No public "closed" on SSEAdapter yet: close() leaves a done future.
    done = adapter._closed
    return done is not None and done.done()


class SSECollector(Collector):
    """A ``prometheus_client`` collector of one or more adapters' ``stats()``.

    One per registry ([register][] finds or creates it): each family
    appears once, one series per adapter (label ``adapter``). Reads happen in
    whichever thread scrapes. A closed adapter is dropped (at the next scrape
    or ``add``)."""

    def __init__(self) -> None:
        self._adapters: dict[str, SSEAdapter] = {}
        self._lock = threading.Lock()

    @property
    def adapters(self) -> dict[str, SSEAdapter]:
        """A copy of the adapters exported, by label value."""
        with self._lock:
            self._prune()
            return dict(self._adapters)

    def add(self, adapter: SSEAdapter, name: str) -> None:
        """Export ``adapter`` with the label ``adapter=name``.

        ``ValueError`` if ``name`` is taken or ``adapter`` is already exported."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, not {name!r}")
        with self._lock:
            self._prune()
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

    def _prune(self) -> None:
        for name, adapter in list(self._adapters.items()):
            if _closed(adapter):
                del self._adapters[name]

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
        """The families [collect][SSECollector.collect] yields, for the registry's
        name clash check."""
        return list(self.collect())


def _family(key: str) -> GaugeMetricFamily | CounterMetricFamily:
    if key in GAUGES:
        return GaugeMetricFamily(PREFIX + key, doc(key), labels=LABELS)
    return CounterMetricFamily(PREFIX + key, doc(key), labels=LABELS)  # "_total" is added


async def _write_every(adapter: SSEAdapter, interval: float, registry: CollectorRegistry) -> None:
    """Keep this worker's figures fresh in the files until the adapter closes."""
    failed = False
    while not _closed(adapter):
        try:
            process_figures.write(adapter)
        except Exception:  # a broken exporter must not end the worker
            if not failed:
                log.exception("prometheus: writing %s's figures failed", adapter.path)
            failed = True
        await asyncio.sleep(interval)
    unregister(adapter, registry=registry)  # its final figures, then out


# -- register / unregister -------------------------------------------------------------

# One collector per registry, created on first use.
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, SSECollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.RLock()


def register(
    adapter: SSEAdapter,
    *,
    name: str | None = None,
    registry: CollectorRegistry = REGISTRY,
    interval: float = 1.0,
) -> SSECollector:
    """Export ``adapter.stats()`` from ``registry``, labelled ``adapter=name``
    (default: ``adapter.path``, or ``"default"`` before ``setup``). Call it
    after ``sse.setup(app, ...)``, before the app starts (else ``RuntimeError``).

    The export follows the app: its cleanup unexports the adapter, so a
    factory may build one app after another in one process (a test suite). A
    closed adapter is no longer exported; one never set up stays exported
    until [unregister][] or its ``close()``. Every adapter of a registry
    needs its own ``name`` (else ``ValueError``). Returns the registry's
    collector.

    Multiprocess mode ([multiprocess_dir][]) needs ``setup`` first: from
    app startup to cleanup a task writes the adapter's figures to this
    worker's files every ``interval`` seconds (``> 0``): how stale another
    worker's figures may be in a scrape. A write is a ``stats()`` and a dozen
    writes to memory-mapped files.
    """
    if not isinstance(adapter, SSEAdapter):
        raise TypeError(f"adapter must be an SSEAdapter, not {type(adapter).__name__}")
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise TypeError(f"interval must be a number of seconds, not {type(interval).__name__}")
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, not {interval!r}")
    name = name or adapter.path or "default"
    shared = multiprocess_dir() is not None
    app = adapter._app  # the app it follows (no public accessor yet)
    if app is not None and app.frozen:
        raise RuntimeError(
            "call prometheus.register() before the app starts, next to sse.setup(): "
            "the app's cleanup unexports the adapter"
        )
    if shared and app is None:
        raise RuntimeError(
            f"in multiprocess mode ({MULTIPROC_ENV}) call sse.setup(app, ...) before "
            "prometheus.register(sse): the app runs the task that writes the figures"
        )
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = SSECollector()
            collector.add(adapter, name)
            registry.register(collector)  # ValueError if the names clash
            _collectors[registry] = collector
        else:
            collector.add(adapter, name)
        if shared:
            try:
                process_figures.add(adapter, name, registry)
            except BaseException:
                unregister(adapter, registry=registry)
                raise
    if app is not None:
        _follow(app, adapter, registry, interval if shared else None)
    return collector


def _follow(
    app: web.Application, adapter: SSEAdapter, registry: CollectorRegistry, interval: float | None
) -> None:
    """Tie the export to ``app``: with an ``interval``, the writer task from
    startup to cleanup; at cleanup (after shutdown closed the adapter), out."""
    writer: list[asyncio.Task[None]] = []

    async def start_writing(app: web.Application) -> None:
        assert interval is not None
        writer.append(asyncio.create_task(_write_every(adapter, interval, registry)))

    async def unexport(app: web.Application) -> None:
        for task in writer:
            task.cancel()
            await asyncio.wait([task])  # never outlives the app
        unregister(adapter, registry=registry)

    if interval is not None:
        cast(Any, app.on_startup).append(start_writing)
    cast(Any, app.on_cleanup).append(unexport)


def unregister(adapter: SSEAdapter, *, registry: CollectorRegistry = REGISTRY) -> bool:
    """Stop exporting ``adapter`` from ``registry``; whether it was exported.

    The collector leaves the registry with its last adapter. In multiprocess
    mode its last figures are written: counts stay in the totals, gauges
    leave the sums."""
    with _collectors_lock:
        process_figures.remove(adapter, registry)
        collector = _collectors.get(registry)
        if collector is None or not collector.remove(adapter):
            return False
        if not collector.adapters:
            registry.unregister(collector)
            del _collectors[registry]
        return True


# -- the handler -----------------------------------------------------------------------


def metrics_handler(
    registry: CollectorRegistry = REGISTRY, *, disable_compression: bool = False
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving ``registry`` as prometheus_client's own
    handler does: ``app.router.add_get("/metrics", metrics_handler())``.

    The format follows ``Accept`` (OpenMetrics, else the text format), gzip
    follows ``Accept-Encoding`` (unless ``disable_compression``), ``?name[]=``
    selects series. Every collector of ``registry`` is served (the default
    one has the process and GC metrics). Keep the route off the internet.

    In multiprocess mode it serves ``PROMETHEUS_MULTIPROC_DIR`` instead, this
    worker's figures written first: every metric made with prometheus_client's
    classes, the adapters' included, summed over the workers; collectors
    (process, GC) are per process and left out.
    """
    source: Any = registry
    shared = multiprocess_dir() is not None
    if shared:
        source = CollectorRegistry()
        files: Any = MultiProcessCollector  # untyped in prometheus_client
        files(source)

    async def metrics(request: web.Request) -> web.Response:
        if shared:
            process_figures.write()  # this worker's figures, exact
        encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, ())))
        names = request.query.getall("name[]", ())
        body = encoder(source.restricted_registry(names) if names else source)
        headers = {hdrs.CONTENT_TYPE: content_type, hdrs.VARY: "Accept, Accept-Encoding"}
        encodings = ",".join(request.headers.getall(hdrs.ACCEPT_ENCODING, ()))
        if not disable_compression and gzip_accepted(encodings):
            body = gzip.compress(body)
            headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=body, headers=headers)

    return metrics
