"""The write path against a reference model (hypothesis).

Random interleavings of ``send``, ``publish``, ``subscribe``/``unsubscribe``,
flow control (pause/resume), client reads and Last-Event-ID replays, within
and across loop iterations: every peer's byte stream must equal what a plain
model says — each frame it should get, in call order, exactly once —
whatever the batching, the eager writes and the per-peer queues did on the
way.

Each peer draws its transport and its HTTP version:

- ``plain``: records writes, holds nothing, reports flow control when the
  script says so.
- ``socket``: stands in front of one end of a socket pair with a small send
  buffer, and behaves like asyncio's and uvloop's: it sends what the kernel
  takes and holds the rest until told to send. The write path's direct
  writes (``os.write`` to that socket, in a loop of their own for a whole
  batch) then meet full sockets, partial writes and a transport that holds
  bytes.
- ``tls``: asyncio's (and uvloop's) SSL transport as the write path sees it:
  it has a ``sslcontext`` (so nothing may be written to its socket
  directly: the bytes it sends are "encrypted", and a direct write would
  show as garbage), and it does its own flow control as ``SSLProtocol``
  does — pause when it holds ``>= high``, resume at ``<= low``, with the
  limits the write path sets (``low`` defaults to ``high // 4``). A script's
  pause closes the client's window instead.
- HTTP/1.0 peers (``chunked=False``) get the frames without their chunk
  framing (``unchunk``) and never bind to a topic's batch. The frames are
  the encoder's, chunk framing included.

The client end is read only when a script says so. The same paths over TCP
and TLS are covered by the HTTP tests (test_pubsub, test_reliability,
test_hardening, test_write_path, test_tls).

A replay runs as ``Connection.replay`` does: the outbox holds, the replay is
written with backpressure in a task while the script goes on (the client
pausing and reading meanwhile), and the peer joins its topics (those it had,
and those it subscribed to meanwhile) in the step that ends the hold. Its
stream is: what came before the hold, the replay, what was sent during it,
then the rest. It starts as on a fresh stream, with nothing queued.

``buffered_amount`` and ``Scheduler.settle`` may be called anywhere, in the
middle of an unbound burst too; ``buffered_amount`` must then be what the
client has not got.

With a small ``max_buffer``, peers that fall behind are ended as
``Connection.end`` does (they leave every topic, their outbox aborts) at
whatever point the policy applies: an ended peer must have got a prefix of
its stream and be in no topic, must have had more than ``max_buffer`` live
bytes (a replay's never count: README "Reliable delivery") the client had
not read, and the others must still get theirs whole.

A peer may end gracefully mid-script, and every peer may at the end of a
run, after the replays or at once, as ``Connection.end`` then
``end_stream`` do: it leaves its topics, a replay still being written gives
up (the stream has a prefix of it, then what was sent during it), and the
drain must end — over TLS too, where the transport pauses the write path
while it holds anything — with everything delivered.

A call from a foreign thread needs the adapter's guard, not modelled here:
test_threads.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

from hypothesis import currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from aiohttp_crossws_sse._frame import EAGER_WRITE, encode_published, encode_text, unchunk
from aiohttp_crossws_sse._options import Options
from aiohttp_crossws_sse._registry import Namespace, Stats
from aiohttp_crossws_sse._write import REASON_SLOW, Outbox, Scheduler

PEERS = 4
TOPICS = 3
# Loop iterations allowed for replays and drains to end once nothing else
# happens (a bound that keeps a broken run from hanging, not a measurement).
SETTLE_ITERATIONS = 200


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

    def client_reads(self) -> None:
        """The client reads all it can, and nothing else happens."""

    def read(self) -> None:
        """The script's read."""
        self.client_reads()

    def send_held(self) -> None:
        pass

    def pump(self) -> None:
        """A loop iteration's worth of progress: the client reads, the
        transport sends what it holds."""
        self.client_reads()
        self.send_held()

    def script_pause(self) -> None:
        self.protocol.pause_writing()

    def script_resume(self) -> None:
        self.protocol.resume_writing()

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
        self._extra: dict[str, Any] = {"socket": self.sock}
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

    def client_reads(self) -> None:
        """The client reads all there is (the transport may still hold bytes)."""
        while True:
            try:
                chunk = self.client.recv(1 << 16)
            except BlockingIOError:
                return
            if not chunk:  # aborted: the server's end is closed
                return
            self.data += self.decrypt(chunk)

    def decrypt(self, chunk: bytes) -> bytes:
        return chunk

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
            self.client_reads()
            self.send_held()
            if not self.held or self.closing:
                self.client_reads()
                return bytes(self.data)

    def close(self) -> None:
        self.sock.close()
        self.client.close()


