"""Sharded mode's names, interest and cluster topology (``RedisSync(sharded=True)``).

**Names.** Each topic travels on a channel of its own under the cluster's
``channel``: ``<channel>:<topic>`` on a plain Redis, ``<channel>:{<group>}:<topic>``
on a Redis Cluster. The namespace is not in the name: a publish to every
namespace (``namespace=None``) and one to a single namespace of the same
topic travel on the same channel (the envelope carries the namespace), so
an instance that follows a topic in any namespace gets both, in the order
they were published.

**Groups.** A group is the unit of history ids: its topics share one epoch
and one seq (``<prefix>:epoch``, ``<prefix>:seq``; see
``_redis_shard_history.py``), so one ``Last-Event-ID`` positions all of them.
On a plain Redis every topic is in one group, whose keys are single-channel
mode's (``<channel>:epoch`` ...): ids stay valid across the two modes. On a
Redis Cluster a group is a hash tag: the ``{...}`` part of a topic, as Redis
reads it (``{room42}:chat`` and ``{room42}:typing`` are one group), else the
whole topic; the channel, the group's keys and its topics' streams all
carry ``{<group>}`` and so live on one slot — what a Lua script that
publishes and records atomically needs, and what keeps a topic's pub/sub
on the node that holds its history.

**Interest.** How many reasons this instance has to follow a topic: a
namespace where it has a local subscriber (``Sync.interest``), a replay
reading its history. Changes are applied once per loop iteration, in one go.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["SLOTS", "Interest", "ShardNames", "group_of", "parse_slots"]

#: Hash slots of a Redis Cluster.
SLOTS = 16384


def group_of(topic: str) -> str:
    """The hash tag of ``topic``'s keys and channel on a Redis Cluster: its
    own ``{tag}`` if it has one (Redis's rule: the first ``{``, the first
    ``}`` after it, not empty), else the topic itself; a digest when that
    could not stand between braces (empty, or holding a ``}``)."""
    start = topic.find("{")
    if start >= 0:
        end = topic.find("}", start + 1)
        if end > start + 1:
            return topic[start + 1 : end]
    if topic and "}" not in topic:
        return topic
    # (a topic named like a digest shares that group: harmless, names stay apart)
    return "#" + hashlib.blake2b(topic.encode(), digest_size=8).hexdigest()


class ShardNames:
    """Channel and key names of sharded mode (see the module docstring)."""

    __slots__ = ("_channels", "channel", "cluster")

    def __init__(self, channel: str, cluster: bool) -> None:
        if cluster and ("{" in channel or "}" in channel):
            raise ValueError(
                f"option 'channel' must not contain '{{' or '}}' on a Redis Cluster "
                f"(it would change the hash slots of the keys): {channel!r}"
            )
        self.channel = channel
        self.cluster = cluster
        self._channels: dict[str, bytes] = {}  # topic -> channel, for the topics sent to

    def prefix(self, topic: str) -> str:
        """The prefix of the keys of ``topic``'s group."""
        if not self.cluster:
            return self.channel
        return f"{self.channel}:{{{group_of(topic)}}}"

    def channel_of(self, topic: str) -> bytes:
        """The pub/sub channel of ``topic``."""
        name = self._channels.get(topic)
        if name is None:
            if len(self._channels) >= 65536:  # bounded: topics come and go
                self._channels.clear()
            text = f"{self.prefix(topic)}:{topic}" if self.cluster else f"{self.channel}:{topic}"
            name = self._channels[topic] = text.encode()
        return name


class Interest:
    """How many reasons this instance has to follow each topic; the topics
    whose count went from zero or to zero are handed to ``changed`` once per
    loop iteration (after every ``peer.subscribe`` of that iteration)."""

    def __init__(self, changed: Callable[[set[str]], None]) -> None:
        self.counts: dict[str, int] = {}
        self._changed = changed
        self._dirty: set[str] = set()
        self._scheduled: asyncio.Handle | None = None

    def __contains__(self, topic: str) -> bool:
        return topic in self.counts

    def add(self, topics: Iterable[str]) -> None:
        counts = self.counts
        for topic in topics:
            n = counts.get(topic, 0)
            counts[topic] = n + 1
            if not n:
                self._touch(topic)

    def remove(self, topics: Iterable[str]) -> None:
        counts = self.counts
        for topic in topics:
            n = counts.get(topic, 0)
            if n <= 1:
                if n:
                    del counts[topic]
                    self._touch(topic)
            else:
                counts[topic] = n - 1

    def _touch(self, topic: str) -> None:
        self._dirty.add(topic)
        if self._scheduled is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop yet (before start): applied on start
                return
            self._scheduled = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand the topics changed since the last flush to ``changed`` (now,
        when called before the end of the loop iteration)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        dirty, self._dirty = self._dirty, set()
        if dirty:
            self._changed(dirty)

    def cancel(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._dirty.clear()


def parse_slots(reply: Sequence[Any], seed_host: str) -> list[tuple[int, int, str, int]]:
    """``(first slot, last slot, host, port)`` of each range's primary in a
    ``CLUSTER SLOTS`` reply (a primary announced without a host, or as
    ``?``, is at ``seed_host``: the node that answered)."""
    ranges = []
    for entry in reply:
        first, last, primary = int(entry[0]), int(entry[1]), entry[2]
        host = _text(primary[0])
        if not host or host == "?":
            host = seed_host
        ranges.append((first, last, host, int(primary[1])))
    return ranges


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
