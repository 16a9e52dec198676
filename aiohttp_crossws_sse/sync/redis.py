"""``RedisSync``: the backplane over Redis pub/sub (redis-py's asyncio client).

Install with the ``redis`` extra (``pip install aiohttp-crossws-sse[redis]``),
which brings redis-py and its ``hiredis`` parser (used automatically when
installed).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, Protocol, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff

from .._frame import encode_published
from .._history import Replay, format_id, new_epoch
from ._envelope import ENCODER, VERSION_IDS, publishes_with_ids, unpack_ids
from ._redact import redact, secrets_of
from ._relay import RelaySync, positive
from .base import Relayed, SyncLink


class _Closing(Protocol):
    def aclose(self) -> Awaitable[None]: ...


class _NoBackoff(AbstractBackoff):
    # redis-py's own NoBackoff is unannotated on some releases in our range
    def compute(self, failures: int) -> float:
        return 0.0


__all__ = ["RedisSync"]

# Topics whose newest delivery is remembered while replays fetch; beyond
# that many, tracking restarts (a fetch then reads once more).
_MAX_TRACKED = 4096
# Replay fetches in flight at once (more wait their turn, within fetch_timeout).
_MAX_FETCHES = 16
# Bytes of encoded frames kept for replays to share (see _FrameCache).
_FRAME_CACHE_BYTES = 16 << 20


class _FrameCache:
    """Encoded frames of the events replays read, by seq, least recently
    used first out beyond ``_FRAME_CACHE_BYTES``: clients resuming at once
    share one frame per event (as the in-process history does) instead of
    each holding a copy of the history, and the records are decoded once."""

    def __init__(self) -> None:
        self._epoch: str | None = None
        self._entries: OrderedDict[int, tuple[bytes, str | None, str | None]] = OrderedDict()
        self._bytes = 0

    def get(
        self, epoch: str, seq: int, record: bytes | str
    ) -> tuple[bytes, str | None, str | None]:
        """``(frame, namespace, sender)`` of event ``seq`` stored as ``record``."""
        if epoch != self._epoch:  # seqs start over in a new epoch
            self.clear()
            self._epoch = epoch
        entries = self._entries
        entry = entries.get(seq)
        if entry is not None:
            entries.move_to_end(seq)
            return entry
        ns, event, data, sender = json.loads(record)
        entry = (encode_published(data, event=event, id=format_id(epoch, seq)), ns, sender)
        entries[seq] = entry
        self._bytes += len(entry[0])
        while self._bytes > _FRAME_CACHE_BYTES:
            self._bytes -= len(entries.popitem(last=False)[1][0])
        return entry

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


# Publishing with history, atomically: take the epoch (a new one if Redis
# lost it), take n consecutive seqs, add each event to its topic's stream
# (id 0-<seq>, trimmed to the newest ARGV[2]), and publish the envelope with
# the epoch and the first seq — so pub/sub order is seq order.
# The newest seq a topic's trimming evicted is kept in a hash (a stream's
# own max-deleted-entry-id counts XDEL only, not trimming).
# KEYS: epoch, seq, evicted. ARGV: epoch candidate, maxlen, channel, header,
# body, stream key prefix, then (topic, record) per event.
_PUBLISH = r"""
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
local n = (#ARGV - 6) / 2
local last = redis.call('INCRBY', KEYS[2], n)
local first = last - n + 1
local maxlen = tonumber(ARGV[2])
for i = 0, n - 1 do
  local key = ARGV[6] .. ARGV[7 + 2 * i]
  local trim = redis.call('XLEN', key) + 1 - maxlen
  if trim > 0 then
    local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', trim)
    redis.call('HSET', KEYS[3], ARGV[7 + 2 * i], gone[#gone][1])
  end
  redis.call('XADD', key, 'MAXLEN', maxlen, '0-' .. (first + i), 'r', ARGV[8 + 2 * i])
end
redis.call('PUBLISH', ARGV[3], ARGV[4] .. epoch .. ' ' .. first .. '\n' .. ARGV[5])
return first
"""

# Reading a replay: the epoch, the newest seq, then per topic the newest
# evicted seq and the entries in (ARGV[2], ARGV[3]].
# KEYS: epoch, seq, evicted. ARGV: stream key prefix, after, upto, topics...
_FETCH = r"""
local out = {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0'}
for i = 4, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  local deleted = redis.call('HGET', KEYS[3], ARGV[i]) or '0-0'
  local entries = {}
  if tonumber(ARGV[3]) > tonumber(ARGV[2]) then
    entries = redis.call('XRANGE', key, '(0-' .. ARGV[2], '0-' .. ARGV[3])
  end
  out[#out + 1] = deleted
  out[#out + 1] = entries
end
return out
"""


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
    further publishes are not relayed, and reported), ``fetch_timeout``
    (5 s, with history: a replay's read of the history not answered by then
    gives up, and the client's stream goes on without the replay).
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
        fetch_timeout: float = 5.0,
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
            self._secrets = secrets_of(url_or_client)
        elif isinstance(url_or_client, Redis):
            self._url = None
            self._given = url_or_client
            password = url_or_client.connection_pool.connection_kwargs.get("password")
            self._secrets = (password,) if isinstance(password, str) and password else ()
        else:
            raise TypeError(
                "RedisSync needs a Redis URL (str) or a redis.asyncio.Redis client, not "
                f"{type(url_or_client).__name__}"
            )
        self.fetch_timeout = positive("fetch_timeout", fetch_timeout)
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._silently_reconnected = False
        # History (SyncLink.history > 0): keys, and the position of the
        # newest publish delivered here (epoch, seq).
        self._history = 0
        self._keys = (f"{channel}:epoch", f"{channel}:seq", f"{channel}:evicted")
        self._streams = f"{channel}:history:"
        self._live: tuple[str | None, int] = (None, 0)
        self._live_moved: asyncio.Event | None = None  # set when _live moves (if awaited)
        self._outage_missed: int | None = None  # publishes missed, read on resubscribing
        self._slots: asyncio.Semaphore | None = None  # see _fetch_slots
        self._frames = _FrameCache()
        # While fetches are in flight: the newest seq delivered per topic,
        # for every delivery with a seq above _tracked_from (see _moved_on).
        self._fetching = 0
        self._topic_seqs: dict[str, int] = {}
        self._tracked_from = 0
        self._publish_script: Any = None
        self._fetch_script: Any = None

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

    # -- history (cluster-wide ids) -----------------------------------------------------

    async def start(self, link: SyncLink) -> None:
        self._history = link.history
        self.assigns_ids = link.history > 0
        await super().start(link)

    def _unsent(self, batch: list[Relayed]) -> None:
        # With history, a publish reaches even local peers only back from
        # Redis: one that never got there is delivered here now (without an
        # id: not replayable), whatever kept it from Redis.
        if self.assigns_ids and self._link is not None:
            for message in batch:
                self._link.deliver(message)

    async def _send_batch(self, batch: list[Relayed], data_bytes: int) -> None:
        if not self.assigns_ids:
            await super()._send_batch(batch, data_bytes)
            return
        client = self._client
        assert client is not None
        if self._publish_script is None:
            self._publish_script = client.register_script(_PUBLISH)
        candidate = new_epoch()
        async with client.pipeline(transaction=False) as pipe:
            for group in self._groups(batch):
                flat: list[Any] = []
                args: list[Any] = [candidate, self._history, self.channel, "", "", self._streams]
                for m in group:
                    flat += (m.topic, m.namespace, m.event, m.data, m.sender)
                    args += (m.topic, ENCODER.encode([m.namespace, m.event, m.data, m.sender]))
                args[3] = f"{VERSION_IDS}{self._own[1:]}{self._next_seq()}\n"
                args[4] = ENCODER.encode(flat)
                await self._publish_script(keys=self._keys, args=args, client=pipe)
            await pipe.execute()

    def _groups(self, batch: list[Relayed]) -> list[list[Relayed]]:
        groups: list[list[Relayed]] = []
        group: list[Relayed] = []
        size = 0
        for m in batch:
            cost = len(m.topic) + len(m.data) + 64
            if group and size + cost > self.max_body // 2:  # the data travels twice
                groups.append(group)
                group, size = [], 0
            group.append(m)
            size += cost
        if group:
            groups.append(group)
        return groups

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def deliver_id_body(self, body: str) -> None:
        """Hand the publishes of a version-2 body (with ids) to the local peers."""
        link = self._link
        if link is None:
            return
        try:
            epoch, first, flat = unpack_ids(body)
        except ValueError as exc:
            self._malformed(body, exc)
            return
        for seq, message in publishes_with_ids(epoch, first, flat):
            if message is None:
                self._malformed(body, None)
                continue
            if self._fetching:
                self._track(epoch, message.topic, seq)
            self._live = (epoch, seq)
            try:
                link.deliver(message)
            except Exception as exc:
                self.report(exc)
        self._live_moved_on()

    async def fetch(
        self,
        topics: tuple[str, ...],
        position: tuple[str, int] | None,
        namespace: str | None,
        skip_sender: str | None,
    ) -> Replay:
        """The cluster's history after ``position`` on ``topics``, up to the
        newest publish delivered here (see ``Sync.assigns_ids``). Raises
        ``ConnectionError`` when Redis is unreachable or does not answer
        within ``fetch_timeout`` (the replay then gives up: the client's
        stream goes on without it)."""
        client = self._client
        if client is None:
            return Replay([], False, 0, None)
        if not self._up:
            raise ConnectionError(
                f"cannot read the history: {self.describe()} is unreachable "
                f"({self.reason(self._down_cause)})"
            )
        if not self._fetching:
            self._restart_tracking(self._live[1])
        self._fetching += 1
        try:
            async with asyncio.timeout(self.fetch_timeout), self._fetch_slots(client):
                return await self._fetch(client, topics, position, namespace, skip_sender)
        except TimeoutError as exc:
            raise ConnectionError(
                f"reading the history from {self.describe()} took longer than "
                f"fetch_timeout={self.fetch_timeout} s"
            ) from exc
        finally:
            self._fetching -= 1
            if not self._fetching:
                self._topic_seqs.clear()

    async def _fetch(
        self,
        client: Redis,
        topics: tuple[str, ...],
        position: tuple[str, int] | None,
        namespace: str | None,
        skip_sender: str | None,
    ) -> Replay:
        if self._fetch_script is None:
            self._fetch_script = client.register_script(_FETCH)
        live_epoch, live_seq = self._live
        after = position[1] if position is not None and position[0] == live_epoch else 0
        upto = max(after, live_seq)
        result = await self._fetch_script(
            keys=self._keys, args=[self._streams, after, live_seq, *topics]
        )
        epoch = _text(result[0])
        newest = int(result[1])
        if not epoch:  # Redis lost everything (restarted without persistence)
            return Replay([], False, 0, None)
        if position is not None and position[0] == epoch and position[1] > newest:
            return Replay([], False, 0, epoch)  # never issued: from the start
        complete = position is not None and position[0] == epoch
        if epoch != live_epoch or after > live_seq:
            # This instance has not yet delivered what the cluster published
            # (a new epoch, or the client came from an instance ahead of it):
            # read again once it has — waiting for its listener, not polling
            # Redis; fetch_timeout bounds the wait (a message it missed).
            start = position[1] if position is not None and position[0] == epoch else 0
            await self._until_delivered(epoch, start)
            return Replay([], complete, start, epoch)
        runs: list[tuple[int, bytes]] = []
        for i in range(2, len(result), 2):
            deleted = int(_text(result[i]).split("-")[1])
            if deleted > after:
                complete = False
            for entry_id, fields in result[i + 1]:
                seq = int(_text(entry_id).split("-")[1])
                frame, ns, sender = self._frames.get(epoch, seq, fields[1])
                if (ns is None or ns == namespace) and (sender is None or sender != skip_sender):
                    runs.append((seq, frame))
        runs.sort(key=lambda item: item[0])
        return Replay(
            [frame for _, frame in runs], complete, self._moved_on(epoch, upto, topics), epoch
        )

    def _fetch_slots(self, client: Redis) -> asyncio.Semaphore:
        """Bounds the fetches in flight: many clients resuming at once queue
        here instead of exhausting the client's pool (redis-py's default of
        100 connections then fails the rest with MaxConnectionsError)."""
        if self._slots is None:
            pool_size = getattr(client.connection_pool, "max_connections", None) or _MAX_FETCHES
            # the pool also holds the subscription and the publishing connection
            self._slots = asyncio.Semaphore(max(1, min(_MAX_FETCHES, pool_size - 2)))
        return self._slots

    def _moved_on(self, epoch: str, upto: int, topics: tuple[str, ...]) -> int:
        """How far a fetch that read ``topics`` up to ``upto`` reaches now.

        While it waited for Redis, this instance delivered more publishes:
        when none of them was on ``topics``, the history of these topics is
        the same up to the live position, so the fetch reaches that far — and
        the peer can join now (``caught_up``). Comparing with the live
        position alone, which every publish on any topic moves, a replay
        under unrelated traffic would never catch up."""
        live_epoch, live_seq = self._live
        if live_epoch != epoch or upto < self._tracked_from:
            return upto  # deliveries since upto are not all tracked
        seqs = self._topic_seqs
        if any(seqs.get(topic, 0) > upto for topic in topics):
            return upto  # a publish on these topics came since: read it
        return live_seq

    def _track(self, epoch: str, topic: str, seq: int) -> None:
        """Note a delivery while fetches are in flight (see ``_moved_on``)."""
        seqs = self._topic_seqs
        if epoch != self._live[0] or (len(seqs) >= _MAX_TRACKED and topic not in seqs):
            self._restart_tracking(seq - 1)  # bounded memory: forget, track from here
        seqs[topic] = seq

    def _restart_tracking(self, after: int) -> None:
        self._topic_seqs.clear()
        self._tracked_from = after

    async def _until_delivered(self, epoch: str, seq: int) -> None:
        """Wait until this instance has delivered the publish ``(epoch, seq)``."""
        while self._live[0] != epoch or self._live[1] < seq:
            moved = self._live_moved
            if moved is None:
                moved = self._live_moved = asyncio.Event()
            await moved.wait()

    def _live_moved_on(self) -> None:
        """Wake the fetches waiting in ``_until_delivered`` (``_live`` moved)."""
        moved, self._live_moved = self._live_moved, None
        if moved is not None:
            moved.set()

    def caught_up(self, replay: Replay) -> bool:
        if replay.epoch is None:
            return True  # nothing is held: live delivery starts with the next publish
        # live delivery continues right after replay.upto
        return (replay.epoch, replay.upto) == self._live

    async def _read_position(self) -> None:
        """Where the cluster's history stands (after subscribing: what is
        published from now on is delivered here)."""
        client = self._client
        if client is None:
            return
        epoch, seq = await client.mget(list(self._keys[:2]))
        self._outage_missed = None
        if epoch is not None:
            live_epoch, live_seq = self._live
            seq_n = int(seq or 0)
            if _text(epoch) == live_epoch:
                self._outage_missed = max(0, seq_n - live_seq)
            if _text(epoch) != live_epoch or seq_n > live_seq:
                self._live = (_text(epoch), seq_n)
                self._restart_tracking(seq_n)  # a jump: what lies before was not delivered
                self._live_moved_on()

    def _missed_meanwhile(self) -> int | None:
        # With history, the cluster's seq says exactly what was missed: the
        # gaps in the other instances' envelopes would say it again.
        missed, self._outage_missed = self._outage_missed, None
        if missed is not None:
            self._seqs.clear()
        return missed

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
            self._url, retry=Retry(_NoBackoff(), 0), socket_connect_timeout=5.0
        )

    async def _disconnect(self) -> None:
        self._frames.clear()
        self._slots = None
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
        if self._history:
            await self._read_position()
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
        # redis-py annotates PubSub.aclose on some releases and not on others:
        # this seam type-checks on every release in our range
        await cast(_Closing, pubsub).aclose()

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
                    if data.startswith(VERSION_IDS):
                        self.deliver_id_body(body)
                    else:
                        self.deliver_body(body)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
