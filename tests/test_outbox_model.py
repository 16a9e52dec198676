"""The write path against a reference model (hypothesis).

Random interleavings of ``send``, ``publish``, ``subscribe``/``unsubscribe``
and flow control (pause/resume), within and across loop iterations: every
peer's byte stream must equal what a plain model says — each frame it should
get, in call order, exactly once — whatever the batching, the eager writes
and the per-peer queues did on the way.

The transport here records writes and reports flow control when told to: the
algorithm is what is under test. In the socket variant it stands in front of
one end of a socket pair with a small send buffer, and behaves like asyncio's
and uvloop's: it sends what the kernel takes and holds the rest until told to
drain. The write path's direct writes (``os.write`` to that socket, in a
loop of their own for a whole batch) then meet full sockets, partial writes
and a transport that holds bytes; the client end is read only when a script
says so. The same paths over TCP are covered by the HTTP tests (test_pubsub,
test_reliability, test_hardening, test_write_path).

With a small ``max_buffer``, peers that fall behind are ended as
``Connection.end`` does (they leave every topic, their outbox aborts) at
whatever point the policy applies: an ended peer must have got a prefix of
its stream and be in no topic, and the others must still get theirs whole.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from aiohttp_crossws_sse._frame import EAGER_WRITE
from aiohttp_crossws_sse._options import Options
from aiohttp_crossws_sse._registry import Namespace, Stats
from aiohttp_crossws_sse._write import Outbox, Scheduler

PEERS = 4
TOPICS = 3


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.protocol: Any = None
        self.closing = False

    def write(self, data: Any) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    def abort(self) -> None:
        self.closing = True

    def received(self) -> bytes:
        return bytes(self.data)

    def read(self) -> None:
        pass

    def send_held(self) -> None:
        pass

    def close(self) -> None:
        pass


class SocketTransport(RecordingTransport):
    """One end of a socket pair: the write path may write to it directly."""

    def __init__(self) -> None:
        self.sock, self.client = socket.socketpair()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.sock.setblocking(False)
        self.client.setblocking(False)
        super().__init__()
        self._extra = {"socket": self.sock}
        self.held = bytearray()

    def write(self, data: Any) -> None:
        self.held += data
        self._send()

    def _send(self) -> None:
        while self.held and not self.closing:
            try:
                sent = self.sock.send(self.held)
            except BlockingIOError:
                return
            del self.held[:sent]

    def get_write_buffer_size(self) -> int:
        return len(self.held)

    def read(self) -> None:
        """The client reads all there is (the transport may still hold bytes)."""
        while True:
            try:
                chunk = self.client.recv(1 << 16)
            except BlockingIOError:
                return
            if not chunk:  # aborted: the server's end is closed
                return
            self.data += chunk

    def send_held(self) -> None:
        """The loop finds the socket writable: the transport sends what it holds."""
        self._send()

    def abort(self) -> None:
        """As uvloop does: the socket is closed at once, what is held is lost."""
        self.closing = True
        self.held.clear()
        self.sock.close()

    def received(self) -> bytes:
        while True:
            self.read()
            self._send()
            if not self.held or self.closing:
                self.read()
                return bytes(self.data)

    def close(self) -> None:
        self.sock.close()
        self.client.close()


class Owner:
    """Ends its peer as ``Connection.end`` does — it leaves every topic, then
    its outbox aborts — when the run allows it (a small ``max_buffer``)."""

    def __init__(self, leave_all: Any = None) -> None:
        self.leave_all = leave_all
        self.outbox: Outbox | None = None
        self.ended = False

    def end_abruptly(self, reason: str) -> None:
        if self.leave_all is None:
            raise AssertionError(f"ended: {reason}")
        if self.ended:
            return
        self.ended = True
        self.leave_all()
        assert self.outbox is not None
        self.outbox.abort()

    def dropped_events(self, count: int) -> None:
        raise AssertionError("the policy here is 'close'")


peer_ids = st.integers(0, PEERS - 1)
topic_ids = st.integers(0, TOPICS - 1)
sizes = st.sampled_from([8, 40, 300, EAGER_WRITE + 10])
publishes = st.tuples(st.just("publish"), topic_ids, st.none() | peer_ids, sizes)


def peer_ops(topics: st.SearchStrategy[int]) -> list[st.SearchStrategy[tuple[Any, ...]]]:
    """What happens to one peer between publishes, on ``topics``."""
    return [
        st.tuples(st.just("send"), peer_ids, sizes),
        st.tuples(st.just("subscribe"), peer_ids, topics),
        st.tuples(st.just("unsubscribe"), peer_ids, topics),
        st.tuples(st.just("pause"), peer_ids),
        st.tuples(st.just("resume"), peer_ids),
        st.tuples(st.just("read"), peer_ids),
        st.tuples(st.just("tick")),
    ]


ops = st.one_of(
    publishes,
    publishes,
    publishes,
    *peer_ops(topic_ids),
    st.tuples(st.just("send_held"), peer_ids),
)
# Start with most peers subscribed somewhere, so that publishes meet subscribers.
initial = st.lists(st.tuples(st.just("subscribe"), peer_ids, topic_ids), min_size=2, max_size=8)


async def run(
    script: list[tuple[Any, ...]], segment: int, sockets: bool, max_buffer: int | None = None
) -> None:
    """Run ``script``; with ``max_buffer``, a peer held over it is ended (the
    "close" policy) and gets a prefix of its stream; the others get theirs whole."""
    stats = Stats()
    sched = Scheduler(Options(max_buffer=max_buffer or 1 << 30), stats)
    if max_buffer is None:
        sched.segment = segment  # small segments exercise writes mid-batch
    ns = Namespace("/")
    kind_of_transport = SocketTransport if sockets else RecordingTransport
    transports = [kind_of_transport() for _ in range(PEERS)]
    subscribed: list[set[int]] = [set() for _ in range(TOPICS)]
    outboxes: list[Outbox] = []
    owners: list[Owner] = []

    def leave_all(p: int) -> None:
        for t in range(TOPICS):
            if p in subscribed[t]:
                ns.leave(f"t{t}", outboxes[p])

    for p, transport in enumerate(transports):
        transport.set_protocol(asyncio.Protocol())
        owner = Owner((lambda p=p: leave_all(p)) if max_buffer else None)
        outbox = owner.outbox = Outbox(sched, owner, chunked=True)
        outbox.attach(transport)
        assert (outbox.fd >= 0) == sockets
        outboxes.append(outbox)
        owners.append(owner)
    expected = [bytearray() for _ in range(PEERS)]
    paused = [False] * PEERS
    for n, op in enumerate(script):
        kind = op[0]
        if kind in ("send", "subscribe", "unsubscribe", "pause", "resume"):
            # As Connection and Peer do: settle first (that may end the
            # peer), then nothing more for an ended one.
            sched.settle()
            if owners[op[1]].ended:
                continue
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
        elif kind == "read":
            transports[op[1]].read()
        elif kind == "send_held":
            transports[op[1]].send_held()
        else:
            await asyncio.sleep(0)
    for p in range(PEERS):
        if paused[p] and not owners[p].ended:
            transports[p].protocol.resume_writing()
    for _ in range(3):
        await asyncio.sleep(0)
    if max_buffer:
        event(f"peers ended: {sum(owner.ended for owner in owners)}")
    try:
        for p in range(PEERS):
            got = transports[p].received()
            if owners[p].ended:
                assert bytes(expected[p]).startswith(got), f"peer {p}: not a prefix"
                assert outboxes[p].discarded and outboxes[p].queue is None
                assert all(outboxes[p] not in fanout for fanout in ns.topics.values())
            else:
                assert got == bytes(expected[p]), f"peer {p}"
            assert outboxes[p].queued == 0 and outboxes[p].batch is None
    finally:
        for transport in transports:
            transport.close()


@settings(max_examples=1000, deadline=None)
@given(
    initial,
    st.lists(ops, min_size=5, max_size=80),
    st.sampled_from([0, 500, 1 << 20]),
    st.booleans(),
)
def test_every_peer_gets_its_frames_in_call_order(
    setup: list[tuple[Any, ...]], script: list[tuple[Any, ...]], segment: int, sockets: bool
) -> None:
    asyncio.run(run(setup + script, segment, sockets))


# Many loop iterations with few publishes each (the latency-bound traffic:
# one event per iteration), no segmenting.
sparse_ops = st.one_of(ops, st.tuples(st.just("tick")), st.tuples(st.just("tick")))


# Bursts to one topic within an iteration, sends and subscriptions between
# them (an unbound burst settled midway, the sender's own publish skipped).
one_topic = st.just(0)
burst_ops = st.one_of(
    st.tuples(st.just("publish"), one_topic, st.none() | peer_ids, sizes),
    st.tuples(st.just("publish"), one_topic, st.none(), sizes),
    st.tuples(st.just("publish"), one_topic, st.none(), sizes),
    *peer_ops(one_topic),
)
one_topic_setup = st.lists(
    st.tuples(st.just("subscribe"), peer_ids, one_topic), min_size=2, max_size=6
)


@settings(max_examples=500, deadline=None)
@given(one_topic_setup, st.lists(burst_ops, min_size=5, max_size=60), st.booleans())
def test_bursts_to_one_topic_keep_call_order(
    setup: list[tuple[Any, ...]], script: list[tuple[Any, ...]], sockets: bool
) -> None:
    asyncio.run(run(setup + script, 1 << 20, sockets))


@settings(max_examples=500, deadline=None)
@given(initial, st.lists(sparse_ops, min_size=5, max_size=80), st.booleans())
def test_sparse_publishes_keep_call_order(
    setup: list[tuple[Any, ...]], script: list[tuple[Any, ...]], sockets: bool
) -> None:
    asyncio.run(run(setup + script, 1 << 20, sockets))


# More pauses, and fewer reads, so that peers fall behind.
pressure_ops = st.one_of(ops, st.tuples(st.just("pause"), peer_ids), publishes)


@settings(max_examples=500, deadline=None)
@given(st.lists(pressure_ops, min_size=30, max_size=100), st.booleans())
def test_peers_over_max_buffer_end_cleanly(script: list[tuple[Any, ...]], sockets: bool) -> None:
    """A small max_buffer: peers that fall behind are ended mid-script —
    within a publish, or when a later call settles an unbound batch — and
    leave no trace in any topic; the others still get every frame in order."""
    everyone = [("subscribe", p, t) for p in range(PEERS) for t in range(TOPICS)]
    asyncio.run(run(everyone + script, 0, sockets, max_buffer=1_000))
