"""``Message``: one client-to-server message of bidirectional mode."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._peer import Peer

__all__ = ["Message"]


class Message:
    """A message a peer sent over the POST channel."""

    __slots__ = ("id", "peer", "raw_data")

    def __init__(self, peer: Peer, raw_data: bytes) -> None:
        self.id: str = str(uuid.uuid4())
        self.peer = peer
        self.raw_data: bytes = raw_data

    def text(self) -> str:
        """The data as UTF-8 text; invalid UTF-8 raises ``ValueError``."""
        return self.raw_data.decode("utf-8")

    def json(self) -> Any:
        """The data parsed as JSON (``ValueError`` when it is not JSON)."""
        return json.loads(self.text())

    def bytes(self) -> bytes:
        """The raw data."""
        return self.raw_data

    def __str__(self) -> str:
        return self.raw_data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"<Message {self.id} from {self.peer.id} {len(self.raw_data)} bytes>"
