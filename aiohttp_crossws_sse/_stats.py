"""``Stats``: the counters an operator asks for first (``SSEAdapter.stats()``)."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Stats"]


@dataclass(slots=True)
class Stats:
    """Counters an operator asks for first (``SSEAdapter.stats()``)."""

    peers_opened: int = 0
    peers_closed: int = 0
    peers_rejected: int = 0  # refused by max_peers or while shutting down
    frames_encoded: int = 0  # events encoded: one per send, one per publish
    deliveries: int = 0  # frames queued for a peer (a publish to N peers counts N)
    events_dropped: int = 0  # discarded by the "drop-oldest" policy
    slow_consumers: int = 0  # peers closed by the "close" policy
    send_timeouts: int = 0  # peers aborted after send_timeout of blocked writes
    messages_received: int = 0  # bidirectional messages handed to hooks
    relayed_out: int = 0  # publishes handed to the backplane (taken, not refused)
    relayed_in: int = 0  # publishes of other instances the backplane brought here

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