# What the TLS stand-in does to the bytes it sends: a direct write to its
# socket (which must never happen) would reach the client as garbage.
_CIPHER = bytes(b ^ 0x5A for b in range(256))
_TLS_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
_TLS_HIGH_DEFAULT = 512 * 1024  # asyncio's FLOW_CONTROL_HIGH_WATER_SSL_WRITE


class TLSTransport(SocketTransport):
    """asyncio's (and uvloop's) ``_SSLProtocolTransport`` as the write path
    sees it: ``sslcontext`` set (and the socket still in the extra info, as
    theirs), its flow control that of ``SSLProtocol._control_app_writing``
    after every write, every send and every change of limits. A script's
    pause closes the client's window (nothing is sent); a read is the
    client's, then the loop's writable callback (the transport sends)."""

    def __init__(self) -> None:
        super().__init__()
        self._extra = {"socket": self.sock, "sslcontext": _TLS_CONTEXT}
        self.high = _TLS_HIGH_DEFAULT
        self.low = self.high // 4
        self.writing_paused = False
        self.pauses = 0  # by its own flow control
        self.window = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        # asyncio's add_flowcontrol_defaults
        if high is None:
            high = _TLS_HIGH_DEFAULT if low is None else 4 * low
        if low is None:
            low = high // 4
        assert high >= low >= 0, (high, low)
        self.high, self.low = high, low
        self._control()

    def write(self, data: Any) -> None:
        assert not self.closing, "a write to a closing transport"
        self.held += data
        self._send()

    def _send(self) -> None:
        while self.held and not self.closing and self.window:
            try:
                sent = self.sock.send(self.held[: 1 << 16].translate(_CIPHER))
            except BlockingIOError:
                break
            del self.held[:sent]
        self._control()

    def _control(self) -> None:
        if self.closing or self.protocol is None:
            return
        size = len(self.held)
        if size >= self.high and not self.writing_paused:
            self.writing_paused = True
            self.pauses += 1
            self.protocol.pause_writing()
        elif size <= self.low and self.writing_paused:
            self.writing_paused = False
            self.protocol.resume_writing()

    def decrypt(self, chunk: bytes) -> bytes:
        return chunk.translate(_CIPHER)

    def read(self) -> None:
        self.client_reads()
        self._send()

    def script_pause(self) -> None:
        self.window = False

    def script_resume(self) -> None:
        self.window = True
        self._send()


TRANSPORTS: dict[str, Callable[[], RecordingTransport]] = {
    "plain": RecordingTransport,
    "socket": SocketTransport,
    "tls": TLSTransport,
}


def frame_of(tag: str, size: int, *, published: bool = False) -> bytes:
    """A frame made by the package's encoder, ``size`` bytes long (chunk
    framing included), or the smallest one for ``tag``."""
    pad = 0
    frame = b""
    for _ in range(4):
        text = tag + "." * pad
        frame = encode_published(text, event=None, id=tag) if published else encode_text(text)
        if len(frame) == size or (pad == 0 and len(frame) > size):
            break
        pad = max(0, pad + size - len(frame))
    return frame


def note(value: str) -> None:
    """``event`` in a hypothesis test (statistics), nothing in a plain one."""
    if currently_in_test_context():
        event(value)


