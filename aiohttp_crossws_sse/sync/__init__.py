"""Backplanes that relay publishes between instances (DESIGN "Scale-out").

Each backend lives in its own module and is imported on first use, so its
client library stays an optional dependency.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Relayed, Sync, SyncLink

if TYPE_CHECKING:
    from .memory import MemoryHub, MemorySync
    from .postgres import PostgresSync
    from .redis import RedisSync

__all__ = [
    "MemoryHub",
    "MemorySync",
    "PostgresSync",
    "RedisSync",
    "Relayed",
    "Sync",
    "SyncLink",
]

# name -> module that defines it, imported when the name is first used
_BACKENDS = {
    "MemoryHub": ".memory",
    "MemorySync": ".memory",
    "RedisSync": ".redis",  # needs the ``redis`` extra
    "PostgresSync": ".postgres",  # needs the ``postgres`` extra
}


def __getattr__(name: str) -> Any:
    module = _BACKENDS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
