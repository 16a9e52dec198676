"""The backplane interface: what an instance hands over and gets back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Relayed", "Sync"]


@dataclass(frozen=True, slots=True)
class Relayed:
    """One publish as it travels between instances: text, not an encoded frame.

    ``namespace`` ``None`` means every namespace; ``id`` is the cluster-wide
    event id when history is on.
    """

    topic: str
    data: str
    event: str | None = None
    namespace: str | None = None
    id: str | None = None


class Sync(ABC):
    """A backplane. The adapter calls ``start`` on app startup, ``close`` on shutdown."""

    @abstractmethod
    async def start(self, deliver: Callable[[Relayed], None]) -> None:
        """Connect; call ``deliver`` for every publish made by *another* instance."""

    @abstractmethod
    def publish(self, message: Relayed) -> None:
        """Relay a local publish; never blocks and never raises into the caller."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; idempotent."""
