"""The write path against a reference model (hypothesis).

Random interleavings of ``send``, ``publish``, ``subscribe``/``unsubscribe``
and flow control (pause/resume), within and across loop iterations: every
peer's byte stream must equal what a plain model says — each frame it should
get, in call order, exactly once — whatever the batching, the eager writes
and the per-peer queues did on the way.

The transport here records writes and reports flow control when told to: the
algorithm is what is under test. The same paths over real sockets are
covered by the HTTP tests (test_pubsub, test_reliability, test_hardening).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aiohttp_crossws_sse._frame import EAGER_WRITE
from aiohttp_crossws_sse._options import Options
from aiohttp_crossws_sse._outbox import Outbox, Scheduler
from aiohttp_crossws_sse._registry import Namespace, Stats

PEERS = 4
TOPICS = 3


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    def abort(self) -> None:
        raise AssertionError("nothing is over any limit here")


class Owner:
    def end_abruptly(self, reason: str) -> None:
        raise AssertionError(f"ended: {reason}")


peer_ids = st.integers(0, PEERS - 1)
topic_ids = st.integers(0, TOPICS - 1)
sizes = st.sampled_from([8, 40, 300, EAGER_WRITE + 10])
publishes = st.tuples(st.just("publish"), topic_ids, st.none() | peer_ids, sizes)
ops = st.one_of(
    publishes,
    publishes,
    publishes,
    st.tuples(st.just("send"), peer_ids, sizes),
    st.tuples(st.just("subscribe"), peer_ids, topic_ids),
    st.tuples(st.just("unsubscribe"), peer_ids, topic_ids),
    st.tuples(st.just("pause"), peer_ids),
    st.tuples(st.just("resume"), peer_ids),
    st.tuples(st.just("tick")),
)
# Start with most peers subscribed somewhere, so that publishes meet subscribers.
initial = st.lists(st.tuples(st.just("subscribe"), peer_ids, topic_ids), min_size=2, max_size=8)


async def run(script: list[tuple[Any, ...]], segment: int) -> None:
    stats = Stats()
    sched = Scheduler(Options(max_buffer=1 << 30), stats)
    sched.segment = segment  # small segments exercise writes mid-batch
    ns = Namespace("/")
    transports = [RecordingTransport() for _ in range(PEERS)]
    outboxes = []
    for transport in transports:
        transport.set_protocol(asyncio.Protocol())
        outbox = Outbox(sched, Owner(), chunked=True)
        outbox.attach(transport)
        outboxes.append(outbox)
    expected = [bytearray() for _ in range(PEERS)]
    subscribed: list[set[int]] = [set() for _ in range(TOPICS)]
    paused = [False] * PEERS
    for n, op in enumerate(script):
        kind = op[0]
        if kind == "send":
            _, p, size = op
            frame = b"%d:send:%d|" % (n, p)
            frame += b"s" * (size - len(frame))
            expected[p] += frame
            outboxes[p].push(frame)
        elif kind == "publish":
            _, t, sender, size = op
            frame = b"%d:pub:%d|" % (n, t)
            frame += b"p" * (size - len(frame))
            for p in sorted(subscribed[t]):
                if p != sender:
                    expected[p] += frame
            if t in {int(k[1:]) for k in ns.topics}:
                skip = outboxes[sender] if sender is not None else None
                ns.topics[f"t{t}"].publish(frame, skip, sched)
        elif kind == "subscribe":
            _, p, t = op
            if p not in subscribed[t]:
                subscribed[t].add(p)
                ns.join(f"t{t}", outboxes[p])
        elif kind == "unsubscribe":
            _, p, t = op
            if p in subscribed[t]:
                subscribed[t].discard(p)
                ns.leave(f"t{t}", outboxes[p])
        elif kind == "pause":
            p = op[1]
            if not paused[p]:
                paused[p] = True
                transports[p].protocol.pause_writing()
        elif kind == "resume":
            p = op[1]
            if paused[p]:
                paused[p] = False
                transports[p].protocol.resume_writing()
        else:
            await asyncio.sleep(0)
    for p in range(PEERS):
        if paused[p]:
            transports[p].protocol.resume_writing()
    for _ in range(3):
        await asyncio.sleep(0)
    for p in range(PEERS):
        assert bytes(transports[p].data) == bytes(expected[p]), f"peer {p}"
        assert outboxes[p].queued == 0 and outboxes[p].batch is None


@settings(max_examples=1000, deadline=None)
@given(initial, st.lists(ops, min_size=5, max_size=80), st.sampled_from([0, 500, 1 << 20]))
def test_every_peer_gets_its_frames_in_call_order(
    setup: list[tuple[Any, ...]], script: list[tuple[Any, ...]], segment: int
) -> None:
    asyncio.run(run(setup + script, segment))


# Many loop iterations with few publishes each (the latency-bound traffic:
# one event per iteration), no segmenting.
sparse_ops = st.one_of(ops, st.tuples(st.just("tick")), st.tuples(st.just("tick")))


@settings(max_examples=500, deadline=None)
@given(initial, st.lists(sparse_ops, min_size=5, max_size=80))
def test_sparse_publishes_keep_call_order(
    setup: list[tuple[Any, ...]], script: list[tuple[Any, ...]]
) -> None:
    asyncio.run(run(setup + script, 1 << 20))
