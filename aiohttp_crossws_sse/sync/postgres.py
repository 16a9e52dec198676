"""``PostgresSync``: the backplane over PostgreSQL LISTEN/NOTIFY (asyncpg).

Install with the ``postgres`` extra (``pip install aiohttp-crossws-sse[postgres]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from typing import Any

import asyncpg

from .._publication import Publication
from ._envelope import body_size, utf8_len
from ._redact import redact, secrets_of
from ._relay import PartlySent, RelaySync, logger
from .base import Relayed

__all__ = ["PostgresSync"]

#: NOTIFY payloads must be shorter than this many bytes.
NOTIFY_LIMIT = 8000
# pg_advisory_xact_lock key serialising the creation of the payload table
_DDL_LOCK = 0x63727773  # "crws"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?")
# Bytes one character can take in a JSON body: "\u001f" (UTF-8 takes at most 4).
_MAX_CHAR_BYTES = 6
# Bytes of a one-message body beyond its strings: [,"", null, null, ""]
_BODY_SYNTAX = 17


class PostgresSync(RelaySync):
    """Relays publishes between instances through PostgreSQL ``LISTEN``/``NOTIFY``.

    ``dsn``: a libpq-style connection string or URL as asyncpg accepts it,
    e.g. ``postgresql://user:password@host:5432/db``, or over a unix socket
    ``postgresql://postgres@/postgres?host=/var/run/postgresql``. The usual
    ``PG*`` environment variables fill in what it leaves out.

    ``channel`` (required) scopes the cluster, like ``RedisSync``'s: a
    PostgreSQL channel name, at most 63 bytes (case-sensitive).

    NOTIFY payloads are limited to 8000 bytes. Publishes are packed into as
    few notifications as fit; a single publish too big for one is stored in
    ``table`` (default ``"aiohttp_crossws_sse_payloads"``, an UNLOGGED table
    created on ``start`` when missing, which needs the CREATE privilege on
    its schema — or create it yourself, see the README) and its row id is
    notified; every instance reads it from there. Rows older than
    ``retention`` seconds (default ``300``) are deleted by the publishers.
    With ``table=None`` nothing is stored and publishing a message too big
    for a notification raises ``ValueError`` (reported by the adapter).

    Each instance holds two connections: one that listens, one that
    notifies. Publishes of one event-loop iteration leave in one round trip
    (one pipelined ``executemany``, one transaction), so other instances
    receive them in publish order. Delivery is at most once, to the
    instances listening at that moment; an instance drops its own — unless
    ``ordered=True``: then it delivers its own publishes only when their
    notification comes back, so every instance delivers one sequence
    (PostgreSQL's commit order), at the cost of a round trip per publish's
    latency.

    A lost connection is reported (log and ``error`` hooks with ``peer``
    ``None``), local peers stay served, and the instance reconnects with
    backoff and listens again by itself; publishes made meanwhile are
    reported, never raised. ``start`` raises ``ConnectionError`` when the
    database cannot be reached. Tuning (``heartbeat``, probing the listening
    connection with ``SELECT 1``; ``max_reconnect_delay``,
    ``report_interval``, ``send_timeout``, ``max_pending``, ``ordered``): as
    for ``RedisSync``.
    """

    kind = "Postgres"
    max_body = NOTIFY_LIMIT - 100  # refined on start, from the header's length

    def __init__(
        self,
        dsn: str,
        *,
        channel: str,
        table: str | None = "aiohttp_crossws_sse_payloads",
        retention: float = 300.0,
        heartbeat: float = 15.0,
        max_reconnect_delay: float = 5.0,
        report_interval: float = 10.0,
        send_timeout: float = 10.0,
        max_pending: int = 16 << 20,
        ordered: bool = False,
    ) -> None:
        super().__init__(
            channel=channel,
            heartbeat=heartbeat,
            max_reconnect_delay=max_reconnect_delay,
            report_interval=report_interval,
            send_timeout=send_timeout,
            max_pending=max_pending,
            ordered=ordered,
        )
        if len(channel.encode()) > 63:
            raise ValueError("option 'channel' must be at most 63 bytes (a PostgreSQL name)")
        if not isinstance(dsn, str):
            raise TypeError(f"PostgresSync needs a DSN (str), not {type(dsn).__name__}")
        if table is not None and (not isinstance(table, str) or not _IDENT.fullmatch(table)):
            raise ValueError(
                "option 'table' must be a plain (optionally schema-qualified) SQL name, "
                f"or None; got {table!r}"
            )
        if isinstance(retention, bool) or not isinstance(retention, int | float):
            raise TypeError(f"option 'retention' must be a number, not {type(retention).__name__}")
        if not retention > 0:
            raise ValueError(f"option 'retention' must be > 0, got {retention!r}")
        self.dsn = dsn
        self._secrets = secrets_of(dsn)
        self.table = table
        self.retention = float(retention)
        self._publisher: asyncpg.Connection[asyncpg.Record] | None = None
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._connection_lost: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()  # one query at a time on the listening connection
        self._inbox: deque[str] = deque()  # bodies waiting behind a stored payload
        self._fetcher: asyncio.Task[None] | None = None
        self._last_cleanup = -1e18

    def describe(self) -> str:
        return f"Postgres at {redact(self.dsn)}, channel {self.channel!r}"

    def publish(self, message: Relayed) -> Publication:
        if self.table is None:
            # Refused here, before it is queued, and not in _send: there it would
            # fail the whole round trip and lose the other publishes of its batch.
            self._check_fits(message)
        return super().publish(message)

    def _check_fits(self, message: Relayed) -> None:
        """Raise ``ValueError`` when ``message`` alone makes a body over ``max_body``
        bytes: measured as encoded, so escapes and UTF-8 count, and so do the
        topic, namespace and event, which travel in the same NOTIFY payload."""
        chars = len(message.topic) + len(message.data)
        if message.namespace is not None:
            chars += len(message.namespace)
        if message.event is not None:
            chars += len(message.event)
        if chars * _MAX_CHAR_BYTES + _BODY_SYNTAX <= self.max_body:
            return  # fits however it encodes: most publishes are not encoded twice
        size = body_size(message)
        if size > self.max_body:
            raise ValueError(
                f"a publish of {size} bytes as JSON (topic, namespace, event and data) does "
                f"not fit a Postgres NOTIFY: {self.max_body} bytes fit beside the envelope "
                f"header (payloads are under {NOTIFY_LIMIT} bytes), and PostgresSync has "
                "table=None: it was delivered locally only"
            )

    # -- publishing --------------------------------------------------------------------

    async def _connect(self) -> None:
        # NOTIFY payload limit, less this instance's envelope header "<own><seq>\n"
        # at its longest (20 digits of seq): a body that fits, fits any header
        self.max_body = NOTIFY_LIMIT - 1 - utf8_len(self._own) - 21
        self._publisher = await asyncpg.connect(self.dsn)
        if self.table is not None:
            async with self._publisher.transaction():
                await self._publisher.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
                if await self._publisher.fetchval("SELECT to_regclass($1)", self.table) is None:
                    await self._publisher.execute(
                        f"CREATE UNLOGGED TABLE {self.table} (id bigserial PRIMARY KEY, "
                        "created timestamptz NOT NULL DEFAULT now(), payload text NOT NULL)"
                    )

    async def _disconnect(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await _close(publisher)

    async def _send(self, envelopes: list[str]) -> None:
        publisher = self._publisher
        if publisher is None or publisher.is_closed():
            self._publisher = None
            publisher = self._publisher = await asyncpg.connect(self.dsn)
        committed = 0  # envelopes taken: each run and each store commits
        try:
            run: list[tuple[str, str]] = []
            stored = False
            for envelope in envelopes:
                if utf8_len(envelope) < NOTIFY_LIMIT:
                    run.append((self.channel, envelope))
                    continue
                await self._notify(publisher, run)
                committed += len(run)
                run = []
                await self._store(publisher, envelope)
                committed += 1
                stored = True
            await self._notify(publisher, run)
            if stored:
                await self._cleanup(publisher)
        except Exception as exc:
            self._publisher = None
            publisher.terminate()
            if committed:
                raise PartlySent(committed) from exc
            raise

    @staticmethod
    async def _notify(
        publisher: asyncpg.Connection[asyncpg.Record], run: list[tuple[str, str]]
    ) -> None:
        if len(run) == 1:
            await publisher.execute("SELECT pg_notify($1, $2)", *run[0])
        elif run:  # one pipelined round trip, one transaction: delivered in order
            await publisher.executemany("SELECT pg_notify($1, $2)", run)

    async def _store(self, publisher: asyncpg.Connection[asyncpg.Record], envelope: str) -> None:
        # Unreachable: with table=None, publish() refuses every message whose body
        # alone is over max_body, and pack_batch() splits batches down to single messages.
        if self.table is None:
            raise ValueError(f"a message of {utf8_len(envelope)} bytes needs table= set")
        newline = envelope.index("\n") + 1
        await publisher.execute(
            f"WITH stored AS (INSERT INTO {self.table} (payload) VALUES ($2) RETURNING id) "
            "SELECT pg_notify($1, $3 || stored.id::text) FROM stored",
            self.channel,
            envelope[newline:],
            envelope[:newline] + "@",
        )

    async def _cleanup(self, publisher: asyncpg.Connection[asyncpg.Record]) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_cleanup < self.retention / 10:
            return
        self._last_cleanup = now
        try:
            await publisher.execute(
                f"DELETE FROM {self.table} WHERE created < now() - make_interval(secs => $1)",
                self.retention,
            )
        except asyncpg.PostgresError:  # e.g. no DELETE privilege: others may clean up
            logger.debug("could not delete old payload rows", exc_info=True)

    # -- listening ---------------------------------------------------------------------

    async def _subscribe(self) -> None:
        listener = self._listener = await asyncpg.connect(self.dsn)
        self._connection_lost = asyncio.get_running_loop().create_future()
        listener.add_termination_listener(self._terminated)
        await listener.add_listener(self.channel, self._notified)

    def _terminated(self, connection: Any) -> None:
        if (
            connection is self._listener
            and self._connection_lost is not None
            and not self._connection_lost.done()
        ):
            self._connection_lost.set_result(None)

    async def _unsubscribe(self) -> None:
        listener, self._listener = self._listener, None
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
        if self._inbox:
            waiting, stored = len(self._inbox), sum(b.startswith("@") for b in self._inbox)
            self._inbox.clear()
            self.report(
                ConnectionError(
                    f"{waiting} received message batches not delivered ({stored} waiting for "
                    f"a stored payload) when the connection to {self.describe()} closed"
                )
            )
        if listener is not None:
            listener.remove_termination_listener(self._terminated)
            await _close(listener)

    async def _listen(self) -> None:
        listener, lost = self._listener, self._connection_lost
        assert listener is not None and lost is not None
        while True:
            done, _ = await asyncio.wait([lost], timeout=self.heartbeat)
            if done:
                raise ConnectionError("the server closed the connection")
            async with self._lock:
                await listener.fetchval("SELECT 1", timeout=self.heartbeat)

    def _notified(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        if connection is not self._listener:
            return
        body = self.accept(payload)
        if body is None:
            return
        if not self._inbox and not body.startswith("@"):
            self.deliver_body(body)  # the fast path: nothing waits ahead of it
            return
        self._inbox.append(body)  # behind a stored payload being read: keep the order
        if self._fetcher is None:
            self._fetcher = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._inbox:
                body = self._inbox[0]
                if body.startswith("@"):
                    text = await self._fetch(body[1:])
                    if text is not None:
                        self.deliver_body(text)
                else:
                    self.deliver_body(body)
                self._inbox.popleft()
        finally:
            self._fetcher = None

    async def _fetch(self, row: str) -> str | None:
        listener = self._listener
        try:
            if listener is None:
                raise ConnectionError("not connected")
            async with self._lock:
                text: str | None = await listener.fetchval(
                    f"SELECT payload FROM {self.table} WHERE id = $1",
                    int(row),
                    timeout=self.send_timeout,
                )
            if text is None:
                raise LookupError(f"row {row} is gone (older than retention={self.retention} s?)")
            return text
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = ConnectionError(
                f"could not read a stored payload (row {row} of {self.table}) "
                f"from {self.describe()}: {self.reason(exc)}"
            )
            self.report(self.caused(err, exc))
            return None


async def _close(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    if connection.is_closed():
        return
    try:
        await connection.close(timeout=2.0)
    except Exception:
        connection.terminate()
