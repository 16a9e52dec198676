"""prometheus_client's multiprocess mode: this process's figures, in its files.

Private to ``prometheus.py`` (which re-exports the public names); it needs
prometheus-client, imported only through that module.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from prometheus_client import Counter, Gauge
from prometheus_client import values as _values
from prometheus_client.registry import CollectorRegistry

if TYPE_CHECKING:
    from ._adapter import SSEAdapter

__all__ = [
    "DESCRIPTIONS",
    "GAUGES",
    "LABELS",
    "MULTIPROC_ENV",
    "PREFIX",
    "doc",
    "multiprocess_dir",
    "process_figures",
]

#: Every metric name starts with it.
PREFIX = "crossws_sse_"

#: The ``stats()`` keys that are current values; every other key is a counter.
GAUGES = frozenset({"peers", "topics"})

#: prometheus_client's multiprocess mode is on when this names a directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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
    "relayed_out": "Publishes this instance handed to the sync backplane (not refused).",
    "relayed_in": "Publishes of other instances this instance received from the sync backplane.",
}

LABELS = ("adapter",)


def doc(key: str) -> str:
    return DESCRIPTIONS.get(key) or f"SSEAdapter.stats()[{key!r}]."


# -- multiprocess mode: this process's figures, written to its files ----------------------


@dataclass
class _Written:
    adapter: SSEAdapter
    name: str
    registry: CollectorRegistry  # whose unregister() ends it
    counted: dict[str, int] = field(default_factory=dict)  # counter values already added


class _ProcessFigures:
    """This process's adapters, written to ``PROMETHEUS_MULTIPROC_DIR``.

    Gauges are ``livesum`` (a dead process's leave with ``mark_process_dead``);
    counters grow by what ``stats()`` gained since the last write, so a dead
    worker's counts stay in the totals and a later adapter of the same name
    in this process continues them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written: dict[str, _Written] = {}
        self._metrics: dict[str, Gauge | Counter] = {}

    def add(self, adapter: SSEAdapter, name: str, registry: CollectorRegistry) -> None:
        with self._lock:
            for held in self._written.values():
                if held.adapter is adapter or held.name == name:
                    raise ValueError(
                        f"{held.name!r} is already exported by this process: in multiprocess "
                        "mode an adapter and a name are registered once, whatever the registry"
                    )
            self._written[name] = held = _Written(adapter, name, registry)
            self._write(held)

    def remove(self, adapter: SSEAdapter, registry: CollectorRegistry) -> None:
        with self._lock:
            for held in list(self._written.values()):
                if held.adapter is adapter and held.registry is registry:
                    self._unexport(held)

    def write(self, adapter: SSEAdapter | None = None) -> None:
        """Write ``adapter``'s figures (default: every adapter's) to the files."""
        with self._lock:
            for held in self._written.values():
                if adapter is None or held.adapter is adapter:
                    self._write(held)

    def _unexport(self, held: _Written) -> None:
        self._write(held)  # what it counted last
        del self._written[held.name]
        for key in GAUGES:  # no longer part of the sums
            if key in self._metrics:
                cast(Gauge, self._metrics[key]).labels(held.name).set(0)

    def _write(self, held: _Written) -> None:
        for key, value in held.adapter.stats().items():
            metric = self._metrics.get(key)
            if metric is None:  # registry=None: the files are what is served
                metric = self._metrics[key] = (
                    Gauge(
                        PREFIX + key, doc(key), LABELS, registry=None, multiprocess_mode="livesum"
                    )
                    if key in GAUGES
                    else Counter(PREFIX + key, doc(key), LABELS, registry=None)
                )
            child = metric.labels(held.name)  # a series from the start, 0 included
            if isinstance(child, Gauge):
                child.set(value)
                continue
            gained = value - held.counted.get(key, 0)
            if gained > 0:
                child.inc(gained)
                held.counted[key] = value


process_figures = _ProcessFigures()


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when prometheus_client runs in its
    multiprocess mode, else ``None``; ``RuntimeError`` when the mode is half
    on (the variable set after prometheus_client was imported, which decides
    at import; or naming no directory)."""
    path = os.environ.get(MULTIPROC_ENV)
    mmaped = bool(getattr(_values.ValueClass, "_multiprocess", False))
    if not path and not mmaped:
        return None
    if not mmaped:
        raise RuntimeError(
            f"{MULTIPROC_ENV} was set after prometheus_client was imported (it decides "
            "at import): set it in the environment the server (gunicorn) starts with"
        )
    if not path or not os.path.isdir(path):
        raise RuntimeError(
            f"{MULTIPROC_ENV}={path!r} is not a directory: create it before the server "
            "starts (deploy/gunicorn.conf.py does)"
        )
    return path
