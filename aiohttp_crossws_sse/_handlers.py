"""The request side of ``SSEAdapter``: the stream handler (upgrade hooks →
admission → ``Connection`` → the stream's lifecycle) and the POST handler of
bidirectional mode (upgrade hooks of the stream → peer lookup →
``_post.receive``). ``SSEAdapter`` builds on ``Handlers``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse

from ._connection import Connection
from ._hooks import (
    Hooks,
    Resolver,
    SSEError,
    Upgrade,
    as_hooks,
    invoke,
    logger,
    run_error_hooks,
    run_upgrade,
    sse_error,
)
from ._logs import operator_log
from ._options import Options
from ._post import receive, refuse
from ._registry import Registry
from ._wire import PEER_ID_HEADER, ReadyState

__all__ = ["NO_MESSAGES", "Handlers", "refuse_messages"]


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


class Handlers:
    """The stream and POST handlers, and what they share with the adapter."""

    _registry: Registry[Connection]
    options: Options
    _hooks: tuple[Hooks, ...]
    _resolve: Resolver | None
    _bidir: bool
    _closing: bool
    _app: web.Application | None
    _unbound_warned: bool
    _tasks: set[asyncio.Task[Any]]

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task the adapter waits for (and bounds) on close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _hooks_for(self, request: web.Request) -> tuple[Hooks, ...]:
        if self._resolve is None:
            return self._hooks
        resolved = await invoke(self._resolve, request)
        if resolved is None:
            return self._hooks
        return (*self._hooks, as_hooks(resolved, "resolve()"))

    async def _upgrade(
        self, hooks: tuple[Hooks, ...], request: web.Request
    ) -> tuple[Upgrade, str] | web.StreamResponse:
        """Run the upgrade hooks: their outcome and the namespace, or the
        response that refuses the request (a hook's, or a 500)."""
        try:
            upgrade = await run_upgrade(hooks, request)
            if upgrade.response is not None:
                return _rejection(upgrade.response)
            return upgrade, self._namespace(request, upgrade)
        except web.HTTPException:
            raise
        except Exception as exc:
            return await self._failed(hooks, "upgrade failed", exc)

    async def _failed(
        self, hooks: tuple[Hooks, ...], what: str, exc: BaseException
    ) -> web.StreamResponse:
        err = exc if isinstance(exc, SSEError) else sse_error(what, exc)
        logger.error("%s", err, exc_info=err.__cause__ or err)
        await run_error_hooks(hooks, None, err)
        return web.Response(status=500, text="Internal Server Error")

    def _namespace(self, request: web.Request, upgrade: Upgrade) -> str:
        """The upgrade hook's namespace, else the option's, else the path."""
        if upgrade.namespace is not None:
            return upgrade.namespace
        if self.options.namespace is not None:
            name = self.options.namespace(request)
            if not isinstance(name, str):
                raise TypeError(f"option 'namespace' must return a str, not {type(name).__name__}")
            return name
        return request.path

    def _unavailable(self) -> web.StreamResponse | None:
        """The refusal of a new stream while shutting down or at ``max_peers``
        (option ``refusal``), or ``None`` to admit it."""
        options = self.options
        if self._closing:
            why, level, detail = "server shutting down", logging.INFO, "server shutting down"
        elif options.max_peers is not None and len(self._registry.connections) >= options.max_peers:
            why, level = "too many streams", logging.WARNING
            detail = f"max_peers={options.max_peers} reached"
        else:
            return None
        self._registry.stats.peers_rejected += 1
        if options.refusal == "retry":
            retry = options.retry_after * 1000
            operator_log.log(why, level, "refused a stream, retry in %d ms: %s", retry, detail)
            return _retry_later(why, retry)
        operator_log.log(why, level, "refused a stream with 503: %s", detail)
        return web.Response(
            status=503,
            text=f"Service Unavailable: {why}",
            headers={"Retry-After": str(options.retry_after)},
        )

    def _warn_unbound(self) -> None:
        if self._app is None and not self._unbound_warned:
            self._unbound_warned = True
            logger.error(
                "SSEAdapter.handler is mounted without SSEAdapter.setup(app): app shutdown "
                "will not close its streams (aiohttp then waits for them, and close hooks "
                "see 'connection lost'). Add `sse.setup(app)` next to the route."
            )

    # -- the stream -------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self._registry.guard.bind()  # (the bare handler may run without start())
        self._warn_unbound()
        hooks = self._hooks
        try:
            hooks = await self._hooks_for(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            return await self._failed(hooks, "upgrade failed", exc)
        admitted = await self._upgrade(hooks, request)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        upgrade, namespace = admitted
        refused = self._unavailable()
        if refused is not None:
            return refused
        peer_id = str(uuid.uuid4())
        response = _EventStream(
            send_timeout=self.options.send_timeout, ping_interval=self.options.keepalive
        )
        if upgrade.headers:
            for name, value in upgrade.headers.items():
                response.headers[name] = value
        context = upgrade.context
        del upgrade, admitted  # frame locals live as long as the stream
        if self._bidir:
            response.headers[PEER_ID_HEADER] = peer_id
        transport = await self._prepare(request, response, hooks)
        if transport is None:
            return response
        conn = Connection(request, self._registry, hooks, context, peer_id)
        del context
        conn.open(transport, namespace)
        try:
            await conn.run_open_hooks(announce_id=self._bidir)
            if conn.replaying:
                await conn.replay()
            if await conn.ended:  # True: a graceful end
                await conn.end_stream(request, response)
        finally:
            await conn.close_out(self._spawn)
        return response

    async def _prepare(
        self, request: web.Request, response: web.StreamResponse, hooks: tuple[Hooks, ...]
    ) -> asyncio.Transport | None:
        """Send the stream's head; the transport, or ``None`` when the client is gone."""
        if request.version < (1, 1):
            # The body is close-delimited: no keep-alive (aiohttp-sse says it).
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"
        try:
            writer = await response.prepare(request)
            send_headers = getattr(writer, "send_headers", None)
            if send_headers is not None:
                send_headers()  # our frames bypass the writer
        except ConnectionError:
            return None
        except Exception as exc:
            # Reported (error hooks, log); aiohttp answers 500 — or, when part
            # of the head may have left, only dropping the connection is safe.
            await self._failed(hooks, "preparing the stream failed", exc)
            if request.transport is not None:
                request.transport.abort()
            raise
        transport = request.transport
        if transport is None or transport.is_closing():
            return None
        return transport

    # -- bidirectional messages ---------------------------------------------------

    async def _message(self, request: web.Request) -> web.StreamResponse:
        # The upgrade hooks that admitted the stream — the global ones and
        # those resolved for it (resolve() is not called again) — guard its
        # POSTs too; of their outcome only the namespace counts. An unknown
        # id meets the global hooks, so a refused client learns nothing.
        peer_id = request.headers.get(PEER_ID_HEADER)
        conn = self._registry.connections.get(peer_id) if peer_id else None
        hooks = conn.hooks if conn is not None else self._hooks
        admitted = await self._upgrade(hooks, request)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        namespace = admitted[1]
        if not peer_id:
            return refuse(request, f"missing {PEER_ID_HEADER} header", self.options)
        # The id is a capability: one from another namespace is as unknown
        # as a made-up one (and answered the same, so nothing leaks).
        # (``conn.state`` first applies what a publish before did to it)
        if conn is None or conn.state != ReadyState.OPEN or conn.peer.namespace != namespace:
            return refuse(request, "unknown peer id", self.options)
        return await receive(
            request,
            conn,
            options=self.options,
            stats=self._registry.stats,
            spawn=self._spawn,
        )


def _retry_later(why: str, retry: int) -> web.Response:
    """A refusal an ``EventSource`` honours: any answer but a 200 event stream
    makes it give up for good, while a stream that ends makes it reconnect
    after its reconnection time, which the ``retry:`` line sets. The comment
    says why to whoever reads the bytes; no event, and no ``id:`` (which would
    reset the client's Last-Event-ID)."""
    return web.Response(
        body=f": {why}\nretry: {retry}\n\n".encode(),
        content_type="text/event-stream",
        headers={hdrs.CACHE_CONTROL: "no-cache"},
    )


def _rejection(response: web.StreamResponse) -> web.StreamResponse:
    if isinstance(response, web.HTTPException):
        raise response  # aiohttp deprecates returning them
    return response


NO_MESSAGES = (
    "a message hook without bidir=True never runs: clients cannot send; "
    "create the adapter with sse_adapter(..., bidir=True) to accept their POSTs"
)


async def refuse_messages(request: web.Request) -> web.StreamResponse:
    """``POST`` to an adapter made without ``bidir``: 405, saying why."""
    raise web.HTTPMethodNotAllowed(
        "POST",
        ("GET",),
        text="this endpoint takes no messages: the server creates its adapter without "
        "bidir=True (sse_adapter(..., bidir=True) accepts them over POST)",
    )
