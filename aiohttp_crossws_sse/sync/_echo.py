"""Ordered delivery: this instance's own envelopes, from sent until heard back.

With ``ordered``, an instance delivers its own publishes only when their
envelope comes back from the backplane, in the backplane's order among the
other instances' envelopes: so every instance delivers one sequence. What
comes back is only the envelope's sequence number: the publishes themselves
(and the peer that made them, who does not get them) are kept here, so an
echo is never decoded. The receipt of a batch settles once all of its
envelopes were heard back (the awaited publish has then been delivered
here), or once they were delivered without their echo (an outage) and the
send itself succeeded — never on a flush alone: a backplane that hangs may
never have taken them. A publish that is not relayed at all (refused) is
delivered after this instance's own publishes made before it (``hold``).

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

    __slots__ = ("after", "batch", "flushed", "lane", "offset", "receipt", "taken", "waiting")

    def __init__(self, batch: list[Relayed], receipt: Receipt, lane: str | None) -> None:
        self.batch = batch
        self.receipt = receipt
        self.lane = lane
        self.offset = 0  # publishes given to envelopes so far
        self.waiting = 0  # envelopes not heard back yet
        self.taken = False  # the send succeeded
        self.flushed = False  # some envelope was delivered without its echo
        self.after: list[Relayed] = []  # refused publishes made after this batch


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
        self._last: _Sent | None = None  # the newest batch sent
        self._held: list[Relayed] = []  # refused while a batch waits to be sent

    def sending(self, batch: list[Relayed], receipt: Receipt, lane: str | None = None) -> None:
        """The writer is about to pack ``batch`` into envelopes (sent on ``lane``)."""
        if self.active:
            sent = self._sending = self._last = _Sent(batch, receipt, lane)
            sent.after, self._held = self._held, []

    def hold(self, message: Relayed, queued: bool) -> None:
        """``message`` is not relayed (refused): deliver it here after this
        instance's own publishes before it — the batch waiting to be sent
        (``queued``), else the newest one sent — so that the publisher's
        order holds locally."""
        if queued:
            self._held.append(message)
            return
        last = self._last
        if last is not None and last.waiting:
            last.after.append(message)
        else:
            self._deliver(message)

    def release_held(self) -> None:
        """The waiting batch was delivered here without being sent: what
        ``hold`` kept for after it follows now."""
        held, self._held = self._held, []
        for message in held:
            self._deliver(message)

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
        if sent is None:
            return False
        sent.taken = True
        if not sent.waiting:  # delivered already, without its echo (an outage)
            receipt.settle()
        return True

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
                    self._release(sent, start, count, heard=False)

    def flush(self, lanes: Iterable[str | None] | None = None) -> None:
        """No echo will come on ``lanes`` (all: the listener is lost, or
        closing; some: their channels were left, or their connection lost):
        deliver what was sent on them, in order; a receipt settles only once
        its send succeeded."""
        if lanes is None:
            queues = list(self._lanes.values())
            self._lanes = {}
        else:
            queues = [q for lane in lanes if (q := self._lanes.pop(lane, None)) is not None]
        for queue in queues:
            for _, sent, start, count in queue:
                self._release(sent, start, count, heard=False)

    def _release(self, sent: _Sent, start: int, count: int, heard: bool = True) -> None:
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
        if not heard:
            sent.flushed = True
        if not sent.waiting:
            if sent.taken or not sent.flushed:  # an echo proves it was taken
                receipt.settle()
            after, sent.after = sent.after, []
            for message in after:
                deliver(message)
