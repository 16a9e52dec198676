"""Chaos soak: does reliable delivery hold while Redis crashes and instances restart?

Setup (loopback and unix sockets only; every process started here is stopped
by its PID, also on Ctrl-C, SIGTERM or an error):

- ``redis-server`` on a unix socket, without persistence: a restart loses the
  history and its epoch, so a resume across it must give ``recovered`` False
  (counted, that is correct);
- ``--instances`` (3) processes of ``servers/chaos_node.py``:
  ``RedisSync(..., ordered=True)`` with ``history`` on; ``GET /sse?topic=T``
  follows one topic and may resume with ``Last-Event-ID``; after the replay
  (``await peer.wait_recovered()``) the instance sends ``event: hello`` with
  the outcome; ``GET /publish`` awaits ``sse.publish`` and answers the id, or
  503 on ``BackplaneError``;
- ``--clients`` (2,000) clients in ``--load-procs`` (2) processes of this
  script (asyncio, raw sockets): client i follows topic ``t{i % topics}``,
  cuts its connection after a random time (``--cut-min``..``--cut-max`` s;
  abort or close, half each), waits ``--reconnect-min``..``--reconnect-max`` s
  and reconnects to a random instance with the last id it saw (EventSource's
  rule: the last ``id:`` field), as the header or, for one client in ten, the
  ``lastEventId`` query parameter. A stream the server ends, or a refused
  connection, is retried the same way;
- publishers in this process: ``--rate`` (1,000) events/s over ``--topics``
  (50) topics, each publish to a random live instance. The events of one
  topic are published one after the other (the next is sent once the
  previous one was answered), so their order is their counter's order and
  the backplane's; the payload is ``<topic> <counter> <publish time>``;
- faults: Redis SIGKILLed every ``--redis-every`` (30) s, first at 15 s,
  restarted after ``--redis-down`` (2) s; one instance SIGTERMed every
  ``--restart-every`` (60) s, first at 30 s, round robin, started again after
  ``--restart-pause`` (1) s;
- ``--seconds`` (600) of publishing, then the clients stop cutting, ``--drain``
  (5) s later they close, and the accounting below is done.

``--smoke``: 60 s, 400 clients, 200 events/s, cuts every 2-12 s; every kind of
fault still happens (Redis killed at 15 s and 45 s, an instance restarted at
30 s). It takes about 70 s on a 2-CPU machine.

Accounting. An event is *accepted* when its awaited publish gave an id,
*refused* when it raised ``BackplaneError`` (503; the instance delivered it
to its own subscribers only, without an id), *unknown* when the request
failed after it was sent (an instance going down). Only accepted events can
be owed to anyone. A client's connection is a *session*; the client reads its
outcome from the ``hello`` event: ``None`` (a fresh connect, no
Last-Event-ID), ``True`` or ``False`` (a resume). A session cut before its
hello claims nothing. A session on instance I owes the client:

1. live: every accepted event on its topic whose publish was sent after the
   client had the hello (the hello leaves after the peer joined its topic);
2. replay, when it is a resume with ``recovered`` True from id L: every
   accepted event of L's epoch with a higher seq (``recovered`` True claims
   that every one the client missed was replayed);

but only those accepted at least ``--grace`` (2) s before the session ended
(an event still in flight when a client cuts is owed to its next session,
which resumes from before it), or below the highest counter the session
received (a gap behind a later event is never "in flight": the topic's
events are delivered in order). Excused, because pub/sub is at most once by
design: events of case 1, and of case 2 answered after the client connected,
whose publish (request sent .. answer) overlaps a window when instance I was
not subscribed to Redis: from 50 ms before a Redis kill until I logged
"reconnected to ..." (``chaos_node.py`` prints those moments), or from 1 s
before an outage I reported with no kill behind it. An event replayed from
the history is never excused. Such an excuse holds only if the client was
told: once back, an instance that may have missed publishes ends its streams
(code 1012) and its clients resume; so the event counts as *missed, told*
when the client's next resume after it gave ``recovered`` False, but as
**lost** (a *silent gap*) when the same stream went on to a later id of the
event's epoch, or the next resume came from past the event and said
``recovered`` True.

An owed event that the client never received, in that session or any other,
is **lost**. *Lost while recovered True* counts those owed by a fresh session
or a ``True`` resume (what the README promises); lost events owed only by a
``False`` resume's live stream are counted apart (a live gap is no better).
A **duplicate** is a (topic, counter) a client received twice, whatever its
sessions. *Out of order*: within a session, a counter below one already
received (refused events, delivered locally at once, may legitimately
overtake accepted ones in flight when Redis dies); an id not above the
previous one of its epoch in the session would break ``ordered=True``
(counted apart). Resumes with ``recovered`` False are classified: Redis down
at the connect, the instance not subscribed, the id's epoch gone (Redis
restarted), events after the id evicted (more than ``--history`` since), the
replay failed (the instances' ``error`` hook reports each, with its cause),
or other. For resumes, the time from the connect to the outcome (the hello,
i.e. the replay's end) is reported, and the sessions that had none after 10 s
(a replay still running: events flow, ``wait_recovered()`` waits).

The exit status is 1 when any event was lost (either count), a duplicate was
received, or the run broke down (a process failed, the clients never got
ready); 0 otherwise.

Latency: publish (the instance's clock just before ``sse.publish``) ->
receive, all processes reading CLOCK_MONOTONIC, of live deliveries only
(events published after the connection that got them began: a replayed
event's delay is the client's absence). Per phase, by publish time: *redis
down* (from 50 ms before the kill until every instance said it reconnected),
*instance restart* (from the SIGTERM until 5 s after the new process
listens), *normal* (the rest); and p99 per 30-s window of the run.

Instances: RSS (VmRSS) and open file descriptors of every process at start
(when it first answered, no streams yet) and at end (before its SIGTERM, with
streams; or after the run, once every client left).

Examples:
  python benchmarks/chaos.py --smoke
  python benchmarks/chaos.py                       # the full 10-minute soak
  python benchmarks/chaos.py --seconds 120 --clients 500 --json chaos.json
"""

from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from _harness import (
    HOST,
    SERVERS_DIR,
    cpu_seconds,
    cpus,
    exit_on_sigterm,
    free_port,
    machine_busy_seconds,
    pinned,
    pinning,
    raise_nofile,
    split,
    status_kib,
    stop_pid,
    table,
)

NODE = SERVERS_DIR / "chaos_node.py"
NS = 1_000_000_000
BUCKET_NS = NS // 10  # latency histograms are kept per 100 ms of publish time
BINS = 16  # histogram bins per doubling of the latency (about 4.4 % wide)
MAXBIN = 511
ACCEPTED, REFUSED, UNKNOWN = 1, 2, 3
KILL_SLACK_NS = 50_000_000  # a subscription window opens this long before a Redis kill


def now_ns() -> int:
    return time.monotonic_ns()


def parse_id(value: str | None) -> tuple[str, int] | None:
    """``<epoch>-<hex seq>`` -> (epoch, seq), or None."""
    if not value:
        return None
    epoch, _, seq = value.rpartition("-")
    try:
        return epoch, int(seq, 16)
    except ValueError:
        return None


# -- the load clients (a child process: --load-client) ------------------------------------


class Session:
    """One connection of a client."""

    __slots__ = (
        "end",
        "hello",
        "inst",
        "last_epoch",
        "last_id",
        "last_seq",
        "maxk",
        "n",
        "rec",
        "replayed",
        "resume",
        "t0",
        "why",
    )

    def __init__(self, inst: int, t0: int, resume: str | None) -> None:
        self.inst = inst
        self.t0 = t0  # connect started (ns)
        self.resume = resume  # the Last-Event-ID sent
        self.hello = 0  # when the hello event arrived (ns), 0: never
        self.rec = ""  # "None", "True", "False" from the hello; "": no hello
        self.end = 0
        self.why = ""  # cut, abort, eof (the server ended it), lost, finish
        self.n = 0  # events received
        self.replayed = 0  # of which published before the connection began
        self.maxk = -1  # highest counter received
        self.last_epoch = ""
        self.last_seq = -1
        self.last_id: str | None = None

    def row(self) -> list[Any]:
        return [
            self.inst,
            self.t0,
            self.resume,
            self.hello,
            self.rec,
            self.end,
            self.why,
            self.n,
            self.replayed,
            self.maxk,
            self.last_id,
        ]


ROW = ["inst", "t0", "resume", "hello", "rec", "end", "why", "n", "replayed", "maxk", "last_id"]


class Client:
    __slots__ = (
        "cid",
        "dups",
        "first",
        "greeted",
        "id_ooo",
        "last_id",
        "ooo",
        "query",
        "seen",
        "sessions",
        "topic",
        "topic_b",
        "wrong",
    )

    def __init__(self, cid: int, topic: str) -> None:
        self.cid = cid
        self.topic = topic
        self.topic_b = topic.encode()
        self.query = cid % 10 == 9  # resumes with ?lastEventId= instead of the header
        self.last_id: str | None = None  # EventSource's last event id
        self.seen = bytearray()  # bit k: counter k received
        self.first = array.array("H")  # counter -> 1 + index of the session that got it first
        self.sessions: list[Session] = []
        self.greeted = False  # some session got its hello
        self.dups = 0
        self.ooo = 0
        self.id_ooo = 0
        self.wrong = 0


