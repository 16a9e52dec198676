"""The benchmarks' load client: many SSE streams in one process, over raw sockets.

Not a general-purpose client: an asyncio ``Protocol`` per connection speaks
just enough HTTP/1.1 (status line, headers, chunked or close-delimited body)
and WHATWG event-stream (LF, CRLF or CR line ends; comments; ``data:`` lines)
to count events and check each one's data, with as little Python per event as
possible: the de-chunked body is split on blank lines, and a run of events
identical to the expected one (``data: xxx...``) is verified with one
``list.count``.

It is driven by a harness over stdin/stdout, one JSON object per stdout line:

1. connects ``--connections`` streams (at most ``--concurrency`` pending) and
   waits for each one's first event, ``data: welcome``; prints
   ``{"event": "ready", ...}``;
2. on the stdin line ``go``: counts events until every stream has its
   ``--messages`` events (or closed, or nothing arrived for
   ``--idle-timeout`` s, or ``--timeout`` s passed); prints
   ``{"event": "done", ...}`` with counts and the CLOCK_MONOTONIC time of
   the last event (comparable with the harness's ``time.monotonic()``);
3. on ``close`` (or end of stdin): closes every socket, prints
   ``{"event": "closed", "t": ...}`` and exits.

Loopback only: ``--host`` must be a 127.x.y.z address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import cast


class Run:
    """Counters shared by every connection of this process."""

    def __init__(self, connections: int, messages: int, size: int) -> None:
        self.connections = connections
        self.messages = messages
        self.size = size
        self._expected: dict[bytes, Expected] = {}
        self.welcomed = 0
        self.failed = 0  # never opened: connect error, bad status or content type, no welcome
        self.failures: dict[str, int] = {}
        self.counting = False
        self.delivered = 0  # payload events of the right size, after "go"
        self.bad = 0  # payload events of another size
        self.extra = 0  # events beyond --messages
        self.complete = 0  # connections with exactly --messages good events
        self.closed_early = 0  # open connections the server ended before they completed
        self.corrupt = 0  # connections that got their count of events, some of the wrong size
        self.first_ts = 0.0
        self.last_ts = 0.0
        self.last_activity = 0.0
        self.finished = asyncio.get_running_loop().create_future()
        self.conns: list[Conn] = []

    def expected_for(self, line_end: bytes) -> Expected:
        if line_end not in self._expected:
            self._expected[line_end] = Expected(self.size, line_end)
        return self._expected[line_end]

    def note(self, reason: str, n: int = 1) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + n

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.note(reason)

    def check_finished(self) -> None:
        if (
            self.counting
            and self.complete + self.corrupt + self.closed_early + self.failed >= self.connections
            and not self.finished.done()
        ):
            self.finished.set_result("complete")


class Expected:
    """The exact bytes of one payload event (``data: xxx...`` and a blank line)
    with the server's line ends, and a long run of them to compare reads with."""

    def __init__(self, size: int, line_end: bytes) -> None:
        self.event = b"data: " + b"x" * size + line_end * 2
        self.run = self.event * max(16, (1 << 20) // len(self.event))

    def matches(self, data: bytes, length: int) -> bool:
        """Whether ``data[:length]`` is a whole number of expected events."""
        view = memoryview(data)
        span = len(self.run)
        for start in range(0, length, span):
            if not self.run.startswith(view[start : min(length, start + span)]):
                return False
        return True


def parse_block(block: bytes) -> bytes | None:
    """One event's text (between blank lines, LF line ends) -> its data, or None."""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == 0x3A:  # empty, or a ":" comment
            continue
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
    if not data:
        return None  # WHATWG: no data, no event
    return b"\n".join(data)


class Conn(asyncio.Protocol):
    """One SSE stream: HTTP response head, chunked decoding, event splitting."""

    __slots__ = (
        "_chunked",
        "_crlf",
        "_expected",
        "_head",
        "_need",
        "_raw",
        "_request",
        "_skip_lf",
        "_tail",
        "bad",
        "count",
        "done",
        "opened",
        "run",
        "transport",
        "welcomed",
    )

    def __init__(self, run: Run, request: bytes) -> None:
        self.run = run
        self._head: bytearray | None = bytearray()
        self._chunked = False
        self._raw = b""  # undecoded chunk-size line
        self._need = 0  # chunk bytes still to come
        self._crlf = 0  # bytes of the CRLF after a chunk still to skip
        self._tail = b""  # text of an event not yet terminated
        self._skip_lf = False
        self._expected: Expected | None = None  # set by the welcome event
        self.count = 0  # payload events received after "go"
        self.bad = 0  # of which had the wrong size
        self.welcomed = False
        self.done = False  # counted as complete or closed early
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._request = request

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    self._reject("response head too long")
                return
            if not self._parse_head(bytes(self._head[:end])):
                return
            data = bytes(self._head[end + 4 :])
            self._head = None
            if not data:
                return
        body = self._dechunk(data) if self._chunked else data
        if body:
            self._feed(body)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        run = self.run
        if not self.welcomed:
            if not self.opened.done():
                reason = "closed before welcome"
                if self._head is not None:
                    reason = f"connection lost: {exc}" if exc else "closed before response head"
                run.fail(reason)
                self.opened.set_result(None)
            return
        if not self.done and run.counting:
            self.done = True
            run.closed_early += 1
            run.check_finished()

    # -- HTTP --------------------------------------------------------------

    def _reject(self, reason: str) -> None:
        if not self.opened.done():
            self.run.fail(reason)
            self.opened.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"200":
            self._reject(f"status {lines[0][:40].decode('latin-1')}")
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if not headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            self._reject("content type is not text/event-stream")
            return False
        self._chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        if b"content-length" in headers:
            self._reject("a stream with Content-Length")
            return False
        return True

    def _dechunk(self, data: bytes) -> bytes:
        if self._raw:
            data = self._raw + data
            self._raw = b""
        view = memoryview(data)
        out: list[memoryview] = []
        pos = 0
        end = len(data)
        while pos < end:
            if self._need:
                stop = pos + self._need
                if stop > end:
                    out.append(view[pos:])
                    self._need = stop - end
                    break
                out.append(view[pos:stop])
                pos = stop
                self._need = 0
                self._crlf = 2
                continue
            if self._crlf:
                skip = min(self._crlf, end - pos)
                done = 2 - self._crlf
                if data[pos : pos + skip] != b"\r\n"[done : done + skip]:
                    self._protocol_error("chunk not followed by CRLF")
                    return b""
                pos += skip
                self._crlf -= skip
                continue
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                self._raw = data[pos:]
                if len(self._raw) > 1024:
                    self._protocol_error("chunk size line too long")
                break
            try:
                size = int(data[pos:nl].split(b";", 1)[0], 16)
            except ValueError:
                self._protocol_error("bad chunk size line")
                return b""
            pos = nl + 2
            if size == 0:  # the last chunk: the server ended the stream
                break
            self._need = size
        return b"".join(out)

    def _protocol_error(self, reason: str) -> None:
        self.run.note(reason)
        if not self.welcomed:
            self._reject(reason)
        elif self.transport is not None:
            self.transport.abort()

    # -- event stream ---------------------------------------------------------

    def _feed(self, body: bytes) -> None:
        if self._skip_lf:  # the previous read ended with a CR, taken as a line end
            self._skip_lf = False
            if body[:1] == b"\n":  # it was a CRLF
                body = body[1:]
        data = self._tail + body if self._tail else body
        run = self.run
        expected = self._expected
        if expected is not None and run.counting:
            # The fast path: a run of events identical to the expected one,
            # checked with one memcmp against a precomputed stream of them.
            step = len(expected.event)
            whole = len(data) // step * step
            if expected.matches(data, whole) and expected.event.startswith(data[whole:]):
                self._tail = data[whole:]
                if whole:
                    self._count(whole // step, 0)
                return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """The general path: WHATWG line ends and fields, event by event."""
        # A CR ending the read is a line end now (as browsers do); an LF
        # starting the next read is then the rest of a CRLF and skipped.
        self._skip_lf = data[-1:] == b"\r"
        line_end = b"\r\n" if b"\r\n" in data else b"\r" if b"\r" in data else b"\n"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = data.split(b"\n\n")
        self._tail = blocks.pop()  # LF-only text, equivalent to the original
        run = self.run
        good = bad = 0
        for block in blocks:
            value = parse_block(block)
            if value is None:
                continue
            if not self.welcomed:
                if value == b"welcome":
                    self.welcomed = True
                    # the server's line ends, as seen around the welcome event
                    self._expected = run.expected_for(line_end)
                    run.welcomed += 1
                    if not self.opened.done():
                        self.opened.set_result(None)
                else:
                    run.note("event before welcome")
                continue
            if len(value) == run.size:
                good += 1
            else:
                bad += 1
        if good or bad:
            if run.counting:
                self._count(good, bad)
            else:
                run.note("event before go", good + bad)

    def _count(self, good: int, bad: int) -> None:
        run = self.run
        now = time.monotonic()
        if not run.first_ts:
            run.first_ts = now
        run.last_ts = run.last_activity = now
        before = self.count
        self.count = before + good + bad
        room = max(0, run.messages - before)
        if self.count > run.messages:
            run.extra += self.count - max(before, run.messages)
        run.delivered += min(good, room)
        run.bad += bad
        self.bad += bad
        if not self.done and self.count >= run.messages:
            self.done = True
            if self.count == run.messages and self.bad == 0:
                run.complete += 1
            else:
                run.corrupt += 1
            run.check_finished()


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def open_all(run: Run, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    ).encode()
    pending = asyncio.Semaphore(args.concurrency)

    async def one() -> None:
        conn = Conn(run, request)
        run.conns.append(conn)
        try:
            async with asyncio.timeout(args.connect_timeout):
                await loop.create_connection(lambda: conn, args.host, args.port)
                await conn.opened
        except (OSError, TimeoutError) as exc:
            if not conn.opened.done():
                run.fail(type(exc).__name__ + (f" {exc.errno}" if isinstance(exc, OSError) else ""))
                conn.opened.set_result(None)
            if conn.transport is not None:
                conn.transport.abort()
        finally:
            pending.release()

    tasks = []
    for _ in range(run.connections):
        await pending.acquire()
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)


async def read_command(reader: asyncio.StreamReader) -> str:
    line = await reader.readline()
    return line.decode().strip() or "close"  # end of stdin means close


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    run = Run(args.connections, args.messages, args.size)
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(args.timeout):
            await open_all(run, args)
    except TimeoutError:
        pass
    emit(
        {
            "event": "ready",
            "welcomed": run.welcomed,
            "failed": run.failed,
            "failures": run.failures,
            "ramp_s": round(time.monotonic() - t0, 3),
        }
    )
    command = await read_command(reader)
    if command == "go":
        run.counting = True
        run.last_activity = t_go = time.monotonic()
        run.check_finished()  # e.g. --messages 0
        if args.messages == 0 and not run.finished.done():
            run.finished.set_result("complete")
        why = "timeout"
        while not run.finished.done():
            now = time.monotonic()
            if now - run.last_activity > args.idle_timeout:
                why = "idle timeout"
                break
            if now - t_go > args.timeout:
                break
            await asyncio.wait([run.finished], timeout=0.05)
        if run.finished.done():
            why = run.finished.result()
        cpu = os.times()
        emit(
            {
                "event": "done",
                "why": why,
                "connections": run.connections,
                "welcomed": run.welcomed,
                "failed": run.failed,
                "failures": run.failures,
                "delivered": run.delivered,
                "complete": run.complete,
                "bad": run.bad,
                "extra": run.extra,
                "closed_early": run.closed_early,
                "corrupt": run.corrupt,
                "first_ts": run.first_ts,
                "last_ts": run.last_ts,
                "cpu_s": cpu.user + cpu.system,
            }
        )
        command = await read_command(reader)
    for conn in run.conns:
        if conn.transport is not None:
            conn.transport.close()
    emit({"event": "closed", "t": time.monotonic()})
    await asyncio.sleep(0.05)  # let the transports finish closing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/sse")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--messages", type=int, default=0, help="events expected after the welcome")
    ap.add_argument("--size", type=int, default=64, help="bytes of data of each event")
    ap.add_argument("--concurrency", type=int, default=200, help="connection attempts in flight")
    ap.add_argument("--connect-timeout", type=float, default=30.0)
    ap.add_argument("--idle-timeout", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    if not args.host.startswith("127."):
        ap.error("loopback only: --host must be 127.x.y.z")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
