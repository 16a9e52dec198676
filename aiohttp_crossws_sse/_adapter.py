"""``sse_adapter`` and ``SSEAdapter``: the public adapter — routes, the app's
lifecycle, publish, stats, shutdown (its request handlers: ``_handlers``)."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol, Unpack, cast

from aiohttp import web

from ._boundary import on_the_loop
from ._connection import Connection
from ._frame import encode_retry
from ._handlers import NO_MESSAGES, Handlers, refuse_messages
from ._hooks import (
    Hooks,
    HooksLike,
    Resolver,
    as_hooks,
    logger,
    run_error_hooks,
    sse_error,
)
from ._options import AdapterOptions, Options
from ._peer import REASON_RESUME, REASON_SHUTDOWN, CloseDetails, Peer, PeerView
from ._registry import Registry
from ._wire import ReadyState
from .sync.base import SyncLink

__all__ = ["ADAPTER_KEY", "SSEAdapter", "get_adapter", "sse_adapter"]

#: Where ``setup`` stores the adapter on the app (``app[ADAPTER_KEY]``); see
#: ``get_adapter``.
ADAPTER_KEY: web.AppKey[SSEAdapter] = web.AppKey("aiohttp_crossws_sse.adapter")
# Keys that more than one adapter of an app was set up under.
_SHARED_KEYS: web.AppKey[set[web.AppKey[SSEAdapter]]] = web.AppKey(
    "aiohttp_crossws_sse.shared_keys", set
)


@on_the_loop(
    lambda adapter: adapter._registry.guard,
    # stats(): a thread-safe snapshot; handler and start bind the loop; setup runs before it
    exempt=frozenset({"stats", "handler", "start", "setup", "bidir"}),
    thread_only=frozenset({"publish"}),  # a burst of publishes stays one lazy batch
)
class SSEAdapter(Handlers):
    """An SSE endpoint with crossws hooks, peers and pub/sub (see ``sse_adapter``).

    Call it from its event loop only (``stats()`` excepted): a call from
    another thread raises ``RuntimeError`` and changes nothing."""

    def __init__(
        self,
        hooks: HooksLike | None = None,
        *,
        resolve: Resolver | None = None,
        bidir: bool = False,
        **options: Unpack[AdapterOptions],
    ) -> None:
        self._hooks: tuple[Hooks, ...] = (as_hooks(hooks),) if hooks is not None else (Hooks(),)
        if resolve is not None and not callable(resolve):
            raise TypeError("resolve must be callable: (request) -> hooks | None")
        if not isinstance(bidir, bool):
            raise TypeError(f"bidir must be a bool, not {type(bidir).__name__}")
        self._resolve = resolve
        self._bidir = bidir
        if not bidir and self._hooks[0].message is not None:
            warnings.warn(NO_MESSAGES, UserWarning, stacklevel=3)
        self.options = Options.from_kwargs(dict(options))
        self._registry: Registry[Connection] = Registry(self.options, self._relay_failed)
        self._registry.adapter = self
        #: Unique per adapter; backplanes drop what they relayed themselves.
        self.instance_id = str(uuid.uuid4())
        self._app: web.Application | None = None  # the app whose lifecycle we follow
        #: The route of the first ``setup(app, path)`` (``None`` until then).
        self.path: str | None = None
        self._unbound_warned = False
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed: asyncio.Future[None] | None = None

    # -- public API -----------------------------------------------------------

    @property
    def peers(self) -> Mapping[str, Peer]:
        """Every open peer, by id, across namespaces (read-only)."""
        return PeerView(self._registry.connections)

    @property
    def bidir(self) -> bool:
        """Whether clients may send messages over ``POST``."""
        return self._bidir

    def setup(
        self,
        app: web.Application,
        path: str | None = None,
        *,
        app_key: web.AppKey[SSEAdapter] = ADAPTER_KEY,
        **route_kwargs: Any,
    ) -> list[web.AbstractRoute]:
        """Tie the adapter to ``app``'s lifecycle (startup: connect the
        backplane; shutdown: close every peer gracefully), store it as
        ``app[app_key]`` (see ``get_adapter``) and, given ``path``, register
        the stream route (and the message route with ``bidir``) on it.
        Returns the routes registered.

        ``sse.setup(app)`` without a path is the one line ``handler`` users
        need. An adapter follows one app: a second app raises ``RuntimeError``.
        Several adapters on one app need an ``app_key`` each to be found
        with ``get_adapter``.
        """
        self._bind(app)
        held = app.get(app_key)
        if held is None:
            app[app_key] = self
        elif held is not self:
            app.setdefault(_SHARED_KEYS, set()).add(app_key)
        if path is None:
            return []
        if self.path is None:
            self.path = path
        routes = [app.router.add_get(path, self._stream, allow_head=False, **route_kwargs)]
        if self._bidir:
            routes.append(app.router.add_post(path, self._message, **route_kwargs))
        elif self._hooks[0].message is not None:  # a 405 that says why
            app.router.add_post(path, refuse_messages, **route_kwargs)
        return routes

    async def handler(self, request: web.Request) -> web.StreamResponse:
        """The bare aiohttp handler: ``GET`` streams, ``POST`` sends (with ``bidir``).

        Mount it with ``sse.setup(app)`` too, so that shutdown closes streams."""
        if request.method == "GET":
            return await self._stream(request)
        if request.method == "POST" and self._bidir:
            return await self._message(request)
        if request.method == "POST":
            return await refuse_messages(request)
        raise web.HTTPMethodNotAllowed(request.method, ("GET", "POST") if self._bidir else ("GET",))

    def publish(
        self, topic: str, data: Any, *, event: str | None = None, namespace: str | None = None
    ) -> Awaitable[str | None]:
        """Deliver to every subscriber of ``topic`` (in ``namespace``, or everywhere).

        A plain method: it encodes once, queues, and returns; it never waits
        for a client. Not awaiting its result is fire-and-forget (no warning,
        no cost). ``await`` it to wait until the backplane took the event (at
        once without one): it gives the event's id with history on, else
        ``None``, and raises ``BackplaneError`` when the backplane could not
        take it (the event still reached this instance's subscribers). A
        handler that awaits its publish before it answers gives a client
        that publishes one request after another causal order."""
        return self._registry.publish(topic, data, event=event, namespace=namespace)

    def stats(self) -> dict[str, int]:
        """Counters: peers, topics, events encoded/delivered/dropped, slow consumers.

        Safe to call from any thread (a metrics scrape): there it reads a
        snapshot and changes nothing; on the loop it first settles what a
        publish did to slow consumers."""
        registry = self._registry
        if registry.guard.on_loop_thread():
            registry.guard.enter("SSEAdapter.stats")
        return {
            "peers": len(registry.connections),
            "topics": registry.topic_count(),
            **registry.stats.as_dict(),
        }

    async def close(self) -> None:
        """Close every peer (close hooks run) and the backplane. Idempotent.

        Peers get ``shutdown_retry`` (if set) and a graceful end; after
        ``shutdown_timeout`` seconds the rest are aborted and hooks still
        running (``open`` or ``close`` hooks that hang) are cancelled."""
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        self._closing = True
        try:
            conns = list(self._registry.connections.values())
            retry = self.options.shutdown_retry
            frame = encode_retry(retry) if retry is not None else None
            for conn in conns:
                if frame is not None and conn.state == ReadyState.OPEN:
                    conn.outbox.push(frame)
                conn.end(CloseDetails(1001, REASON_SHUTDOWN), graceful=True)
            timeout = self.options.shutdown_timeout
            stuck = await _wait_closed(conns, timeout)
            if stuck:  # abort them, and cancel open hooks that hang
                for conn in stuck:
                    conn.outbox.abort()
                    conn.cancel()
                await _wait_closed(stuck, timeout)  # their close hooks run now
            # Every task a peer runs (close and message hooks) is bounded too.
            running = set(self._tasks)
            for _ in range(2):
                if not running:
                    break
                _, running = await asyncio.wait(running, timeout=timeout)
                for task in running:
                    task.cancel()
            if running:
                _, running = await asyncio.wait(running, timeout=timeout)
            if running:
                logger.warning("%d hooks still running after shutdown", len(running))
            self._registry.close()
            if self.options.sync is not None:
                await self.options.sync.close()
            self._started = False
        finally:
            self._closed.set_result(None)

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Connect the ``sync`` backplane (``setup`` does this on app startup)."""
        self._registry.guard.bind()  # this loop's thread is the adapter's
        if self._started:
            return
        self._started = True
        self._closing = False
        self._closed = None
        sync = self.options.sync
        if sync is not None:
            link = SyncLink(
                instance_id=self.instance_id,
                deliver=self._registry.deliver_relayed,
                report=lambda exc: self._relay_failed(None, exc, "backplane failed"),
                history=self.options.history,
                resync=self._resync,
            )
            await sync.start(link)
            if self.options.history and sync.assigns_ids:
                self._registry.use_backplane_ids(sync)
            elif sync.ordered:
                self._registry.backplane_delivers = True

    def _bind(self, app: web.Application) -> None:
        if self._app is app:
            return
        if self._app is not None:
            raise RuntimeError(
                "this SSEAdapter is already set up on another app: one adapter serves one "
                "app (its shutdown closes the adapter's peers); create one adapter per app"
            )
        if app.frozen:
            raise RuntimeError("SSEAdapter.setup() must be called before the app starts")
        self._app = app
        _signal(app.on_startup).append(self._on_startup)
        _signal(app.on_shutdown).append(self._on_shutdown)

    async def _on_startup(self, app: web.Application) -> None:
        await self.start()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close()

    def _resync(self) -> None:
        """The backplane was down and this instance may have missed publishes
        of the others. With history, no stream may go on as if complete:
        every stream ends gracefully (code 1012), so its client resumes from
        its last id — replayed from the cluster's history (RedisSync), or
        ``recovered`` False where this instance's own history has the gap
        (it starts a new epoch). Without history there is nothing to resume."""
        if not self.options.history:
            return
        registry = self._registry
        registry.history_gap()
        conns = list(registry.connections.values())
        if conns:
            logger.warning(
                "ending %d streams after the backplane outage: their clients resume "
                "from their last event id",
                len(conns),
            )
        for conn in conns:
            conn.end(CloseDetails(1012, REASON_RESUME), graceful=True)

    def _relay_failed(
        self, peer: Peer | None, exc: Exception, what: str = "backplane publish failed"
    ) -> None:
        """A backplane failure: logged, and the error hooks run (``peer``: the
        publisher, or ``None``); never raised into the caller."""
        err = sse_error(what, exc)
        # One line per report: a backplane reports its state changes (lost,
        # still down, back with what was lost), and a client library's
        # traceback (redis-py's run to 50 lines) would bury them.
        logger.error("%s", err)
        logger.debug("%s", err, exc_info=exc)
        conn = self._registry.connections.get(peer.id) if peer is not None else None
        hooks = conn.hooks if conn is not None else self._hooks
        if any(h.error is not None for h in hooks):
            self._spawn(run_error_hooks(hooks, peer, err))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task the adapter waits for (and bounds) on close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _wait_closed(conns: list[Connection], timeout: float) -> list[Connection]:
    """Wait up to ``timeout`` for ``conns`` to close; returns those still open."""
    waiting = [asyncio.ensure_future(c.wait_closed()) for c in conns]
    if waiting:
        _, pending = await asyncio.wait(waiting, timeout=timeout)
        for future in pending:
            future.cancel()
    return [c for c in conns if c.finalized != 2]


def get_adapter(
    where: web.Request | web.Application, app_key: web.AppKey[SSEAdapter] = ADAPTER_KEY
) -> SSEAdapter:
    """The adapter ``setup`` stored on the app serving ``where`` (a request,
    from a handler or a middleware, also in a sub-app: the nearest app that
    has one; or the app itself).

    Raises ``LookupError`` when no adapter was set up on it under
    ``app_key``, or when several were (give each its own ``app_key``)."""
    key = "ADAPTER_KEY" if app_key is ADAPTER_KEY else repr(app_key)
    if isinstance(where, web.Application):
        apps: tuple[web.Application, ...] = (where,)
    else:
        apps = tuple(reversed(where.match_info.apps)) or (where.app,)
    for app in apps:
        adapter = app.get(app_key)
        if adapter is None:
            continue
        if app_key in app.get(_SHARED_KEYS, ()):
            raise LookupError(
                f"several SSEAdapters are set up under {key} on this app: pass "
                "setup(app, path, app_key=KEY) a web.AppKey of its own for each, and the "
                "same key to get_adapter"
            )
        return adapter
    raise LookupError(
        f"no SSEAdapter is set up under {key} on this app: call sse.setup(app, ...) "
        "before the app starts"
    )


def sse_adapter(
    hooks: HooksLike | None = None,
    *,
    resolve: Resolver | None = None,
    bidir: bool = False,
    **options: Unpack[AdapterOptions],
) -> SSEAdapter:
    """Create an SSE adapter.

    ``hooks``: ``define_hooks(...)`` or a ``dict`` of hook names (typed:
    ``HooksDict``); an object with hook attributes also works at run time,
    untyped. ``resolve``: ``(request) -> hooks | None``, called
    once per connection; its hooks run after the global ones. ``bidir``:
    accept client messages over ``POST``. Options: see docs/concepts.md ("Options"); a bad
    value raises ``ValueError``/``TypeError`` naming the option.
    """
    return SSEAdapter(hooks, resolve=resolve, bidir=bidir, **options)


class _AppSignal(Protocol):
    def append(self, handler: Callable[[web.Application], Awaitable[None]], /) -> None: ...


def _signal(signal: object) -> _AppSignal:
    """``app.on_startup``/``on_shutdown``, typed the same on every aiohttp in
    our range (3.12.0's annotation disagrees with aiosignal 1.4's ``Signal``)."""
    return cast(_AppSignal, signal)
