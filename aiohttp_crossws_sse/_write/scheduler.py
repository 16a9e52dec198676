"""The end of the loop iteration: what the write path does after every
callback of this iteration ran (one ``call_soon``), and the lazy batch.

``Scheduler.settle`` binds the subscribers of the iteration's first batch
(the "unbound first publish", see ``fanout``). Only the write path calls it:
its own API settles before it reads or changes a subscriber, and the public
boundary (``_boundary``) settles before any public call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from operator import methodcaller
from typing import TYPE_CHECKING, Any, Protocol

from .._logs import operator_log
from .ends import REASON_LOST, Owner

if TYPE_CHECKING:
    from .._options import Options
    from .._stats import Stats

__all__ = ["Batch", "Queued", "Scheduler"]

# A topic's batch is written out (and started afresh) once it holds this
# much, or what max_buffer leaves room for, if less.
_SEGMENT = 256 * 1024
_IS_CLOSING: Callable[[asyncio.Transport], bool] = methodcaller("is_closing")


class Batch(Protocol):
    """A topic's batch of this iteration, as the scheduler sees it (``Fanout``)."""

    def bind(self, skip: Any, sched: Scheduler) -> None: ...

    def close_batch(self, sched: Scheduler) -> None: ...

    def drop_batch(self) -> None: ...


class Queued(Protocol):
    """A peer's queue to write out at the end of the iteration (``Outbox``)."""

    @property
    def owner(self) -> Owner: ...

    def flush(self) -> None: ...

    def abort(self) -> None: ...


class Scheduler:
    """Shared by an adapter's outboxes: the limits, the counters, and the
    outboxes to write out at the end of this loop iteration."""

    __slots__ = (
        "batches",
        "dirty",
        "drop_oldest",
        "handle",
        "high_water",
        "is_closing",
        "kinds",
        "lazy",
        "max_buffer",
        "room",
        "segment",
        "stats",
        "timeout",
    )

    def __init__(self, options: Options, stats: Stats) -> None:
        self.max_buffer = options.max_buffer
        self.drop_oldest = options.slow_consumer == "drop-oldest"
        self.timeout = options.send_timeout
        # The transport pauses us beyond this; what it holds below it is
        # counted against max_buffer as if it were full.
        self.high_water = min(65536, max(1, options.max_buffer // 2))
        # Queued bytes a peer whose transport is not paused may hold (one
        # shared int object: this is stored on every outbox).
        self.room = self.max_buffer - self.high_water
        # A batch never holds more than a subscriber bound to it may hold.
        self.segment = min(_SEGMENT, max(0, self.room))
        self.stats = stats
        self.dirty: list[Queued] = []
        self.batches: list[Batch] = []  # topics with a batch open in this iteration
        self.handle: asyncio.Handle | None = None
        # The kinds of transport attached so far, and ``is_closing`` for
        # them: the method itself while there is one kind (a call without a
        # lookup, for the fan-out's one pass over its subscribers).
        self.kinds: set[type] = set()
        self.is_closing: Callable[[asyncio.Transport], bool] = _IS_CLOSING
        # The batch opened by this iteration's first publish, its
        # subscribers not yet bound (see Fanout.publish).
        self.lazy: Batch | None = None

    def settle(self) -> None:
        """Something may change for a subscriber (a send, a publish, a
        subscription...): bind the lazy batch's subscribers first, as its
        publish would have."""
        lazy = self.lazy
        if lazy is not None:
            self.lazy = None
            lazy.bind(None, self)

    def add_kind(self, transport: asyncio.Transport) -> None:
        """``transport`` is attached: keep ``is_closing`` right for it."""
        kind = type(transport)
        if kind not in self.kinds:
            self.kinds.add(kind)
            self.is_closing = kind.is_closing if len(self.kinds) == 1 else _IS_CLOSING

    def mark(self, outbox: Queued) -> None:
        """Write ``outbox``'s queue out at the end of this loop iteration."""
        self.dirty.append(outbox)
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_soon(self._flush)

    def open_batch(self, fanout: Batch) -> None:
        """``fanout`` has a batch to write out at the end of this iteration."""
        self.batches.append(fanout)
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.handle = None
        batches, self.batches = self.batches, []
        # One failure (a transport that raises) must cost that batch or that
        # peer only: the other topics' batches are still written, and no
        # batch stays half-open (its topic would never be written again).
        for fanout in batches:
            try:
                fanout.close_batch(self)
            except Exception:
                fanout.drop_batch()
                _log_failure("a topic's batch")
        dirty, self.dirty = self.dirty, []
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:
                outbox.abort()
                outbox.owner.end_abruptly(REASON_LOST)
                _log_failure("a peer's queue")


def _log_failure(what: str) -> None:
    # logging.exception's traceback, rate-limited: a bug here must be seen,
    # not flood the log
    operator_log.log(
        "write path failure",
        logging.ERROR,
        "the write path failed writing %s (dropped; the other peers are served)",
        what,
        exc_info=True,
    )
