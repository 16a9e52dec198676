"""The cluster's history in Redis Streams: what ``RedisSync`` keeps with history on.

With ``SyncLink.history`` on, Redis assigns every publish its event id, an
epoch and a seq: a Lua script takes consecutive seqs, appends each event to
its topic's stream and publishes the envelope (version 2, ``_envelope.py``)
in one step, so pub/sub order is seq order. A replay reads the streams up to
the newest publish delivered here (the live position), and the peer joins
live delivery once no publish on its topics came meanwhile.

Keys, all under the channel's name: ``<channel>:epoch``, ``<channel>:seq``,
``<channel>:evicted`` (per topic, the newest seq trimming evicted), and one
stream per topic, ``<channel>:history:<topic>``, entries ``0-<seq>`` holding
the record ``[namespace, event, data, sender]``.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from .._frame import encode_published
from .._history import Replay, format_id, new_epoch
from ._envelope import ENCODER, as_text, groups
from .base import Relayed

__all__ = ["FrameCache", "StreamHistory"]

# Topics whose newest delivery is remembered while replays fetch; beyond
# that many, tracking restarts (a fetch then reads once more).
_MAX_TRACKED = 4096
# Replay fetches in flight at once (more wait their turn, within fetch_timeout).
_MAX_FETCHES = 16
# Bytes of encoded frames kept for replays to share (see _FrameCache).
_FRAME_CACHE_BYTES = 16 << 20

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
return {epoch, first}
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


class FrameCache:
    """Encoded frames of the events replays read, by (epoch, seq), least
    recently used first out beyond ``_FRAME_CACHE_BYTES``: clients resuming
    at once share one frame per event (as the in-process history does)
    instead of each holding a copy of the history, and the records are
    decoded once."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, int], tuple[bytes, str | None, str | None]] = (
            OrderedDict()
        )
        self._bytes = 0

    def get(
        self, epoch: str, seq: int, record: bytes | str
    ) -> tuple[bytes, str | None, str | None]:
        """``(frame, namespace, sender)`` of event ``seq`` of ``epoch``,
        stored as ``record``."""
        entries = self._entries
        key = (epoch, seq)
        entry = entries.get(key)
        if entry is not None:
            entries.move_to_end(key)
            return entry
        ns, event, data, sender = json.loads(record)
        entry = (encode_published(data, event=event, id=format_id(epoch, seq)), ns, sender)
        entries[key] = entry
        self._bytes += len(entry[0])
        while self._bytes > _FRAME_CACHE_BYTES:
            self._bytes -= len(entries.popitem(last=False)[1][0])
        return entry

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


