"""The frame encoder, property-tested against the WHATWG parser."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiohttp_crossws_sse._frame import encode_comment, encode_event, to_text, unchunk
from aiohttp_crossws_sse._parser import EventStreamParser, ServerSentEvent

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
    if (event is not None and forbidden.search(event)) or (id is not None and forbidden.search(id)):
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
    assert parser.feed(unchunk(encode_event("x", retry=retry))) == [
        ServerSentEvent(data="x", retry=retry)
    ]
    assert parser.retry == retry


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