class LoadRun:
    """What one load process shares between its clients."""

    def __init__(self, args: argparse.Namespace) -> None:
        loop = asyncio.get_running_loop()
        self.args = args
        self.ports: list[int] = [int(p) for p in args.ports.split(",")]
        self.hist: dict[int, int] = {}
        self.events = 0
        self.no_id = 0
        self.drop = args.inject_drop
        self.dup = args.inject_dup
        self.open = 0
        self.dups = 0
        self.ooo = 0
        self.id_ooo = 0
        self.outcomes: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.examples: dict[str, list[Any]] = {"dup": [], "ooo": [], "id_ooo": [], "wrong": []}
        self.greeted = 0  # clients that had a hello
        self.quiet = False
        self.finishing = False
        self.quiet_fut: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.clients: list[Client] = []

    def note(self, kind: str, example: list[Any]) -> None:
        if len(self.examples[kind]) < 50:
            self.examples[kind].append(example)

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


class Stream(asyncio.Protocol):
    """One SSE stream: HTTP head, chunked body, event-stream blocks (LF line ends,
    as the package writes them)."""

    def __init__(self, run: LoadRun, client: Client, session: Session, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.run = run
        self.client = client
        self.session = session
        self.sidx = len(client.sessions)
        self.request = request
        self.head: bytearray | None = bytearray()
        self.raw = b""
        self.need = 0
        self.crlf = 0
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[str] = loop.create_future()  # "" or why it failed
        self.done: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        assert self.transport is not None
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.opened.done():
            self.opened.set_result("closed before the response head")
        self.finish("lost" if exc is not None else "closed")

    def finish(self, why: str) -> None:
        if not self.done.done():
            self.session.end = now_ns()
            self.session.why = why
            self.done.set_result(None)

    def cut(self, why: str, abort: bool) -> None:
        self.finish(why)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).lower()
            data = bytes(self.head[end + 4 :])
            self.head = None
            status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
            if status != b"200" or b"text/event-stream" not in head:
                self.opened.set_result(f"status {status.decode(errors='replace')}")
                self.cut("refused", abort=True)
                return
            if b"chunked" not in head:
                self.opened.set_result("not chunked")
                self.cut("refused", abort=True)
                return
            self.opened.set_result("")
            if not data:
                return
        body = self.dechunk(data)
        if body:
            self.feed(body)

    def dechunk(self, data: bytes) -> bytes:
        if self.raw:
            data = self.raw + data
            self.raw = b""
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self.need:
                stop = pos + self.need
                if stop > end:
                    out.append(data[pos:])
                    self.need = stop - end
                    break
                out.append(data[pos:stop])
                pos, self.need, self.crlf = stop, 0, 2
                continue
            if self.crlf:
                skip = min(self.crlf, end - pos)
                pos += skip
                self.crlf -= skip
                continue
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                self.raw = data[pos:]
                break
            try:
                size = int(data[pos:nl].split(b";", 1)[0], 16)
            except ValueError:
                self.run.fail("bad chunk")
                self.cut("lost", abort=True)
                break
            pos = nl + 2
            if size == 0:  # the last chunk: the server ended the stream
                if out:
                    self.feed(b"".join(out))
                    out = []
                self.cut("eof", abort=False)
                break
            self.need = size
        return b"".join(out)

    def feed(self, body: bytes) -> None:
        data = self.tail + body if self.tail else body
        blocks = data.split(b"\n\n")
        self.tail = blocks.pop()
        now = now_ns()
        for block in blocks:
            self.event(block, now)

    def event(self, block: bytes, now: int) -> None:
        ev_id: bytes | None = None
        name: bytes | None = None
        data: bytes | None = None
        for line in block.split(b"\n"):
            if not line or line[0] == 0x3A:  # ":" comment (keep-alive)
                continue
            fname, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if fname == b"data":
                data = value if data is None else data + b"\n" + value
            elif fname == b"id":
                ev_id = value
            elif fname == b"event":
                name = value
        client, session, run = self.client, self.session, self.run
        if ev_id is not None:
            client.last_id = ev_id.decode()
        if data is None:
            return
        if name == b"hello":
            if not session.hello:
                session.hello = now
                session.rec = data.split(b" ", 1)[0].decode()
                run.outcomes[session.rec if session.resume else "fresh"] = (
                    run.outcomes.get(session.rec if session.resume else "fresh", 0) + 1
                )
                if not client.greeted:
                    client.greeted = True
                    run.greeted += 1
                    if run.greeted == len(run.clients) and not run.ready.done():
                        run.ready.set_result(None)
            return
        parts = data.split(b" ")
        if len(parts) != 3 or parts[0] != client.topic_b:
            client.wrong += 1
            run.note("wrong", [client.cid, self.sidx, data[:80].decode(errors="replace")])
            return
        k = int(parts[1])
        stamp = int(parts[2])
        run.events += 1
        if run.drop and run.events % run.drop == 0:
            return  # --inject-drop: as if it never came (checks the accounting)
        if run.dup and run.events % run.dup == 0:
            self.event(block, now)  # --inject-dup: as if it came twice
        session.n += 1
        if stamp < session.t0:  # published before this connection began: replayed
            session.replayed += 1
        else:  # live: publish -> receive latency
            lat = now - stamp
            b = 0 if lat < 2000 else min(MAXBIN, int(math.log2(lat / 1000) * BINS))
            key = (stamp // BUCKET_NS) * 512 + b
            hist = run.hist
            hist[key] = hist.get(key, 0) + 1
        byte, bit = k >> 3, 1 << (k & 7)
        seen, first = client.seen, client.first
        if byte >= len(seen):
            seen.extend(bytes(byte - len(seen) + 256))
            first.frombytes(bytes(2 * (len(seen) * 8 - len(first))))
        if seen[byte] & bit:
            client.dups += 1
            run.dups += 1
            run.note(
                "dup",
                [client.cid, client.topic, k, ev_id and ev_id.decode(), first[k] - 1, self.sidx],
            )
        else:
            seen[byte] |= bit
            first[k] = self.sidx + 1
        if k < session.maxk:
            client.ooo += 1
            run.ooo += 1
            run.note(
                "ooo",
                [client.cid, client.topic, k, session.maxk, self.sidx, ev_id and ev_id.decode()],
            )
        else:
            session.maxk = k
        if ev_id is None:
            run.no_id += 1
            return
        parsed = parse_id(ev_id.decode())
        if parsed is None:
            run.note("wrong", [client.cid, self.sidx, f"bad id {ev_id!r}"])
            return
        epoch, seq = parsed
        if epoch == session.last_epoch and seq <= session.last_seq:
            client.id_ooo += 1
            run.id_ooo += 1
            run.note(
                "id_ooo", [client.cid, client.topic, k, ev_id.decode(), session.last_id, self.sidx]
            )
        session.last_epoch, session.last_seq = epoch, seq
        session.last_id = ev_id.decode()


async def client_life(run: LoadRun, client: Client, rng: random.Random) -> None:
    loop = asyncio.get_running_loop()
    args = run.args
    ports = run.ports
    while not run.finishing:
        inst = rng.randrange(len(ports))
        resume = client.last_id
        path = f"/sse?topic={client.topic}"
        extra = ""
        if resume is not None:
            if client.query:
                path += "&lastEventId=" + quote(resume, safe="")
            else:
                extra = f"Last-Event-ID: {resume}\r\n"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{ports[inst]}\r\n"
            f"Accept: text/event-stream\r\nCache-Control: no-cache\r\n{extra}\r\n"
        ).encode()
        session = Session(inst, now_ns(), resume)
        stream = Stream(run, client, session, request)
        client.sessions.append(session)
        failed = ""
        try:
            async with asyncio.timeout(10):
                await loop.create_connection(lambda s=stream: s, HOST, ports[inst])  # type: ignore[misc]
                failed = await stream.opened
        except (OSError, TimeoutError) as exc:
            failed = type(exc).__name__
        if failed:
            stream.cut("refused", abort=True)
            client.sessions.pop()
            run.fail(failed)
            await asyncio.wait([run.finished], timeout=rng.uniform(0.1, 0.5))
            continue
        run.open += 1
        deadline = loop.time() + rng.uniform(args.cut_min, args.cut_max)
        while not stream.done.done() and not run.finishing:
            waits: list[asyncio.Future[None]] = [stream.done, run.finished]
            timeout: float | None = None
            if not run.quiet:
                waits.append(run.quiet_fut)
                timeout = max(0.0, deadline - loop.time())
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not run.quiet and not run.finishing and loop.time() >= deadline:
                abort = rng.random() < 0.5
                stream.cut("abort" if abort else "cut", abort)
        if not stream.done.done():
            stream.cut("finish", abort=False)
        run.open -= 1
        if run.finishing:
            break
        await asyncio.wait(
            [run.finished], timeout=rng.uniform(args.reconnect_min, args.reconnect_max)
        )


