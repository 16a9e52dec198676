"""The frame encoder, property-tested against the WHATWG parser."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiohttp_crossws_sse._frame import (
    encode_comment,
    encode_event,
    encode_published,
    encode_text,
    to_text,
    unchunk,
)
from aiohttp_crossws_sse._parser import RETRY_MAX, EventStreamParser, ServerSentEvent

# Any text that UTF-8 can carry (lone surrogates cannot be encoded at all).
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


def parse_frame(frame: bytes) -> list[ServerSentEvent]:
    size, _, rest = frame.partition(b"\r\n")
    assert int(size, 16) == len(rest) - 2 and rest.endswith(b"\r\n")  # valid chunk
    return EventStreamParser().feed(unchunk(frame))


@given(data=texts, event=st.none() | texts, id=st.none() | texts)
def test_encode_then_parse_gives_the_event_back(
    data: str, event: str | None, id: str | None
) -> None:
    forbidden = re.compile(r"[\r\n\0]")
    # an id also comes back in a header: no control character but tab, and
    # no leading or trailing space or tab (trimmed off a header's value)
    forbidden_in_id = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|^[ \t]|[ \t]$")
    if (event is not None and forbidden.search(event)) or (
        id is not None and forbidden_in_id.search(id)
    ):
        with pytest.raises(ValueError, match=r"event|id"):
            encode_event(data, event=event, id=id)
        return
    events = parse_frame(encode_event(data, event=event, id=id))
    expected_data = data.replace("\r\n", "\n").replace("\r", "\n")
    expected_type = event if event else "message"  # an empty event name means "message"
    assert events == [ServerSentEvent(data=expected_data, event=expected_type, id=id or "")]


@given(retry=st.integers())
def test_retry(retry: int) -> None:
    if retry < 0:
        with pytest.raises(ValueError, match="retry"):
            encode_event("x", retry=retry)
        return
    parser = EventStreamParser()
    # the parser clamps what no client could wait for (int64's maximum, in ms)
    assert parser.feed(unchunk(encode_event("x", retry=retry))) == [
        ServerSentEvent(data="x", retry=min(retry, RETRY_MAX))
    ]
    assert parser.retry == min(retry, RETRY_MAX)


# What aiohttp refuses in a header (RFC 9110 section 5.5): every C0 control
# character but tab, and DEL.
UNSENDABLE = [chr(c) for c in (*range(0x09), *range(0x0A, 0x20), 0x7F)]


@pytest.mark.parametrize("char", UNSENDABLE, ids=[f"U+{ord(c):04X}" for c in UNSENDABLE])
def test_id_that_cannot_come_back_in_a_header_is_refused(char: str) -> None:
    """An id must survive the trip back in ``Last-Event-ID``: one with a
    control character would make every reconnection fail (aiohttp refuses
    to send such a header, aiohttp's server answers 400)."""
    value = f"a{char}b"
    for encode in (
        lambda: encode_event("x", id=value),
        lambda: encode_text("x", id=value),
        lambda: encode_published("x", event=None, id=value),  # history and relayed ids
    ):
        with pytest.raises(ValueError, match=r"^id must not contain .*Last-Event-ID.*'a\\"):
            encode()


@pytest.mark.parametrize("value", [" a", "a ", "\ta", "a\t", " "])
def test_id_that_a_header_would_trim_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"^id must not start or end with a space or tab"):
        encode_event("x", id=value)


def test_ids_a_header_can_carry_are_accepted() -> None:
    value = "".join(chr(c) for c in range(0x21, 0x7F)) + " \t\u00e9\u20ac\U0001f600"
    assert EventStreamParser().feed(unchunk(encode_event("x", id=value)))[0].id == value
    # event names never travel in a header: only line breaks and NUL are refused
    assert EventStreamParser().feed(unchunk(encode_event("x", event="a\x01b")))[0].event == "a\x01b"


@given(text=texts)
def test_comments_never_dispatch(text: str) -> None:
    parser = EventStreamParser()
    assert parser.feed(unchunk(encode_comment(text))) == []
    assert len(parser.comments) >= 1


def test_type_errors_name_the_type_or_field() -> None:
    with pytest.raises(TypeError, match="complex"):
        to_text(1j)
    with pytest.raises(TypeError, match="event"):
        encode_event("x", event=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="id"):
        encode_event("x", id=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry"):
        encode_event("x", retry=1.5)  # type: ignore[arg-type]