class Expected:
    """One peer's stream per the model: per frame, its bytes on the wire,
    its size as the outbox counts it (chunk framing included), and the
    replay it belongs to (``None``: a live frame)."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.frames: list[tuple[bytes, int, int | None]] = []
        # A replay that a graceful end gave up on: the stream has any
        # prefix of its frames (it stops between two writes).
        self.cut: int | None = None

    def add(self, frame: bytes, *, replay: int | None = None) -> None:
        wire = frame if self.chunked else unchunk(frame)
        self.frames.append((wire, len(frame), replay))

    def wire(self) -> bytes:
        return b"".join(wire for wire, _, _ in self.frames)

    def streams(self) -> list[bytes]:
        """Every stream the model allows."""
        cut = self.cut
        if cut is None:
            return [self.wire()]
        count = sum(replay == cut for _, _, replay in self.frames)
        streams = []
        for kept in range(count + 1):
            stream = bytearray()
            index = 0
            for wire, _, replay in self.frames:
                if replay == cut:
                    index += 1
                    if index > kept:
                        continue
                stream += wire
            streams.append(bytes(stream))
        return streams

    def live_unread(self, received: int) -> int:
        """Live (not replayed) bytes of the frames the client has not read whole."""
        unread = 0
        end = 0
        for wire, size, replay in self.frames:
            end += len(wire)
            if end > received and replay is None:
                unread += size
        return unread


class Owner:
    """Ends its peer as ``Connection.end`` does — it leaves every topic, then
    its outbox aborts — when the run allows it (a small ``max_buffer``)."""

    def __init__(self, run: Run, peer: int) -> None:
        self.run = run
        self.peer = peer
        self.ended = False

    def end_abruptly(self, reason: str) -> None:
        run, p = self.run, self.peer
        if run.max_buffer is None:
            raise AssertionError(f"peer {p} ended: {reason}")
        if self.ended:
            return
        assert reason == REASON_SLOW, reason
        # The policy counts what is held: the client has not read it. A
        # replay's bytes never count.
        unread = run.expected[p].live_unread(len(run.transports[p].data))
        assert unread > run.max_buffer, (
            f"peer {p} ended with {unread} live bytes unread (max_buffer={run.max_buffer})"
        )
        self.ended = True
        for t in sorted(run.topics[p]):
            run.ns.leave(f"t{t}", run.outboxes[p])
        run.outboxes[p].abort()

    def dropped_events(self, count: int) -> None:
        raise AssertionError("the policy here is 'close'")


# How a run ends: the peers stay open ("open"); every replay is let finish,
# then every peer ends gracefully ("drain"); or every peer ends gracefully at
# once, replays still being written giving up ("end").
ENDINGS = ("open", "drain", "end")


class Run:
    """One script's world: the peers, their topics, the model's streams."""

    def __init__(
        self,
        specs: list[tuple[str, bool]],
        segment: int,
        max_buffer: int | None,
        *,
        recheck: bool = True,
    ) -> None:
        self.max_buffer = max_buffer
        self.recheck = recheck
        self.sched = Scheduler(Options(max_buffer=max_buffer or 1 << 30), Stats())
        if max_buffer is None:
            self.sched.segment = segment  # small segments exercise writes mid-batch
        self.ns = Namespace("/")
        self.kinds = [kind for kind, _ in specs]
        self.transports = [TRANSPORTS[kind]() for kind in self.kinds]
        # The peer's topics (Connection.topics); joined unless replaying.
        self.topics: list[set[int]] = [set() for _ in range(PEERS)]
        self.replaying: list[int | None] = [None] * PEERS  # the replay being written
        self.closing = [False] * PEERS  # ended gracefully (Connection.end)
        self.tasks: list[asyncio.Task[None]] = []  # replays and graceful ends
        self.paused = [False] * PEERS  # by the script (for TLS: the window)
        self.expected = [Expected(chunked) for _, chunked in specs]
        self.owners = [Owner(self, p) for p in range(PEERS)]
        self.outboxes: list[Outbox] = []
        for p, (kind, chunked) in enumerate(specs):
            transport = self.transports[p]
            transport.set_protocol(asyncio.Protocol())
            outbox = Outbox(self.sched, self.owners[p], chunked=chunked)
            outbox.attach(transport)
            assert (outbox.fd >= 0) == (kind == "socket" and chunked)
            self.outboxes.append(outbox)

    def gone(self, p: int) -> bool:
        return self.owners[p].ended or self.closing[p]

    async def run(self, script: list[tuple[Any, ...]], ending: str) -> None:
        try:
            for n, op in enumerate(script):
                await self.step(n, op)
            await self.finish(ending)
            self.check()
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for transport in self.transports:
                transport.close()

    async def step(self, n: int, op: tuple[Any, ...]) -> None:
        kind = op[0]
        sched = self.sched
        if kind in ("send", "subscribe", "unsubscribe", "replay", "end"):
            # As Connection and Peer do: settle first (that may end the
            # peer), then nothing more for an ended one.
            sched.settle()
            if self.gone(op[1]):
                return
        if kind == "send":
            _, p, size = op
            frame = frame_of(f"{n}:send:{p}", size)
            self.expected[p].add(frame)
            self.outboxes[p].push(frame)
        elif kind == "publish":
            _, t, sender, size = op
            frame = frame_of(f"{n}:pub:{t}", size, published=True)
            for p in range(PEERS):
                joined = t in self.topics[p] and self.replaying[p] is None and not self.gone(p)
                if joined and p != sender:
                    self.expected[p].add(frame)
            fanout = self.ns.topics.get(f"t{t}")
            if fanout is not None:
                skip = self.outboxes[sender] if sender is not None else None
                fanout.publish(frame, skip, sched)
        elif kind == "subscribe":
            _, p, t = op
            if t not in self.topics[p]:
                self.topics[p].add(t)
                if self.replaying[p] is None:  # else joined when the replay ends
                    self.ns.join(f"t{t}", self.outboxes[p])
        elif kind == "unsubscribe":
            _, p, t = op
            if t in self.topics[p]:
                self.topics[p].discard(t)
                self.ns.leave(f"t{t}", self.outboxes[p])
        elif kind == "pause":  # the client's doing: for any peer
            p = op[1]
            if not self.paused[p] and not self.owners[p].ended:
                self.paused[p] = True
                self.transports[p].script_pause()
        elif kind == "resume":
            p = op[1]
            if self.paused[p] and not self.owners[p].ended:
                self.paused[p] = False
                self.transports[p].script_resume()
        elif kind == "read":
            self.transports[op[1]].read()
        elif kind == "send_held":
            self.transports[op[1]].send_held()
        elif kind == "replay":
            await self.start_replay(n, op[1], op[2])
        elif kind == "end":
            self.end(op[1])
        elif kind == "buffered":
            self.check_buffered(op[1])
        elif kind == "settle":
            sched.settle()
        else:
            await asyncio.sleep(0)

    # -- the replay, as Connection.replay runs it -----------------------------------

    async def start_replay(self, n: int, p: int, sizes: list[int]) -> None:
        """A replay starts as on a fresh stream: with nothing queued (what
        the transport holds is ahead of it); the peer is in no topic's
        fanout until the replay ends."""
        outbox = self.outboxes[p]
        if self.replaying[p] is not None:
            return
        if outbox.queue or outbox.batch is not None:
            await asyncio.sleep(0)  # the end of this iteration writes them out
            self.sched.settle()
            if self.gone(p) or outbox.queue or outbox.batch is not None:
                note("replay: skipped (the peer's queue is held)")
                return
        for t in sorted(self.topics[p]):
            self.ns.leave(f"t{t}", outbox)
        assert not outbox.queue and outbox.batch is None
        frames = [frame_of(f"r{n}.{i}", size, published=True) for i, size in enumerate(sizes)]
        self.replaying[p] = n
        outbox.hold()
        for frame in frames:
            self.expected[p].add(frame, replay=n)
        self.tasks.append(asyncio.get_running_loop().create_task(self.replay(p, frames)))
        note("replay: started")

    async def replay(self, p: int, frames: list[bytes]) -> None:
        outbox = self.outboxes[p]
        try:
            # The task runs from the next iteration on, as the replay's
            # first write comes after a fetch (an await: a Redis round trip).
            # A graceful end meanwhile ended the hold: the write would come
            # after the frames queued during it (see
            # test_a_graceful_end_before_a_replays_first_write), so the
            # harness checks first, as a fixed Connection._write_missed would.
            if self.recheck and self.gone(p):
                return
            await outbox.write_with_backpressure(frames)
        finally:
            # Connection._end_replay: the topics are joined in the very step
            # that ends the hold (not by a peer that has ended).
            self.sched.settle()
            if not self.gone(p):
                for t in sorted(self.topics[p]):
                    self.ns.join(f"t{t}", outbox)
            self.replaying[p] = None
            outbox.end_hold()

    # -- a graceful end, as Connection.end and end_stream do it -----------------------

    def end(self, p: int) -> None:
        self.sched.settle()
        if self.gone(p):
            return
        self.closing[p] = True
        outbox = self.outboxes[p]
        for t in sorted(self.topics[p]):
            self.ns.leave(f"t{t}", outbox)
        if self.replaying[p] is not None:
            self.expected[p].cut = self.replaying[p]
            outbox.end_hold()  # a replay still being written gives up
            note("end: a replay cut short")
        self.tasks.append(asyncio.get_running_loop().create_task(self.end_stream(p)))

    async def end_stream(self, p: int) -> None:
        """Drain (write out the queue, wait for the transport to hand
        everything on), then give the transport back."""
        outbox = self.outboxes[p]
        transport = self.transports[p]
        await outbox.drain(None)
        if self.owners[p].ended:
            return
        assert not outbox.queue and not outbox.paused
        assert transport.get_write_buffer_size() == 0 or self.kinds[p] != "tls"
        outbox.detach()
        assert transport.get_protocol() is not outbox

    # -- checks ----------------------------------------------------------------------

    def check_buffered(self, p: int) -> None:
        """``buffered_amount`` (a read that settles an unbound batch): for
        a peer whose frames all went through the outbox with their chunk
        framing, what the client has not got."""
        transport = self.transports[p]
        transport.client_reads()
        amount = self.outboxes[p].buffered_amount
        if self.gone(p) or self.replaying[p] is not None or not self.expected[p].chunked:
            return
        assert amount == len(self.expected[p].wire()) - len(transport.data), f"peer {p}"

    async def until(self, done: Callable[[], bool], what: str) -> None:
        """Let the loop run, every client reading, until ``done()``."""
        for _ in range(SETTLE_ITERATIONS):
            if done():
                return
            for transport in self.transports:
                transport.pump()
            await asyncio.sleep(0)
        assert done(), f"{what} never ended"

    async def finish(self, ending: str) -> None:
        for p in range(PEERS):
            if self.paused[p] and not self.owners[p].ended:
                self.transports[p].script_resume()
        if ending == "end":
            for p in range(PEERS):
                self.end(p)
        await self.until(lambda: all(r is None for r in self.replaying), "a replay")
        if ending == "drain":
            for p in range(PEERS):
                self.end(p)
        await self.until(lambda: all(task.done() for task in self.tasks), "a drain")
        for task in self.tasks:
            task.result()
        for _ in range(3):
            await asyncio.sleep(0)
        live = [p for p in range(PEERS) if not self.gone(p)]
        await self.until(
            lambda: all(not self.outboxes[p].queue and not self.outboxes[p].paused for p in live),
            "a flow-controlled queue",
        )

    def check(self) -> None:
        if self.max_buffer:
            note(f"peers ended: {sum(owner.ended for owner in self.owners)}")
        if any(isinstance(t, TLSTransport) and t.pauses for t in self.transports):
            note("tls: a transport paused the write path")
        for p in range(PEERS):
            outbox = self.outboxes[p]
            got = self.transports[p].received()
            streams = self.expected[p].streams()
            if self.owners[p].ended:
                assert any(s.startswith(got) for s in streams), f"peer {p}: not a prefix"
                assert outbox.discarded and outbox.queue is None
            else:
                assert got in streams, f"peer {p}"
            for t in range(TOPICS):
                joined = f"t{t}" in self.ns.topics and outbox in self.ns.topics[f"t{t}"]
                assert joined == (t in self.topics[p] and not self.gone(p)), f"peer {p}, {t}"
            assert outbox.queued == 0 and outbox.batch is None and not outbox.holding


async def run(
    script: list[tuple[Any, ...]],
    segment: int,
    specs: list[tuple[str, bool]],
    max_buffer: int | None = None,
    ending: str = "open",
) -> None:
    """Run ``script``; with ``max_buffer``, a peer held over it is ended (the
    "close" policy) and gets a prefix of its stream; the others get theirs whole."""
    await Run(specs, segment, max_buffer).run(script, ending)


peer_ids = st.integers(0, PEERS - 1)
topic_ids = st.integers(0, TOPICS - 1)
# Frame sizes, chunk framing included (the smallest frames are a bit bigger).
sizes = st.sampled_from([8, 40, 300, EAGER_WRITE, EAGER_WRITE + 10])
publishes = st.tuples(st.just("publish"), topic_ids, st.none() | peer_ids, sizes)
# Per peer: its transport, and HTTP/1.1 (chunked) or HTTP/1.0.
peer_specs = st.lists(
    st.tuples(st.sampled_from(sorted(TRANSPORTS)), st.sampled_from([True, True, False])),
    min_size=PEERS,
    max_size=PEERS,
)
replays = st.tuples(st.just("replay"), peer_ids, st.lists(sizes, min_size=1, max_size=6))
# Reads of the write path's state that settle an unbound batch (the seams).
seams = st.tuples(st.just("buffered"), peer_ids) | st.tuples(st.just("settle"))
# A peer ended gracefully mid-script (Connection.end, then end_stream's drain).
ends = st.tuples(st.just("end"), peer_ids)
endings = st.sampled_from(ENDINGS)


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
    seams,
    replays,
)
# Start with most peers subscribed somewhere, so that publishes meet subscribers.
initial = st.lists(st.tuples(st.just("subscribe"), peer_ids, topic_ids), min_size=2, max_size=8)


@settings(max_examples=700, deadline=None)
@given(
    initial,
    st.lists(ops, min_size=5, max_size=80),
    st.sampled_from([0, 500, 1 << 20]),
    peer_specs,
    endings,
)
def test_every_peer_gets_its_frames_in_call_order(
    setup: list[tuple[Any, ...]],
    script: list[tuple[Any, ...]],
    segment: int,
    specs: list[tuple[str, bool]],
    ending: str,
) -> None:
    asyncio.run(run(setup + script, segment, specs, ending=ending))


# Many loop iterations with few publishes each (the latency-bound traffic:
# one event per iteration), no segmenting.
sparse_ops = st.one_of(ops, st.tuples(st.just("tick")), st.tuples(st.just("tick")))


# Bursts to one topic within an iteration, sends, subscriptions and reads of
# the write path's state between them (an unbound burst settled midway, the
# sender's own publish skipped).
one_topic = st.just(0)
burst_ops = st.one_of(
    st.tuples(st.just("publish"), one_topic, st.none() | peer_ids, sizes),
    st.tuples(st.just("publish"), one_topic, st.none(), sizes),
    st.tuples(st.just("publish"), one_topic, st.none(), sizes),
    *peer_ops(one_topic),
    seams,
)
one_topic_setup = st.lists(
    st.tuples(st.just("subscribe"), peer_ids, one_topic), min_size=2, max_size=6
)


@settings(max_examples=400, deadline=None)
@given(one_topic_setup, st.lists(burst_ops, min_size=5, max_size=60), peer_specs)
@example(  # buffered_amount between two publishes of one unbound burst
    [("subscribe", 0, 0), ("subscribe", 1, 0)],
    [
        ("publish", 0, None, 40),
        ("buffered", 0),
        ("publish", 0, None, 40),
        ("settle",),
        ("publish", 0, None, 300),
        ("tick",),
        ("read", 1),
        ("read", 0),
    ],
    [("socket", True), ("tls", True), ("plain", False), ("socket", False)],
)
def test_bursts_to_one_topic_keep_call_order(
    setup: list[tuple[Any, ...]], script: list[tuple[Any, ...]], specs: list[tuple[str, bool]]
) -> None:
    asyncio.run(run(setup + script, 1 << 20, specs))


@settings(max_examples=300, deadline=None)
@given(initial, st.lists(sparse_ops, min_size=5, max_size=80), peer_specs)
def test_sparse_publishes_keep_call_order(
    setup: list[tuple[Any, ...]], script: list[tuple[Any, ...]], specs: list[tuple[str, bool]]
) -> None:
    asyncio.run(run(setup + script, 1 << 20, specs))


# Replays while the script goes on: sends to the replaying peer, publishes to
# its topics, subscriptions made meanwhile, its client pausing and reading.
replay_ops = st.one_of(ops, replays, replays, st.tuples(st.just("tick")), ends)


@settings(max_examples=400, deadline=None)
@given(initial, st.lists(replay_ops, min_size=5, max_size=60), peer_specs, endings)
@example(  # a TLS peer paused mid-replay, sent to and subscribed meanwhile
    [("subscribe", 0, 0), ("subscribe", 1, 0)],
    [
        ("replay", 0, [EAGER_WRITE + 10] * 6),
        ("send", 0, 40),
        ("publish", 0, None, 40),
        ("subscribe", 0, 1),
        ("pause", 0),
        ("tick",),
        ("publish", 1, None, 300),
        ("read", 0),
        ("resume", 0),
        ("tick",),
        ("publish", 0, 1, 40),
    ],
    [("tls", True), ("socket", True), ("plain", False), ("tls", False)],
    "drain",
)
@example(  # graceful ends mid-replay: the replay gives up, what was sent follows
    [("subscribe", 0, 0), ("subscribe", 1, 0)],
    [
        ("replay", 0, [EAGER_WRITE + 10] * 6),
        ("replay", 1, [300] * 3),
        ("tick",),
        ("send", 0, 40),
        ("send", 1, 40),
        ("read", 0),
        ("end", 0),
        ("publish", 0, None, 40),
    ],
    [("tls", True), ("plain", True), ("socket", True), ("socket", False)],
    "end",
)
def test_replays_come_first_and_their_peers_join_after(
    setup: list[tuple[Any, ...]],
    script: list[tuple[Any, ...]],
    specs: list[tuple[str, bool]],
    ending: str,
) -> None:
    """What came before the replay, the replay, what was sent during it,
    then the rest: publishes to its topics from the step that ended it on."""
    asyncio.run(run(setup + script, 1 << 20, specs, ending=ending))


# More pauses, and fewer reads, so that peers fall behind.
pressure_ops = st.one_of(ops, st.tuples(st.just("pause"), peer_ids), publishes, replays)


@settings(max_examples=500, deadline=None)
@given(st.lists(pressure_ops, min_size=30, max_size=100), peer_specs, endings)
@example(  # a socket holds a replay's bytes, then live ones: only those count
    [
        ("replay", 0, [EAGER_WRITE + 10] * 2),
        ("tick",),
        ("tick",),
        ("pause", 0),
        ("send", 0, 300),
        ("send", 0, 300),
        ("send", 0, 300),
        ("send", 0, 300),
    ],
    [("socket", True), ("plain", True), ("plain", True), ("plain", True)],
    "open",
)
@example(  # a replay far over max_buffer, its peer paused: never ended for it
    [
        ("replay", 0, [EAGER_WRITE + 10] * 6),
        ("pause", 0),
        ("tick",),
        ("send", 0, 300),
        ("resume", 0),
        ("tick",),
        ("send", 0, 300),
        ("tick",),
        ("pause", 0),
        ("send", 0, 300),
    ]
    + [("tick",)] * 30,
    [("tls", True), ("socket", True), ("plain", True), ("tls", False)],
    "drain",
)
def test_peers_over_max_buffer_end_cleanly(
    script: list[tuple[Any, ...]], specs: list[tuple[str, bool]], ending: str
) -> None:
    """A small max_buffer: peers that fall behind are ended mid-script —
    within a publish, or when a later call settles an unbound batch — and
    leave no trace in any topic; the others still get every frame in order.
    A peer is ended for its live frames only, never for a replay's."""
    everyone = [("subscribe", p, t) for p in range(PEERS) for t in range(TOPICS)]
    asyncio.run(run(everyone + script, 0, specs, max_buffer=1_000, ending=ending))