def write_json(path: str | Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def load_main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    run = LoadRun(args)
    rng = random.Random(args.seed)
    run.clients = [
        Client(cid, f"t{cid % args.topics}")
        for cid in range(args.first_client, args.first_client + args.clients)
    ]
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lives = [
        loop.create_task(client_life(run, c, random.Random(rng.random()))) for c in run.clients
    ]

    async def progress() -> None:
        while True:
            await asyncio.sleep(5)
            emit(
                {
                    "event": "progress",
                    "open": run.open,
                    "events": run.events,
                    "dups": run.dups,
                    "outcomes": run.outcomes,
                    "greeted": run.greeted,
                }
            )

    ticker = loop.create_task(progress())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.ready_timeout):
            await run.ready
    emit(
        {
            "event": "ready",
            "greeted": run.greeted,
            "clients": len(run.clients),
            "failures": run.failures,
        }
    )
    while True:
        command = (await reader.readline()).decode().strip() or "finish"
        if command == "quiet" and not run.quiet:
            run.quiet = True
            run.quiet_fut.set_result(None)
        elif command == "finish":
            break
    run.finishing = True
    run.finished.set_result(None)
    await asyncio.wait(lives, timeout=20)
    ticker.cancel()
    report = {
        "clients": [
            {
                "cid": c.cid,
                "topic": c.topic,
                "seen": c.seen.hex(),
                "sessions": [s.row() for s in c.sessions],
                "dups": c.dups,
                "ooo": c.ooo,
                "id_ooo": c.id_ooo,
                "wrong": c.wrong,
            }
            for c in run.clients
        ],
        "hist": run.hist,
        "events": run.events,
        "no_id": run.no_id,
        "failures": run.failures,
        "examples": run.examples,
        "cpu_s": sum(os.times()[:2]),
    }
    write_json(args.out, report)
    emit({"event": "done"})


# -- the cluster (child processes) ------------------------------------------------------


