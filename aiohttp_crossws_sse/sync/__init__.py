"""Backplanes that relay publishes between instances (DESIGN "Scale-out").

Backends are imported lazily so their client libraries stay optional.
"""

from __future__ import annotations

from .base import Relayed, Sync

__all__ = ["Relayed", "Sync"]
