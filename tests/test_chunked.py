"""The chunked-coding decoder (``_post.decoder``), property-tested: pure, no I/O.

A body is made of random chunks (with optional extensions, leading zeros,
upper-case hex, trailers) and fed split at random places — including Node's
``fetch`` framing, where each chunk's CRLF arrives with the next chunk. The
messages must equal the chunks, and each must be reported by the very
``feed()`` call that brings its last data byte.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiohttp_crossws_sse._post.decoder import (
    MAX_LINE,
    MAX_TRAILERS,
    ChunkedDecoder,
    ChunkedError,
    Position,
    State,
)


@dataclass
class Recorder:
    """A sink that records each event with the index of the ``feed()`` call."""

    feed: int = -1
    sizes: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    messages: list[bytes] = field(default_factory=list)
    ended_at: list[int] = field(default_factory=list)  # feed index of each chunk_ended
    body_ended_at: int | None = None
    stop_after: set[int] = field(default_factory=set)  # chunk numbers to stop feed() after

    def chunk_started(self, size: int) -> None:
        self.sizes.append(size)

    def chunk_data(self, data: bytes) -> None:
        assert data
        self.data += data

    def chunk_ended(self) -> bool:
        self.messages.append(bytes(self.data))
        self.data.clear()
        self.ended_at.append(self.feed)
        return len(self.messages) - 1 not in self.stop_after

    def body_ended(self) -> None:
        assert self.body_ended_at is None
        self.body_ended_at = self.feed


@dataclass
class Body:
    wire: bytes
    chunks: list[bytes]
    last_byte: list[int]  # offset in wire of each chunk's last data byte
    data_end: list[int]  # offset just past each chunk's data (where Node splits)


_token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=8)


@st.composite
def extensions(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 2))):
        name = draw(_token)
        kind = draw(st.sampled_from(["bare", "token", "quoted"]))
        bws = draw(st.sampled_from(["", " ", "\t"]))
        if kind == "bare":
            parts.append(f"{bws};{name}")
        elif kind == "token":
            parts.append(f"{bws};{name}={draw(_token)}")
        else:
            parts.append(f'{bws};{name}="a;b c"')
    return "".join(parts).encode()


def size_line(draw: st.DrawFn, size: int) -> bytes:
    digits = f"{size:x}"
    if draw(st.booleans()):
        digits = digits.upper()
    digits = "0" * draw(st.integers(0, 2)) + digits
    return digits.encode() + draw(extensions()) + b"\r\n"


@st.composite
def bodies(draw: st.DrawFn, max_chunks: int = 8) -> Body:
    chunks = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=max_chunks))
    wire = bytearray()
    last_byte, data_end = [], []
    for chunk in chunks:
        wire += size_line(draw, len(chunk))
        wire += chunk
        last_byte.append(len(wire) - 1)
        data_end.append(len(wire))
        wire += b"\r\n"
    wire += size_line(draw, 0)
    for _ in range(draw(st.integers(0, 3))):
        wire += draw(_token).encode() + b": " + draw(_token).encode() + b"\r\n"
    wire += b"\r\n"
    return Body(bytes(wire), chunks, last_byte, data_end)


@st.composite
def bodies_and_cuts(draw: st.DrawFn) -> tuple[Body, list[int]]:
    """A body and where its bytes are split into ``feed()`` calls."""
    body = draw(bodies())
    n = len(body.wire)
    cuts = set(draw(st.lists(st.integers(1, n - 1), max_size=12)) if n > 1 else [])
    if draw(st.booleans()):
        cuts.update(body.data_end)  # Node's fetch: the CRLF comes with the next chunk
    if draw(st.booleans()):
        cuts.update(range(1, n))  # byte by byte
    return body, sorted(c for c in cuts if 0 < c < n)


def pieces(wire: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    """(offset, bytes) of each piece."""
    bounds = [0, *cuts, len(wire)]
    return [(a, wire[a:b]) for a, b in itertools.pairwise(bounds)]


def feed_all(wire: bytes, cuts: list[int]) -> tuple[Recorder, list[tuple[int, bytes]]]:
    sink = Recorder()
    decoder = ChunkedDecoder(sink)
    split = pieces(wire, cuts)
    for index, (_, piece) in enumerate(split):
        sink.feed = index
        assert decoder.feed(piece) == len(piece)
    assert decoder.state == State.DONE
    return sink, split


def piece_of(split: list[tuple[int, bytes]], offset: int) -> int:
    return next(i for i, (at, piece) in enumerate(split) if at <= offset < at + len(piece))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(bodies_and_cuts())
@example((Body(b"0\r\n\r\n", [], [], []), []))
def test_messages_are_the_chunks_each_as_soon_as_its_last_byte_is_fed(
    case: tuple[Body, list[int]],
) -> None:
    body, cuts = case
    sink, split = feed_all(body.wire, cuts)
    assert sink.messages == body.chunks
    assert sink.sizes == [len(c) for c in body.chunks]
    assert sink.ended_at == [piece_of(split, off) for off in body.last_byte]
    assert sink.body_ended_at == len(split) - 1


@given(bodies())
def test_node_framing_delivers_each_chunk_before_its_crlf(body: Body) -> None:
    """One write per chunk, its CRLF with the next: nothing is one message late."""
    sink, _ = feed_all(body.wire, body.data_end)
    assert sink.messages == body.chunks
    assert sink.ended_at == list(range(len(body.chunks)))


@given(bodies(), st.binary(max_size=20))
def test_bytes_after_the_body_are_not_read(body: Body, after: bytes) -> None:
    sink = Recorder()
    decoder = ChunkedDecoder(sink)
    assert decoder.feed(body.wire + after) == len(body.wire)
    assert sink.messages == body.chunks
    assert decoder.feed(after) == 0


@given(bodies(), st.data())
def test_stopping_after_a_chunk_and_feeding_the_rest_later(body: Body, data: st.DataObject) -> None:
    stops = data.draw(st.sets(st.integers(0, max(len(body.chunks) - 1, 0))))
    sink = Recorder(stop_after=stops)
    decoder = ChunkedDecoder(sink)
    at, calls = 0, 0
    while at < len(body.wire):
        at = decoder.feed(body.wire, at)
        calls += 1
        assert calls <= len(body.chunks) + 1
    assert sink.messages == body.chunks
    assert calls == 1 + len(stops & set(range(len(body.chunks))))


@given(bodies(max_chunks=4), st.data())
def test_between_chunks_is_where_a_client_may_pause(body: Body, data: st.DataObject) -> None:
    sink = Recorder()
    decoder = ChunkedDecoder(sink)
    assert decoder.between_chunks
    last = 0
    for end in body.data_end:
        inside = data.draw(st.integers(last, end - 1))
        decoder.feed(body.wire[last:inside])
        decoder.feed(body.wire[inside:end])
        assert decoder.between_chunks, "after a chunk's data (its CRLF may come later)"
        last = end
    decoder.feed(body.wire[last:])
    assert decoder.between_chunks  # done


@given(st.binary(min_size=1, max_size=200), st.integers(0, 199), st.integers(1, 64))
def test_resuming_inside_data_with_a_growing_lower_bound(
    chunk: bytes, done: int, window: int
) -> None:
    """``Position.more``: what another parser knows of a chunk grows as data arrives."""
    done = min(done, len(chunk) - 1)
    rest = len(chunk) - done
    known = min(rest, window)
    told = [known]

    def more() -> tuple[int, bool]:
        extra = min(window, rest - told[0])
        told[0] += extra
        return extra, told[0] == rest

    sink = Recorder()
    start = Position(State.DATA, remaining=known, more=more if known < rest else None)
    decoder = ChunkedDecoder(sink, start)
    sink.feed = 0
    decoder.feed(chunk[done:])
    assert sink.messages == [chunk[done:]]
    sink.feed = 1
    decoder.feed(b"\r\n1\r\nz\r\n0\r\n\r\n")
    assert sink.messages == [chunk[done:], b"z"]
    assert sink.body_ended_at == 1


@pytest.mark.parametrize(
    ("start", "rest", "messages"),
    [
        (Position(State.SIZE, prefix=1), b"0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", [b"x" * 16]),
        (Position(State.SIZE, prefix=5), b"\r\nhello\r\n0\r\n\r\n", [b"hello"]),
        (Position(State.SIZE, prefix=2, in_ext=True), b"=1\r\nab\r\n0\r\n\r\n", [b"ab"]),
        (Position(State.SIZE_LF, size=2), b"\nab\r\n0\r\n\r\n", [b"ab"]),
        (Position(State.SIZE_LF, size=0), b"\n\r\n", []),
        (Position(State.CR_OR_LF), b"\n0\r\n\r\n", []),
        (Position(State.CR_OR_LF), b"\r\n0\r\n\r\n", []),
        (Position(State.TRAILERS), b"a: b\r\n\r\n", []),
        (Position(State.TRAILERS_LF), b"\n\r\n", []),
        (Position(State.END_LF), b"\n", []),
    ],
)
def test_resuming_where_another_parser_stopped(
    start: Position, rest: bytes, messages: list[bytes]
) -> None:
    sink = Recorder()
    decoder = ChunkedDecoder(sink, start)
    assert decoder.feed(rest) == len(rest)
    assert sink.messages == messages
    assert decoder.state == State.DONE


# -- malformed framing: a clear error --------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (b"zz\r\n", "bad chunk size"),
        (b"\r\n", "bad chunk size"),  # an empty size line
        (b"0x5\r\nhello\r\n", "bad chunk size"),
        (b"-5\r\nhello\r\n", "bad chunk size"),
        (b"5 5\r\nhello\r\n", "bad chunk size"),
        (b"12345678901234567\r\n", "bad chunk size"),  # 17 digits
        (b"5\nhello\r\n", "bare LF"),
        (b"5\r\nhelloX", "CRLF expected"),
        (b"5\r\nhello\rX", "LF expected"),
        (b"5\r\nhello\n", "CRLF expected"),
        (b"5;" + b"x" * MAX_LINE + b"\r\n", "too long"),
        (b"0\r\n" + b"x: y\r\n" * (MAX_TRAILERS + 1), "too many trailer"),
        (b"0\r\nx: y\n", "bare LF"),
    ],
)
def test_malformed_framing_raises_a_clear_error(wire: bytes, words: str) -> None:
    decoder = ChunkedDecoder(Recorder())
    with pytest.raises(ChunkedError, match=words):
        decoder.feed(wire)


def test_a_line_just_within_the_limit_is_fine() -> None:
    sink = Recorder()
    line = b"2;" + b"x" * (MAX_LINE - 2)
    ChunkedDecoder(sink).feed(line + b"\r\nok\r\n0\r\n\r\n")
    assert sink.messages == [b"ok"]


@given(bodies(), st.data())
def test_a_broken_crlf_after_data_is_refused_after_that_chunk(
    body: Body, data: st.DataObject
) -> None:
    if not body.chunks:
        return
    k = data.draw(st.integers(0, len(body.chunks) - 1))
    at = body.data_end[k]
    bad = data.draw(st.integers(0, 255).filter(lambda b: b not in (13, 10)))
    wire = body.wire[:at] + bytes([bad]) + body.wire[at + 1 :]
    sink = Recorder()
    with pytest.raises(ChunkedError):
        ChunkedDecoder(sink).feed(wire)
    assert sink.messages == body.chunks[: k + 1]  # everything up to the fault was delivered


@settings(max_examples=300)
@given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=6))
def test_any_bytes_split_anyhow_decode_the_same_or_fail_the_same(
    wire: bytes, cuts: list[int]
) -> None:
    """Whole or in pieces, the same events and the same verdict; never
    another exception than ``ChunkedError``."""

    def run(split: list[bytes]) -> tuple[list[bytes], bool, str | None]:
        sink = Recorder()
        decoder = ChunkedDecoder(sink)
        try:
            for piece in split:
                decoder.feed(piece)
        except ChunkedError as exc:
            return sink.messages, sink.body_ended_at is not None, type(exc).__name__
        return sink.messages, sink.body_ended_at is not None, None

    whole = run([wire])
    cut = sorted({c for c in cuts if 0 < c < len(wire)})
    assert run([p for _, p in pieces(wire, cut)]) == whole