def proc_reading(pid: int) -> dict[str, float]:
    """RSS (MiB), open file descriptors and CPU seconds of a live process."""
    try:
        return {
            "rss_mib": round(status_kib(pid) / 1024, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_s": round(cpu_seconds(pid), 2),
        }
    except OSError:
        return {}


async def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()
            return int(head.split(b" ", 2)[1]), body.decode(errors="replace")
        finally:
            writer.close()


class RedisProc:
    """``redis-server`` on a unix socket that survives its restarts, no persistence."""

    def __init__(self, cpu: int | None, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.cpu = cpu
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.sock = str(self.dir / "redis.sock")
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - closed in stop()
        self.starts = 0
        self.cpu_s = 0.0  # of the processes gone

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [self.binary, "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700",
               "--save", "", "--appendonly", "no", "--dir", str(self.dir)]  # fmt: skip
        self.proc = subprocess.Popen(
            pinned(self.cpu, cmd), stdout=self.log, stderr=subprocess.STDOUT
        )
        self.starts += 1
        return self.proc

    async def start(self, timeout: float = 15.0) -> None:
        proc = self._spawn()
        deadline = time.monotonic() + timeout
        while True:
            try:
                async with asyncio.timeout(1):
                    reader, writer = await asyncio.open_unix_connection(self.sock)
                    try:
                        writer.write(b"PING\r\n")
                        if (await reader.readline()).startswith(b"+PONG"):
                            return
                    finally:
                        writer.close()
            except (OSError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {tail(self.dir / 'redis.log')}")
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL by PID: a crash, as clients see it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.cpu_s += cpu_seconds(self.proc.pid)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    self.cpu_s += cpu_seconds(self.proc.pid)
            stop_pid(self.proc)
        self.log.close()


@dataclass
class Incarnation:
    """One process of an instance."""

    pid: int
    log: Path
    t_spawn: int
    t_up: int = 0
    t_term: int = 0
    t_exit: int = 0
    exit_code: int | None = None
    forced: bool = False  # needed SIGKILL after SIGTERM
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    peers_end: int | None = None


class Instance:
    """One slot of the cluster (a port); restarted as new processes."""

    def __init__(
        self, index: int, redis_url: str, args: argparse.Namespace, cpu: int | None, workdir: Path
    ) -> None:
        self.index = index
        self.name = "ABCDEFGHIJ"[index] if index < 10 else str(index)
        self.port = free_port()
        self.cpu = cpu
        self.workdir = workdir
        self.env = dict(
            os.environ,
            PORT=str(self.port),
            REDIS_URL=redis_url,
            CHANNEL="chaos",
            HISTORY=str(args.history),
            NAME=self.name,
            PYTHONUNBUFFERED="1",
            UVLOOP=os.environ.get("UVLOOP", "1"),
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile: IO[bytes] | None = None
        self.incarnations: list[Incarnation] = []
        self.failed_starts = 0

    @property
    def current(self) -> Incarnation | None:
        return self.incarnations[-1] if self.proc is not None and self.incarnations else None

    async def start(self, timeout: float = 60.0) -> None:
        """A new process; again after 1 s while it exits at once (Redis down)."""
        deadline = time.monotonic() + timeout
        while True:
            proc, inc = self._spawn()
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    status, _ = await http_get(self.port, "/peers", 1.0)
                    if status == 200:
                        inc.t_up = now_ns()
                        inc.start = proc_reading(inc.pid)
                        return
                except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
                    pass
                await asyncio.sleep(0.05)
            self._gone(inc)
            self.failed_starts += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance {self.name} did not start: {tail(inc.log)}")
            await asyncio.sleep(1.0)

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Incarnation]:
        path = self.workdir / f"node-{self.name}-{len(self.incarnations) + 1}.log"
        self.logfile = open(path, "wb")  # noqa: SIM115 - closed when the process is gone
        self.proc = proc = subprocess.Popen(
            pinned(self.cpu, [sys.executable, str(NODE)]),
            env=self.env,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
        )
        inc = Incarnation(proc.pid, path, now_ns())
        self.incarnations.append(inc)
        return proc, inc

    def _gone(self, inc: Incarnation) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            inc.exit_code = self.proc.returncode
        inc.t_exit = inc.t_exit or now_ns()
        self.proc = None
        if self.logfile is not None:
            self.logfile.close()
            self.logfile = None

    async def peers(self) -> int | None:
        try:
            status, body = await http_get(self.port, "/peers", 2.0)
            return int(body) if status == 200 else None
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
            return None

    async def terminate(self, grace: float = 15.0) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL after ``grace`` seconds."""
        inc = self.current
        if inc is None or self.proc is None:
            return
        inc.peers_end = await self.peers()
        inc.end = proc_reading(inc.pid)
        inc.t_term = now_ns()
        self.proc.send_signal(signal.SIGTERM)
        proc = self.proc
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, grace)
        inc.t_exit = now_ns()
        if proc.poll() is None:
            inc.forced = True
        self._gone(inc)

    def stop(self) -> None:
        inc = self.current
        if inc is not None:
            self._gone(inc)


def tail(path: Path, size: int = 1500) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-size:].decode(errors="replace").strip()


class LoadProc:
    """One load-client process: JSON lines out (read by a thread), commands in."""

    def __init__(
        self, index: int, cmd: list[str], workdir: Path, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.index = index
        self.errlog = open(workdir / f"load-{index}.err", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            text=True,
            bufsize=1,
        )
        self.loop = loop
        self.progress: dict[str, Any] = {}
        self.got: dict[str, dict[str, Any]] = {}  # messages nobody waited for yet
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                self.loop.call_soon_threadsafe(self._got, msg)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._got, {"event": "eof"})

    def _got(self, msg: dict[str, Any]) -> None:
        kind = msg.get("event", "")
        if kind == "progress":
            self.progress = msg
            return
        waiter = self.waiters.pop(kind, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)
        else:
            self.got[kind] = msg
        if kind == "eof":  # the process is gone: nothing else will come
            for other in self.waiters.values():
                if not other.done():
                    other.set_result(msg)
            self.waiters.clear()

    async def expect(self, event: str, timeout: float) -> dict[str, Any] | None:
        """The message ``event`` (already received, or within ``timeout`` s);
        None on timeout or when the process ended first."""
        if event in self.got:
            return self.got.pop(event)
        if "eof" in self.got:
            return None
        waiter = self.waiters[event] = self.loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                msg = await waiter
        except TimeoutError:
            return None
        return msg if msg.get("event") == event else None

    def send(self, command: str) -> None:
        if self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def stop(self) -> None:
        stop_pid(self.proc, grace=5.0)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.errlog.close()


# -- publishing ---------------------------------------------------------------------------


class Published:
    """Every publish of one topic, by counter (the index)."""

    __slots__ = ("ack", "epoch", "inst", "outcome", "send", "seq")

    def __init__(self) -> None:
        self.send = array.array("q")  # request sent (ns)
        self.ack = array.array("q")  # answer read (ns)
        self.outcome = array.array("b")
        self.epoch = array.array("h")  # index in Publisher.epochs, -1: none
        self.seq = array.array("q")
        self.inst = array.array("b")


class PubConn:
    """A keep-alive HTTP/1.1 connection to one instance."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def get(self, path: str) -> tuple[int, str]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return status, body.decode(errors="replace")

    def close(self) -> None:
        self.writer.close()


class Publisher:
    """One task per topic, each publishing its events one after the other at
    ``rate / topics`` per second (absolute schedule; a stall skips the slots
    it missed), each to a random instance that is not being restarted."""

    def __init__(self, instances: list[Instance], topics: int, rate: float) -> None:
        self.instances = instances
        self.topics = topics
        self.rate = rate
        self.live = [True] * len(instances)
        self.records = [Published() for _ in range(topics)]
        self.epochs: list[str] = []
        self._epoch_index: dict[str, int] = {}
        self.conns: dict[tuple[int, int], PubConn] = {}
        self.skipped = 0
        self.skips: list[tuple[int, int]] = []  # (when, slots)
        self.not_sent = 0  # no instance could be reached: nothing published
        self.counts = {ACCEPTED: 0, REFUSED: 0, UNKNOWN: 0}
        self.unknown_why: dict[str, int] = {}

    def epoch_index(self, epoch: str) -> int:
        index = self._epoch_index.get(epoch)
        if index is None:
            index = self._epoch_index[epoch] = len(self.epochs)
            self.epochs.append(epoch)
        return index

    async def run(self, t0: float, t_stop: float) -> None:
        await asyncio.gather(*(self.topic_loop(t, t0, t_stop) for t in range(self.topics)))
        for conn in self.conns.values():
            conn.close()

    async def topic_loop(self, topic: int, t0: float, t_stop: float) -> None:
        loop = asyncio.get_running_loop()
        period = self.topics / self.rate
        due = t0 + period * topic / self.topics  # staggered
        k = 0
        rng = random.Random(topic)
        while True:
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
                now = loop.time()
            if now >= t_stop:
                return
            if now - due > 1.0:  # stalled: skip what is overdue
                missed = int((now - due) / period)
                self.skipped += missed
                self.skips.append((now_ns(), missed))
                due += missed * period
            if await self.publish(topic, k, rng):
                k += 1
            due += period

    async def publish(self, topic: int, k: int, rng: random.Random) -> bool:
        """Publish counter ``k`` of ``topic``; False if no instance could be reached."""
        order = [i for i in range(len(self.instances)) if self.live[i]]
        rng.shuffle(order)
        path = f"/publish?topic=t{topic}&n={k}"
        for inst in order:
            key = (topic, inst)
            conn = self.conns.get(key)
            if conn is None or not conn.usable():
                if conn is not None:
                    conn.close()
                try:
                    async with asyncio.timeout(2):
                        reader, writer = await asyncio.open_connection(
                            HOST, self.instances[inst].port
                        )
                except (OSError, TimeoutError):
                    self.conns.pop(key, None)
                    continue  # not sent: try another instance with the same counter
                conn = self.conns[key] = PubConn(reader, writer)
            sent = now_ns()
            try:
                async with asyncio.timeout(15):
                    status, body = await conn.get(path)
            except (
                OSError,
                TimeoutError,
                ValueError,
                IndexError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:
                conn.close()
                self.conns.pop(key, None)
                self.record(topic, sent, UNKNOWN, None, inst, type(exc).__name__)
                return True
            if status == 200 and parse_id(body) is not None:
                self.record(topic, sent, ACCEPTED, body, inst, "")
            elif status == 503:
                self.record(topic, sent, REFUSED, None, inst, "")
            else:
                self.record(topic, sent, UNKNOWN, None, inst, f"status {status}")
            return True
        self.not_sent += 1
        return False

    def record(
        self, topic: int, sent: int, outcome: int, event_id: str | None, inst: int, why: str
    ) -> None:
        rec = self.records[topic]
        rec.send.append(sent)
        rec.ack.append(now_ns())
        rec.outcome.append(outcome)
        rec.inst.append(inst)
        parsed = parse_id(event_id)
        if parsed is None:
            rec.epoch.append(-1)
            rec.seq.append(-1)
        else:
            rec.epoch.append(self.epoch_index(parsed[0]))
            rec.seq.append(parsed[1])
        self.counts[outcome] += 1
        if why:
            self.unknown_why[why] = self.unknown_why.get(why, 0) + 1


# -- the run ------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str  # "redis" or "restart"
    t: int  # kill or SIGTERM (ns)
    instance: int = -1
    t_back: int = 0  # Redis answers again / the new process listens
    t_exit: int = 0


@dataclass
class Collected:
    t0: int = 0  # publishing started (ns)
    t_stop: int = 0
    t_end: int = 0  # clients finished
    faults: list[Fault] = field(default_factory=list)
    loads: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ready: list[dict[str, Any] | None] = field(default_factory=list)
    final_peers: list[int | None] = field(default_factory=list)
    own_cpu: float = 0.0  # this process (the publishers), seconds
    redis_cpu: float = 0.0
    machine_busy: float = 0.0  # CPU seconds of every process on the machine over the run


async def orchestrate(
    args: argparse.Namespace,
    workdir: Path,
    redis: RedisProc,
    instances: list[Instance],
    loads: list[LoadProc],
    publisher: Publisher,
    out: Collected,
) -> None:
    loop = asyncio.get_running_loop()
    _server_cpu, client_cpus = pinning(args.pin)
    out.machine_busy = -machine_busy_seconds()
    await redis.start()
    for inst in instances:
        await inst.start()
    ports = ",".join(str(i.port) for i in instances)
    for i, count in enumerate(split(args.clients, args.load_procs)):
        first = sum(split(args.clients, args.load_procs)[:i])
        options = {
            "ports": ports,
            "first-client": first,
            "clients": count,
            "topics": args.topics,
            "seed": args.seed * 1000 + i,
            "cut-min": args.cut_min,
            "cut-max": args.cut_max,
            "reconnect-min": args.reconnect_min,
            "reconnect-max": args.reconnect_max,
            "ready-timeout": args.ready_timeout,
            "out": workdir / f"load-{i}.json",
            "inject-drop": args.inject_drop,
            "inject-dup": args.inject_dup,
        }
        cmd = [sys.executable, __file__, "--load-client"]
        for name, value in options.items():
            cmd += [f"--{name}", str(value)]
        loads.append(LoadProc(i, pinned(client_cpus[i % len(client_cpus)], cmd), workdir, loop))
    out.ready = list(
        await asyncio.gather(*(lp.expect("ready", args.ready_timeout + 10) for lp in loads))
    )
    greeted = sum(r["greeted"] for r in out.ready if r)
    log(f"ready: {greeted:,} of {args.clients:,} clients have their first hello")
    if greeted < args.clients:
        out.problems.append(f"only {greeted} of {args.clients} clients got ready")
        return

    t0 = loop.time()
    out.t0 = now_ns()
    t_stop = t0 + args.seconds
    out.t_stop = out.t0 + int(args.seconds * NS)

    async def redis_faults() -> None:
        due = t0 + args.redis_first
        while due < t_stop - 5:
            await asyncio.sleep(max(0.0, due - loop.time()))
            fault = Fault("redis", now_ns())
            out.faults.append(fault)
            redis.kill()
            log(f"{elapsed(out.t0)} Redis SIGKILLed")
            await asyncio.sleep(args.redis_down)
            await redis.start()
            fault.t_back = now_ns()
            log(f"{elapsed(out.t0)} Redis restarted (empty)")
            due += args.redis_every

    async def restarts() -> None:
        due = t0 + args.restart_first
        j = 0
        while due < t_stop - 5:
            await asyncio.sleep(max(0.0, due - loop.time()))
            inst = instances[j % len(instances)]
            publisher.live[inst.index] = False  # as a load balancer would
            await asyncio.sleep(0.2)  # publishes in flight to it finish
            fault = Fault("restart", now_ns(), inst.index)
            out.faults.append(fault)
            log(f"{elapsed(out.t0)} instance {inst.name} SIGTERMed")
            await inst.terminate()
            fault.t_exit = now_ns()
            await asyncio.sleep(args.restart_pause)
            await inst.start()
            fault.t_back = now_ns()
            publisher.live[inst.index] = True
            log(
                f"{elapsed(out.t0)} instance {inst.name} back "
                f"({(fault.t_back - fault.t) / NS:.1f} s after SIGTERM)"
            )
            j += 1
            due += args.restart_every

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            c = publisher.counts
            open_ = sum(lp.progress.get("open", 0) for lp in loads)
            events = sum(lp.progress.get("events", 0) for lp in loads)
            dups = sum(lp.progress.get("dups", 0) for lp in loads)
            log(
                f"{elapsed(out.t0)} published {c[ACCEPTED]:,} accepted, {c[REFUSED]:,} refused, "
                f"{c[UNKNOWN]:,} unknown; {open_:,} streams open, {events:,} events received, "
                f"{dups} duplicates"
            )

    ticker = loop.create_task(progress())
    faults = [loop.create_task(redis_faults()), loop.create_task(restarts())]
    try:
        await publisher.run(t0, t_stop)
        await asyncio.gather(*faults)
    finally:
        for task in faults:
            task.cancel()
        ticker.cancel()
    for inst in instances:  # every instance serves (a start may have failed meanwhile)
        if inst.proc is None:
            out.problems.append(f"instance {inst.name} was not running at the end")
    log(
        f"{elapsed(out.t0)} publishing stopped; the clients stop cutting, {args.drain:g} s to drain"
    )
    for lp in loads:
        lp.send("quiet")
    await asyncio.sleep(args.drain)
    for lp in loads:
        lp.send("finish")
    dones = await asyncio.gather(*(lp.expect("done", 60) for lp in loads))
    out.t_end = now_ns()
    for i, done in enumerate(dones):
        if done is None:
            errs = tail(Path(loads[i].errlog.name))
            out.problems.append(f"load process {i} did not report: {errs}")
            continue
        out.loads.append(read_json(workdir / f"load-{i}.json"))
    # every client has left: the instances' figures at the end
    deadline = time.monotonic() + 10
    while True:
        out.final_peers = [await inst.peers() for inst in instances]
        if all(p == 0 for p in out.final_peers) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for inst in instances:
        inc = inst.current
        if inc is not None:
            inc.peers_end = out.final_peers[inst.index]
            inc.end = proc_reading(inc.pid)
    times = os.times()
    out.own_cpu = times.user + times.system
    out.machine_busy += machine_busy_seconds()


def elapsed(t0: int) -> str:
    return f"[{(now_ns() - t0) / NS:6.1f} s]"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- accounting ---------------------------------------------------------------------------


def rng_mask(lo: int, hi: int) -> int:
    """Bits lo..hi-1."""
    return ((1 << hi) - 1) ^ ((1 << lo) - 1) if hi > lo else 0


def node_notes(inc: Incarnation) -> list[tuple[int, str, str]]:
    """The ``@chaos`` lines of an instance's process: (t, kind, msg), ascending."""
    notes: list[tuple[int, str, str]] = []
    try:
        text = inc.log.read_text(errors="replace")
    except OSError:
        return notes
    for line in text.splitlines():
        if line.startswith("@chaos "):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                rec = json.loads(line[7:])
                notes.append((int(rec["t"]), str(rec["kind"]), str(rec.get("msg", ""))))
    return sorted(notes)


def replay_failures(instances: list[Instance]) -> list[list[tuple[int, str]]]:
    """Per instance, the replays that failed: (t, why), ascending."""
    out = []
    for inst in instances:
        failures = []
        for inc in inst.incarnations:
            for t, kind, msg in node_notes(inc):
                if kind == "replay-failed":
                    failures.append((t, failure_kind(msg)))
        out.append(sorted(failures))
    return out


def failure_kind(msg: str) -> str:
    """A replay failure's cause, without addresses."""
    low = msg.lower()
    for needle, kind in (("unreachable", "Redis unreachable"), ("fetch_timeout", "fetch_timeout"),
                         ("refused", "connection refused"), ("reset", "connection reset"),
                         ("closed", "connection closed"), ("lost", "connection lost")):  # fmt: skip
        if needle in low:
            return kind
    return re.sub(r"(unix://)?/\S+", "<path>", msg)[:60]


def sync_windows(
    instances: list[Instance], faults: list[Fault], t_end: int, notes: list[str]
) -> list[list[tuple[int, int]]]:
    """Per instance, when it was not subscribed to Redis (see the docstring)."""
    kills = sorted(f.t for f in faults if f.kind == "redis")
    backs = {f.t: f.t_back for f in faults if f.kind == "redis"}
    result: list[list[tuple[int, int]]] = []
    for inst in instances:
        windows: list[tuple[int, int]] = []
        for inc in inst.incarnations:
            if not inc.t_up:
                continue
            alive_until = inc.t_exit or t_end
            down: int | None = None
            for t, kind, _msg in node_notes(inc):
                if kind == "down" and down is None:
                    i = bisect.bisect_right(kills, t) - 1
                    if i >= 0 and t - kills[i] < 30 * NS:
                        down = kills[i] - KILL_SLACK_NS
                    else:
                        down = t - NS
                        notes.append(
                            f"instance {inst.name} (pid {inc.pid}) lost Redis at "
                            f"{t} with no kill behind it"
                        )
                elif kind == "up" and down is not None:
                    windows.append((down, t))
                    down = None
            if down is not None:
                windows.append((down, alive_until))
            # every kill while this process was up must show as an outage
            for k in kills:
                if inc.t_up <= k < alive_until and not any(a <= k <= b for a, b in windows):
                    notes.append(
                        f"instance {inst.name} (pid {inc.pid}) reported no outage for "
                        f"the Redis kill at {k}; assuming one of 10 s"
                    )
                    windows.append((k - KILL_SLACK_NS, max(backs.get(k, k), k) + 10 * NS))
        result.append(sorted(windows))
    return result


@dataclass
class Lost:
    cid: int
    topic: str
    k: int
    kind: str  # "true" (fresh or recovered True) or "false"


def account(
    args: argparse.Namespace,
    publisher: Publisher,
    col: Collected,
    windows: list[list[tuple[int, int]]],
    failures: list[list[tuple[int, str]]],
) -> dict[str, Any]:
    grace = int(args.grace * NS)
    n_inst = len(windows)
    topics = {f"t{t}": t for t in range(publisher.topics)}
    accepted: list[int] = []
    excused: list[list[int]] = []
    # per topic: epoch index -> (ks in that epoch, their seqs), both ascending
    by_epoch: list[dict[int, tuple[list[int], list[int]]]] = []
    for rec in publisher.records:
        mask = 0
        epochs: dict[int, tuple[list[int], list[int]]] = {}
        for k, oc in enumerate(rec.outcome):
            if oc == ACCEPTED:
                mask |= 1 << k
                ks, seqs = epochs.setdefault(rec.epoch[k], ([], []))
                ks.append(k)
                seqs.append(rec.seq[k])
        accepted.append(mask)
        by_epoch.append(epochs)
        per_inst = []
        for i in range(n_inst):
            ex = 0
            for a, b in windows[i]:
                # publish [send, ack] overlaps [a, b]: ack >= a and send <= b
                lo = bisect.bisect_left(rec.ack, a)
                hi = bisect.bisect_right(rec.send, b)
                ex |= rng_mask(lo, hi)
            per_inst.append(ex & mask)
        excused.append(per_inst)

    lost: list[Lost] = []
    sessions_total = 0
    outcomes = {"fresh": 0, "True": 0, "False": 0, "no hello": 0, "other": 0}
    false_why: dict[str, int] = {}
    odd_false: list[dict[str, Any]] = []
    hello_missing = 0
    replayed = 0
    no_hello: list[dict[str, Any]] = []
    waits: list[float] = []  # resumes: connect -> hello (the recovered outcome), s
    told_total = told_clients = 0
    told_examples: list[Lost] = []
    redis_down = [(f.t, f.t_back or col.t_end) for f in col.faults if f.kind == "redis"]
    epoch_since = epoch_timeline(publisher, col)
    for load in col.loads:
        for c in load["clients"]:
            t = topics[c["topic"]]
            rec = publisher.records[t]
            seen = int.from_bytes(bytes.fromhex(c["seen"]), "little")
            owed_true = owed_false = 0
            missed: list[tuple[int, dict[str, Any]]] = []  # (excused, not received; session)
            told_by: list[tuple[int, dict[str, Any]]] = []  # sessions with an outcome, by start
            for row in c["sessions"]:
                s = dict(zip(ROW, row, strict=True))
                sessions_total += 1
                inst = s["inst"]
                if s["rec"] == "":
                    outcomes["no hello"] += 1
                    if s["end"] - s["t0"] > 10 * NS:
                        hello_missing += 1
                        if len(no_hello) < 20:
                            no_hello.append(
                                {
                                    "client": c["cid"],
                                    "instance": "ABCDEFGHIJ"[inst],
                                    "connect_s": round((s["t0"] - col.t0) / NS, 3),
                                    "end_s": round((s["end"] - col.t0) / NS, 3),
                                    "why_ended": s["why"],
                                    "resume": s["resume"],
                                    "events": s["n"],
                                    "replayed": s["replayed"],
                                }
                            )
                    continue
                if s["resume"] is None:
                    outcomes["fresh" if s["rec"] == "None" else "other"] += 1
                elif s["rec"] in ("True", "False"):
                    outcomes[s["rec"]] += 1
                    replayed += s["replayed"]
                else:
                    outcomes["other"] += 1
                    continue
                told_by.append((s["t0"], s))
                if s["resume"] is not None:
                    waits.append((s["hello"] - s["t0"]) / NS)
                if s["rec"] == "False":
                    why = why_false(
                        s,
                        t,
                        publisher,
                        by_epoch[t],
                        redis_down,
                        windows[inst],
                        epoch_since,
                        args.history,
                        failures[inst],
                    )
                    false_why[why] = false_why.get(why, 0) + 1
                    if why.startswith("other") and len(odd_false) < 20:
                        odd_false.append(
                            {
                                "client": c["cid"],
                                "instance": "ABCDEFGHIJ"[inst],
                                "connect_s": (s["t0"] - col.t0) / NS,
                                "hello_s": (s["hello"] - col.t0) / NS,
                                "resume": s["resume"],
                            }
                        )
                limit = max(bisect.bisect_right(rec.ack, s["end"] - grace), s["maxk"])
                ex = excused[t][inst]
                live = rng_mask(bisect.bisect_right(rec.send, s["hello"]), limit) & accepted[t]
                if live & ex & ~seen:
                    missed.append((live & ex & ~seen, s))
                owed = live & ~ex
                if s["rec"] == "True":
                    position = parse_id(s["resume"])
                    epoch = publisher._epoch_index.get(position[0]) if position else None
                    if position is not None and epoch is not None and epoch in by_epoch[t]:
                        ks, seqs = by_epoch[t][epoch]
                        first = bisect.bisect_right(seqs, position[1])
                        if first < len(ks):
                            span = rng_mask(ks[first], min(ks[-1] + 1, limit)) & accepted[t]
                            before = rng_mask(0, bisect.bisect_left(rec.ack, s["t0"]))
                            owed |= (span & before) | (span & ~before & ~ex)
                if s["rec"] == "False":
                    owed_false |= owed
                else:
                    owed_true |= owed
            missing_true = owed_true & ~seen
            missing_false = owed_false & ~seen & ~owed_true
            silent, told = silent_or_told(missed, told_by, rec, publisher)
            silent &= ~missing_true & ~missing_false
            told &= ~silent & ~missing_true & ~missing_false
            if told:
                told_clients += 1
                told_total += told.bit_count()
                if len(told_examples) < 5:
                    low = told & -told
                    told_examples.append(Lost(c["cid"], c["topic"], low.bit_length() - 1, "told"))
            for mask, kind in (
                (missing_true, "true"),
                (silent, "silent"),
                (missing_false, "false"),
            ):
                while mask:
                    low = mask & -mask
                    lost.append(Lost(c["cid"], c["topic"], low.bit_length() - 1, kind))
                    mask ^= low

    examples = [lost_detail(x, publisher, col, windows) for x in lost[:20]]
    return {
        "sessions": sessions_total,
        "outcomes": outcomes,
        "false_why": false_why,
        "odd_false": odd_false,
        "hello_missing": hello_missing,
        "outcome_wait_s": [
            round(q, 3)
            for q in (percentile(waits, 0.5), percentile(waits, 0.99), max(waits or [0]))
        ],
        "no_hello": no_hello,
        "replayed": replayed,
        "lost_true": sum(1 for x in lost if x.kind in ("true", "silent")),
        "lost_silent": sum(1 for x in lost if x.kind == "silent"),
        "lost_false": sum(1 for x in lost if x.kind == "false"),
        "lost_examples": examples,
        "lost_all": [[x.cid, x.topic, x.k, x.kind] for x in lost[:1000]],
        "told": told_total,
        "told_clients": told_clients,
        "told_examples": [lost_detail(x, publisher, col, windows) for x in told_examples],
    }


def silent_or_told(
    missed: list[tuple[int, dict[str, Any]]],
    told_by: list[tuple[int, dict[str, Any]]],
    rec: Published,
    publisher: Publisher,
) -> tuple[int, int]:
    """The events a client's instance missed while not subscribed (``missed``:
    per session, a mask of them), split: *silent* (lost: the stream went on
    with a later id of the event's epoch, or the client's next resume after
    the event came from past it and said ``recovered`` True) and *told* (its
    next resume gave ``recovered`` False, or it had none)."""

    def position(value: str | None) -> tuple[int, int] | None:
        parsed = parse_id(value)
        epoch = publisher._epoch_index.get(parsed[0]) if parsed else None
        return (epoch, parsed[1]) if parsed is not None and epoch is not None else None

    starts = [t for t, _s in told_by]
    silent = told = 0
    for mask, s in missed:
        last = position(s["last_id"])
        rest = mask
        while rest:
            low = rest & -rest
            rest ^= low
            k = low.bit_length() - 1
            gap = (rec.epoch[k], rec.seq[k])
            past = last is not None and last[0] == gap[0] and last[1] > gap[1]
            if not past:
                i = bisect.bisect_right(starts, rec.ack[k])
                if i < len(told_by) and told_by[i][1]["rec"] == "True":
                    resumed = position(told_by[i][1]["resume"])
                    past = resumed is not None and resumed[0] == gap[0] and resumed[1] > gap[1]
            if past:
                silent |= low
            else:
                told |= low
    return silent, told


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def epoch_timeline(publisher: Publisher, col: Collected) -> list[tuple[int, int]]:
    """(first ack in the epoch, epoch index), ascending."""
    first: dict[int, int] = {}
    for rec in publisher.records:
        for k, oc in enumerate(rec.outcome):
            if oc == ACCEPTED:
                e = rec.epoch[k]
                if e not in first or rec.ack[k] < first[e]:
                    first[e] = rec.ack[k]
    return sorted((t, e) for e, t in first.items())


def why_false(
    s: dict[str, Any],
    t: int,
    publisher: Publisher,
    by_epoch: dict[int, tuple[list[int], list[int]]],
    redis_down: list[tuple[int, int]],
    windows: list[tuple[int, int]],
    epoch_since: list[tuple[int, int]],
    history: int,
    failures: list[tuple[int, str]],
) -> str:
    """Why a resume gave recovered False, as far as the harness can tell."""
    t0 = s["t0"]
    i = bisect.bisect_left(failures, (t0, ""))
    failed = failures[i][1] if i < len(failures) and failures[i][0] <= s["hello"] else None
    if any(a <= t0 <= b for a, b in redis_down):
        return "Redis down at the connect"
    if any(a <= t0 <= b for a, b in windows):
        return "instance not subscribed"
    position = parse_id(s["resume"])
    if position is None:
        return "unparsable id"
    epoch = publisher._epoch_index.get(position[0])
    i = bisect.bisect_right(epoch_since, (t0, 1 << 30)) - 1
    current = None
    if i >= 0:
        since = epoch_since[i][0]
        if not any(since < a < t0 for a, _ in redis_down):
            current = epoch_since[i][1]
    if epoch is None or epoch != current or epoch not in by_epoch:
        return "epoch gone (Redis restarted)"
    ks, seqs = by_epoch[epoch]
    rec = publisher.records[t]
    first = bisect.bisect_right(seqs, position[1])
    upto = bisect.bisect_left(ks, bisect.bisect_left(rec.ack, t0))
    if upto - first > history:
        return "evicted"
    if failed is not None:
        return f"replay failed ({failed})"
    return "other (same epoch, Redis up)"


def lost_detail(
    x: Lost, publisher: Publisher, col: Collected, windows: list[list[tuple[int, int]]]
) -> dict[str, Any]:
    t = int(x.topic[1:])
    rec = publisher.records[t]
    e = rec.epoch[x.k]
    rel = col.t0

    def s_(ns: int) -> float:
        return round((ns - rel) / NS, 3)

    sessions = []
    for load in col.loads:
        for c in load["clients"]:
            if c["cid"] == x.cid:
                for row in c["sessions"]:
                    s = dict(zip(ROW, row, strict=True))
                    if s["end"] >= rec.send[x.k] - 60 * NS and s["t0"] <= rec.ack[x.k] + 60 * NS:
                        sessions.append(
                            {
                                "instance": "ABCDEFGHIJ"[s["inst"]],
                                "connect": s_(s["t0"]),
                                "hello": s_(s["hello"]) if s["hello"] else None,
                                "resume": s["resume"],
                                "recovered": s["rec"],
                                "end": s_(s["end"]),
                                "why": s["why"],
                                "events": s["n"],
                                "max_counter": s["maxk"],
                                "last_id": s["last_id"],
                            }
                        )
    return {
        "client": x.cid,
        "topic": x.topic,
        "counter": x.k,
        "kind": x.kind,
        "id": f"{publisher.epochs[e]}-{rec.seq[x.k]:x}" if e >= 0 else None,
        "published_on": "ABCDEFGHIJ"[rec.inst[x.k]],
        "sent": s_(rec.send[x.k]),
        "answered": s_(rec.ack[x.k]),
        "sessions": sessions,
        "windows": {
            "ABCDEFGHIJ"[i]: [
                [s_(a), s_(b)]
                for a, b in w
                if b >= rec.send[x.k] - 60 * NS and a <= rec.ack[x.k] + 60 * NS
            ]
            for i, w in enumerate(windows)
        },
        "faults": [
            [f.kind, f.instance, s_(f.t)] for f in col.faults if abs(f.t - rec.send[x.k]) < 60 * NS
        ],
    }


def phases(col: Collected, windows: list[list[tuple[int, int]]]) -> list[tuple[int, int, str]]:
    """(start, end, name) of the non-normal phases, Redis first."""
    out: list[tuple[int, int, str]] = []
    for f in col.faults:
        if f.kind == "redis":
            ups = [b for w in windows for a, b in w if a <= f.t <= b]
            end = max(ups) if ups else (f.t_back or col.t_end) + 10 * NS
            out.append((f.t - KILL_SLACK_NS, end, "redis down"))
    for f in col.faults:
        if f.kind == "restart":
            out.append((f.t, (f.t_back or col.t_end) + 5 * NS, "instance restart"))
    return out


def quantiles(hist: dict[int, int], qs: tuple[float, ...]) -> list[float]:
    """Latency quantiles (ms) of a {bin: count} histogram (each bin's upper edge)."""
    total = sum(hist.values())
    out = []
    for q in qs:
        need = q * total
        acc = 0
        value = 0.0
        for b in sorted(hist):
            acc += hist[b]
            value = 2 ** ((b + 1) / BINS) / 1000
            if acc >= need:
                break
        out.append(value)
    return out


class PhaseOf:
    """The phase of a moment (the name of the first span holding it; cached per 100 ms)."""

    def __init__(self, spans: list[tuple[int, int, str]]) -> None:
        self.spans = spans
        self.cache: dict[int, str] = {}

    def __call__(self, t: int) -> str:
        bucket = t // BUCKET_NS
        name = self.cache.get(bucket)
        if name is None:
            start = bucket * BUCKET_NS
            name = self.cache[bucket] = next(
                (label for a, z, label in self.spans if a <= start <= z), "normal"
            )
        return name


def published_by_phase(
    publisher: Publisher, spans: list[tuple[int, int, str]], t0: int, t_stop: int
) -> dict[str, dict[str | int, float]]:
    """Per phase (by the time the publish was sent): publishes by outcome, skipped
    slots, and the phase's length in seconds."""
    phase_of = PhaseOf(spans)
    out: dict[str, dict[str | int, float]] = {}
    for rec in publisher.records:
        for t, oc in zip(rec.send, rec.outcome, strict=True):
            d = out.setdefault(phase_of(t), {})
            d[oc] = d.get(oc, 0) + 1
    for t, n in publisher.skips:
        d = out.setdefault(phase_of(t), {})
        d["skipped"] = d.get("skipped", 0) + n
    for start in range(t0, t_stop, BUCKET_NS):
        d = out.setdefault(phase_of(start), {})
        d["seconds"] = d.get("seconds", 0) + BUCKET_NS / NS
    return out


def latency(
    col: Collected, spans: list[tuple[int, int, str]], window_s: float = 30.0
) -> tuple[dict[str, dict[str, float]], list[float]]:
    phase_of = PhaseOf(spans)
    by_phase: dict[str, dict[int, int]] = {"normal": {}, "redis down": {}, "instance restart": {}}
    by_window: dict[int, dict[int, int]] = {}
    merged: dict[int, int] = {}
    for load in col.loads:
        for key, count in load["hist"].items():
            merged[int(key)] = merged.get(int(key), 0) + count
    for key, count in merged.items():
        start = (key // 512) * BUCKET_NS
        b = key % 512
        h = by_phase[phase_of(start)]
        h[b] = h.get(b, 0) + count
        w = int((start - col.t0) // int(window_s * NS))
        hw = by_window.setdefault(w, {})
        hw[b] = hw.get(b, 0) + count
    table_ = {}
    for name, h in by_phase.items():
        if h:
            p50, p99, top = quantiles(h, (0.5, 0.99, 1.0))
            table_[name] = {
                "deliveries": sum(h.values()),
                "p50_ms": p50,
                "p99_ms": p99,
                "max_ms": top,
            }
    per_window = [quantiles(by_window[w], (0.99,))[0] for w in sorted(by_window) if w >= 0]
    return table_, per_window


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="60 s, 400 clients, 200 events/s")
    ap.add_argument("--seconds", type=float, help="publishing time (default 600; smoke 60)")
    ap.add_argument("--clients", type=int, help="default 2000 (smoke 400)")
    ap.add_argument("--rate", type=float, help="events/s in all (default 1000; smoke 200)")
    ap.add_argument("--topics", type=int, default=50)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--load-procs", type=int, default=2, help="load-client processes")
    ap.add_argument("--history", type=int, default=2000, help="events kept per topic")
    ap.add_argument("--cut-min", type=float, help="seconds (default 5; smoke 2)")
    ap.add_argument("--cut-max", type=float, help="seconds (default 40; smoke 12)")
    ap.add_argument("--reconnect-min", type=float, default=0.05)
    ap.add_argument("--reconnect-max", type=float, default=1.0)
    ap.add_argument("--redis-every", type=float, default=30.0)
    ap.add_argument("--redis-first", type=float, default=15.0)
    ap.add_argument("--redis-down", type=float, default=2.0)
    ap.add_argument("--restart-every", type=float, default=60.0)
    ap.add_argument("--restart-first", type=float, default=30.0)
    ap.add_argument("--restart-pause", type=float, default=1.0)
    ap.add_argument("--drain", type=float, default=5.0)
    ap.add_argument("--grace", type=float, default=2.0, help="see the accounting rules")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin the instances to the first CPU, the rest to the others",
    )
    ap.add_argument("--json", help="write the full report to this file")
    ap.add_argument(
        "--keep", action="store_true", help="keep every process's log (printed path), pass or fail"
    )
    # internal: run as a load-client process
    ap.add_argument("--load-client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    ap.add_argument("--first-client", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    # self-tests of the accounting: the clients drop (or take twice) every Nth event
    ap.add_argument("--inject-drop", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--inject-dup", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_client:
        raise_nofile()
        run_loop(load_main(args))
        return
    defaults = {
        "seconds": (600.0, 60.0),
        "clients": (2000, 400),
        "rate": (1000.0, 200.0),
        "cut_min": (5.0, 2.0),
        "cut_max": (40.0, 12.0),
    }
    for name, (full, smoke) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.cut_min <= 0 or args.cut_max < args.cut_min:
        ap.error("need 0 < --cut-min <= --cut-max")
    if not 1 <= args.instances <= 10 or args.clients < 1 or args.rate <= 0 or args.topics < 1:
        ap.error("need 1-10 instances, clients >= 1, rate > 0, topics >= 1")
    if not 1 <= args.load_procs <= args.clients:
        ap.error("need 1 <= --load-procs <= --clients")
    exit_on_sigterm()
    raise_nofile(args.clients + 1000)
    sys.exit(soak(args))


def scheduled(first: float, every: float, seconds: float) -> int:
    """How many faults a schedule holds (none in the last 5 s of publishing)."""
    return max(0, math.ceil((seconds - 5 - first) / every)) if every > 0 else 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def soak(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    server_cpu, client_cpus = pinning(args.pin)
    kills = scheduled(args.redis_first, args.redis_every, args.seconds)
    restarts = scheduled(args.restart_first, args.restart_every, args.seconds)
    print(f"# Chaos soak, {time.strftime('%Y-%m-%d %H:%M')}" + (" (smoke)" if args.smoke else ""))
    print(
        f"{platform.node()}: {len(cpus())} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
        + ("; instances pinned to the first CPU" if args.pin else "; not pinned")
    )
    print(
        f"{args.instances} instances (RedisSync ordered=True, history={args.history}) + "
        f"redis-server; {args.clients:,} clients in {args.load_procs} processes, cut every "
        f"{args.cut_min:g}-{args.cut_max:g} s; {args.rate:,.0f} events/s over {args.topics} "
        f"topics for {args.seconds:g} s; Redis SIGKILLed every {args.redis_every:g} s "
        f"({kills}x, down {args.redis_down:g} s), an instance SIGTERMed every "
        f"{args.restart_every:g} s ({restarts}x)\n",
        flush=True,
    )
    redis: RedisProc | None = None
    instances: list[Instance] = []
    publisher = Publisher(instances, args.topics, args.rate)
    loads: list[LoadProc] = []
    col = Collected()
    try:
        redis = RedisProc(client_cpus[0] if args.pin else None, workdir)
        instances += [
            Instance(i, redis.url, args, server_cpu, workdir) for i in range(args.instances)
        ]
        publisher.live = [True] * len(instances)
        run_loop(orchestrate(args, workdir, redis, instances, loads, publisher, col))
    except (RuntimeError, OSError) as exc:
        col.problems.append(f"the run broke down: {exc}")
    except BaseException:  # Ctrl-C, SIGTERM: no figures, no logs left behind
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        for lp in loads:
            lp.stop()
        for inst in instances:
            inst.stop()
        if redis is not None:
            redis.stop()
            col.redis_cpu = redis.cpu_s
    ok = False
    if not col.loads or not col.t0 or any(p.startswith("the run broke") for p in col.problems):
        print("INVALID: " + "; ".join(col.problems or ["the run did not complete"]))
    else:
        ok = report(args, publisher, instances, col)
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"(logs of every process kept in {workdir})")
    return 0 if ok else 1


def report(
    args: argparse.Namespace, publisher: Publisher, instances: list[Instance], col: Collected
) -> bool:
    """Print the figures (and write --json); whether the run passed."""
    notes: list[str] = []
    windows = sync_windows(instances, col.faults, col.t_end, notes)
    failures = replay_failures(instances)
    acc = account(args, publisher, col, windows, failures)
    spans = phases(col, windows)
    lat, per_window = latency(col, spans)
    pubs = published_by_phase(publisher, spans, col.t0, col.t_stop)
    clients = [c for load in col.loads for c in load["clients"]]
    delivered = sum(load["events"] for load in col.loads)
    no_id = sum(load["no_id"] for load in col.loads)
    dups, ooo, id_ooo, wrong = (
        sum(c[k] for c in clients) for k in ("dups", "ooo", "id_ooo", "wrong")
    )
    connect_failed = merge(load["failures"] for load in col.loads)
    examples: dict[str, list[Any]] = {}
    for load in col.loads:
        for k, v in load["examples"].items():
            examples.setdefault(k, []).extend(v)
    replay_failed = merge({why: 1} for per in failures for _t, why in per)
    counts = publisher.counts
    kills = sum(1 for f in col.faults if f.kind == "redis")
    restarts = sum(1 for f in col.faults if f.kind == "restart")
    forced = sum(1 for i in instances for x in i.incarnations if x.forced)
    out = acc["outcomes"]
    wall = (col.t_end - col.t0) / NS
    cpu = {
        "instances": sum(x.end.get("cpu_s", 0.0) for i in instances for x in i.incarnations),
        "load clients": sum(load["cpu_s"] for load in col.loads),
        "publishers (this process)": col.own_cpu,
        "redis-server": col.redis_cpu,
    }
    cpu["other processes on the machine"] = max(0.0, col.machine_busy - sum(cpu.values()))

    def line(label: str, text: str) -> None:
        print(f"{label + ':' if label else '':<30}{text}")

    line(
        "faults",
        f"{kills} Redis kills (SIGKILL), {restarts} instance restarts (SIGTERM; "
        f"{forced} needed SIGKILL); {sum(i.failed_starts for i in instances)} failed starts",
    )
    line(
        "events published",
        f"{sum(counts.values()):,}: {counts[ACCEPTED]:,} accepted (id), "
        f"{counts[REFUSED]:,} refused (BackplaneError), {counts[UNKNOWN]:,} unknown outcome"
        + (f" {publisher.unknown_why}" if publisher.unknown_why else "")
        + f"; {publisher.skipped:,} slots skipped (publisher > 1 s behind)",
    )
    line(
        "events delivered",
        f"{delivered:,}: {no_id:,} without an id (refused ones, delivered "
        f"locally), {acc['replayed']:,} replayed (published before their connection began)",
    )
    line(
        "LOST while recovered True",
        f"{acc['lost_true']:,}   (fresh or recovered-True sessions; must be 0); of which "
        f"{acc['lost_silent']:,} silent gaps across a backplane outage",
    )
    line(
        "lost after recovered False", f"{acc['lost_false']:,}   (live, after the hello; must be 0)"
    )
    line("DUPLICATES", f"{dups:,}   (must be 0)")
    line("out of order", f"{ooo:,} by counter; {id_ooo:,} ids not increasing within an epoch")
    line(
        "sessions",
        f"{acc['sessions']:,}: {out['fresh']:,} fresh connects, "
        f"{out['True'] + out['False']:,} resumes: recovered True {out['True']:,}, False "
        f"{out['False']:,}; {out['no hello']:,} ended before their hello"
        + (f"; {out['other']} other" if out["other"] else ""),
    )
    p50, p99, top = acc["outcome_wait_s"]
    line(
        "resume -> recovered known",
        f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {top:.2f} s (connect to hello, i.e. the "
        f"replay's end); {acc['hello_missing']:,} sessions still had no outcome after "
        "> 10 s when they ended (their replay still running: events flow, wait_recovered() "
        "waits)",
    )
    if acc["false_why"]:
        line(
            "recovered False, why",
            ", ".join(
                f"{k} {v:,}" for k, v in sorted(acc["false_why"].items(), key=lambda kv: -kv[1])
            ),
        )
    if replay_failed:
        line(
            "replays failed (error hook)",
            ", ".join(
                f"{k} {v:,}" for k, v in sorted(replay_failed.items(), key=lambda kv: -kv[1])
            ),
        )
    odd_refused = refused_while_up(publisher, windows, col.t0)
    if odd_refused:
        soon = sum(1 for _i, _t, since in odd_refused if since < 5)
        line(
            "refused while subscribed",
            f"{len(odd_refused):,} publishes refused by an instance after it reported "
            f'"reconnected" ({soon} of them within 5 s of it)',
        )
    line(
        "missed, told",
        f"{acc['told']:,} accepted events on {acc['told_clients']:,} clients never received: "
        "published while the client's instance was not subscribed to Redis, and the "
        "client's next resume said recovered False (excused)",
    )
    if connect_failed:
        line("connects that failed", ", ".join(f"{k} {v:,}" for k, v in connect_failed.items()))
    if wrong:
        line("malformed events", f"{wrong} {examples.get('wrong', [])[:3]}")
    line(
        "CPU seconds",
        ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
        + f" (over {wall:.0f} s on {len(cpus())} CPUs)",
    )
    print()
    head = ["phase (by publish time)", "s", "accepted", "refused", "skipped", "deliveries",
            "p50", "p99", "max"]  # fmt: skip
    rows = []
    for name, v in lat.items():
        p = pubs.get(name, {})
        rows.append([name, f"{p.get('seconds', 0):.0f}", f"{p.get(ACCEPTED, 0):,}",
                     f"{p.get(REFUSED, 0):,}", f"{p.get('skipped', 0):,}",
                     f"{v['deliveries']:,}", f"{v['p50_ms']:.1f} ms", f"{v['p99_ms']:.1f} ms",
                     f"{v['max_ms']:.0f} ms"])  # fmt: skip
    print(table(head, rows))
    print("\np99 per 30 s window (ms): " + " ".join(f"{v:.0f}" for v in per_window))
    print()
    head = ["instance", "pid", "up at", "RSS start", "RSS end", "FDs start", "FDs end",
            "streams at end", "CPU s", "ended by"]  # fmt: skip
    rows = []
    for inst in instances:
        for x in inst.incarnations:
            if x.t_up:
                ended = (
                    ("SIGKILL after SIGTERM" if x.forced else "SIGTERM") if x.t_term else "run end"
                )
                rows.append([inst.name, str(x.pid), f"{(x.t_up - col.t0) / NS:.0f} s",
                             f"{x.start.get('rss_mib', 0):.1f} MiB",
                             f"{x.end.get('rss_mib', 0):.1f} MiB",
                             str(x.start.get("fds", "?")), str(x.end.get("fds", "?")),
                             str(x.peers_end if x.peers_end is not None else "?"),
                             f"{x.end.get('cpu_s', 0):.1f}", ended])  # fmt: skip
    print(table(head, rows))
    print(
        "(start: when the process first answered, no streams yet; end: just before its "
        "SIGTERM, or after the run once every client had left)"
    )
    for note in notes:
        print("note: " + note)
    for kind, label in (
        ("dup", "duplicate [client, topic, counter, id, first session, this session]"),
        ("id_ooo", "id out of order [client, topic, counter, id, previous id, session]"),
    ):
        for ex in examples.get(kind, [])[:5]:
            print(f"{label}: {ex}")
    for ex in acc["no_hello"][:3]:
        print("no hello after 10 s: " + json.dumps(ex))
    for ex in acc["odd_false"][:3]:
        print("recovered False, unexplained: " + json.dumps(ex))
    for ex in acc["lost_examples"][:5]:
        print("lost: " + json.dumps(ex))
    ok = acc["lost_true"] == 0 and acc["lost_false"] == 0 and dups == 0 and not col.problems
    for problem in col.problems:
        print("problem: " + problem)
    print(
        f"\nRESULT: {'OK' if ok else 'FAILED'} (lost while recovered True "
        f"{acc['lost_true']}, lost after recovered False {acc['lost_false']}, "
        f"duplicates {dups})"
    )
    if args.json:
        doc = {
            "args": vars(args),
            "published": {
                "accepted": counts[ACCEPTED],
                "refused": counts[REFUSED],
                "unknown": counts[UNKNOWN],
                "unknown_why": publisher.unknown_why,
                "skipped": publisher.skipped,
                "not_sent": publisher.not_sent,
            },
            "delivered": delivered,
            "delivered_without_id": no_id,
            "replayed": acc["replayed"],
            "lost_while_recovered": acc["lost_true"],
            "lost_after_false": acc["lost_false"],
            "duplicates": dups,
            "out_of_order": ooo,
            "id_out_of_order": id_ooo,
            "sessions": acc["sessions"],
            "outcomes": out,
            "outcome_wait_s_p50_p99_max": acc["outcome_wait_s"],
            "no_outcome_after_10s": acc["hello_missing"],
            "false_why": acc["false_why"],
            "replay_failures": replay_failed,
            "connect_failures": connect_failed,
            "refused_while_subscribed": odd_refused[:1000],
            "lost_silent": acc["lost_silent"],
            "missed_told": acc["told"],
            "missed_told_clients": acc["told_clients"],
            "missed_told_examples": acc["told_examples"],
            "latency": lat,
            "published_by_phase": {
                k: {str(kk): vv for kk, vv in v.items()} for k, v in pubs.items()
            },
            "p99_per_30s_ms": per_window,
            "cpu_s": cpu,
            "wall_s": wall,
            "faults": [vars(f) | {"at_s": (f.t - col.t0) / NS} for f in col.faults],
            "instances": [
                {
                    "name": i.name,
                    "incarnations": [
                        {
                            "pid": x.pid,
                            "up_at_s": (x.t_up - col.t0) / NS,
                            "start": x.start,
                            "end": x.end,
                            "streams_end": x.peers_end,
                            "forced": x.forced,
                            "exit_code": x.exit_code,
                        }
                        for x in i.incarnations
                    ],
                }
                for i in instances
            ],
            "sync_windows_s": [
                [[(a - col.t0) / NS, (b - col.t0) / NS] for a, b in w] for w in windows
            ],
            "notes": notes,
            "problems": col.problems,
            "examples": examples,
            "unexplained_false": acc["odd_false"],
            "no_hello_examples": acc["no_hello"],
            "lost_examples": acc["lost_examples"],
            "lost": acc["lost_all"],
            "ok": ok,
        }
        write_json(args.json, doc)
    return ok


def refused_while_up(
    publisher: Publisher, windows: list[list[tuple[int, int]]], t0: int
) -> list[tuple[str, float, float]]:
    """Publishes refused by an instance that was subscribed to Redis all along
    (from the request to its answer): (instance, when (s into the run), seconds
    since its last outage ended)."""
    out = []
    for rec in publisher.records:
        for k, oc in enumerate(rec.outcome):
            if oc != REFUSED:
                continue
            inst, t = rec.inst[k], rec.send[k]
            if any(rec.ack[k] >= a and t <= b for a, b in windows[inst]):
                continue
            ends = [b for _a, b in windows[inst] if b < t]
            since = (t - max(ends)) / NS if ends else float("inf")
            out.append(("ABCDEFGHIJ"[inst], round((t - t0) / NS, 3), round(since, 3)))
    return sorted(out, key=lambda x: x[1])


def merge(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


if __name__ == "__main__":
    main()
