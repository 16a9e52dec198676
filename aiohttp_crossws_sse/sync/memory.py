"""``MemorySync``: a backplane between adapters of one process.

Useful to run several adapters (say, one per app in one process) as one
cluster, and to test code written for a real backplane without starting one.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from .._publication import DONE, Publication
from .base import Relayed, Sync, SyncLink

__all__ = ["MemoryHub", "MemorySync"]


class MemoryHub:
    """The shared medium: every ``MemorySync`` on the same hub and channel sees
    the others' publishes."""

    def __init__(self) -> None:
        self._members: dict[str, list[MemorySync]] = {}

    def join(self, member: MemorySync) -> None:
        self._members.setdefault(member.channel, []).append(member)

    def leave(self, member: MemorySync) -> None:
        members = self._members.get(member.channel, [])
        if member in members:
            members.remove(member)
        if not members:
            self._members.pop(member.channel, None)

    def relay(self, sender: MemorySync, message: Relayed) -> None:
        for member in self._members.get(sender.channel, ()):
            if member is not sender:
                member.receive(message)


_default_hub = MemoryHub()


class MemorySync(Sync):
    """Relays publishes to the other ``MemorySync`` instances on ``hub``.

    Delivery is asynchronous (the next loop iteration), in publish order, like
    a network backplane's."""

    def __init__(self, hub: MemoryHub | None = None, *, channel: str = "crossws") -> None:
        if not isinstance(channel, str) or not channel:
            raise ValueError("channel must be a non-empty str")
        self.hub = hub if hub is not None else _default_hub
        self.channel = channel
        self._link: SyncLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, link: SyncLink) -> None:
        if self._link is not None:
            return
        self._link = link
        self._loop = asyncio.get_running_loop()
        self.hub.join(self)

    def publish(self, message: Relayed) -> Publication:
        if self._link is None:
            raise RuntimeError("MemorySync is not started (is the app running?)")
        self.hub.relay(self, message)
        return DONE  # the hub took it

    def receive(self, message: Relayed) -> None:
        if self._link is not None and self._loop is not None:
            self._loop.call_soon(self._link.deliver, replace(message, remote=True))

    async def close(self) -> None:
        if self._link is not None:
            self.hub.leave(self)
            self._link = None
