"""gunicorn settings for an aiohttp-crossws-sse app (behind deploy/nginx.conf).

    gunicorn -c deploy/gunicorn.conf.py deploy.app:create_app

Command-line flags override these (``--workers 4``, ``--bind ...``).
"""

import logging
import os
from typing import Any

# The asyncio worker that runs an aiohttp app (an ``async def create_app()``
# factory, or an Application). "aiohttp.GunicornUVLoopWebWorker" for uvloop.
# Streams never block a worker: one worker holds thousands of them.
worker_class = "aiohttp.GunicornWebWorker"

# Processes. Each one has its own peers and topics: with more than one, give
# the adapter a backplane (RedisSync/PostgresSync) or a publish reaches only
# the streams of the worker that made it.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))

# Loopback: nginx faces the clients.
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")

# On SIGTERM (and on a restart) every worker closes its adapter: each stream
# gets `shutdown_retry` and a graceful end, close hooks run; streams still open
# after the adapter's `shutdown_timeout` (5 s) are aborted, and hooks still
# running get as long again. This must cover both.
graceful_timeout = 30

# No max_requests: recycling a worker ends every stream it holds.

# Prometheus (README "Metrics"), multiprocess mode: with PROMETHEUS_MULTIPROC_DIR
# in gunicorn's environment, each worker writes its figures to files there and
# a scrape of /metrics, whichever worker takes it, shows the whole server's.
metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def on_starting(server: Any) -> None:
    """The master, before any worker: a new run counts from zero (the files
    of a previous run would add their counts), so empty the directory."""
    if metrics_dir:
        os.makedirs(metrics_dir, exist_ok=True)
        for name in os.listdir(metrics_dir):
            if name.endswith(".db"):
                os.remove(os.path.join(metrics_dir, name))


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited, or was killed: its gauges (open streams) leave the
    sums; its counters stay in the totals."""
    if metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, metrics_dir)


def post_worker_init(worker: Any) -> None:
    """gunicorn configures only its own loggers: send every other logger's
    lines (the package's ``aiohttp_crossws_sse``: backplane outages, failing
    hooks; your app's) to gunicorn's error log, at its ``--log-level``."""
    root = logging.getLogger()
    for handler in worker.log.error_log.handlers:
        root.addHandler(handler)
    root.setLevel(worker.log.error_log.level)
