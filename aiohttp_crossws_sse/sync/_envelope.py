"""The wire envelope of the network backplanes: how publishes travel as text.

One envelope per backplane message::

    1<instance id> <seq>\\n<body>

``1`` is the format version; ``seq`` counts the envelopes of one instance, so
a receiver notices the ones it missed. The body is a JSON array,
``[topic, namespace, event, data, topic, namespace, event, data, ...]``: the
publishes of one batch, in order. A backend may use another body of its own
(Postgres: ``@<row id>`` for a payload stored in a table).

Version ``2`` (Redis with history, where Redis assigns the event ids) has the
same header and the body ``<epoch> <first seq>\\n`` followed by a JSON array
of ``(topic, namespace, event, data, sender)`` per publish: the publishes
have the consecutive seqs from ``first seq`` on.

Pure functions: the relay (``_relay.py``) keeps the sequence numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import chain
from operator import attrgetter
from typing import Any

from .._history import format_id
from .base import Relayed

__all__ = [
    "ENCODER",
    "VERSION",
    "VERSION_IDS",
    "as_text",
    "body_size",
    "groups",
    "pack_batch",
    "publishes",
    "publishes_with_ids",
    "read_header",
    "unpack",
    "unpack_ids",
    "utf8_len",
]

VERSION = "1"
VERSION_IDS = "2"  # body: "<epoch> <first seq>\n" + JSON of (topic, namespace, event, data, sender)
ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_decode = json.loads
# bytes a message adds to a body beyond its strings: quotes, commas, nulls
_OVERHEAD = 16
# a guess at what a message adds beyond its data (topic, event, namespace, syntax)
_GUESS = 64
_FIELDS = attrgetter("topic", "namespace", "event", "data")
_OPTIONAL_STR = (str, type(None))


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def body_size(message: Relayed) -> int:
    """UTF-8 bytes of the body that carries ``message`` alone, as ``pack_batch``
    encodes it: escapes (a quote takes 2 bytes, a control character 6) and
    the topic, namespace and event count, not only the data's text."""
    return utf8_len(ENCODER.encode(_FIELDS(message)))


def pack_batch(
    batch: list[Relayed], limit: int, header: Callable[[int], str], data_bytes: int | None = None
) -> list[str]:
    """The envelopes carrying ``batch``, in order, each body at most
    ``limit`` bytes unless it holds a single bigger message. ``header(n)``
    gives the next header of this instance for an envelope of ``n``
    publishes, once per envelope, in order; ``data_bytes``: the summed
    length of the messages' data, if known."""
    if data_bytes is None:
        data_bytes = sum(len(m.data) for m in batch)
    if data_bytes + len(batch) * _GUESS <= limit:  # the usual case: one envelope
        body = ENCODER.encode(list(chain.from_iterable(map(_FIELDS, batch))))
        if len(batch) == 1 or utf8_len(body) <= limit:
            return [header(len(batch)) + body]
    envelopes: list[str] = []
    group: list[Relayed] = []
    size = 0
    for m in batch:
        cost = len(m.topic) + len(m.data) + _OVERHEAD
        if m.event is not None:
            cost += len(m.event)
        if m.namespace is not None:
            cost += len(m.namespace)
        if group and size + cost > limit:
            _pack_group(group, limit, header, envelopes)
            group, size = [], 0
        group.append(m)
        size += cost
    if group:
        _pack_group(group, limit, header, envelopes)
    return envelopes


def _pack_group(
    group: list[Relayed], limit: int, header: Callable[[int], str], out: list[str]
) -> None:
    body = ENCODER.encode(list(chain.from_iterable(map(_FIELDS, group))))
    if len(group) > 1 and utf8_len(body) > limit:
        half = len(group) // 2  # escapes or multi-byte text made it bigger than guessed
        _pack_group(group[:half], limit, header, out)
        _pack_group(group[half:], limit, header, out)
        return
    out.append(header(len(group)) + body)


def read_header(envelope: str) -> tuple[str, int, str] | None:
    """``(sender, seq, body)`` of an envelope of either version, or ``None``
    when its header is malformed."""
    newline = envelope.find("\n")
    space = envelope.find(" ", 0, newline)
    if not envelope.startswith((VERSION, VERSION_IDS)) or space < 0:
        return None
    sender = envelope[1:space]
    try:
        seq = int(envelope[space + 1 : newline])
    except ValueError:
        return None
    return sender, seq, envelope[newline + 1 :]


def unpack(body: str) -> list[Any]:
    """The flat JSON array of a version-1 body; raises ``ValueError`` when
    the body is not one."""
    flat = _decode(body)
    if not isinstance(flat, list) or len(flat) % 4:
        raise ValueError("not a list of (topic, namespace, event, data)")
    return flat


def publishes(flat: list[Any]) -> Iterator[Relayed | None]:
    """The publishes of an ``unpack``-ed array, in order: ``None`` for each
    malformed one (its neighbours still go through)."""
    items = iter(flat)
    for topic, namespace, event, data in zip(items, items, items, items, strict=False):
        if (
            type(topic) is not str
            or type(data) is not str
            or type(namespace) not in _OPTIONAL_STR
            or type(event) not in _OPTIONAL_STR
        ):
            yield None
        else:
            yield Relayed(topic, data, event, namespace, remote=True)


def unpack_ids(body: str) -> tuple[str, int, list[Any]]:
    """``(epoch, first seq, flat JSON array)`` of a version-2 body; raises
    ``ValueError`` when the body is not one."""
    newline = body.find("\n")
    epoch, first_text = body[:newline].split(" ")
    first = int(first_text)
    flat = _decode(body[newline + 1 :])
    if not isinstance(flat, list) or len(flat) % 5:
        raise ValueError("not a list of (topic, namespace, event, data, sender)")
    return epoch, first, flat


def publishes_with_ids(
    epoch: str, first: int, flat: list[Any], remote: bool = True
) -> Iterator[tuple[int, Relayed | None]]:
    """``(seq, publish)`` of an ``unpack_ids``-ed array, in order, each
    publish with its event id: ``None`` for each malformed one (it still
    takes its seq). ``remote``: published by another instance."""
    items = iter(flat)
    seq = first
    for topic, namespace, event, data, sender in zip(
        items, items, items, items, items, strict=False
    ):
        if (
            type(topic) is not str
            or type(data) is not str
            or type(namespace) not in _OPTIONAL_STR
            or type(event) not in _OPTIONAL_STR
            or type(sender) not in _OPTIONAL_STR
        ):
            yield seq, None
        else:
            yield seq, Relayed(topic, data, event, namespace, format_id(epoch, seq), sender, remote)
        seq += 1


def groups(batch: list[Relayed], limit: int) -> list[list[Relayed]]:
    """``batch`` in consecutive groups of about ``limit`` bytes at most (the
    history scripts' calls: one per group)."""
    out: list[list[Relayed]] = []
    group: list[Relayed] = []
    size = 0
    for m in batch:
        cost = len(m.topic) + len(m.data) + _GUESS
        if group and size + cost > limit:
            out.append(group)
            group, size = [], 0
        group.append(m)
        size += cost
    if group:
        out.append(group)
    return out


def as_text(value: Any) -> str:
    """A Redis reply as text (bytes decoded)."""
    return value.decode() if isinstance(value, bytes) else str(value)
