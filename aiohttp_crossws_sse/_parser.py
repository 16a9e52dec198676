"""Incremental parser of ``text/event-stream`` bodies.

It follows the WHATWG HTML "Server-sent events" parsing algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
feed it the body bytes in chunks of any size and it returns the events that
each chunk completed.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["RETRY_MAX", "EventStreamParser", "ServerSentEvent"]

# The only line terminators of the format: CRLF, a lone LF, a lone CR.
_EOL = re.compile(r"\r\n|\r|\n")
_BOM = "\ufeff"
#: The largest ``retry`` kept (int64's maximum, as browsers store it): a
#: longer value is clamped, so that neither ``int()`` (which refuses more than
#: 4300 digits) nor a division to seconds can fail on what a server sent.
RETRY_MAX = 2**63 - 1


def _retry_ms(digits: str) -> int:
    significant = digits.lstrip("0")
    if len(significant) > len(str(RETRY_MAX)):
        return RETRY_MAX
    return min(int(significant or "0"), RETRY_MAX)


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    ``id`` is the last event ID in force when the event was dispatched (it
    persists from earlier events when this one set none); ``retry`` is the
    ``retry:`` value (milliseconds) seen in this event's block, if any.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class EventStreamParser:
    """Turns ``text/event-stream`` bytes into ``ServerSentEvent`` objects.

    Call ``feed()`` with each chunk as it arrives; chunks may split lines,
    CRLF pairs and multibyte UTF-8 characters anywhere (invalid UTF-8 is
    replaced by U+FFFD). Lines are handled as soon as their terminator is
    seen, so a lone CR at the end of a chunk completes its line at once.

    State kept for the caller:

    * ``comments`` -- the text after the colon of every comment line, in
      order (``": ping"`` is recorded as ``" ping"``);
    * ``last_event_id`` -- the stream's last event ID, updated when an event
      block ends (like ``EventSource.lastEventId``);
    * ``retry`` -- the reconnection time in milliseconds set by the last valid
      ``retry:`` field, or ``None`` (a value over ``RETRY_MAX`` is clamped).

    An event still being received when the stream ends is never returned.
    """

    __slots__ = (
        "_block_retry",
        "_data",
        "_decoder",
        "_event_type",
        "_id_buffer",
        "_partial",
        "_skip_lf",
        "_started",
        "comments",
        "last_event_id",
        "retry",
    )

    def __init__(self, last_event_id: str = "") -> None:
        """Start parsing a stream; ``last_event_id`` seeds the last event ID."""
        self.comments: list[str] = []
        self.last_event_id: str = last_event_id
        self.retry: int | None = None
        self._id_buffer = last_event_id
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []
        self._data: list[str] = []
        self._event_type = ""
        self._block_retry: int | None = None
        self._skip_lf = False
        self._started = False

    def reset(self) -> None:
        """Prepare for a new stream (a reconnection).

        Discards any partial line, undecoded bytes and undispatched event, and
        strips a BOM again at the start of the next chunk. ``last_event_id``,
        ``retry`` and ``comments`` are kept, and the new stream's last event ID
        buffer starts from ``last_event_id`` (as browsers do).
        """
        self._decoder.reset()
        self._partial.clear()
        self._data.clear()
        self._event_type = ""
        self._block_retry = None
        self._id_buffer = self.last_event_id
        self._skip_lf = False
        self._started = False

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Parse the next chunk of the body; return the events it completed."""
        text = self._decoder.decode(data)
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == _BOM:
                text = text[1:]
                if not text:
                    return []
        if self._skip_lf:
            # The previous chunk ended with CR: an LF right after it belongs to it.
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []

        events: list[ServerSentEvent] = []
        pos = 0
        for match in _EOL.finditer(text):
            line = text[pos : match.start()]
            if self._partial:
                self._partial.append(line)
                line = "".join(self._partial)
                self._partial.clear()
            self._process_line(line, events)
            pos = match.end()
        if pos < len(text):
            self._partial.append(text[pos:])
        elif text[-1] == "\r":
            self._skip_lf = True
        return events

    def _process_line(self, line: str, events: list[ServerSentEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        name, _, value = line.partition(":")
        if not name:
            # A line starting with a colon (``name`` is empty only then).
            self.comments.append(value)
            return
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = self._block_retry = _retry_ms(value)
        # Any other field name is ignored.

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        self.last_event_id = self._id_buffer
        block_retry = self._block_retry
        self._block_retry = None
        if not self._data:
            self._event_type = ""
            return
        # Each data line added "value + LF"; dropping the final LF is a join.
        data = "\n".join(self._data)
        self._data.clear()
        event_type = self._event_type or "message"
        self._event_type = ""
        events.append(ServerSentEvent(data, event_type, self.last_event_id, block_retry))
