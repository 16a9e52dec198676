"""Backplanes that relay publishes between instances (DESIGN "Scale-out").

Backends are imported lazily so their client libraries stay optional.
"""

from __future__ import annotations

from .base import Relayed, Sync
from .memory import MemoryHub, MemorySync

__all__ = ["MemoryHub", "MemorySync", "Relayed", "Sync"]
