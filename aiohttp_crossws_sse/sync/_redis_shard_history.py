"""The history of sharded mode: ids per group, live positions per topic.

As in single-channel mode (``_redis_history.py``), a Lua script gives every
publish its id (``<epoch>-<seq>``), appends it to its topic's stream and
publishes it, atomically — but per group (``_shards.py``): each group has its
own epoch and seq, and the script publishes on the topic's own channel. On
a Redis Cluster a group's keys and its topics' channels share a hash tag,
so each script runs on one node. An id positions the topics of its group;
a stream that follows topics of several groups is positioned in the group
whose epoch its ``Last-Event-ID`` carries, and replays the others whole, as
for an unknown id (``recovered`` False).

This instance hears a topic only while it is subscribed to it, so where the
history and the live stream meet is kept per topic (``positions``): the
newest seq of the topic delivered here, or, just subscribed, the group's
seq read after the subscription was confirmed, with every message pushed
before that read handed over first (``Node.barrier``). Publishes of the
topic after that position arrive live; the ones up to it are in its stream.
A replay reads each topic's stream up to its position and joins once no
position moved meanwhile. Its cursor (which topic is replayed up to where)
travels in ``Replay.epoch``, as text (``_connection.py`` hands it back).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .._history import Replay
from ._envelope import ENCODER, as_text, groups
from ._redis_history import FrameCache
from ._shards import ShardNames
from .base import Relayed

__all__ = ["GroupHistory"]

_CURSOR = "\x00"  # marks a cursor in Replay.epoch (a client's id never holds NUL)
_ALPHABET = string.ascii_letters + string.digits

# One topic's publishes, atomically: the group's epoch (a new one if Redis
# lost it) and n consecutive seqs; each event appended to the topic's
# stream, trimmed to the newest ARGV[2] (the newest seq trimming evicted kept
# per topic); then the envelope published on the topic's channel.
# KEYS: epoch, seq, evicted, stream. ARGV: epoch candidate, maxlen, publish
# command, channel, header, body, topic, then one record per event.
_PUBLISH = r"""
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
local n = #ARGV - 7
local last = redis.call('INCRBY', KEYS[2], n)
local first = last - n + 1
local maxlen = tonumber(ARGV[2])
for i = 1, n do
  local trim = redis.call('XLEN', KEYS[4]) + 1 - maxlen
  if trim > 0 then
    local gone = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', trim)
    redis.call('HSET', KEYS[3], ARGV[7], gone[#gone][1])
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', maxlen, '0-' .. (first + i - 1), 'r', ARGV[7 + i])
end
redis.call(ARGV[3], ARGV[4], ARGV[5] .. epoch .. ' ' .. first .. '\n' .. ARGV[6])
return {epoch, first}
"""

# A group's epoch and seq, then per topic: the newest evicted id, the newest
# id at or before `after`, and the entries in (after, upto]; with `upto` -1,
# instead the number of entries after `after` (what an outage missed; none
# counted with `after` -1).
# KEYS: epoch, seq, evicted. ARGV: stream key prefix, then (topic, after, upto)...
_READ = r"""
local out = {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0'}
for i = 2, #ARGV, 3 do
  local key = ARGV[1] .. ARGV[i]
  local after, upto = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  out[#out + 1] = redis.call('HGET', KEYS[3], ARGV[i]) or '0-0'
  if upto < 0 then
    local count = 0
    if after >= 0 then
      count = #redis.call('XRANGE', key, '(0-' .. after, '+', 'COUNT', 100000)
    end
    out[#out + 1] = count
    out[#out + 1] = {}
  else
    local before = redis.call('XREVRANGE', key, '0-' .. after, '-', 'COUNT', 1)
    out[#out + 1] = (before[1] and before[1][1]) or '0-0'
    local entries = {}
    if upto > after then
      entries = redis.call('XRANGE', key, '(0-' .. after, '0-' .. upto)
    end
    out[#out + 1] = entries
  end
end
return out
"""


class GroupHistory:
    """One sharded ``RedisSync``'s side of the history (see the module docstring)."""

    def __init__(self) -> None:
        self.size = 0  # events kept per topic (SyncLink.history); 0: off
        self.names: ShardNames | None = None  # set once connected
        self._epoch_length = 4
        #: topic -> (epoch, seq): where its history meets its live stream here
        self.positions: dict[str, tuple[str, int]] = {}
        #: positions of topics whose subscription was lost (what it missed)
        self.lost: dict[str, tuple[str, int]] = {}
        self._moved: asyncio.Event | None = None
        self._frames = FrameCache()
        self._publish: Any = None
        self._read: Any = None

    def connected(self, names: ShardNames) -> None:
        self.names = names
        # many groups on a cluster: 6 characters, so that their epochs do not meet
        self._epoch_length = 6 if names.cluster else 4

    def scripts(self, client: Redis) -> None:
        if self._publish is None:
            self._publish = client.register_script(_PUBLISH)
            self._read = client.register_script(_READ)

    def _keys(self, topic: str) -> tuple[str, str, str, str]:
        assert self.names is not None
        prefix = self.names.prefix(topic)
        return f"{prefix}:epoch", f"{prefix}:seq", f"{prefix}:evicted", f"{prefix}:history:"

    # -- publishing ----------------------------------------------------------------------

    async def queue(
        self,
        pipe: Pipeline,
        command: str,
        topic: str,
        messages: list[Relayed],
        max_body: int,
        header: Callable[[int], str],
    ) -> list[int]:
        """Queue on ``pipe`` the script calls publishing ``messages`` (all of
        ``topic``); returns how many each call carries."""
        assert self.names is not None
        epoch_key, seq_key, evicted_key, streams = self._keys(topic)
        keys = [epoch_key, seq_key, evicted_key, streams + topic]
        candidate = "".join(secrets.choice(_ALPHABET) for _ in range(self._epoch_length))
        channel = self.names.channel_of(topic)
        sizes = []
        for group in groups(messages, max_body // 2):  # the data travels twice
            flat: list[Any] = []
            args: list[Any] = [candidate, self.size, command, channel, "", "", topic]
            for m in group:
                flat += (m.topic, m.namespace, m.event, m.data, m.sender)
                args.append(ENCODER.encode([m.namespace, m.event, m.data, m.sender]))
            args[4] = header(len(group))
            args[5] = ENCODER.encode(flat)
            await self._publish(keys=keys, args=args, client=pipe)
            sizes.append(len(group))
        return sizes

    # -- live positions ----------------------------------------------------------------

    def delivered(self, epoch: str, topic: str, seq: int) -> None:
        """This instance delivers publish ``seq`` of ``epoch`` on ``topic``."""
        self.positions[topic] = (epoch, seq)

    def live_moved_on(self) -> None:
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    async def moved(self) -> None:
        """Returns once a position moved (or a topic's readiness changed)."""
        if self._moved is None:
            self._moved = asyncio.Event()
        await self._moved.wait()

    async def read_positions(self, client: Redis, topics: list[str]) -> dict[str, Any]:
        """Each group's epoch and seq now (after its topics were subscribed),
        and, for topics whose subscription had been lost, how many of their
        publishes came meanwhile; by topic."""
        groups: dict[str, list[str]] = {}
        for topic in topics:
            groups.setdefault(self._keys(topic)[0], []).append(topic)
        async with client.pipeline(transaction=False) as pipe:
            for members in groups.values():
                args: list[Any] = [self._keys(members[0])[3]]
                for topic in members:
                    old = self.lost.get(topic)
                    args += (topic, old[1] if old is not None else -1, -1)
                await self._read(keys=list(self._keys(members[0])[:3]), args=args, client=pipe)
            results = await pipe.execute()
        read: dict[str, Any] = {}
        for members, result in zip(groups.values(), results, strict=True):
            epoch, seq = as_text(result[0]), int(result[1])
            for i, topic in enumerate(members):
                evicted, count = _seq(result[2 + 3 * i]), int(result[3 + 3 * i])
                read[topic] = (epoch, seq, evicted, count)
        return read

    def ready(self, read: dict[str, Any]) -> tuple[int | None, list[str]]:
        """Set the positions of topics just subscribed (after ``Node.barrier``).
        Returns the publishes missed by those whose subscription had been
        lost (``None``: cannot tell), and the topics whose history Redis lost
        meanwhile (a new epoch, or none yet)."""
        missed: int | None = 0
        gone = []
        for topic, (epoch, seq, evicted, count) in read.items():
            old = self.lost.pop(topic, None)
            current = self.positions.get(topic)
            if current is None or current[0] != epoch or current[1] < seq:
                self.positions[topic] = (epoch, seq)
            if old is None:
                continue
            if old[0] != epoch:
                gone.append(topic)
                missed = None
            elif missed is not None:
                missed += count + (1 if evicted > old[1] + count else 0)
        self.live_moved_on()
        return missed, gone

    def forget(self, topics: Iterable[str], lost: bool) -> None:
        for topic in topics:
            position = self.positions.pop(topic, None)
            if lost and position is not None:
                self.lost.setdefault(topic, position)
            elif not lost:
                self.lost.pop(topic, None)
        self.live_moved_on()

    # -- replays -------------------------------------------------------------------------

    async def fetch(
        self,
        clients: Callable[[str], Redis],
        topics: tuple[str, ...],
        position: tuple[str, int] | None,
        namespace: str | None,
        skip_sender: str | None,
    ) -> Replay:
        """One read of the replay of ``topics`` (every one subscribed, with a
        position): from the client's id, or where the cursor in ``position``
        left each topic, up to each topic's position here."""
        if position is not None and position[0].startswith(_CURSOR):
            cursor: dict[str, list[Any]] = json.loads(position[0][1:])["c"]
            since = None
        else:
            cursor, since = {}, position
        upto = {topic: self.positions[topic] for topic in topics}
        plan: dict[str, list[Any]] = {}
        complete = True
        for topic in topics:
            epoch, seq = upto[topic]
            at = cursor.get(topic)
            if at is None:  # the first read: from the client's id, if of this group
                if since is not None and since[0] == epoch:
                    at = [epoch, since[1]]
                else:
                    at, complete = [epoch, 0], False
            elif at[0] != epoch:  # the group's history started over
                at, complete = [epoch, 0], False
            plan[topic] = at
        by_client: dict[int, tuple[Redis, dict[str, list[str]]]] = {}
        for topic in topics:
            client = clients(topic)
            groups = by_client.setdefault(id(client), (client, {}))[1]
            groups.setdefault(self._keys(topic)[0], []).append(topic)
        reads = await asyncio.gather(
            *(self._read_groups(c, groups, plan, upto) for c, groups in by_client.values())
        )
        frames: list[tuple[int, bytes]] = []
        waiting = again = False
        for epoch_now, seq_now, topic, evicted, before, entries in (r for rs in reads for r in rs):
            epoch, seq = upto[topic]
            after = plan[topic][1]
            if epoch_now != epoch:
                waiting = True  # this instance has not yet heard the group's new epoch
                continue
            if after > seq_now:  # never issued: the client's id is of a history since lost
                plan[topic], complete, again = [epoch, 0], False, True
                continue
            if evicted > after:
                complete = False
            if max(before, min(evicted, after)) > seq:
                # The client saw a publish of this topic not yet delivered
                # here (it came from an instance ahead of this one): joining
                # now would send it again. It arrives live; read on then.
                waiting = True
                continue
            for entry_id, fields in entries:
                event_seq = _seq(entry_id)
                frame, ns, sender = self._frame(epoch, event_seq, fields[1])
                if (ns is None or ns == namespace) and (sender is None or sender != skip_sender):
                    frames.append((event_seq, frame))
            # (seqs in (seq, after] are other topics' of the group: from here
            # on, the live stream brings this one's)
            plan[topic] = [epoch, seq]
        if waiting and not frames and not again:
            await self.moved()
        frames.sort(key=lambda item: item[0])
        state = {"c": plan, "w": waiting or again}
        return Replay([f for _, f in frames], complete, 0, _CURSOR + json.dumps(state))

    async def _read_groups(
        self,
        client: Redis,
        groups: dict[str, list[str]],
        plan: dict[str, list[Any]],
        upto: dict[str, tuple[str, int]],
    ) -> list[tuple[str, int, str, int, int, Any]]:
        async with client.pipeline(transaction=False) as pipe:
            for members in groups.values():
                keys = self._keys(members[0])
                args: list[Any] = [keys[3]]
                for topic in members:
                    args += (topic, plan[topic][1], upto[topic][1])
                await self._read(keys=list(keys[:3]), args=args, client=pipe)
            results = await pipe.execute()
        out = []
        for members, result in zip(groups.values(), results, strict=True):
            epoch, seq = as_text(result[0]), int(result[1])
            for i, topic in enumerate(members):
                evicted, before = _seq(result[2 + 3 * i]), _seq(result[3 + 3 * i])
                out.append((epoch, seq, topic, evicted, before, result[4 + 3 * i]))
        return out

    def caught_up(self, replay: Replay) -> bool:
        """Whether live delivery continues right after ``replay`` on each of
        its topics (no position moved since it was read)."""
        if replay.epoch is None or not replay.epoch.startswith(_CURSOR):
            return True
        state = json.loads(replay.epoch[1:])
        if state["w"]:
            return False
        positions = self.positions
        for topic, (epoch, seq) in state["c"].items():
            if positions.get(topic) != (epoch, seq):
                return False
        return True

    def _frame(
        self, epoch: str, seq: int, record: bytes | str
    ) -> tuple[bytes, str | None, str | None]:
        """``(frame, namespace, sender)`` of an event, shared by the replays
        that read it (see ``FrameCache``)."""
        return self._frames.get(epoch, seq, record)

    def disconnected(self) -> None:
        self._frames.clear()
        self.positions.clear()
        self.lost.clear()


def _seq(stream_id: Any) -> int:
    """The seq of a stream id ``0-<seq>``."""
    return int(as_text(stream_id).partition("-")[2] or 0)
