"""The package's exceptions: one base class, ``SSEError``."""

from __future__ import annotations

__all__ = ["BackplaneError", "SSEError"]


class SSEError(Exception):
    """Base class of every exception this package raises.

    The ``error`` hook receives one whose ``__cause__`` is the original
    exception."""


class BackplaneError(SSEError):
    """An awaited publish the backplane could not take (unreachable, over
    ``max_pending``, a send that failed or timed out). The message names the
    backplane and the cause (also its ``__cause__``); the event was still
    delivered to this instance's subscribers."""
