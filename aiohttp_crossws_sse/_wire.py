"""Names on the wire, shared by the server, the client and the tests."""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CROSSWS_ID_EVENT",
    "KEEPALIVE_COMMENT",
    "LAST_EVENT_ID_HEADER",
    "LAST_EVENT_ID_QUERY",
    "PEER_ID_HEADER",
    "ReadyState",
]

#: Response header of a bidirectional stream, and request header of its POSTs.
PEER_ID_HEADER = "x-crossws-id"
#: Type of the first event of a bidirectional stream; its data is the peer id.
CROSSWS_ID_EVENT = "crossws-id"
#: Text of the keep-alive comment line (``: ping``).
KEEPALIVE_COMMENT = "ping"
#: Where a reconnecting client names the last event it saw.
LAST_EVENT_ID_HEADER = "Last-Event-ID"
LAST_EVENT_ID_QUERY = "lastEventId"


class ReadyState(IntEnum):
    """``Peer.ready_state``: the WebSocket numbering crossws uses."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3