class StreamHistory:
    """One ``RedisSync``'s side of the history: publishing into the streams,
    the live position (``live``: epoch and seq of the newest publish
    delivered here), and the replays' fetches and catch-up."""

    def __init__(self, channel: str) -> None:
        self.size = 0  # events kept per topic (SyncLink.history); 0: off
        self._channel = channel
        self._keys = (f"{channel}:epoch", f"{channel}:seq", f"{channel}:evicted")
        self._streams = f"{channel}:history:"
        self.live: tuple[str | None, int] = (None, 0)
        self._live_moved: asyncio.Event | None = None  # set when live moves (if awaited)
        self._outage_missed: int | None = None  # publishes missed, read on resubscribing
        self._slots: asyncio.Semaphore | None = None  # see _fetch_slots
        self._frames = FrameCache()
        # While fetches are in flight: the newest seq delivered per topic,
        # for every delivery with a seq above _tracked_from (see _moved_on).
        self._fetching = 0
        self._topic_seqs: dict[str, int] = {}
        self._tracked_from = 0
        self._publish_script: Any = None
        self._fetch_script: Any = None

    def disconnected(self) -> None:
        """The client is closed: what was kept for it goes."""
        self._frames.clear()
        self._slots = None

    # -- publishing ----------------------------------------------------------------------

    async def publish(
        self, client: Redis, batch: list[Relayed], max_body: int, header: Callable[[int], str]
    ) -> list[str | None]:
        """Add ``batch`` to the streams and publish it, in as few script
        calls as fit ``max_body``, in one round trip; returns the event ids
        Redis gave, in order. ``header``: the next version-2 envelope header
        of this instance."""
        if self._publish_script is None:
            self._publish_script = client.register_script(_PUBLISH)
        candidate = new_epoch()
        sizes: list[int] = []
        async with client.pipeline(transaction=False) as pipe:
            for group in groups(batch, max_body // 2):  # the data travels twice
                sizes.append(len(group))
                flat: list[Any] = []
                args: list[Any] = [candidate, self.size, self._channel, "", "", self._streams]
                for m in group:
                    flat += (m.topic, m.namespace, m.event, m.data, m.sender)
                    args += (m.topic, ENCODER.encode([m.namespace, m.event, m.data, m.sender]))
                args[3] = header(len(group))
                args[4] = ENCODER.encode(flat)
                await self._publish_script(keys=self._keys, args=args, client=pipe)
            results = await pipe.execute()
        ids: list[str | None] = []
        for size, (epoch, first) in zip(sizes, results, strict=True):
            ids += (format_id(as_text(epoch), seq) for seq in range(first, first + size))
        return ids

    # -- the live position ---------------------------------------------------------------

    def delivered(self, epoch: str, topic: str, seq: int) -> None:
        """This instance delivers publish ``seq`` of ``epoch`` on ``topic``
        (then, once per body, ``live_moved_on``)."""
        if self._fetching:
            self._track(epoch, topic, seq)
        self.live = (epoch, seq)

    def live_moved_on(self) -> None:
        """Wake the fetches waiting in ``_until_delivered`` (``live`` moved)."""
        moved, self._live_moved = self._live_moved, None
        if moved is not None:
            moved.set()

    async def read_position(self, client: Redis) -> None:
        """Where the cluster's history stands (after subscribing: what is
        published from now on is delivered here)."""
        epoch, seq = await client.mget(list(self._keys[:2]))
        live_epoch, live_seq = self.live
        # No epoch: Redis lost its data (or never had any). Nothing was
        # published since, but what this instance missed before the loss
        # cannot be told: "maybe" (None), unless it never saw an epoch.
        self._outage_missed = None if live_epoch is not None else 0
        if epoch is not None:
            seq_n = int(seq or 0)
            if as_text(epoch) == live_epoch:
                self._outage_missed = max(0, seq_n - live_seq)
            elif live_epoch is not None:  # Redis lost the history: all of the new one
                self._outage_missed = seq_n
            if as_text(epoch) != live_epoch or seq_n > live_seq:
                self.live = (as_text(epoch), seq_n)
                self._restart_tracking(seq_n)  # a jump: what lies before was not delivered
                self.live_moved_on()

    def missed_meanwhile(self) -> int | None:
        """Publishes of the cluster the outage just over missed, as
        ``read_position`` found (once; ``None`` when it could not tell)."""
        missed, self._outage_missed = self._outage_missed, None
        return missed

    # -- replays -------------------------------------------------------------------------

    async def fetch(
        self,
        client: Redis,
        topics: tuple[str, ...],
        position: tuple[str, int] | None,
        namespace: str | None,
        skip_sender: str | None,
        timeout: float,
    ) -> Replay:
        """The history after ``position`` on ``topics``, up to ``live`` (see
        ``Sync.assigns_ids``); raises ``TimeoutError`` after ``timeout`` s."""
        if not self._fetching:
            self._restart_tracking(self.live[1])
        self._fetching += 1
        try:
            async with asyncio.timeout(timeout), self._fetch_slots(client):
                return await self._fetch(client, topics, position, namespace, skip_sender)
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
        live_epoch, live_seq = self.live
        after = position[1] if position is not None and position[0] == live_epoch else 0
        upto = max(after, live_seq)
        result = await self._fetch_script(
            keys=self._keys, args=[self._streams, after, live_seq, *topics]
        )
        epoch = as_text(result[0])
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
            deleted = int(as_text(result[i]).split("-")[1])
            if deleted > after:
                complete = False
            for entry_id, fields in result[i + 1]:
                seq = int(as_text(entry_id).split("-")[1])
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
        live_epoch, live_seq = self.live
        if live_epoch != epoch or upto < self._tracked_from:
            return upto  # deliveries since upto are not all tracked
        seqs = self._topic_seqs
        if any(seqs.get(topic, 0) > upto for topic in topics):
            return upto  # a publish on these topics came since: read it
        return live_seq

    def _track(self, epoch: str, topic: str, seq: int) -> None:
        """Note a delivery while fetches are in flight (see ``_moved_on``)."""
        seqs = self._topic_seqs
        if epoch != self.live[0] or (len(seqs) >= _MAX_TRACKED and topic not in seqs):
            self._restart_tracking(seq - 1)  # bounded memory: forget, track from here
        seqs[topic] = seq

    def _restart_tracking(self, after: int) -> None:
        self._topic_seqs.clear()
        self._tracked_from = after

    async def _until_delivered(self, epoch: str, seq: int) -> None:
        """Wait until this instance has delivered the publish ``(epoch, seq)``."""
        while self.live[0] != epoch or self.live[1] < seq:
            moved = self._live_moved
            if moved is None:
                moved = self._live_moved = asyncio.Event()
            await moved.wait()

    def caught_up(self, replay: Replay) -> bool:
        """Whether live delivery continues right after ``replay``."""
        if replay.epoch is None:
            return True  # nothing is held: live delivery starts with the next publish
        return (replay.epoch, replay.upto) == self.live
