"""``sse_adapter`` and ``SSEAdapter``: routes, the stream handler, lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from types import MappingProxyType
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse

from ._bidir import receive
from ._frame import encode_retry
from ._hooks import (
    Hooks,
    Resolver,
    SSEError,
    Upgrade,
    as_hooks,
    call,
    logger,
    report,
    run_upgrade,
    wrap,
)
from ._options import Options
from ._peer import OPEN, REASON_LOST, REASON_OPEN_FAILED, REASON_SHUTDOWN, CloseDetails, Peer
from ._registry import Registry

__all__ = ["SSEAdapter", "sse_adapter"]


class _EventStream(EventSourceResponse):
    """aiohttp-sse's response (headers, TCP user timeout, EOF handling) without
    its per-stream ping task: one adapter-wide timer pings every peer, which
    saves a task and a sleeping coroutine per connection."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return self._payload_writer
        if request.version >= (1, 1):
            self.enable_chunked_encoding()
        self._set_tcp_user_timeout(request)
        return await web.StreamResponse.prepare(self, request)


class SSEAdapter:
    """An SSE endpoint with crossws hooks, peers and pub/sub (see ``sse_adapter``)."""

    def __init__(
        self,
        hooks: object = None,
        *,
        resolve: Resolver | None = None,
        bidir: bool = False,
        **options: Any,
    ) -> None:
        self._hooks: tuple[Hooks, ...] = (as_hooks(hooks),) if hooks is not None else (Hooks(),)
        if resolve is not None and not callable(resolve):
            raise TypeError("resolve must be callable: (request) -> hooks | None")
        if not isinstance(bidir, bool):
            raise TypeError(f"bidir must be a bool, not {type(bidir).__name__}")
        self._resolve = resolve
        self._bidir = bidir
        self.options = Options.from_kwargs(options)
        self._registry = Registry(self.options, self._relay_failed)
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed: asyncio.Future[None] | None = None

    # -- public API -----------------------------------------------------------

    @property
    def peers(self) -> Mapping[str, Peer]:
        """Every open peer, by id, across namespaces (read-only)."""
        return MappingProxyType(self._registry.peers)

    @property
    def bidir(self) -> bool:
        """Whether clients may send messages over ``POST``."""
        return self._bidir

    def setup(
        self, app: web.Application, path: str, **route_kwargs: Any
    ) -> list[web.AbstractRoute]:
        """Register the stream route (and the message route with ``bidir``) on
        ``path`` and tie the adapter to ``app``'s shutdown. Returns the routes."""
        routes = [app.router.add_get(path, self._stream, allow_head=False, **route_kwargs)]
        if self._bidir:
            routes.append(app.router.add_post(path, self._message, **route_kwargs))
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return routes

    async def handler(self, request: web.Request) -> web.StreamResponse:
        """The bare aiohttp handler: ``GET`` streams, ``POST`` sends (with ``bidir``)."""
        if request.method == "GET":
            return await self._stream(request)
        allowed = ("GET", "POST") if self._bidir else ("GET",)
        if request.method == "POST" and self._bidir:
            return await self._message(request)
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    def publish(
        self, topic: str, data: Any, *, event: str | None = None, namespace: str | None = None
    ) -> None:
        """Deliver to every subscriber of ``topic`` (in ``namespace``, or everywhere).

        A plain method: it encodes once, queues, and returns; it never waits
        for a client."""
        self._registry.publish(topic, data, event=event, namespace=namespace)

    def stats(self) -> dict[str, int]:
        """Counters: peers, topics, events encoded/delivered/dropped, slow consumers."""
        s = self._registry.stats
        return {
            "peers": len(self._registry.peers),
            "topics": self._registry.topic_count(),
            "peers_opened": s.peers_opened,
            "peers_closed": s.peers_closed,
            "peers_rejected": s.peers_rejected,
            "frames_encoded": s.frames_encoded,
            "deliveries": s.deliveries,
            "events_dropped": s.events_dropped,
            "slow_consumers": s.slow_consumers,
            "messages_received": s.messages_received,
        }

    async def close(self) -> None:
        """Close every peer (close hooks run) and the backplane. Idempotent.

        Peers get ``shutdown_retry`` (if set) and a graceful end; those still
        open after ``shutdown_timeout`` seconds are aborted."""
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        self._closing = True
        try:
            peers = list(self._registry.peers.values())
            retry = self.options.shutdown_retry
            frame = encode_retry(retry) if retry is not None else None
            for peer in peers:
                if frame is not None and peer.ready_state == OPEN:
                    peer._push(frame)
                peer.close(1001, REASON_SHUTDOWN)
            timeout = self.options.shutdown_timeout
            waiting = [asyncio.ensure_future(p.wait_closed()) for p in peers]
            if waiting:
                _, pending = await asyncio.wait(waiting, timeout=timeout)
                for peer in peers:
                    if peer._finalized != 2 and peer._transport is not None:
                        peer._transport.abort()
                if pending:  # aborted now; only a close hook that hangs can hold us
                    _, pending = await asyncio.wait(pending, timeout=timeout)
                for future in pending:
                    future.cancel()
                if pending:
                    logger.warning("%d close hooks still running after shutdown", len(pending))
            if self._tasks:
                _, running = await asyncio.wait(set(self._tasks), timeout=timeout)
                for task in running:
                    task.cancel()
                if running:
                    await asyncio.wait(running)
            self._registry.close()
            if self.options.sync is not None:
                await self.options.sync.close()
            self._started = False
        finally:
            self._closed.set_result(None)

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Connect the ``sync`` backplane (``setup`` does this on app startup).

        Call it yourself when you mount ``handler`` without ``setup``."""
        if self._started:
            return
        self._started = True
        self._closing = False
        self._closed = None
        if self.options.sync is not None:
            await self.options.sync.start(self._registry.deliver_relayed)

    async def _on_startup(self, app: web.Application) -> None:
        await self.start()

    def _relay_failed(self, peer: Peer | None, exc: Exception) -> None:
        err = wrap("backplane publish failed", exc)
        logger.error("%s", err, exc_info=exc)
        hooks = peer._hooks if peer is not None else self._hooks
        if any(h.error is not None for h in hooks):
            self._spawn(report(hooks, peer, err))

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in a task the adapter waits for on close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hooks_for(self, request: web.Request) -> tuple[Hooks, ...]:
        if self._resolve is None:
            return self._hooks
        resolved = await call(self._resolve, request)
        if resolved is None:
            return self._hooks
        return (*self._hooks, as_hooks(resolved, "resolve()"))

    async def _failed(
        self, hooks: tuple[Hooks, ...], what: str, exc: BaseException
    ) -> web.StreamResponse:
        err = exc if isinstance(exc, SSEError) else wrap(what, exc)
        logger.error("%s", err, exc_info=err.__cause__ or err)
        await report(hooks, None, err)
        return web.Response(status=500, text="Internal Server Error")

    def _namespace(self, request: web.Request, upgrade: Upgrade) -> str:
        """The upgrade hook's namespace, else the option's, else the path."""
        if upgrade.namespace is not None:
            return upgrade.namespace
        if self.options.namespace is not None:
            return self.options.namespace(request)
        return request.path

    # -- the stream -------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        options = self.options
        hooks = self._hooks
        try:
            hooks = await self._hooks_for(request)
            upgrade = await run_upgrade(hooks, request)
        except Exception as exc:
            return await self._failed(hooks, "upgrade failed", exc)
        if upgrade.response is not None:
            return _rejection(upgrade.response)
        registry = self._registry
        if self._closing or (
            options.max_peers is not None and len(registry.peers) >= options.max_peers
        ):
            registry.stats.peers_rejected += 1
            return web.Response(
                status=503,
                text="Service Unavailable: too many streams",
                headers={"Retry-After": str(options.retry_after)},
            )
        peer = Peer(request, registry, self._namespace(request, upgrade), hooks, upgrade.context)
        response = _EventStream(send_timeout=options.send_timeout, ping_interval=options.keepalive)
        if upgrade.headers:
            for name, value in upgrade.headers.items():
                response.headers[name] = value
        del upgrade  # frame locals live as long as the stream
        if self._bidir:
            response.headers["x-crossws-id"] = peer.id
        try:
            writer = await response.prepare(request)
            send_headers = getattr(writer, "send_headers", None)
            if send_headers is not None:
                send_headers()  # our frames bypass the writer
            del writer, send_headers
        except ConnectionError:
            return response
        transport = request.transport
        if transport is None or transport.is_closing():
            return response

        ended = peer._attach(transport)
        registry.add(peer)
        try:
            if self._bidir:
                peer.send(peer.id, event="crossws-id")
            try:
                for h in hooks:
                    if h.open is not None:
                        await call(h.open, peer)
            except Exception as exc:
                logger.exception("open hook failed for peer %s", peer.id)
                await report(hooks, peer, wrap("open hook failed", exc))
                peer.close(1011, REASON_OPEN_FAILED)
            if await ended:  # graceful: write what is queued, then end the body
                await peer._drain(options.send_timeout)
                peer._detach()
                try:
                    async with asyncio.timeout(options.send_timeout):
                        await response.write_eof()
                except (ConnectionError, TimeoutError):
                    if request.transport is not None:
                        request.transport.abort()
        except BaseException:
            # pytest-aiohttp's server (and handler_cancellation=True) cancels
            # the handler on disconnect; close hooks still run, in a task.
            peer._end(CloseDetails(None, REASON_LOST), graceful=False)
            peer._detach()
            self._spawn(peer._finalize())
            raise
        peer._detach()
        await peer._finalize()
        return response

    # -- bidirectional messages ---------------------------------------------------

    async def _message(self, request: web.Request) -> web.StreamResponse:
        # The upgrade hooks guard this direction too; of their outcome only
        # the namespace counts. resolve() is not called again: messages go
        # to the hooks the peer was resolved with.
        hooks = self._hooks
        try:
            upgrade = await run_upgrade(hooks, request)
        except Exception as exc:
            return await self._failed(hooks, "upgrade failed", exc)
        if upgrade.response is not None:
            return _rejection(upgrade.response)
        namespace = self._namespace(request, upgrade)
        peer_id = request.headers.get("x-crossws-id")
        if not peer_id:
            return web.Response(status=400, text="missing x-crossws-id header")
        peer = self._registry.peers.get(peer_id)
        # The id is a capability: one from another namespace is as unknown
        # as a made-up one (and answered the same, so nothing leaks).
        if peer is None or peer.ready_state != OPEN or peer.namespace != namespace:
            return web.Response(status=400, text="unknown peer id")
        return await receive(
            request,
            peer,
            max_size=self.options.max_message_size,
            stats=self._registry.stats,
            spawn=self._spawn,
        )


def _rejection(response: web.StreamResponse) -> web.StreamResponse:
    if isinstance(response, web.HTTPException):
        raise response  # aiohttp deprecates returning them
    return response


def sse_adapter(
    hooks: object = None,
    *,
    resolve: Resolver | None = None,
    bidir: bool = False,
    **options: Any,
) -> SSEAdapter:
    """Create an SSE adapter.

    ``hooks``: ``define_hooks(...)``, a ``dict`` of hook names, or an object
    with hook attributes. ``resolve``: ``(request) -> hooks | None``, called
    once per connection; its hooks run after the global ones. ``bidir``:
    accept client messages over ``POST``. Options: see the README; a bad
    value raises ``ValueError``/``TypeError`` naming the option.
    """
    return SSEAdapter(hooks, resolve=resolve, bidir=bidir, **options)
