"""Event ids and the per-topic history that Last-Event-ID replay reads.

One ``History`` per adapter (in one process): one sequence for every topic,
strictly increasing, so that one ``Last-Event-ID`` positions every topic a
reconnecting client subscribes to. An id is ``<epoch>-<seq>``, the seq in
lowercase hex (every subscriber's stream carries it: it is kept short): the
epoch is random per history (``new_epoch``), so an id from a history that
was lost (the process restarted) is recognised as foreign, never mistaken
for a position here.

Each topic keeps its newest ``size`` events (and, with ``max_age``, only those
younger than that), each stored once as its encoded frame — the very bytes the
live fan-out wrote, ``id:`` line included — shared by every replay. A topic
remembers the seq of the newest event it evicted, so a replay knows whether
what it hands out is complete.
"""

from __future__ import annotations

import heapq
import secrets
import string
import time
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from ._frame import encode_published

__all__ = ["History", "Replay", "ReplaySource", "format_id", "new_epoch", "parse_id"]

# With max_age, every this many records all topics are swept of expired
# events (and topics left empty are forgotten).
_SWEEP_EVERY = 4096


class _Topic:
    __slots__ = ("entries", "evicted")

    def __init__(self) -> None:
        # (seq, frame, namespace, sender id, recorded at), oldest first
        self.entries: deque[tuple[int, bytes, str | None, str | None, float]] = deque()
        self.evicted = 0  # seq of the newest event evicted (0: none)


class Replay(NamedTuple):
    """What a client missed: ``frames`` in id order, ``complete`` when
    nothing it missed was evicted, ``upto`` the seq the frames reach (in the
    history of ``epoch``)."""

    frames: list[bytes]
    complete: bool
    upto: int
    epoch: str | None = None


_EPOCH_ALPHABET = string.ascii_letters + string.digits
_HEX = frozenset("0123456789abcdef")


def new_epoch() -> str:
    """A random epoch: 4 characters of [A-Za-z0-9] (62**4, about 14.8 million)."""
    return "".join(secrets.choice(_EPOCH_ALPHABET) for _ in range(4))


def format_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq:x}"


def parse_id(last_id: str | None) -> tuple[str, int] | None:
    """``(epoch, seq)`` of an id of the form ``<epoch>-<hex seq>``, else ``None``."""
    if not last_id:
        return None
    epoch, sep, digits = last_id.rpartition("-")
    if not sep or not epoch or not digits or len(digits) > 16 or not _HEX.issuperset(digits):
        return None
    if digits[0] == "0":  # never issued: not the canonical form
        return None
    return epoch, int(digits, 16)


class ReplaySource(Protocol):
    """Where a replay reads from: the adapter's ``History``, or a backplane
    that keeps the cluster's history (``Sync.assigns_ids``)."""

    async def fetch(
        self,
        topics: tuple[str, ...],
        position: tuple[str, int] | None,
        namespace: str | None,
        skip_sender: str | None,
    ) -> Replay:
        """What came after ``position`` (``None``: everything held) on
        ``topics``; ``complete`` is ``False`` when ``position`` is not of this
        history or something after it was evicted."""
        ...

    def caught_up(self, replay: Replay) -> bool:
        """Whether live delivery to a peer joining now starts right after
        ``replay`` (checked with no await since the fetch)."""
        ...


