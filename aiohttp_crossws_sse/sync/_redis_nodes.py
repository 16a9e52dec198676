"""One Redis server of sharded mode: its listening connection, its outages.

A ``Node`` is a plain Redis, or one primary of a Redis Cluster. It holds a
client to publish on (``client``) and a connection of its own that listens:
subscribed (``SUBSCRIBE``, or ``SSUBSCRIBE`` on a cluster) to the channels of
the topics that are ``wanted`` here, each reply matched to its command
(``_redis_replies.py``).

Three tasks per node: the supervisor reads (``_listen``) until the
connection fails, reports the outage and reconnects with backoff; the
worker applies what is wanted (subscribes, unsubscribes, waits for the
confirmations, then lets the owner mark the topics ready); both end with
``stop``. An outage of one node leaves the others alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ._redis_replies import PING, SUBSCRIBE, UNSUBSCRIBE, Pending, Replies
from ._reports import LossReport, OutageReport

__all__ = ["Node", "NodeOwner"]

_FIRST_RECONNECT_DELAY = 0.05


class NodeOwner(Protocol):
    """What a node needs from the sharded backplane."""

    heartbeat: float
    max_reconnect_delay: float
    report_interval: float
    send_timeout: float

    def on_message(self, topic: str, data: Any) -> None: ...

    async def on_subscribed(self, node: Node, topics: list[str]) -> int | None:
        """``topics`` are subscribed here: make them ready; the publishes of
        them missed while they were lost (``None``: cannot tell)."""
        ...

    def on_left(self, node: Node, topics: list[str], lost: bool) -> None:
        """``topics`` are no longer subscribed here (``lost``: not by choice)."""
        ...

    def on_refused(self, node: Node, topic: str, exc: Exception) -> None:
        """Subscribing ``topic`` here failed (a slot of another node, an ACL)."""
        ...

    async def relocate(self, node: Node) -> bool:
        """``node`` is down: refresh the cluster's map; whether it still serves slots."""
        ...

    def resync(self) -> None: ...

    def report(self, exc: Exception) -> None: ...

    def reason(self, exc: BaseException | None) -> str: ...

    def caused(self, err: Exception, cause: BaseException | None) -> Exception: ...


