"""The relay: what the network backplanes share but the client library.

``RelaySync`` queues what is published in one loop iteration and has one
writer task send it in one round trip, in publish order, packed in envelopes
(``_envelope.py``); each round trip settles one ``Receipt`` (what an awaited
publish waits for). A supervisor listens, notices a lost connection, reports
it, reconnects with backoff and resubscribes; troubles are reported at a
bounded rate (``_reports.py``). ``ordered``: this instance's own envelopes
come back too, and their publishes are delivered then (``_echo.py``). A
backend (``redis.py``, ``postgres.py``) supplies the five primitives at the
bottom of the class.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from abc import abstractmethod
from collections.abc import Awaitable
from typing import cast

from .._errors import BackplaneError
from .._publication import Publication, Receipt
from ._echo import OWN, Echoes
from ._envelope import VERSION, pack_batch, publishes, read_header, unpack
from ._redact import quotes, scrub
from ._reports import MAX_SENDERS, GapReport, LossReport, OutageReport, logger, why
from .base import Relayed, Sync, SyncLink

__all__ = ["PartlySent", "RelaySync", "logger", "positive"]


class PartlySent(Exception):
    """Raised by a backend's ``_send`` that failed after its first
    ``envelopes`` envelopes were taken (committed): their publishes count as
    relayed; the cause is the ``__cause__``."""

    def __init__(self, envelopes: int) -> None:
        super().__init__(f"{envelopes} envelopes were sent before the failure")
        self.envelopes = envelopes


_FIRST_RECONNECT_DELAY = 0.05


def positive(name: str, value: object) -> float:
    """The value of a numeric option that must be > 0, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"option {name!r} must be a number, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"option {name!r} must be > 0, got {value!r}")
    return float(value)


