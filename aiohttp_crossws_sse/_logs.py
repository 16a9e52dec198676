"""What an operator needs to see, on the package logger, rate-limited.

A storm (a thousand slow consumers after a network hiccup, a flood of
connections refused at ``max_peers``) must not flood the log: each kind of
line is written at most ``burst`` times per ``period`` seconds, and the next
line written after a quiet spell says how many of its kind were suppressed.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog", "operator_log"]


class RateLimitedLog:
    """``log(kind, level, msg, *args)``: at most ``burst`` lines of one
    ``kind`` per ``period`` seconds on ``logger``."""

    __slots__ = ("_kinds", "burst", "logger", "period")

    def __init__(self, logger: logging.Logger, *, burst: int = 10, period: float = 60.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        # kind -> [window start, lines written in it, lines suppressed]
        self._kinds: dict[str, list[float]] = {}

    def clear(self) -> None:
        """Forget every window (tests start from a clean slate)."""
        self._kinds.clear()

    def log(self, kind: str, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = time.monotonic()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.period:
            suppressed = int(state[2]) if state is not None else 0
            state = self._kinds[kind] = [now, 0.0, 0.0]
            if suppressed:
                msg += " (%d similar lines suppressed in the last %.0f s)"
                args = (*args, suppressed, self.period)
        if state[1] >= self.burst:
            state[2] += 1
            return
        state[1] += 1
        self.logger.log(level, msg, *args, exc_info=exc_info)


#: Slow consumers, send timeouts, refused streams: one limiter per process,
#: so that several adapters together cannot flood the log either.
operator_log = RateLimitedLog(logging.getLogger("aiohttp_crossws_sse"))
