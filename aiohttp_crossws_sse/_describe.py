"""Short summaries of events, for the messages of failed waits.

A client may have seen millions of events: a message names how many and
shows the last few, each field cut short, so that it stays small.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._parser import ServerSentEvent

__all__ = ["describe_event", "describe_events"]

_SHOW_EVENTS = 3  # how many of the last events an error message shows
_SHOW_CHARS = 60  # and how much of each field


def _clip(text: str) -> str:
    if len(text) <= _SHOW_CHARS:
        return repr(text)
    return f"{text[:_SHOW_CHARS]!r}...({len(text)} chars)"


def describe_events(events: Sequence[ServerSentEvent], seen: int | None = None) -> str:
    """A short summary of ``events`` for an error message, bounded in size.

    ``no events seen``, or the count (``seen``, default ``len(events)``) and
    the last three, each field cut to 60 characters: ``5 events seen, the
    last 3: message 'c'; update '{"n":1}' (id '7'); ...``.
    """
    total = len(events) if seen is None else seen
    if not total:
        return "no events seen"
    # Indexing, not slicing: ``events`` may be the client's deque.
    shown = [events[i] for i in range(max(0, len(events) - _SHOW_EVENTS), len(events))]
    count = f"{total} event{'s' if total != 1 else ''} seen"
    if len(shown) < total:
        count += f", the last {len(shown)}"
    return f"{count}: {'; '.join(describe_event(event) for event in shown)}"


def describe_event(event: ServerSentEvent) -> str:
    """``'update' '{"n":1}' (id '7')``: type, data and id, each cut short."""
    text = f"{_clip(event.event)} {_clip(event.data)}"
    return text + f" (id {_clip(event.id)})" if event.id else text
