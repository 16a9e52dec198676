"""The write path: everything between an encoded frame and a peer's transport.

No other module touches a transport's write side. One ``Outbox`` per peer
owns its queue, the joined writes of a loop iteration, flow control
(pause/resume), the stall timer, the slow-consumer policy, drain waiting and
the hand-over of the connection from aiohttp and back. ``fanout`` is the one
fast loop that hands one frame to many outboxes.

Write strategy: publishes to a topic are batched once per topic per loop
iteration (a ``Fanout``): the frames are appended to one list, joined once,
and the same bytes are written to every subscriber with nothing else pending
at the end of the loop iteration (``call_soon``), so a burst of M events to
N subscribers costs about N + M steps, not N * M. A batch that grows past a
segment (256 KiB) is written out at once, so the clients read one segment
while the next is built.
A subscriber that has something else pending (a direct ``send``, a publish
on another topic, a paused transport) takes the batch's frames into its own
queue at that moment and follows per frame from then on, so each peer's
order is exactly the order of the calls. The first batch of an iteration
binds its subscribers only when something could change one of them
(``Scheduler.settle``); left alone, it is written after checks made in
passes without a Python step per subscriber, which is what a lone publish's
latency hangs on.

What is held for a peer — its queue plus the transport's own write buffer —
is bounded by ``max_buffer`` (plus at most one frame), whatever the timing of
the sends: beyond it the ``slow_consumer`` policy applies.

Writes go straight to the socket (``os.write``, one syscall, what a C
server does) when the transport holds nothing for it — a plain TCP or unix
socket, not TLS; the transport gets only what the kernel did not take, so
order is kept and the transport's flow control sees every byte it holds.
``transport.write`` costs about 1 µs more per call (uvloop or asyncio),
which is a third of what a 1,000-subscriber publish takes beyond the
syscalls themselves. A batch's writes to its subscribers run back to back
in one ``map`` (``_write_all``), after the checks they need were made in
passes of their own.

A Last-Event-ID replay ``hold``s the outbox: its queue is not flushed (what
the hooks send waits), and the replay is written ahead of it by
``write_with_backpressure``, which waits for a slow client instead of
applying the policy. A replaying peer joins no ``Fanout`` until its replay
has caught up (``Connection.replay``), so the fan-out never meets a holding
outbox and its fast path is unchanged.
"""

from .ends import REASON_LOST, REASON_SLOW, REASON_STALLED, Owner
from .fanout import Fanout
from .outbox import Outbox
from .scheduler import Scheduler

__all__ = [
    "REASON_LOST",
    "REASON_SLOW",
    "REASON_STALLED",
    "Fanout",
    "Outbox",
    "Owner",
    "Scheduler",
]
