"""An app for gunicorn with the Prometheus exporter, for tests/test_deploy_metrics.py.

From the repository's root, with the README's setup::

    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics gunicorn -c deploy/gunicorn.conf.py \\
        tests.apps.metrics_node:create_app

- ``GET /sse``: a stream whose first event, ``worker``, is the PID of the
  worker that holds it.
- ``GET /metrics``: ``prometheus.metrics_handler()``.

Every response names the worker that answered it in ``X-Worker``.
"""

from __future__ import annotations

import os

from aiohttp import web

from aiohttp_crossws_sse import Peer, define_hooks, prometheus, sse_adapter


def open_(peer: Peer) -> None:
    peer.send(str(os.getpid()), event="worker")


async def name_the_worker(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Worker"] = str(os.getpid())


async def create_app() -> web.Application:
    sse = sse_adapter(define_hooks(open=open_), shutdown_retry=1000)
    app = web.Application()
    sse.setup(app, "/sse")
    prometheus.register(sse)
    app.router.add_get("/metrics", prometheus.metrics_handler())
    app.on_response_prepare.append(name_the_worker)
    return app
