"""``Connection``: the machinery behind one ``Peer`` — its lifecycle, hooks,
topics, outbox and (in bidirectional mode) inbox.

The adapter, the registry and the POST channel work with connections; users
see only the ``Peer``. A connection's life, driven by the request handler (a task per stream would
cost memory): ``open`` (join the registry, take over the transport) →
``run_open_hooks`` → ``replay`` (with history and a ``Last-Event-ID``)
→ wait for ``ended`` → ``end_stream`` when graceful (drain,
end the body) → ``close_out`` (the ``close`` hooks, exactly once, in a task
the adapter owns, so a handler that aiohttp cancels — with
``handler_cancellation=True`` — never cancels them half-way).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._frame import encode_retry, encode_text
from ._history import ReplaySource, parse_id
from ._hooks import Hooks, run_error_hooks, run_hooks, sse_error
from ._hooks import logger as hooks_logger
from ._logs import operator_log
from ._peer import REASON_OPEN_FAILED, CloseDetails, Peer, gave_event_id
from ._wire import CROSSWS_ID_EVENT, ReadyState
from ._write import REASON_LOST, REASON_STALLED, Outbox

if TYPE_CHECKING:
    from ._registry import Namespace, Registry

__all__ = ["Connection"]


class Connection:
    """One accepted stream (see the module docstring)."""

    __slots__ = (
        "_state",
        "closed",
        "details",
        "ended",
        "finalized",
        "hooks",
        "inbox",
        "namespace",
        "outbox",
        "peer",
        "registry",
        "replay_state",
        "topics",
    )

    def __init__(
        self,
        request: web.Request,
        registry: Registry[Connection],
        hooks: tuple[Hooks, ...],
        context: dict[str, Any] | None,
        peer_id: str,
    ) -> None:
        self.registry = registry
        self.hooks = hooks
        self.namespace: Namespace | None = None  # the registry's, once open
        # None, one topic, or a set: most peers hold a topic or two, and an
        # empty set alone costs 216 bytes per connection.
        self.topics: str | set[str] | None = None
        self._state = ReadyState.CONNECTING
        self.details: CloseDetails | None = None
        self.finalized = 0  # 1: close hooks running, 2: done
        self.closed: asyncio.Future[None] | None = None
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.inbox: Any = None  # the POST channel's inbox for this peer (_post.inbox)
        self.outbox = Outbox(registry.scheduler, self, chunked=request.version >= (1, 1))
        self.peer = Peer(self, request, context, peer_id)
        # Last-Event-ID replay (see ``replay``), one slot for all its states:
        # None (none); while pending, the future set when it is done and the
        # task running the open hooks (topics are recorded but not joined,
        # the outbox holds what is sent); then the outcome (``recovered``).
        self.replay_state: (
            tuple[asyncio.Future[bool | None], asyncio.Task[Any] | None] | bool | None
        ) = None

    @property
    def replaying(self) -> bool:
        return isinstance(self.replay_state, tuple)

    @property
    def recovered(self) -> bool | None:
        state = self.replay_state
        return state if isinstance(state, bool) else None

    # -- topics -------------------------------------------------------------------

    @property
    def state(self) -> ReadyState:
        """The peer's ready state, as the write path leaves it: read through
        ``Outbox.settled``, so that what a publish pending in this loop
        iteration does to this peer (the slow-consumer policy) shows first.
        Every read of the state, in any module, goes through here."""
        self.outbox.settled()
        return self._state

    def topic_list(self) -> tuple[str, ...]:
        topics = self.topics
        if topics is None:
            return ()
        if isinstance(topics, str):
            return (topics,)
        return tuple(topics)

    def has_topic(self, topic: str) -> bool:
        topics = self.topics
        return (
            topic == topics if isinstance(topics, str) else topics is not None and topic in topics
        )

    def subscribe(self, topic: str) -> None:
        if self.state > ReadyState.OPEN or self.namespace is None or self.has_topic(topic):
            return
        topics = self.topics
        if topics is None:
            self.topics = topic
        elif isinstance(topics, str):
            self.topics = {topics, topic}
        else:
            topics.add(topic)
        if not self.replaying:  # else joined when the replay has caught up
            self.namespace.join(topic, self.outbox)

    def unsubscribe(self, topic: str) -> None:
        if not self.has_topic(topic):
            return
        topics = self.topics
        if isinstance(topics, set):
            topics.discard(topic)
        else:
            self.topics = None
        if self.namespace is not None:
            self.namespace.leave(topic, self.outbox)

    # -- lifecycle ------------------------------------------------------------------

    def open(self, transport: asyncio.Transport, namespace: str) -> None:
        """Take over the transport and join the registry in ``namespace``: the
        peer is open. Called by the request handler, which serves the stream
        from here on."""
        self.outbox.attach(transport)
        self._state = ReadyState.OPEN
        self.namespace = self.registry.add(self, namespace)
        if self.registry.replay_source is not None and gave_event_id(self.peer.request):
            # From the start, so that nothing published to this peer's
            # topics is written before the events it missed. An id too long
            # to show (peer.last_event_id None) is replayed as unknown.
            self.replay_state = (
                asyncio.get_running_loop().create_future(),
                asyncio.current_task(),
            )
            self.outbox.hold()

    async def run_open_hooks(self, *, announce_id: bool) -> None:
        """The ``crossws-id`` event (bidirectional mode), then the ``open``
        hooks; a failing one ends the stream gracefully (1011)."""
        if announce_id:
            self.outbox.write_now(encode_text(self.peer.id, event=CROSSWS_ID_EVENT))
        retry = self.registry.options.retry
        if retry is not None:
            self.outbox.write_now(encode_retry(retry))
        ok = await run_hooks(self.hooks, "open", self.peer)
        if not ok:
            self.end(CloseDetails(1011, REASON_OPEN_FAILED), graceful=True)

    async def replay(self) -> None:
        """Write what the client missed on the topics it is subscribed to,
        with backpressure, then join those topics (live events follow with
        no gap and no duplicate), then what the hooks sent meanwhile.

        Publishes made while the replay is written reach this peer through
        the history: the replay goes on until it has caught up, and the
        topics are joined in the same step. ``recovered`` is then ``True``
        when nothing the client missed had been evicted.

        A history that cannot be read (Redis down or hung) must not cost the
        client its stream — a browser would reconnect into the same failure
        forever: the stream goes on without the replay (``recovered``
        ``False``, live events flow), and the error hooks hear of it."""
        source = self.registry.replay_source
        complete = False
        failure: Exception | None = None
        try:
            if source is not None and self.state == ReadyState.OPEN:
                complete = await self._write_missed(source)
                # A backplane outage now: the others' publishes meanwhile
                # may be missing from this instance's history.
                complete = complete and self.registry.hears_everything()
        except Exception as exc:
            failure = exc
        finally:
            self._end_replay(complete)
        if failure is not None:
            await self._replay_failed(failure)

    async def _write_missed(self, source: ReplaySource) -> bool:
        """The replay proper; returns whether it was complete (see ``replay``)."""
        position = parse_id(self.peer.last_event_id)
        complete = True
        namespace = self.namespace.name if self.namespace is not None else None
        while self.state == ReadyState.OPEN:
            missed = await source.fetch(self.topic_list(), position, namespace, self.peer.id)
            complete = complete and missed.complete
            if missed.epoch is not None:
                position = (missed.epoch, missed.upto)
            if missed.frames:
                if not await self.outbox.write_with_backpressure(missed.frames):
                    return False
            elif self.state == ReadyState.OPEN and source.caught_up(missed):
                return complete  # caught up: join now, in this very step
        return False

    async def _replay_failed(self, exc: Exception) -> None:
        # One line per peer, rate-limited (a thousand clients reconnecting
        # during an outage); the traceback only at DEBUG.
        hooks_logger.debug("replay for peer %s failed", self.peer.id, exc_info=exc)
        if self.state != ReadyState.OPEN:
            return  # the client left meanwhile: no stream goes on without it
        reason = str(exc) or type(exc).__name__
        operator_log.log(
            "replay failed",
            logging.WARNING,
            "replay for peer %s failed, its stream goes on without it (recovered False): %s",
            self.peer.id,
            reason,
        )
        await run_error_hooks(self.hooks, self.peer, sse_error("replay failed", exc))

    def _end_replay(self, complete: bool) -> None:
        state = self.replay_state
        if not isinstance(state, tuple):
            return
        done = state[0]
        outcome = None
        if self.state == ReadyState.OPEN:
            outcome = complete
            if self.namespace is not None:
                for topic in self.topic_list():
                    self.namespace.join(topic, self.outbox)
        self.replay_state = outcome
        self.outbox.end_hold()
        if not done.done():
            done.set_result(outcome)

    async def wait_replayed(self) -> bool | None:
        state = self.replay_state
        if not isinstance(state, tuple):
            return self.recovered
        done, handler = state
        # While a replay is pending, the only user code the handler's task
        # runs is the open hooks (the replay runs after they return).
        if asyncio.current_task() is handler:
            raise RuntimeError(
                "wait_recovered() in the open hook would wait forever: the replay runs "
                "after open returns (await it in a task the hook starts)"
            )
        return await asyncio.shield(done)

    async def end_stream(self, request: web.Request, response: web.StreamResponse) -> None:
        """A graceful end: write what is queued, then end the body."""
        timeout = self.registry.options.send_timeout
        await self.outbox.drain(timeout)
        self.outbox.detach()
        try:
            async with asyncio.timeout(timeout):
                await response.write_eof()
        except (ConnectionError, TimeoutError):
            if request.transport is not None:
                request.transport.abort()

    async def close_out(
        self, spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]]
    ) -> None:
        """However the stream ended (gracefully, the client left, a hook
        failed, a shutdown cancelled a hook that hung): end it now and run the
        close hooks in a task ``spawn`` makes — cancelling the request
        handler never cancels them; the handler waits for them unless it is
        itself cancelled."""
        self.end(CloseDetails(None, REASON_LOST), graceful=False)
        self._end_replay(False)  # a replay that never ran (its waiters return None)
        self.outbox.detach()
        await asyncio.shield(spawn(self.finalize()))

    def cancel(self) -> None:
        """Cancel the handler serving the stream, stuck in a hook (shutdown
        gave up waiting)."""
        if not self.finalized:
            self.peer.request.task.cancel()

    def end(self, details: CloseDetails, *, graceful: bool) -> None:
        """Start closing: leave the registry and wake ``serve`` (idempotent)."""
        # (``state`` settles: a publish made before this call may put this
        # peer over max_buffer, and the policy applies first, as it would
        # have at the publish)
        if self.state >= ReadyState.CLOSING:
            return
        self._state = ReadyState.CLOSING
        self.details = details
        self.registry.remove(self)
        if not graceful:
            self.outbox.abort()
        elif self.replaying:
            self.outbox.end_hold()  # a replay still being written gives up
        if not self.ended.done():
            self.ended.set_result(graceful)

    def end_abruptly(self, reason: str) -> None:
        """The write path gave up on the client (lost, slow, stalled)."""
        if self.state < ReadyState.CLOSING and reason is not REASON_LOST:
            # What an operator must see; a client leaving is not news.
            if reason is REASON_STALLED:
                self.registry.stats.send_timeouts += 1
                why = "its writes stayed blocked for send_timeout=%ss"
                arg: object = self.registry.options.send_timeout
            else:
                why = "it held more than max_buffer=%s bytes (slow_consumer='close')"
                arg = self.registry.options.max_buffer
            operator_log.log(
                reason, logging.WARNING, "closed peer %s (%s): " + why, self.peer.id, reason, arg
            )
        self.end(CloseDetails(None, reason), graceful=False)

    def dropped_events(self, count: int) -> None:
        """The ``"drop-oldest"`` policy discarded ``count`` of this peer's events."""
        operator_log.log(
            "drop-oldest",
            logging.WARNING,
            "dropped %d events for slow peer %s (over max_buffer=%s, slow_consumer='drop-oldest')",
            count,
            self.peer.id,
            self.registry.options.max_buffer,
        )

    async def finalize(self) -> None:
        """Mark closed and run the close hooks, exactly once."""
        if self.finalized:
            return
        self.finalized = 1
        self._state = ReadyState.CLOSED
        self.registry.remove(self)
        details = self.details or CloseDetails(None, REASON_LOST)
        try:
            await run_hooks(self.hooks, "close", self.peer, details)
        finally:
            self.finalized = 2
            self.registry.stats.peers_closed += 1
            if self.closed is not None and not self.closed.done():
                self.closed.set_result(None)
            self.closed = None

    async def wait_closed(self) -> None:
        if self.finalized == 2:
            return
        if self.closed is None:
            self.closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self.closed)