# TLS peers under their own flow control (at the write path's limits, which
# take a few big frames to reach): big frames, windows closed and reopened,
# reads that resume them, replays.
big_sizes = st.sampled_from([300, EAGER_WRITE, EAGER_WRITE + 10, 40_000])
tls_ops = st.one_of(
    st.tuples(st.just("publish"), topic_ids, st.none() | peer_ids, big_sizes),
    st.tuples(st.just("publish"), topic_ids, st.none(), big_sizes),
    st.tuples(st.just("send"), peer_ids, big_sizes),
    *peer_ops(topic_ids),
    st.tuples(st.just("pause"), peer_ids),
    st.tuples(st.just("read"), peer_ids),
    st.tuples(st.just("replay"), peer_ids, st.lists(big_sizes, min_size=1, max_size=6)),
    seams,
    ends,
)
tls_specs = st.lists(
    st.tuples(st.sampled_from(["tls", "tls", "socket", "plain"]), st.sampled_from([True, False])),
    min_size=PEERS,
    max_size=PEERS,
)


@settings(max_examples=300, deadline=None)
@given(
    initial,
    st.lists(tls_ops, min_size=5, max_size=60),
    st.sampled_from([0, 500, 1 << 20]),
    tls_specs,
    endings,
)
def test_tls_peers_under_their_own_flow_control(
    setup: list[tuple[Any, ...]],
    script: list[tuple[Any, ...]],
    segment: int,
    specs: list[tuple[str, bool]],
    ending: str,
) -> None:
    asyncio.run(run(setup + script, segment, specs, ending=ending))


