"""Ordered delivery: this instance's own envelopes, from sent until heard back.

With ``ordered``, an instance delivers its own publishes only when their
envelope comes back from the backplane, in the backplane's order among the
other instances' envelopes: so every instance delivers one sequence. What
comes back is only the envelope's sequence number: the publishes themselves
(and the peer that made them, who does not get them) are kept here, so an
echo is never decoded. The receipt of a batch settles once all of its
envelopes were heard back: the awaited publish has then been delivered here.

Lanes: a backplane that sends envelopes on several channels (``RedisSync``
with ``sharded=True``: one per topic) keeps each channel's in a lane of its
own, since only within one channel is the backplane's order the order of
this instance's sequence numbers; the envelopes of one batch may come back
interleaved in any way across channels. Without lanes, all are in one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .._publication import Receipt
from .base import Relayed

__all__ = ["OWN", "Echoes"]

#: Marks a body as "this instance's own envelope came back", followed by its
#: sequence number (``RelaySync.accept`` makes it, ``deliver_body`` reads it).
OWN = "\x00"


class _Sent:
    """One batch the writer sends in ordered mode (on one lane)."""

    __slots__ = ("batch", "lane", "offset", "receipt", "waiting")

    def __init__(self, batch: list[Relayed], receipt: Receipt, lane: str | None) -> None:
        self.batch = batch
        self.receipt = receipt
        self.lane = lane
        self.offset = 0  # publishes given to envelopes so far
        self.waiting = 0  # envelopes not heard back yet


_Entry = tuple[int, _Sent, int, int]  # seq, batch, start, count


class Echoes:
    """The envelopes sent and not yet heard back, in sequence order per lane."""

    def __init__(self, deliver: Callable[[Relayed], str | None]) -> None:
        #: Set on start: ``ordered``, and the backplane does not itself hand
        #: every publish back with an id (``assigns_ids``).
        self.active = False
        self._deliver = deliver
        self._lanes: dict[str | None, deque[_Entry]] = {}
        self._sending: _Sent | None = None

    def sending(self, batch: list[Relayed], receipt: Receipt, lane: str | None = None) -> None:
        """The writer is about to pack ``batch`` into envelopes (sent on ``lane``)."""
        if self.active:
            self._sending = _Sent(batch, receipt, lane)

    def expect(self, seq: int, count: int) -> None:
        """Envelope ``seq`` carries the next ``count`` publishes of the batch being packed."""
        sent = self._sending
        if sent is not None:
            queue = self._lanes.get(sent.lane)
            if queue is None:
                queue = self._lanes[sent.lane] = deque()
            queue.append((seq, sent, sent.offset, count))
            sent.offset += count
            sent.waiting += 1

    def sent(self, receipt: Receipt) -> bool:
        """The writer sent the batch: whether its receipt settles when it
        comes back (else the writer settles it now)."""
        sent, self._sending = self._sending, None
        return sent is not None

    def heard(self, seq: int, lane: str | None = None) -> None:
        """Own envelope ``seq`` came back on ``lane``: deliver it, and any sent
        before it on that lane that did not come back (the backplane's order
        within a lane is seq order)."""
        queue = self._lanes.get(lane)
        if queue is None:
            return  # already delivered (its send failed, or an outage flushed it)
        while queue and queue[0][0] <= seq:
            _, sent, start, count = queue.popleft()
            self._release(sent, start, count)
        if not queue:
            del self._lanes[lane]

    def drop(self, receipt: Receipt) -> None:
        """The batch of ``receipt`` failed to send (fail the receipt first):
        what of it has not come back is delivered here now."""
        self._sending = None
        for lane, queue in list(self._lanes.items()):
            if not any(entry[1].receipt is receipt for entry in queue):
                continue
            kept = deque(entry for entry in queue if entry[1].receipt is not receipt)
            if kept:
                self._lanes[lane] = kept
            else:
                del self._lanes[lane]
            for _, sent, start, count in queue:
                if sent.receipt is receipt:
                    self._release(sent, start, count)

    def flush(self, lanes: Iterable[str | None] | None = None) -> None:
        """No echo will come on ``lanes`` (all: the listener is lost, or
        closing; some: their channels were left, or their connection lost):
        deliver what was sent on them, in order, and settle it (the
        backplane took it)."""
        if lanes is None:
            queues = list(self._lanes.values())
            self._lanes = {}
        else:
            queues = [q for lane in lanes if (q := self._lanes.pop(lane, None)) is not None]
        for queue in queues:
            for _, sent, start, count in queue:
                self._release(sent, start, count)

    def _release(self, sent: _Sent, start: int, count: int) -> None:
        deliver = self._deliver
        batch = sent.batch
        receipt = sent.receipt
        for i in range(start, start + count):
            event_id = deliver(batch[i])
            if event_id is not None:
                if receipt.ids is None:
                    receipt.ids = [None] * len(batch)
                receipt.ids[i] = event_id
        sent.waiting -= 1
        if not sent.waiting:
            receipt.settle()
