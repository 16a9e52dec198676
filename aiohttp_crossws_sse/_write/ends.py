"""Why the write path ends a stream: its close reasons, and the ``Owner``
(the peer's connection) it tells."""

from __future__ import annotations

from typing import Protocol

__all__ = ["REASON_LOST", "REASON_SLOW", "REASON_STALLED", "Owner"]

# Close reasons the write path gives (README "Close reasons").
REASON_LOST = "connection lost"
REASON_SLOW = "slow consumer"
REASON_STALLED = "send timeout"


class Owner(Protocol):
    """Who an outbox reports to when the stream must end now."""

    def end_abruptly(self, reason: str) -> None: ...

    def dropped_events(self, count: int) -> None: ...
