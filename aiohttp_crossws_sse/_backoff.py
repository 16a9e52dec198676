"""When the client reconnects: backoff with jitter above the server's
``retry``, a cap, and the ``Retry-After`` of a ``503``.

Pure functions of their arguments (the randomness comes in as ``rand``), so
the delays can be checked exactly.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC

__all__ = ["BACKOFF_STEP", "STABLE_AFTER", "parse_retry_after", "reconnect_delay"]

#: The first backoff step, in seconds: what a server with ``retry: 0`` that
#: keeps ending the stream gets after its first quick end.
BACKOFF_STEP = 0.5
#: A stream that stayed open this many seconds resets the backoff: its end is
#: a normal one (a deploy, a proxy's limit), not a failure to repeat.
STABLE_AFTER = 5.0

# More digits than this in a Retry-After is "later than anyone waits".
_MAX_DIGITS = 12


def reconnect_delay(
    failures: int, base: float, cap: float, rand: float, floor: float | None = None
) -> float:
    """Seconds to wait before the next reconnection attempt.

    ``failures`` counts the attempts since the last stable stream (0 for the
    first reconnection after one), ``base`` is the server's ``retry`` (or the
    client's own), ``floor`` a ``Retry-After``, ``rand`` a number in
    ``[0, 1)``. The first attempt waits ``base`` plus up to a quarter more
    (so that clients dropped together do not all come back together); each
    later one waits at least ``base`` and a jittered exponential backoff:
    between half and all of ``max(base, BACKOFF_STEP) * 2 ** (failures - 1)``.
    Nothing waits more than ``cap``, not even a server's ``retry`` or
    ``Retry-After``.
    """
    if floor is not None:
        base = max(base, floor)
    base = min(base, cap)
    if failures <= 0:
        delay = base * (1 + rand / 4)
    else:
        grown = min(cap, max(base, BACKOFF_STEP) * 2.0 ** min(failures - 1, 64))
        delay = max(base, grown * (0.5 + rand / 2))
    return min(delay, cap)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date,
    RFC 9110 section 10.2.3), never negative; ``None`` when absent or not
    understood. ``now`` is the Unix time to count a date from (default: now).
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        return float("inf") if len(digits) > _MAX_DIGITS else float(int(digits))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, with no claim about the sender's zone
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