class RelaySync(Sync):
    """A backplane over a network pub/sub medium (private base of the backends).

    Options every backend takes (keyword-only):

    ``heartbeat`` (``15.0``): seconds of silence on the listening connection
    after which it is probed; no answer within as long again and it counts
    as lost (what notices a dead peer behind a silent network).
    ``max_reconnect_delay`` (``5.0``): the cap of the exponential backoff
    between reconnect attempts (the first comes after 50 ms).
    ``report_interval`` (``10.0``): publishes that could not be relayed and
    failed reconnect attempts are reported at most this often (each report
    gives the count).
    ``send_timeout`` (``10.0``): seconds one batch may take to leave before
    it counts as lost.
    ``max_pending`` (``16 MiB``): bytes of data published and not yet sent
    beyond which further publishes are not relayed (and are reported) until
    the backlog drains.
    ``ordered`` (``False``): every instance, the publisher included, delivers
    the publishes in the backplane's one order (see ``Sync.ordered``).
    """

    kind = "backplane"
    #: Largest body of one envelope, in bytes (a single bigger message goes alone).
    max_body = 1 << 19
    #: Whether this instance hears every envelope of the others, so that a
    #: gap in a sender's sequence numbers is a loss (reported). Not so when
    #: it subscribes to some channels only (``RedisSync(sharded=True)``).
    tracks_gaps = True

    def __init__(
        self,
        *,
        channel: str,
        heartbeat: float = 15.0,
        max_reconnect_delay: float = 5.0,
        report_interval: float = 10.0,
        send_timeout: float = 10.0,
        max_pending: int = 16 << 20,
        ordered: bool = False,
    ) -> None:
        if not isinstance(channel, str):
            raise TypeError(f"option 'channel' must be a str, not {type(channel).__name__}")
        if not channel:
            raise ValueError("option 'channel' must be a non-empty str")
        self.channel = channel
        self.heartbeat = positive("heartbeat", heartbeat)
        self.max_reconnect_delay = positive("max_reconnect_delay", max_reconnect_delay)
        self.report_interval = positive("report_interval", report_interval)
        self.send_timeout = positive("send_timeout", send_timeout)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int):
            raise TypeError(
                f"option 'max_pending' must be an int, not {type(max_pending).__name__}"
            )
        if max_pending <= 0:
            raise ValueError(f"option 'max_pending' must be > 0, got {max_pending!r}")
        self.max_pending = max_pending
        if not isinstance(ordered, bool):
            raise TypeError(f"option 'ordered' must be a bool, not {type(ordered).__name__}")
        self.ordered = ordered
        self._secrets: tuple[str, ...] = ()  # of the address: never in a report (secrets_of)
        self._link: SyncLink | None = None
        self._own = ""  # the envelope prefix of this instance
        self._seq = 0
        self._seqs: dict[str, int] = {}  # sender -> last sequence number seen
        self._pending: list[Relayed] = []
        self._pending_bytes = 0
        self._receipt = Receipt()  # of the batch in _pending
        self._counts: list[int] = []  # publishes per envelope of the batch being sent
        self._echoes = Echoes(self._deliver_locally)  # ordered: own envelopes to come back
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._up = False
        self._closing = False
        self._down_cause: BaseException | None = None
        self._new_reports()

    def _new_reports(self) -> None:
        self._losses = LossReport(self)
        self._gaps = GapReport(self)
        self._outage = OutageReport(self, self._losses)

    # -- Sync ------------------------------------------------------------------------

    async def start(self, link: SyncLink) -> None:
        """Connect and subscribe; raises ``ConnectionError`` when that fails (the
        app does not start: the backplane is unreachable or misconfigured)."""
        if self._link is not None:
            return
        loop = asyncio.get_running_loop()
        self._own = f"{VERSION}{link.instance_id} "
        self._new_reports()  # each run starts with its reports' clocks at zero
        self._closing = False
        failure: Exception | None = None
        try:
            async with asyncio.timeout(self.send_timeout):
                await self._connect()
                await self._subscribe()
        except Exception as exc:
            failure = exc
        if failure is not None:  # raised outside the handler: no implicit __context__
            await self._quiet(self._unsubscribe())
            await self._quiet(self._disconnect())
            err = ConnectionError(f"cannot connect to {self.describe()}: {self.reason(failure)}")
            raise self.caused(err, failure)
        self._link = link
        self._echoes.active = self.ordered and not self.assigns_ids
        self._up = True
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_loop(), name=f"{self.kind} writer")
        self._supervisor = loop.create_task(self._supervise(), name=f"{self.kind} listener")

    def publish(self, message: Relayed) -> Publication:
        """Queue ``message`` for the next round trip; never blocks. While the
        backplane is unreachable it is not relayed, and that is reported."""
        if not self._up or self._closing:
            if self._link is None or self._closing:
                raise RuntimeError(f"{type(self).__name__} is not started (is the app running?)")
            return self._refuse(message, self._down_cause)
        pending = self._pending
        if not pending:
            self._wake.set()  # the writer sends what this loop iteration queues
            self._receipt = Receipt()
        elif self._pending_bytes > self.max_pending:
            return self._refuse(
                message, BufferError(f"more than {self.max_pending} bytes waiting to be sent")
            )
        pending.append(message)
        self._pending_bytes += len(message.data)
        return Publication(self._receipt, len(pending) - 1)

    def _refuse(self, message: Relayed, cause: BaseException | None) -> Publication:
        self._lost(1, cause)
        if self._echoes.active:  # after the own publishes before it, locally
            self._echoes.hold(message, queued=bool(self._pending))
        else:
            self._unsent([message])
        return Publication(Receipt.failed(self.error(cause)))

    def error(self, cause: BaseException | None) -> BackplaneError:
        """What an awaited publish raises when ``cause`` kept it from the backplane."""
        err = BackplaneError(f"{self.describe()} did not take the publish: {self.reason(cause)}")
        return cast(BackplaneError, self.caused(err, cause))

    async def close(self) -> None:
        """Send what is still queued (bounded by ``send_timeout``), then disconnect.
        Idempotent; the backplane can be started again afterwards."""
        if self._link is None:
            return
        self._closing = True  # publishes from now on raise
        writer, supervisor = self._writer, self._supervisor
        self._writer = self._supervisor = None
        self._wake.set()
        if writer is not None:
            done, _ = await asyncio.wait([writer], timeout=self.send_timeout)
            if not done:
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        self._echoes.flush()  # sent; their echoes will not be heard now
        if self._pending:  # the writer gave up (send_timeout) before sending them
            self._unsent(self._pending)
            self._echoes.release_held()
            self._receipt.fail(self.error(ConnectionError("the backplane was closed")))
        unreported = self._outage.cancel() + self._losses.cancel()
        self._gaps.cancel()
        if unreported:
            logger.warning(
                "%d publishes not relayed through %s before shutdown",
                unreported,
                self.describe(),
            )
        await self._quiet(self._unsubscribe())
        await self._quiet(self._disconnect())
        self._link = None
        self._up = False
        self._pending = []
        self._pending_bytes = 0

    # -- for backends ----------------------------------------------------------------

    def report(self, exc: Exception) -> None:
        """Hand a background failure to the adapter (log and ``error`` hooks)."""
        if self._link is not None and not self._closing:
            self._link.report(exc)
        else:
            logger.warning("%s", exc)

    def describe(self) -> str:
        """What the backplane talks to, for messages (no password)."""
        return f"{self.kind} channel {self.channel!r}"

    def reason(self, exc: BaseException | None) -> str:
        """``exc`` as the reason in a report, without the address's secrets
        (a client library's message about a malformed address may quote them)."""
        return scrub(why(exc), self._secrets)

    def caused(self, err: Exception, cause: BaseException | None) -> Exception:
        """``err`` with ``cause`` as its ``__cause__`` — unless what ``cause``
        (or its own causes) says quotes a secret: then ``err`` stands alone."""
        if cause is not None and quotes(cause, self._secrets):
            cause = None
        err.__cause__ = cause
        return err

    def header(self, count: int) -> str:
        """The next envelope header of this instance, for an envelope carrying
        ``count`` publishes (takes a sequence number)."""
        self._seq += 1
        self._counts.append(count)
        self._echoes.expect(self._seq, count)
        return f"{self._own}{self._seq}\n"

    @property
    def up(self) -> bool:
        return self._up

    @property
    def echoed(self) -> bool:
        """Whether this instance's own envelopes are delivered when they come
        back (``ordered``; see ``heard_own``) rather than dropped."""
        return self._echoes.active

    def heard_own(self, seq: int, lane: str | None = None) -> None:
        """This instance's own envelope ``seq`` came back (``echoed``), on
        ``lane`` (see ``_echo.py``)."""
        self._echoes.heard(seq, lane)

    def accept(self, envelope: str) -> str | None:
        """The body of a received envelope, or ``None`` for this instance's own
        (echo) and for a malformed one (reported). Notes missed envelopes.

        Envelopes of version ``2`` (a backend that assigns event ids) are
        accepted too, this instance's own included: ids are assigned by the
        backplane, so every instance delivers every publish from there."""
        if envelope.startswith(self._own):
            if self._echoes.active:  # ordered: delivered now, from what was sent
                return OWN + envelope[len(self._own) : envelope.find("\n")]
            return None
        header = read_header(envelope)
        if header is None:
            self._malformed(envelope, None)
            return None
        sender, seq, body = header
        if not self.tracks_gaps:
            return body
        last = self._seqs.get(sender)
        if last is None and len(self._seqs) >= MAX_SENDERS:
            self._seqs.clear()
        self._seqs[sender] = seq
        if last is not None and seq > last + 1:
            self._gaps.missed(sender, seq - last - 1)
        return body

    def deliver_body(self, body: str) -> None:
        """Hand the publishes of a JSON body to the local subscribers."""
        link = self._link
        if link is None:
            return
        if body.startswith(OWN):
            self.heard_own(int(body[1:]))
            return
        try:
            flat = unpack(body)
        except ValueError as exc:
            self._malformed(body, exc)
            return
        deliver = link.deliver
        for message in publishes(flat):
            if message is None:
                self._malformed(body, None)
                continue
            try:
                deliver(message)
            except Exception as exc:  # a bad relayed event must not stop the listener
                self.report(exc)

    def _malformed(self, text: str, exc: Exception | None) -> None:
        err = ValueError(f"malformed message on {self.describe()}: {text[:80]!r}")
        err.__cause__ = exc
        self.report(err)

    # -- the writer ------------------------------------------------------------------

    def _lost(self, count: int, cause: BaseException | None) -> None:
        if not self._up:
            self._outage.lost += count  # in the outage's reports (see _reconnect)
        else:
            self._losses.lost(count, cause)

    async def _write_loop(self) -> None:
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            batch, self._pending = self._pending, []
            data_bytes, self._pending_bytes = self._pending_bytes, 0
            receipt = self._receipt
            if batch:
                if self._up:
                    echoes = self._echoes
                    echoes.sending(batch, receipt)
                    self._counts = []
                    try:
                        async with asyncio.timeout(self.send_timeout):
                            await self._send_batch(batch, data_bytes, receipt)
                    except asyncio.CancelledError:
                        self._batch_failed(batch, receipt, None)
                        raise
                    except Exception as exc:
                        self._batch_failed(batch, receipt, exc)
                    else:
                        if not echoes.sent(receipt):
                            receipt.settle()
                else:
                    self._lost(len(batch), self._down_cause)
                    self._unsent(batch)
                    self._echoes.release_held()
                    receipt.fail(self.error(self._down_cause))
            if self._closing and not self._pending:
                return

    async def _send_batch(self, batch: list[Relayed], data_bytes: int, receipt: Receipt) -> None:
        """Send one loop iteration's publishes (a backend may override), in
        envelopes of at most ``max_body`` bytes unless one holds a single bigger
        message. A backend that gives event ids sets ``receipt.ids``."""
        await self._send(pack_batch(batch, self.max_body, self.header, data_bytes))

    def _batch_failed(self, batch: list[Relayed], receipt: Receipt, exc: Exception | None) -> None:
        """``_send_batch`` raised ``exc`` (``None``: cancelled, the backplane
        is closing); a backend that settles parts of a batch itself overrides
        it to handle only the rest."""
        if exc is None:
            receipt.fail(self.error(ConnectionError("the backplane was closed")))
            self._echoes.drop(receipt)
            return
        taken = 0
        if isinstance(exc, PartlySent):  # the first envelopes went out
            taken = sum(self._counts[: exc.envelopes])
            exc = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        self._lost(len(batch) - taken, exc)
        receipt.fail(self.error(exc), spared=taken)
        if self._echoes.active:  # what has not come back yet is delivered here
            self._echoes.drop(receipt)
        else:
            self._unsent(batch[taken:])

    def _unsent(self, batch: list[Relayed]) -> None:
        """``batch`` could not be relayed (already reported as lost): by the
        writer, or refused by ``publish`` (unreachable, over ``max_pending``).
        When the adapter delivers only what comes back (``assigns_ids``,
        ``ordered``), it is delivered here now (without a cluster id)."""
        if self.assigns_ids or self.ordered:
            for message in batch:
                self._deliver_locally(message)

    def _deliver_locally(self, message: Relayed) -> str | None:
        """Hand ``message`` to the local subscribers; its id, if any."""
        link = self._link
        if link is None:
            return None
        try:
            return link.deliver(message)
        except Exception as exc:  # a bad event must not stop the writer or listener
            self.report(exc)
            return None

    # -- the listener ------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            try:
                await self._listen()
                cause: Exception = ConnectionError("the connection was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cause = exc
            await self.went_down(cause)
            await self._reconnect()

    async def went_down(self, cause: BaseException) -> None:
        """The listening connection is lost: report it and stop relaying."""
        if not self._up:
            return
        self._up = False
        self._down_cause = cause
        self._outage.began(cause)
        # Own envelopes sent and not heard back: delivered here now, as they
        # would be without ``ordered`` (the others may or may not have them).
        self._echoes.flush()
        await self._quiet(self._unsubscribe())

    async def _reconnect(self) -> None:
        """Resubscribe with backoff. While it fails, one report per
        ``report_interval``; once back, one line saying what was lost."""
        delay = _FIRST_RECONNECT_DELAY
        attempts = 0
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.max_reconnect_delay)
            attempts += 1
            try:
                async with asyncio.timeout(max(self.send_timeout, self.heartbeat)):
                    await self._subscribe()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down_cause = exc
                await self._quiet(self._unsubscribe())
                self._outage.still_down(attempts, exc)
        self._up = True
        self._down_cause = None
        missed = self._missed_meanwhile()
        self._outage.over(missed)
        link = self._link
        if missed != 0 and link is not None and link.resync is not None:
            link.resync()

    def _missed_meanwhile(self) -> int | None:
        """How many publishes of other instances the outage just over missed,
        when the backend can tell (it then reports none of them as gaps);
        ``None``: it cannot (maybe some)."""
        return None

    @staticmethod
    async def _quiet(step: Awaitable[None]) -> None:
        """Await a clean-up step, logging (not raising) what it raises."""
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.debug("clean-up failed", exc_info=True)

    # -- what a backend supplies -------------------------------------------------------

    @abstractmethod
    async def _connect(self) -> None:
        """Set up what publishing needs (a client, a connection)."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Undo ``_connect``; idempotent."""

    @abstractmethod
    async def _subscribe(self) -> None:
        """Open the listening connection and subscribe to ``channel``; returns
        once the subscription is in effect."""

    @abstractmethod
    async def _unsubscribe(self) -> None:
        """Close the listening connection; idempotent."""

    @abstractmethod
    async def _listen(self) -> None:
        """Receive until the listening connection fails (raise why). Hand every
        envelope to ``accept`` and its body to ``deliver_body``; probe the
        connection after ``heartbeat`` seconds of silence."""

    @abstractmethod
    async def _send(self, envelopes: list[str]) -> None:
        """Send ``envelopes`` in order, in as few round trips as the medium allows."""