def test_tls_stand_in_flow_control() -> None:
    """The TLS stand-in as asyncio's SSL transport: pause at ``>= high``,
    resume at ``<= low`` (``high // 4`` by default), a change of limits
    applied at once; the outbox never writes to its socket itself."""

    async def scenario() -> None:
        sched = Scheduler(Options(max_buffer=1_000), Stats())
        transport = TLSTransport()
        try:
            transport.set_protocol(asyncio.Protocol())
            outbox = Outbox(sched, Owner(None, 0), chunked=True)  # type: ignore[arg-type]
            outbox.attach(transport)
            assert outbox.fd == -1
            assert (transport.high, transport.low) == (500, 125)
            transport.script_pause()
            transport.write(b"x" * 499)
            assert not outbox.paused
            transport.write(b"x")
            assert outbox.paused  # 500 >= 500
            transport.set_write_buffer_limits(high=600, low=500)
            assert not outbox.paused  # 500 <= 500
            transport.set_write_buffer_limits(high=1, low=0)
            assert outbox.paused
            transport.script_resume()
            transport.received()
            assert not outbox.paused and transport.get_write_buffer_size() == 0
            assert transport.data == b"x" * 500
        finally:
            transport.close()

    asyncio.run(scenario())


def test_a_graceful_end_over_tls_ends() -> None:
    """``drain`` on a TLS peer: an empty transport does not pause it for
    good, and what is queued behind a paused one is delivered."""
    script = [
        ("send", 0, 40),
        ("tick",),
        ("pause", 1),
        ("send", 1, EAGER_WRITE + 10),
        ("send", 1, EAGER_WRITE + 10),
        ("send", 1, EAGER_WRITE + 10),
        ("send", 1, EAGER_WRITE + 10),
        ("send", 1, EAGER_WRITE + 10),
        ("tick",),
        ("send", 1, 40),
    ]
    specs = [("tls", True), ("tls", True), ("tls", False), ("plain", True)]
    asyncio.run(run(script, 1 << 20, specs, ending="drain"))


def test_a_graceful_end_before_a_replays_first_write() -> None:
    """A replay started (the outbox holds), a frame sent during it, then the
    peer ends gracefully before the replay's first write (its fetch is an
    await): the stream must be the replay then that frame, or the frame
    alone (the replay given up) — never the frame, then the replay. The
    caller does not check (``recheck=False``): the write path refuses a
    replay's write once its hold has ended."""
    script = [("replay", 0, [8]), ("send", 0, 8), ("end", 0)]
    specs = [("plain", True)] * PEERS

    async def scenario() -> None:
        await Run(specs, 1 << 20, None, recheck=False).run(script, "open")

    asyncio.run(scenario())
