"""What a network backplane reports of its troubles, and how often.

Three kinds, each rate-limited by the backplane's ``report_interval`` so that
a flood of failures stays a few lines: publishes not relayed while the
connection was up (``LossReport``), message batches of other instances that
never arrived (``GapReport``), and an outage of the listening connection —
when it begins, while reconnecting fails, when it is over (``OutageReport``).
Each report is an exception handed to the backplane's ``report``.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import Protocol

__all__ = [
    "MAX_SENDERS",
    "GapReport",
    "LossReport",
    "OutageReport",
    "Reporter",
    "logger",
    "plural",
    "why",
]

logger = logging.getLogger("aiohttp_crossws_sse.sync")

# Other instances remembered at once: by their sequence numbers (the relay),
# by name in a gap report. Bounded: instances come and go.
MAX_SENDERS = 4096
_LOSS_GRACE = 0.1  # seconds before the first report of publishes not relayed


class Reporter(Protocol):
    """The backplane, as its reports see it (``RelaySync``)."""

    report_interval: float

    def report(self, exc: Exception) -> None: ...

    def describe(self) -> str: ...

    def reason(self, exc: BaseException | None) -> str: ...

    def caused(self, err: Exception, cause: BaseException | None) -> Exception: ...


def why(exc: BaseException | None) -> str:
    """An exception as a reason: its message, or its type when it has none."""
    if exc is None:
        return "unknown"
    return str(exc) or type(exc).__name__


def plural(n: int, word: str, suffix: str = "s") -> str:
    return f"{n} {word}{suffix if n != 1 else ''}"


class _Throttled(ABC):
    """A count of one kind of trouble, reported at most once per
    ``report_interval`` (the first after ``grace`` seconds, the rest summed)."""

    grace = 0.0

    def __init__(self, owner: Reporter) -> None:
        self._owner = owner
        self.unreported = 0
        self._last = -1e18
        self._timer: asyncio.TimerHandle | None = None

    def add(self, count: int) -> None:
        self.unreported += count
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        due = max(self._last + self._owner.report_interval, loop.time() + self.grace)
        if loop.time() >= due:
            self.flush()
        else:
            self._timer = loop.call_at(due, self.flush)

    def flush(self) -> None:
        self._timer = None
        if not self.unreported:
            return
        n, self.unreported = self.unreported, 0
        self._last = asyncio.get_running_loop().time()
        self._owner.report(self.error(n))

    def cancel(self) -> int:
        """Stop the timer; returns the count still unreported."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        n, self.unreported = self.unreported, 0
        return n

    @abstractmethod
    def error(self, n: int) -> Exception:
        """The report of ``n`` of them."""


class LossReport(_Throttled):
    """Publishes not relayed while the connection was up (a batch that failed
    or timed out, ``max_pending``); those of an outage are counted in the
    outage's own reports."""

    # A batch that fails as the connection drops usually fails before the
    # listener notices: a moment's wait lets the outage count it instead
    # (OutageReport.began takes what is unreported), so one outage stays one line.
    grace = _LOSS_GRACE
    cause: BaseException | None = None

    def lost(self, count: int, cause: BaseException | None) -> None:
        if cause is not None:
            self.cause = cause
        self.add(count)

    def error(self, n: int) -> Exception:
        owner, cause = self._owner, self.cause
        reason = f": {owner.reason(cause)}" if cause is not None else ""
        err = ConnectionError(
            f"{plural(n, 'publish', 'es')} not relayed to the other instances "
            f"through {owner.describe()}{reason}"
        )
        return owner.caused(err, cause)


class GapReport(_Throttled):
    """Message batches other instances sent that never arrived here."""

    def __init__(self, owner: Reporter) -> None:
        super().__init__(owner)
        self.senders: set[str] = set()

    def missed(self, sender: str, count: int) -> None:
        if len(self.senders) < MAX_SENDERS:
            self.senders.add(sender)
        self.add(count)

    def error(self, n: int) -> Exception:
        senders, self.senders = self.senders, set()
        source = (
            f"instance {next(iter(senders))}"
            if len(senders) == 1
            else plural(len(senders), "instance")
        )
        return ConnectionError(
            f"missed {plural(n, 'message batch', 'es')} from {source} on "
            f"{self._owner.describe()} (the connection was lost meanwhile, or they were never sent)"
        )


class OutageReport:
    """An outage of the listening connection, as reported: one line when it
    begins, one per ``report_interval`` while reconnecting fails, one when it
    is over; with the count of publishes not relayed meanwhile (``lost``)."""

    def __init__(self, owner: Reporter, losses: LossReport) -> None:
        self._owner = owner
        self._losses = losses
        self.lost = 0  # publishes not relayed during the current outage
        self._since = 0.0
        self._last_retry_report = -1e18

    def began(self, cause: BaseException) -> None:
        owner = self._owner
        # The next report of this outage comes report_interval from now (if
        # it lasts), with the publishes not relayed so far — this one's
        # losses not yet reported among them.
        self._since = self._last_retry_report = asyncio.get_running_loop().time()
        self.lost = self._losses.cancel()
        err = ConnectionError(
            f"lost the connection to {owner.describe()}: {owner.reason(cause)}; "
            "local peers are still served, publishes are not relayed until it is back "
            "(reconnecting)"
        )
        owner.report(owner.caused(err, cause))

    def still_down(self, attempts: int, exc: Exception) -> None:
        """Reconnect attempt ``attempts`` failed with ``exc``."""
        owner = self._owner
        now = asyncio.get_running_loop().time()
        if now - self._last_retry_report < owner.report_interval:
            return
        self._last_retry_report = now
        lost = self.lost
        so_far = f"; {plural(lost, 'publish', 'es')} not relayed so far" if lost else ""
        err = ConnectionError(
            f"still cannot reach {owner.describe()} after {plural(attempts, 'attempt')} "
            f"({now - self._since:.1f} s down): {owner.reason(exc)}{so_far}"
        )
        owner.report(owner.caused(err, exc))

    def over(self, missed: int | None) -> None:
        """The one line of a reconnect: an error report (log and ``error``
        hooks) when publishes were lost meanwhile, else a warning.
        ``missed``: publishes of the cluster missed meanwhile, when the
        backend can tell."""
        lost = self.cancel()
        down = asyncio.get_running_loop().time() - self._since
        text = (
            f"reconnected to {self._owner.describe()} after {down:.1f} s; "
            f"local publishes not relayed meanwhile: {lost}"
        )
        if missed:
            text += f"; publishes of the cluster missed meanwhile: {missed}"
        if lost or missed:
            self._owner.report(ConnectionError(text))
        else:
            logger.warning("%s", text)

    def cancel(self) -> int:
        """Forget the outage's count; returns the publishes not yet reported."""
        lost, self.lost = self.lost, 0
        return lost
