"""``RedisSync``: the backplane over Redis pub/sub (redis-py's asyncio client).

Install with the ``redis`` extra (``pip install aiohttp-crossws-sse[redis]``),
which brings redis-py and its ``hiredis`` parser (used automatically when
installed).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._relay import RelaySync, redact

__all__ = ["RedisSync"]


class RedisSync(RelaySync):
    """Relays publishes between instances through one Redis pub/sub channel.

    ``url_or_client``: any URL redis-py accepts (``redis://[[user]:password@]host
    [:port][/db]``, ``rediss://`` for TLS, ``unix:///path/to/redis.sock``), or a
    ready ``redis.asyncio.Redis`` client — then its connection settings (pool,
    retry policy, TLS, auth) are used as they are and it is left open on
    ``close``: it stays yours. Redis Cluster clients are not supported (one
    channel lives on one node: point a plain client at it).

    ``channel`` (required) scopes the cluster: every instance that should see
    the others' publishes uses the same one; apps sharing a Redis use
    different ones. Each instance holds two connections: one subscribed to
    ``channel``, one (from the client's pool) to publish on.

    Delivery is Redis pub/sub's: at most once, in the order each instance
    published, to the instances subscribed at that moment. What is published
    in one event-loop iteration leaves in one round trip, packed in as few
    Redis messages as fit 512 KiB each. An instance drops what it relayed
    itself (by ``SyncLink.instance_id``).

    A lost connection is reported (log and ``error`` hooks with ``peer``
    ``None``); local peers stay served; the instance reconnects with backoff
    and resubscribes by itself. Publishes made meanwhile reach local peers
    only, and are reported (at most every ``report_interval`` seconds, with
    a count); so are batches an instance missed from another one.
    ``start`` (app startup) raises ``ConnectionError`` when Redis cannot be
    reached at all.

    Tuning (keyword-only): ``heartbeat`` (15 s: silence after which the
    subscription is probed with a PING; no answer within as long again and
    the connection counts as lost), ``max_reconnect_delay`` (5 s: the cap of
    the exponential backoff between reconnect attempts, which starts at
    50 ms), ``report_interval`` (10 s: lost publishes and failed reconnect
    attempts are reported at most this often, with counts),
    ``send_timeout`` (10 s: a batch not sent by then counts as lost),
    ``max_pending`` (16 MiB: data queued and not yet sent beyond which
    further publishes are not relayed, and reported).
    """

    kind = "Redis"
    max_body = 512 * 1024

    def __init__(
        self,
        url_or_client: str | Redis,
        *,
        channel: str,
        heartbeat: float = 15.0,
        max_reconnect_delay: float = 5.0,
        report_interval: float = 10.0,
        send_timeout: float = 10.0,
        max_pending: int = 16 << 20,
    ) -> None:
        super().__init__(
            channel=channel,
            heartbeat=heartbeat,
            max_reconnect_delay=max_reconnect_delay,
            report_interval=report_interval,
            send_timeout=send_timeout,
            max_pending=max_pending,
        )
        if isinstance(url_or_client, str):
            if not url_or_client:
                raise ValueError("RedisSync needs a Redis URL or client")
            self._url: str | None = url_or_client
            self._given: Redis | None = None
        elif isinstance(url_or_client, Redis):
            self._url = None
            self._given = url_or_client
        else:
            raise TypeError(
                "RedisSync needs a Redis URL (str) or a redis.asyncio.Redis client, not "
                f"{type(url_or_client).__name__}"
            )
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._silently_reconnected = False

    def describe(self) -> str:
        if self._url is not None:
            where = redact(self._url)
        else:
            assert self._given is not None
            kwargs = self._given.connection_pool.connection_kwargs
            if kwargs.get("path"):
                where = f"unix://{kwargs['path']}"
            else:
                where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        return f"Redis at {where}, channel {self.channel!r}"

    # -- publishing ----------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._given is not None:
            self._client = self._given
            return
        assert self._url is not None
        # No silent retries: a dropped connection surfaces at once and is
        # reported; the listener reconnects with its own backoff. (A URL's
        # own query options, e.g. ?socket_connect_timeout=2, still win.)
        self._client = Redis.from_url(
            self._url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=5.0
        )

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None and client is not self._given:
            await client.aclose()

    async def _send(self, envelopes: list[str]) -> None:
        client = self._client
        assert client is not None
        if len(envelopes) == 1:
            await client.publish(self.channel, envelopes[0])
            return
        async with client.pipeline(transaction=False) as pipe:
            for envelope in envelopes:
                pipe.publish(self.channel, envelope)
            await pipe.execute()

    # -- listening ---------------------------------------------------------------------

    async def _subscribe(self) -> None:
        client = self._client
        assert client is not None
        pubsub = self._pubsub = client.pubsub()
        await pubsub.subscribe(self.channel)
        while True:  # subscribed once Redis confirms it
            message = await pubsub.get_message(timeout=self.heartbeat)
            if message is None:
                raise TimeoutError(f"Redis did not confirm the subscription in {self.heartbeat} s")
            if message["type"] == "subscribe":
                break
        self._silently_reconnected = False
        if pubsub.connection is not None:
            # a client with a retry policy may reconnect (and resubscribe) inside
            # redis-py: notice it, since what was published meanwhile is lost
            pubsub.connection.register_connect_callback(self._reconnected)
            _skip_push_debug_log(pubsub.connection)

    def _reconnected(self, connection: Any) -> None:
        self._silently_reconnected = True

    async def _unsubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is None:
            return
        if pubsub.connection is not None:
            pubsub.connection.deregister_connect_callback(self._reconnected)
        await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _listen(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        heartbeat = self.heartbeat
        own = self._own.encode()
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=heartbeat)
            if self._silently_reconnected:
                self._silently_reconnected = False
                self.report(
                    ConnectionError(
                        f"the connection to {self.describe()} dropped and the client "
                        "reconnected by itself: messages published meanwhile were missed"
                    )
                )
            if message is None:
                if loop.time() - heard >= 2 * heartbeat * 0.99:
                    raise TimeoutError(f"Redis did not answer for {loop.time() - heard:.0f} s")
                await pubsub.ping()
                continue
            heard = loop.time()
            if message["type"] == "message":
                data = message["data"]
                if isinstance(data, bytes):
                    if data.startswith(own):
                        continue  # this instance's own publish: no need to decode it
                    data = data.decode(errors="replace")  # garbage is reported, not fatal
                body = self.accept(data)
                if body is not None:
                    self.deliver_body(body)


async def _passthrough(response: Any) -> Any:
    return response


def _skip_push_debug_log(connection: Any) -> None:
    """redis-py's hiredis parser hands every pub/sub message to a handler that
    builds ``"Push response: " + str(message)`` for a DEBUG log line, logged or
    not: for a large message that doubles the cost of receiving it. Replace
    that default handler (and only it) with one that just returns the message."""
    parser: Any = getattr(connection, "_parser", None)
    default = getattr(parser, "handle_pubsub_push_response", None)
    if default is not None and getattr(parser, "pubsub_push_handler_func", None) == default:
        parser.set_pubsub_push_handler(_passthrough)