class Node:
    """One Redis server (see the module docstring)."""

    def __init__(
        self,
        owner: NodeOwner,
        name: str,
        client: Redis,
        connection: Callable[[], Any],
        *,
        cluster: bool,
        address: tuple[str, int] | None = None,
    ) -> None:
        self.owner = owner
        self.name = name
        self.address = address  # a cluster node's (host, port)
        self.report_interval = owner.report_interval
        self.client = client
        self._new_connection = connection
        self.cluster = cluster
        self.publish_command = "SPUBLISH" if cluster else "PUBLISH"
        self._sub, self._unsub, self._kind = (
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"smessage")
            if cluster
            else (b"SUBSCRIBE", b"UNSUBSCRIBE", b"message")
        )
        #: topic -> channel: what should be subscribed here (set by the owner)
        self.wants: dict[str, bytes] = {}
        #: channel -> topic: subscribed, or asked for, on the current connection
        self.channels: dict[bytes, str] = {}
        self.up = False
        self.down_cause: BaseException | None = None
        self.serving = True  # a primary with slots (cluster: per the last map)
        self._conn: Any = None  # a redis-py Connection (untyped on some releases)
        self._replies = Replies(self._sub.lower(), self._unsub.lower())
        self._applying = asyncio.Lock()
        self._wake = asyncio.Event()
        self._revived = asyncio.Event()
        self._returning = False
        self._in_outage = False
        self._failure: Exception | None = None
        self._heard = 0.0  # loop time of the last reply on the listening connection
        self._tasks: list[asyncio.Task[None]] = []
        self._retry: asyncio.TimerHandle | None = None  # a refused subscribe, tried again
        self._unready: set[str] = set()  # subscribed; on_subscribed not yet done
        self.outage = OutageReport(self, LossReport(self))

    # -- the Reporter of this node's outages ------------------------------------------

    def report(self, exc: Exception) -> None:
        self.owner.report(exc)

    def describe(self) -> str:
        return self.name

    def reason(self, exc: BaseException | None) -> str:
        return self.owner.reason(exc)

    def caused(self, err: Exception, cause: BaseException | None) -> Exception:
        return self.owner.caused(err, cause)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe to what is wanted; raises when that fails."""
        await self._connect()
        self._launch()
        async with self._applying:
            await self._apply()

    def start_down(self, cause: BaseException | None) -> None:
        """Connect in the background: a new primary of the cluster (``cause``
        ``None``), or one that could not be reached at start while others
        were (an outage from now on, reported)."""
        self.down_cause = cause
        if cause is not None:
            self._in_outage = True
            self.outage.began(cause)
        self._launch()

    def _launch(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._supervise(), name=f"Redis listener {self.name}"),
            loop.create_task(self._work(), name=f"Redis subscriber {self.name}"),
        ]

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._replies.fail(None)
        self.up = False
        await self._drop_connection()
        self.outage.cancel()

    def changed(self) -> None:
        """``wants`` changed: the worker applies it (once per loop iteration)."""
        self._wake.set()

    def revive(self) -> None:
        """The cluster's map gives this node slots again."""
        self.serving = True
        self._revived.set()

    # -- the supervisor --------------------------------------------------------------

    async def _connect(self) -> None:
        conn = self._new_connection()
        try:
            async with asyncio.timeout(max(self.owner.send_timeout, self.owner.heartbeat)):
                await conn.connect()
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise
        self._conn = conn
        self._failure = None
        self._unready.clear()
        self.channels.clear()
        self._replies.fail(ConnectionError("the connection was replaced"))
        self.up = True
        self.down_cause = None

    async def _supervise(self) -> None:
        while True:
            if self._conn is None:
                await self._reconnect()
            conn = self._conn
            assert conn is not None
            try:
                await self._listen(conn)
                cause: Exception = ConnectionError("the connection was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cause = self._failure or exc
            await self._went_down(cause)

    async def _went_down(self, cause: BaseException) -> None:
        self.up = False
        self.down_cause = cause
        await self._drop_connection()
        self._replies.fail(ConnectionError("the connection was lost"))
        lost = list(self.channels.values())
        self.channels.clear()
        self._in_outage = True
        self.outage.began(cause)
        self.owner.on_left(self, lost, True)

    async def _reconnect(self) -> None:
        delay = _FIRST_RECONNECT_DELAY
        attempts = 0
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.owner.max_reconnect_delay)
            attempts += 1
            if self.cluster and not await self.owner.relocate(self):
                # no slots here any more: nothing to reconnect for until a
                # later map gives it some (its outage is not news any more)
                self.outage.cancel()
                self._in_outage = False
                self._revived.clear()
                if not self.serving:
                    await self._revived.wait()
                delay, attempts = _FIRST_RECONNECT_DELAY, 0
                continue
            try:
                await self._connect()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.down_cause = exc
                self.outage.still_down(attempts, exc)
        self._returning = True
        self.changed()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _fail(self, conn: Any, exc: Exception) -> None:
        """Give up on ``conn`` (the supervisor notices, and reports ``exc``)."""
        if self._conn is conn:
            self._failure = exc
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)  # the read in _listen fails now

    # -- reading ---------------------------------------------------------------------

    async def _listen(self, conn: Any) -> None:
        """Read until the connection fails. No timeout per read — a timer per
        message would cost more than the message: a watchdog probes a
        connection that went silent (``heartbeat``)."""
        channels = self.channels
        on_message = self.owner.on_message
        kind = self._kind
        clock = asyncio.get_running_loop().time
        self._heard = clock()
        watchdog = asyncio.get_running_loop().create_task(self._watch(conn))
        try:
            while True:
                try:
                    reply = await conn.read_response(disconnect_on_error=False)
                except ResponseError as exc:  # an error reply to one of our commands
                    self._heard = clock()
                    self._replied(None, exc)
                    continue
                self._heard = clock()
                if reply[0] == kind:
                    topic = channels.get(reply[1])
                    if topic is not None:  # else: left meanwhile
                        on_message(topic, reply[2])
                else:
                    self._replied(reply, None)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog  # no task outlives the node

    async def _watch(self, conn: Any) -> None:
        """After ``heartbeat`` seconds of silence, a PING; no answer within as
        long again, and the connection counts as lost."""
        heartbeat = self.owner.heartbeat
        clock = asyncio.get_running_loop().time
        while True:
            await asyncio.sleep(heartbeat / 2)
            silent = clock() - self._heard
            try:
                if silent >= 2 * heartbeat * 0.99:
                    raise TimeoutError(f"Redis did not answer for {silent:.0f} s")
                if silent >= heartbeat * 0.99:
                    await self._send([[b"PING"]], PING, [b""], None)
            except Exception as exc:
                await self._fail(conn, exc)
                return

    def _replied(self, reply: Any, error: Exception | None) -> None:
        dropped = self._replies.replied(reply, error)
        if dropped is not None:  # Redis dropped the channel: its slot moved away
            topic = self.channels.pop(dropped, None)
            if topic is not None:
                self.owner.on_left(self, [topic], True)
                self.owner.on_refused(self, topic, ConnectionError("the slot moved"))

    # -- writing ---------------------------------------------------------------------

    async def _send(
        self, commands: list[list[bytes]], kind: bytes, keys: list[bytes], pending: Pending | None
    ) -> None:
        conn = self._conn
        if conn is None or not conn.is_connected:
            raise ConnectionError("not connected")
        async with self._replies.lock:  # replies come in the order the commands were written
            self._replies.sent(kind, keys, pending)
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def barrier(self) -> None:
        """Returns once every message Redis pushed to this connection before
        now has been handed to ``on_message`` (a PING's answer follows them)."""
        pending = Pending(1)
        await self._send([[b"PING", b"b"]], PING, [b"b"], pending)
        async with asyncio.timeout(2 * self.owner.heartbeat):
            await pending.done

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            conn = self._conn
            if conn is None:
                continue  # applied once reconnected
            try:
                async with self._applying:
                    missed = await self._apply()
            except asyncio.CancelledError:
                raise
            except ResponseError:  # (say, CLUSTERDOWN while the node rejoins): later
                self._try_again()
                continue
            except Exception as exc:
                await self._fail(conn, exc)
                continue
            if self._returning:
                self._returning = False
                if self._in_outage:
                    self._in_outage = False
                    self.outage.over(missed)
                if missed != 0:
                    self.owner.resync()

    async def _apply(self) -> int | None:
        """Subscribe what is wanted, unsubscribe the rest; returns what the
        topics subscribed again missed (see ``NodeOwner.on_subscribed``)."""
        wants, channels = self.wants, self.channels
        drops = [ch for ch, topic in channels.items() if wants.get(topic) != ch]
        adds = [(topic, ch) for topic, ch in wants.items() if ch not in channels]
        if drops:
            self.owner.on_left(self, [channels.pop(ch) for ch in drops], False)
            await self._send([[self._unsub, ch] for ch in drops], UNSUBSCRIBE, drops, None)
        if adds:
            for topic, ch in adds:
                channels[ch] = topic
            keys = [ch for _, ch in adds]
            pending = Pending(len(keys))
            await self._send([[self._sub, ch] for ch in keys], SUBSCRIBE, keys, pending)
            async with asyncio.timeout(2 * self.owner.heartbeat):
                await pending.done
            for topic, ch in adds:
                error = pending.failed.get(ch)
                if error is not None:
                    if channels.get(ch) == topic:
                        del channels[ch]
                    self.owner.on_refused(self, topic, error)
                elif channels.get(ch) == topic:
                    self._unready.add(topic)
            if pending.failed:  # (say, CLUSTERDOWN while the node rejoins)
                self._try_again()
        subscribed = set(channels.values())
        done = [t for t in self._unready if t in subscribed]
        self._unready.clear()
        if not done:
            return 0
        try:
            return await self.owner.on_subscribed(self, done)
        except BaseException:
            self._unready.update(done)  # made ready on the next try
            raise

    def _try_again(self) -> None:
        """Apply again after a moment (Redis refused something for now)."""
        if self._retry is None:
            delay = min(1.0, self.owner.max_reconnect_delay)
            self._retry = asyncio.get_running_loop().call_later(delay, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self.changed()
