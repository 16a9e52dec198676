"""``Fanout``: the subscribers of one topic (in one namespace), and the batch
of frames published to it in this loop iteration — the one fast loop that
hands one frame to many outboxes (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from .direct import write_each
from .outbox import Outbox
from .scheduler import Scheduler

__all__ = ["Fanout"]


class Fanout:
    """The subscribers of one topic (in one namespace), and the batch of frames
    published to it in this loop iteration.

    ``members`` is the subscriber set; fan-out iterates an immutable
    snapshot of it. While a batch is open, the subscribers in ``bound`` whose
    ``batch`` is this fanout take it whole (from frame 0, or from
    ``starts[outbox]`` for the few that joined late or sent a publish), and
    ``laggards`` get every later frame queued one by one. An outbox that
    leaves the batch only clears its ``batch``: ``bound`` is a plain list,
    and the write skips it.
    """

    __slots__ = (
        "bound",
        "frames",
        "laggards",
        "left",
        "members",
        "rebound",
        "size",
        "snapshot",
        "starts",
    )

    def __init__(self) -> None:
        self.members: dict[Outbox, None] = {}
        self.snapshot: tuple[Outbox, ...] | None = None
        self.frames: list[bytes] | None = None  # None: no batch open
        self.size = 0
        self.bound: list[Outbox] = []
        self.starts: dict[Outbox, int] = {}
        self.rebound = False  # an outbox may stand in ``bound`` twice
        self.left = False  # an outbox in ``bound`` has left the batch since
        self.laggards: dict[Outbox, None] = {}  # insertion-ordered, O(1) removal

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, outbox: object) -> bool:
        return outbox in self.members

    def receivers(self, skip: Outbox | None) -> int:
        """How many subscribers a publish (but ``skip``'s) reaches."""
        members = self.members
        return len(members) - (skip is not None and skip in members)

    def add(self, outbox: Outbox) -> None:
        outbox.sched.settle()
        if outbox.discarded:  # the settling ended it: it joins nothing
            return
        self.members[outbox] = None
        self.snapshot = None
        frames = self.frames
        if frames is not None:  # joins mid-batch: gets what is published from now on
            if _idle(outbox):
                outbox.batch = self
                self.bound.append(outbox)
                self.starts[outbox] = len(frames)
                self.rebound = True
            else:
                self.laggards[outbox] = None

    def discard(self, outbox: Outbox) -> None:
        if outbox not in self.members:
            return
        outbox.sched.settle()
        del self.members[outbox]
        self.snapshot = None
        if self.frames is not None:
            if outbox.batch is self:
                self.release(outbox)  # keeps what was published while subscribed
            self.laggards.pop(outbox, None)

    def publish(self, frame: bytes, skip: Outbox | None, sched: Scheduler) -> None:
        """Hand ``frame`` to every subscriber but ``skip``."""
        lazy = sched.lazy
        if lazy is not None:
            if lazy is self and skip is None and self.size + len(frame) <= sched.segment:
                (self.frames or []).append(frame)  # a burst, still unbound
                self.size += len(frame)
                return
            sched.settle()
        frames = self.frames
        if frames is not None:  # the batch of this iteration: O(laggards)
            frames.append(frame)
            self.size += len(frame)
            if skip is not None and skip.batch is self:
                start = self.starts.pop(skip, 0)
                skip.batch = None
                self.left = True
                self.laggards[skip] = None
                skip.take(frames[start:-1])
            # A copy: a laggard over max_buffer may end, and leave the list.
            for outbox in tuple(self.laggards):
                if outbox is not skip:
                    outbox.enqueue(frame)
            if self.size > sched.segment:
                self.write_batch(reopen=True)
            return
        if self.snapshot is None:
            self.snapshot = tuple(self.members)
        # Open this iteration's batch: idle subscribers bind to it, the
        # others queue this frame and follow frame by frame. It is written
        # at the end of the loop iteration (call_soon), so a burst leaves in
        # one write per subscriber (per segment, for big bursts).
        self.frames = [frame]
        self.size = len(frame)
        if skip is None and not sched.batches and self.size <= sched.segment:
            # The first publish of the iteration binds nobody yet, nor do
            # more publishes to this topic: if nothing else happens before
            # the batch is written, each subscriber's state is checked there,
            # in passes without Python steps, and the write starts that much
            # sooner. Anything that could change a subscriber's state first
            # settles the batch (binds its subscribers, as the first publish
            # would have).
            sched.open_batch(self)
            sched.lazy = self
            return
        sched.open_batch(self)
        self.bind(skip, sched)

    def bind(self, skip: Outbox | None, sched: Scheduler) -> None:
        """Bind the idle subscribers to the batch just opened (one frame, or
        an unbound burst being settled); the others queue its frames (but
        ``skip``) and follow frame by frame."""
        frames = self.frames or []
        frame = frames[0] if len(frames) == 1 else None
        members = self.snapshot or ()
        bind = self.bound.append
        laggards = self.laggards
        for outbox in members:
            # _idle() written out: this loop runs once per subscriber.
            if (
                not outbox.queue
                and not outbox.paused
                and outbox.chunked
                and outbox.batch is None
                and (transport := outbox.transport) is not None
                # closing: queued instead, so that drain() sees what is lost
                and not transport.is_closing()
            ):
                outbox.batch = self
                bind(outbox)
            else:
                # In the list before the frame: one over max_buffer ends and
                # leaves it (discard) at once.
                laggards[outbox] = None
                if frame is None:
                    outbox.take(frames)
                elif outbox is not skip:
                    outbox.enqueue(frame)
        if skip is not None and skip.batch is self:
            self.starts[skip] = 1  # the sender skips its own publish
        if self.size > sched.segment:  # one big frame
            self.write_batch(reopen=True)

    def drop_batch(self) -> None:
        """Forget this iteration's batch after a failure while writing it:
        its subscribers are unbound, so the topic is written again from the
        next publish on."""
        for outbox in self.bound:
            if outbox.batch is self:
                outbox.batch = None
        for outbox in self.laggards:
            if outbox.batch is self:
                outbox.batch = None
        self.frames = None
        self.size = 0
        self.bound = []
        self.starts = {}
        self.laggards = {}
        self.rebound = False
        self.left = False

    def pending_for(self, outbox: Outbox) -> int:
        """Bytes of the batch that ``outbox`` (bound to it) has yet to get."""
        frames = self.frames
        if frames is None or outbox.batch is not self:
            return 0
        return sum(map(len, frames[self.starts.get(outbox, 0) :]))

    def release(self, outbox: Outbox) -> None:
        """``outbox`` must take something else: it queues the batch's frames
        so far and follows frame by frame."""
        start = self.starts.pop(outbox, 0)
        outbox.batch = None
        self.left = True
        frames = self.frames
        if frames is not None:
            self.laggards[outbox] = None
            outbox.take(frames[start:])

    def write_batch(self, *, reopen: bool) -> None:
        """Write the batch to every bound subscriber — the joined bytes built
        once (once per distinct start) — and, at the end of the iteration,
        unbind them in the same pass."""
        frames = self.frames or []
        starts = self.starts
        whole = frames[0] if len(frames) == 1 else b"".join(frames)
        if not reopen and not starts and not self.rebound and whole:
            self._write_whole(whole)
            return
        joined: dict[int, bytes] = {}
        keep: list[Outbox] = []
        bound: Iterable[Outbox] = self.bound
        if self.rebound:
            bound = dict.fromkeys(bound)
            self.rebound = False
        for outbox in bound:
            if outbox.batch is not self:
                continue  # it left the batch (released) since
            data = whole
            if starts:
                start = starts.get(outbox, 0)
                if start:
                    data = joined.get(start, b"")
                    if start not in joined:
                        data = joined[start] = b"".join(frames[start:])
            if data:
                transport = outbox.transport
                if transport is not None and not transport.is_closing():
                    outbox.write(transport, data)
            if not reopen:
                outbox.batch = None
            elif outbox.paused:
                # Its transport paused on that write: frame by frame from now on.
                outbox.batch = None
                self.laggards[outbox] = None
            else:
                keep.append(outbox)
        self.starts = {}
        self.size = 0
        self.left = False
        if reopen:  # still in the iteration: a fresh, empty batch
            self.frames = []
            self.bound = keep
        else:
            self.frames = None
            self.bound = []
            self.laggards = {}

    def _write_whole(self, whole: bytes) -> None:
        """``write_batch`` at the end of the iteration when every bound
        subscriber takes the whole batch (no late joiner, no sender skipped):
        the common case, and the loop a lone publish's latency hangs on.

        When every subscriber still takes it straight to its socket, the
        checks are made first, in passes that make no system call (so their
        memory loads overlap), and the writes then run back to back in
        ``map``: per subscriber, one ``write(2)`` and no Python step; what a
        write does not take is dealt with afterwards, one by one."""
        bound = self.bound
        if self.left:
            bound = [outbox for outbox in bound if outbox.batch is self]
        self.size = 0
        self.frames = None
        self.bound = []
        self.laggards = {}
        self.left = False
        if not bound:
            return
        fds = list(map(_fd_of, bound))
        transports = list(map(_transport_of, bound))
        # min(): each a socket the transport holds nothing for (so none is
        # None either); then one pass asks if any is closing.
        if min(fds) >= 0 and not any(map(bound[0].sched.is_closing, transports)):
            for outbox in bound:
                outbox.batch = None
            write_each(bound, transports, fds, whole)
            return
        for outbox in bound:
            outbox.batch = None
            transport = outbox.transport
            if transport is not None and not transport.is_closing():
                outbox.write(transport, whole)

    def close_batch(self, sched: Scheduler) -> None:
        """End of the loop iteration."""
        if self.frames is None:
            return
        if sched.lazy is self:
            sched.lazy = None
            if self._write_unbound(sched):
                return
            self.bind(None, sched)
        self.write_batch(reopen=False)

    def _write_unbound(self, sched: Scheduler) -> bool:
        """Write the one frame of a batch nobody was bound to, if every
        subscriber takes it straight to its socket (else ``False``: nothing
        was done)."""
        members = self.snapshot or ()
        frames = self.frames or []
        if members:
            fds = list(map(_fd_of, members))
            # min(): each a socket the transport holds nothing for (so
            # chunked, and with a transport).
            if min(fds) < 0 or any(map(_queue_of, members)) or any(map(_paused_of, members)):
                return False
            transports = list(map(_transport_of, members))
            if any(map(sched.is_closing, transports)):
                return False
        self.size = 0
        self.frames = None
        if members:
            whole = frames[0] if len(frames) == 1 else b"".join(frames)
            write_each(members, transports, fds, whole)
        return True


def _idle(outbox: Outbox) -> bool:
    """Nothing pending and a transport that takes data: it may bind to a batch."""
    if outbox.queue or outbox.paused or not outbox.chunked or outbox.batch is not None:
        return False
    transport = outbox.transport
    return transport is not None and not transport.is_closing()


_fd_of = attrgetter("fd")
_transport_of = attrgetter("transport")
_queue_of = attrgetter("queue")
_paused_of = attrgetter("paused")