class History:
    """Per-topic event history with one id sequence (see the module docstring)."""

    __slots__ = ("_records", "epoch", "forgotten", "max_age", "prefix", "seq", "size", "topics")

    def __init__(
        self, size: int, max_age: float | None = None, *, epoch: str | None = None
    ) -> None:
        if size < 1:
            raise ValueError("history size must be >= 1")
        self.size = size
        self.max_age = max_age
        self.epoch = epoch if epoch is not None else new_epoch()
        self.prefix = self.epoch + "-"
        self.seq = 0
        self.topics: dict[str, _Topic] = {}
        # The newest seq of a topic forgotten whole (max_age): a topic with no
        # record, or one recorded again since, may have lost events up to here.
        self.forgotten = 0
        self._records = 0

    # -- writing ------------------------------------------------------------------

    def last_id(self) -> str:
        """The id ``record`` gave last."""
        return f"{self.prefix}{self.seq:x}"

    def record(
        self,
        topic: str,
        namespace: str | None,
        text: str,
        event: str | None,
        sender: str | None = None,
    ) -> bytes:
        """Give the next id to a publish, keep its frame; returns the frame."""
        seq = self.seq + 1
        frame = encode_published(text, event=event, id=f"{self.prefix}{seq:x}")  # may raise
        self.seq = seq
        max_age = self.max_age
        now = 0.0
        if max_age is not None:
            now = time.monotonic()
            self._records += 1
            if self._records >= _SWEEP_EVERY:
                self._records = 0
                # Before the topic is looked up: the sweep forgets empty
                # topics, this one's entry among them when it is new or
                # expired, and the event must not go into a forgotten entry.
                self.sweep(now)
        entry = self.topics.get(topic)
        if entry is None:
            entry = self.topics[topic] = _Topic()
            # It may be a forgotten topic come back, whose evicted seq is not
            # kept: assume the newest any forgotten topic had (conservative).
            entry.evicted = self.forgotten
        entries = entry.entries
        if max_age is not None:
            self._expire(entry, now - max_age)
        if len(entries) >= self.size:
            entry.evicted = entries.popleft()[0]
        entries.append((seq, frame, namespace, sender, now))
        return frame

    @staticmethod
    def _expire(entry: _Topic, before: float) -> None:
        entries = entry.entries
        while entries and entries[0][4] < before:
            entry.evicted = entries.popleft()[0]

    def sweep(self, now: float | None = None) -> None:
        """Drop expired events everywhere; forget topics left empty."""
        if self.max_age is None:
            return
        before = (time.monotonic() if now is None else now) - self.max_age
        for name, entry in tuple(self.topics.items()):
            self._expire(entry, before)
            if not entry.entries:
                self.forgotten = max(self.forgotten, entry.evicted)
                del self.topics[name]

    # -- reading ------------------------------------------------------------------

    def position(self, last_id: str | None) -> int | None:
        """The seq of ``last_id`` in this history, or ``None`` when it is not
        one of its ids (another epoch, garbage, or not issued yet)."""
        parsed = parse_id(last_id)
        if parsed is None or parsed[0] != self.epoch or parsed[1] > self.seq:
            return None
        return parsed[1]

    def since(
        self,
        topics: Iterable[str],
        after: int,
        namespace: str | None,
        skip_sender: str | None = None,
    ) -> Replay:
        """The frames of ``topics`` with a seq above ``after``, in id order,
        published to ``namespace`` (or to every namespace), not by
        ``skip_sender``; ``complete`` is ``False`` when one of them may have
        been evicted."""
        before = time.monotonic() - self.max_age if self.max_age is not None else None
        complete = True
        runs: list[list[tuple[int, bytes]]] = []
        for topic in topics:
            entry = self.topics.get(topic)
            if entry is not None and before is not None:
                self._expire(entry, before)
            if entry is None:
                if self.forgotten > after:
                    complete = False
                continue
            if entry.evicted > after:
                complete = False
            run: list[tuple[int, bytes]] = []
            for seq, frame, ns, sender, _ in reversed(entry.entries):
                if seq <= after:
                    break
                if (ns is None or ns == namespace) and (sender is None or sender != skip_sender):
                    run.append((seq, frame))
            if run:
                run.reverse()
                runs.append(run)
        if not runs:
            return Replay([], complete, self.seq)
        merged = runs[0] if len(runs) == 1 else heapq.merge(*runs)
        return Replay([frame for _, frame in merged], complete, self.seq)

    async def fetch(
        self,
        topics: tuple[str, ...],
        position: tuple[str, int] | None,
        namespace: str | None,
        skip_sender: str | None,
    ) -> Replay:
        known = position is not None and position[0] == self.epoch and position[1] <= self.seq
        after = position[1] if known and position is not None else 0
        missed = self.since(topics, after, namespace, skip_sender)
        return missed._replace(complete=missed.complete and known, epoch=self.epoch)

    def caught_up(self, replay: Replay) -> bool:
        return replay.upto == self.seq

    def held(self) -> int:
        """Events held, over every topic."""
        return sum(len(entry.entries) for entry in self.topics.values())
