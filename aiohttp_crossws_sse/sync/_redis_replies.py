"""The commands a listening connection of sharded mode sent, and their replies.

A subscribed connection gets pushed messages and, in between, the replies to
its commands (``SUBSCRIBE``, ``UNSUBSCRIBE``, ``PING``), in the order the
commands were written — one command per channel, so that every reply, an
error included (Redis refuses a shard channel of another node's slot), is
matched to its command. An unsubscribe that matches none was not asked for:
Redis dropped the channel (on a cluster, its slot moved away).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["Pending", "Replies"]

SUBSCRIBE = b"s"
UNSUBSCRIBE = b"u"
PING = b"p"


class Pending:
    """The replies to a group of commands, awaited together (``done``)."""

    __slots__ = ("done", "failed", "remaining")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.failed: dict[bytes, Exception] = {}  # key (channel) -> its error reply
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def replied(self, key: bytes, error: Exception | None) -> None:
        if error is not None:
            self.failed[key] = error
        self.remaining -= 1
        if not self.remaining and not self.done.done():
            self.done.set_result(None)


class Replies:
    """The commands written on one connection and not answered yet, in order."""

    def __init__(self, subscribe_reply: bytes, unsubscribe_reply: bytes) -> None:
        self._sub = subscribe_reply  # b"subscribe" or b"ssubscribe"
        self._unsub = unsubscribe_reply
        self._queue: deque[tuple[bytes, bytes, Pending | None]] = deque()
        self.lock = asyncio.Lock()  # writes in the order of the queue

    def __bool__(self) -> bool:
        return bool(self._queue)

    def sent(self, kind: bytes, keys: list[bytes], pending: Pending | None) -> None:
        """Commands of ``kind`` (one per key) are written now (under ``lock``)."""
        self._queue.extend((kind, key, pending) for key in keys)

    def replied(self, reply: Any, error: Exception | None) -> bytes | None:
        """Match a reply (or an error reply) to the oldest command; returns
        the channel of an unsubscribe nobody asked for."""
        queue = self._queue
        head = queue[0] if queue else None
        what = reply[0] if reply is not None else None
        if head is not None and (
            error is not None
            or (head[0] == PING and what == b"pong")
            or (head[0] == SUBSCRIBE and what == self._sub and reply[1] == head[1])
            or (head[0] == UNSUBSCRIBE and what == self._unsub and reply[1] == head[1])
        ):
            queue.popleft()
            if head[2] is not None:
                head[2].replied(head[1], error)
            return None
        if what == self._unsub:
            channel: bytes = reply[1]
            return channel
        return None

    def fail(self, exc: BaseException | None) -> None:
        """The connection is gone: every wait ends (with ``exc``; ``None``: cancelled)."""
        for _, _, pending in self._queue:
            if pending is not None and not pending.done.done():
                if exc is None:
                    pending.done.cancel()
                else:
                    pending.done.set_exception(exc)
        self._queue.clear()
