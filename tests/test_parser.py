"""Unit tests of the ``text/event-stream`` parser (WHATWG algorithm)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiohttp_crossws_sse._parser import EventStreamParser, ServerSentEvent


def parse(*chunks: bytes) -> tuple[list[ServerSentEvent], EventStreamParser]:
    parser = EventStreamParser()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser


def datas(*chunks: bytes) -> list[str]:
    return [ev.data for ev in parse(*chunks)[0]]


def bytewise(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


def test_simple_event_defaults() -> None:
    events, parser = parse(b"data: hello\n\n")
    assert events == [ServerSentEvent("hello")]
    assert events[0].event == "message"
    assert events[0].id == ""
    assert events[0].retry is None
    assert parser.last_event_id == ""
    assert parser.retry is None


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending(eol: bytes) -> None:
    body = b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    events, _ = parse(body)
    assert events == [ServerSentEvent("a\nb", "e"), ServerSentEvent("c")]
    # The same body fed one byte at a time gives the same events.
    assert parse(*bytewise(body))[0] == events


def test_mixed_line_endings() -> None:
    assert datas(b"data: a\r\ndata: b\rdata: c\n\r\n\rdata: d\r\r") == ["a\nb\nc", "d"]


def test_crlf_split_across_feeds() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    # The LF completing the CRLF must not count as a second (blank) line.
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r") == [ServerSentEvent("a\nb")]
    assert parser.feed(b"\n") == []


def test_lone_cr_completes_line_without_waiting() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: x\r\r") == [ServerSentEvent("x")]


def test_cr_then_cr_lf_is_two_line_ends() -> None:
    # "\r" + "\r\n": first CR ends "data: a", CRLF ends the blank line.
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r\n") == [ServerSentEvent("a")]


def test_multibyte_utf8_split_across_feeds() -> None:
    body = "data: h\u00e9llo \u20ac \U0001f600\n\n".encode()
    assert datas(*bytewise(body)) == ["h\u00e9llo \u20ac \U0001f600"]


def test_invalid_utf8_is_replaced() -> None:
    assert datas(b"data: a\xffb\n\n") == ["a\ufffdb"]


def test_comments_recorded_and_ignored() -> None:
    events, parser = parse(b": ping\n:\n:no space\ndata: x\n: mid\n\n")
    assert events == [ServerSentEvent("x")]
    assert parser.comments == [" ping", "", "no space", " mid"]


def test_comment_only_blocks_dispatch_nothing() -> None:
    events, parser = parse(b": keep-alive\n\n: keep-alive\n\n")
    assert events == []
    assert parser.comments == [" keep-alive", " keep-alive"]


def test_keepalive_comment_lines_between_events() -> None:
    # Our keep-alive is ": ping\n" alone, between whole events: it neither
    # dispatches an event nor disturbs the next one, however the bytes split.
    body = b"id: 1\ndata: a\n\n: ping\n: ping\nevent: e\ndata: b\n\n: ping\n"
    for chunks in ([body], bytewise(body)):
        events, parser = parse(*chunks)
        assert events == [ServerSentEvent("a", id="1"), ServerSentEvent("b", "e", id="1")]
        assert parser.comments == [" ping"] * 3


def test_field_without_colon() -> None:
    # "data" alone appends an empty line; "event" alone sets an empty type.
    assert datas(b"data\n\n") == [""]
    assert datas(b"data\ndata\n\n") == ["\n"]
    events, _ = parse(b"event: x\nevent\ndata: y\n\n")
    assert events == [ServerSentEvent("y", "message")]


def test_leading_space_stripped_only_once() -> None:
    assert datas(b"data:  two\n\n") == [" two"]
    assert datas(b"data:no space\n\n") == ["no space"]
    assert datas(b"data:\tx\n\n") == ["\tx"]
    assert datas(b"data: x \n\n") == ["x "]
    events, _ = parse(b"event:  spaced\ndata: y\n\n")
    assert events[0].event == " spaced"


def test_only_first_colon_separates() -> None:
    assert datas(b"data: a: b:c\n\n") == ["a: b:c"]


def test_multi_line_data() -> None:
    assert datas(b"data: one\ndata: two\ndata: three\n\n") == ["one\ntwo\nthree"]


def test_empty_data_line_dispatches_empty_event() -> None:
    assert datas(b"data:\n\n") == [""]
    assert datas(b"data: \n\n") == [""]
    assert datas(b"data\ndata: x\n\n") == ["\nx"]
    # Only one trailing LF is removed.
    assert datas(b"data: x\ndata:\n\n") == ["x\n"]


def test_blank_line_without_data_dispatches_nothing() -> None:
    events, _ = parse(b"\n\n\nevent: x\n\nid: 1\n\nretry: 5\n\n")
    assert events == []


def test_event_type_reset_after_dispatch() -> None:
    events, _ = parse(b"event: a\ndata: 1\n\ndata: 2\n\n")
    assert [(ev.event, ev.data) for ev in events] == [("a", "1"), ("message", "2")]


def test_event_type_reset_by_block_without_data() -> None:
    events, _ = parse(b"event: a\n\ndata: 1\n\n")
    assert events == [ServerSentEvent("1", "message")]


def test_empty_event_field_means_message() -> None:
    events, _ = parse(b"event:\ndata: 1\n\n")
    assert events[0].event == "message"


def test_last_field_of_a_kind_wins() -> None:
    events, _ = parse(b"event: a\nevent: b\nid: 1\nid: 2\ndata: x\n\n")
    assert events == [ServerSentEvent("x", "b", "2")]


def test_no_dispatch_without_blank_line() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"data: b") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [ServerSentEvent("a\nb")]
    # An event still open when the stream ends is never returned.
    assert parser.feed(b"data: never") == []
    assert datas(b"data: x\ndata: y\n") == []


def test_id_persists_across_events() -> None:
    events, parser = parse(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n")
    assert [(ev.data, ev.id) for ev in events] == [("a", "1"), ("b", "1"), ("c", "2")]
    assert parser.last_event_id == "2"


def test_empty_id_resets_last_event_id() -> None:
    events, parser = parse(b"id: 1\ndata: a\n\nid\ndata: b\n\n")
    assert [ev.id for ev in events] == ["1", ""]
    assert parser.last_event_id == ""


def test_id_without_data_updates_last_event_id() -> None:
    events, parser = parse(b"id: 7\n\n")
    assert events == []
    assert parser.last_event_id == "7"


def test_last_event_id_updated_only_at_block_end() -> None:
    parser = EventStreamParser()
    parser.feed(b"id: 9\ndata: x\n")
    assert parser.last_event_id == ""
    parser.feed(b"\n")
    assert parser.last_event_id == "9"


def test_id_with_nul_is_ignored() -> None:
    events, parser = parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert [ev.id for ev in events] == ["1", "1"]
    assert parser.last_event_id == "1"


def test_retry_sets_reconnection_time() -> None:
    events, parser = parse(b"retry: 1500\ndata: a\n\ndata: b\n\n")
    assert [ev.retry for ev in events] == [1500, None]
    assert parser.retry == 1500


@pytest.mark.parametrize(
    "value", [b"1.5", b"-1", b" 10", b"10 ", b"1e3", b"abc", b"", b"\xd9\xa3", b"\xef\xbc\x91"]
)
def test_retry_not_all_ascii_digits_is_ignored(value: bytes) -> None:
    events, parser = parse(
        b"retry: 100\n\nretry:" + (b" " if value else b"") + value + b"\ndata: a\n\n"
    )
    assert parser.retry == 100
    assert events == [ServerSentEvent("a")]


def test_retry_leading_zeros() -> None:
    assert parse(b"retry: 0010\n\n")[1].retry == 10


def test_unknown_fields_ignored() -> None:
    events, _ = parse(b"foo: bar\nData: no\nDATA: no\ndata: yes\nids: 3\n\n")
    assert events == [ServerSentEvent("yes")]


def test_bom_stripped_at_stream_start() -> None:
    assert datas(b"\xef\xbb\xbfdata: a\n\n") == ["a"]
    # Split across feeds.
    assert datas(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == ["a"]
    # BOM alone in the first chunk.
    assert datas(b"\xef\xbb\xbf", b"data: a\n\n") == ["a"]


def test_only_one_bom_stripped() -> None:
    # A second BOM is part of the field name "\ufeffdata", an unknown field.
    assert datas(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []
    assert datas(b"data: \xef\xbb\xbfa\n\n") == ["\ufeffa"]


def test_bom_not_stripped_after_start() -> None:
    parser = EventStreamParser()
    parser.feed(b"\n")
    assert parser.feed(b"\xef\xbb\xbfdata: a\n\n") == []


def test_reset_discards_partial_event_and_keeps_id() -> None:
    parser = EventStreamParser()
    parser.feed(b"retry: 20\nid: 5\ndata: a\n\ndata: partial\nid: 6\nevent: x\nda")
    parser.reset()
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\n") == [ServerSentEvent("b", "message", "5")]
    assert parser.retry == 20


def test_initial_last_event_id() -> None:
    parser = EventStreamParser(last_event_id="42")
    assert parser.last_event_id == "42"
    assert parser.feed(b"data: a\n\n") == [ServerSentEvent("a", "message", "42")]


def test_megabytes_parse() -> None:
    block = b"id: 1\nevent: tick\ndata: " + b"x" * 100 + b"\ndata: y\n\n"
    body = block * 20_000  # about 2.6 MB
    parser = EventStreamParser()
    events: list[ServerSentEvent] = []
    for i in range(0, len(body), 4093):
        events.extend(parser.feed(body[i : i + 4093]))
    assert len(events) == 20_000
    assert events[-1] == ServerSentEvent("x" * 100 + "\ny", "tick", "1")


def test_huge_line_in_small_chunks() -> None:
    body = b"data: " + b"z" * 2_000_000 + b"\n\n"
    events, _ = parse(*[body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert events == [ServerSentEvent("z" * 2_000_000)]


_line = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=8
)


@given(
    lines=st.lists(
        st.tuples(st.sampled_from(["data", "event", "id", "retry", ":", "x", ""]), _line),
        max_size=12,
    ),
    eol=st.sampled_from(["\n", "\r", "\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_any_split_gives_same_events(
    lines: list[tuple[str, str]], eol: str, cuts: list[int]
) -> None:
    text = "".join(
        (name if name in ("", ":") else name + ":") + value + eol for name, value in lines
    )
    body = text.encode()
    whole, whole_parser = parse(body)
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(points)]
    split, split_parser = parse(*pieces)
    assert split == whole
    assert split_parser.comments == whole_parser.comments
    assert split_parser.last_event_id == whole_parser.last_event_id
    assert split_parser.retry == whole_parser.retry
