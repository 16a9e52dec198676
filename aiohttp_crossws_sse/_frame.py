"""WHATWG event-stream encoding: one ``bytes`` frame per event.

A frame is the complete wire form of one event *including* its HTTP/1.1 chunk
header and trailer, so that a publish encodes once and every subscriber's
transport receives the very same bytes object.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from ._wire import KEEPALIVE_COMMENT

__all__ = [
    "EAGER_WRITE",
    "FORBIDDEN_IN_HEADER",
    "KEEPALIVE_FRAME",
    "encode_comment",
    "encode_event",
    "encode_published",
    "encode_text",
    "to_text",
    "unchunk",
]

# A frame this big is written to a peer's transport as soon as it is
# published (when nothing is queued before it), so the client reads it while
# the next one is encoded; smaller ones wait for the end of the loop iteration
# and leave in one joined write.
EAGER_WRITE = 16384

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\0]")
#: What a header value cannot carry: HTTP (RFC 9110 section 5.5) and aiohttp,
#: on both the client and the server side, refuse every control character
#: but tab. An event id must come back in a ``Last-Event-ID`` header.
FORBIDDEN_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: ...and a header's value loses its leading and trailing spaces and tabs.
_TRIMMED_IN_HEADER = re.compile(r"^[ \t]|[ \t]$")


def to_text(data: Any) -> str:
    """Convert ``data`` to the text of an event (DESIGN "Data conversion")."""
    if isinstance(data, str):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        encoded = base64.b64encode(data).decode("ascii")
        return "data:application/octet-stream;base64," + encoded
    if isinstance(data, dict | list):
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if isinstance(data, int | float):  # bool is an int
        return str(data)
    if data is None:
        return ""
    raise TypeError(f"cannot send data of type {type(data).__name__}")


def _check_field(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"{name} must not contain a line break or NUL: {value!r}")
    return value


def _check_id(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"id must be a str, not {type(value).__name__}")
    # A client sends the id back in a Last-Event-ID header: one it cannot
    # carry would fail every reconnection, one it trims would not match.
    if FORBIDDEN_IN_HEADER.search(value):
        raise ValueError(
            "id must not contain a line break, NUL or other control character "
            "(tab excepted): a client sends it back in a Last-Event-ID header, "
            f"which cannot carry one: {value!r}"
        )
    if _TRIMMED_IN_HEADER.search(value):
        raise ValueError(
            "id must not start or end with a space or tab: a client sends it back "
            f"in a Last-Event-ID header, which loses them: {value!r}"
        )
    return value


def _chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


def encode_event(
    data: Any,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event as a chunked HTTP/1.1 frame.

    Every line of the data (split on CRLF, LF and CR) becomes its own
    ``data:`` line. An ``event`` with a line break or NUL, an ``id`` that
    cannot come back intact in a ``Last-Event-ID`` header (a control
    character but tab, a leading or trailing space or tab) and a negative
    ``retry`` raise ``ValueError``; wrong types raise ``TypeError``.
    """
    return encode_text(to_text(data), event=event, id=id, retry=retry)


def encode_text(
    text: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """``encode_event`` for data already converted to text."""
    head = ""
    if id is not None:
        head += "id: " + _check_id(id) + "\n"
    if event is not None:
        head += "event: " + _check_field("event", event) + "\n"
    if retry is not None:
        if not isinstance(retry, int) or isinstance(retry, bool):
            raise TypeError(f"retry must be an int, not {type(retry).__name__}")
        if retry < 0:
            raise ValueError(f"retry must not be negative: {retry}")
        head += f"retry: {retry}\n"
    if "\n" in text or "\r" in text:
        body = "".join("data: " + line + "\n" for line in _LINE_BREAK.split(text))
    else:
        body = "data: " + text + "\n"
    return _chunk((head + body + "\n").encode("utf-8"))


def encode_published(text: str, *, event: str | None, id: str) -> bytes:
    """``encode_text`` for a published event with an id: ``id:`` without
    the optional space, since every subscriber's stream carries that line."""
    head = "id:" + _check_id(id) + "\n"
    if event is not None:
        head += "event: " + _check_field("event", event) + "\n"
    if "\n" in text or "\r" in text:
        body = "".join("data: " + line + "\n" for line in _LINE_BREAK.split(text))
    else:
        body = "data: " + text + "\n"
    return _chunk((head + body + "\n").encode("utf-8"))


def encode_retry(retry: int) -> bytes:
    """A frame that only sets the client's reconnection time (no event)."""
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        raise ValueError(f"retry must be a non-negative int: {retry!r}")
    return _chunk(f"retry: {retry}\n\n".encode())


def encode_comment(text: str) -> bytes:
    """A comment frame (``: text``); clients ignore it, proxies see traffic."""
    lines = _LINE_BREAK.split(text)
    return _chunk("".join(": " + line + "\n" for line in lines).encode("utf-8") + b"\n")


#: ``: ping`` alone, without the blank line that ends an event: a comment is
#: a whole line by itself, and clients that dispatch on any blank line after
#: an ``id:`` (httpx-sse 0.4.3) would see an empty event per keep-alive.
#: Written between frames only, never inside an event.
KEEPALIVE_FRAME = _chunk(b": " + KEEPALIVE_COMMENT.encode("ascii") + b"\n")


def unchunk(frame: bytes) -> bytes:
    """The event-stream bytes of a frame, without HTTP chunk framing."""
    return frame[frame.index(b"\r\n") + 2 : -2]
