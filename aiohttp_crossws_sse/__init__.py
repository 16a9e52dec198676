"""crossws's programming model — hooks, peers, pub/sub — for aiohttp, over Server-Sent Events."""

from __future__ import annotations

from ._adapter import ADAPTER_KEY, SSEAdapter, get_adapter, sse_adapter
from ._errors import BackplaneError, SSEError
from ._hooks import Hooks, HooksDict, UpgradeAccept, define_hooks
from ._message import Message
from ._peer import CloseDetails, Peer
from ._wire import ReadyState

__all__ = [
    "ADAPTER_KEY",
    "BackplaneError",
    "CloseDetails",
    "Hooks",
    "HooksDict",
    "Message",
    "Peer",
    "ReadyState",
    "SSEAdapter",
    "SSEError",
    "UpgradeAccept",
    "define_hooks",
    "get_adapter",
    "sse_adapter",
]

__version__ = "0.1.0"
