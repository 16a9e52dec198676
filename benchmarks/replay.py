"""Replay under load: what does a Last-Event-ID replay cost the other clients?

One server (this file with ``--serve``: ``sse_adapter(history=...)``), C
clients (default 1,000, one child process, raw sockets) subscribed to topic
``bench`` that receive ``--rate`` deliveries per second in all (default
20,000: 20 events/s to each), each event stamped with its publish time.
In the "with" runs, one more client reconnects with a ``Last-Event-ID`` that
is ``--missed`` events behind (default 10,000 of ``--missed-size`` bytes, on
topic ``missed``, which nobody else reads) while that load runs.

Reported per round, for runs without and with the replay: the load clients'
publish -> receive p50/p99/max over the whole run and the p99 of the events
published while the replay was being written (plus 50 ms; in "without" runs
the same window), and the replay time (request sent -> last missed event
read) with the replay's size. Rounds interleave
without/with. Nothing is asserted; the exit status is 1 when a run is
invalid (a load client lost or reordered events, or the replay was short).

Examples:
  python benchmarks/replay.py
  python benchmarks/replay.py --clients 200 --rate 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from _harness import (
    HOST,
    cpus,
    exit_on_sigterm,
    free_port,
    http_get,
    pinned,
    pinning,
    raise_nofile,
    stop_pid,
    table,
)

# -- the server (a child process) ------------------------------------------------------


def serve(port: int, history: int) -> None:
    from aiohttp import web

    from aiohttp_crossws_sse import Peer, define_hooks, sse_adapter

    def open_(peer: Peer) -> None:
        peer.subscribe(peer.request.query.get("topic", "bench"))
        peer.send("welcome")

    sse = sse_adapter(define_hooks(open=open_), history=history)

    async def publish(request: web.Request) -> web.Response:
        rate = float(request.query["rate"])
        n = int(request.query["n"])
        pad = "x" * int(request.query.get("size", "64"))
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while sent < n:  # an absolute schedule: whatever is due, then sleep
            due = min(n, int((loop.time() - start) * rate) + 1)
            while sent < due:
                sse.publish("bench", f"{time.monotonic_ns()} {pad}")
                sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
        return web.Response(text="ok")

    async def fill(request: web.Request) -> web.Response:
        pad = "y" * int(request.query.get("size", "256"))
        for i in range(int(request.query["n"])):
            sse.publish("missed", f"{i} {pad}")
        return web.Response(text="ok")

    async def peers(request: web.Request) -> web.Response:
        return web.Response(text=str(len(sse.peers)))

    app = web.Application()
    sse.setup(app, "/sse")
    app.router.add_get("/publish", publish)
    app.router.add_get("/fill", fill)
    app.router.add_get("/peers", peers)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(
        app,
        host=HOST,
        port=port,
        loop=loop,
        print=None,
        access_log=None,
        backlog=4096,
        shutdown_timeout=1.0,
    )


# -- the load clients (a child process) ------------------------------------------------


class _Stream(asyncio.Protocol):
    def __init__(self, owner: _Clients) -> None:
        self.owner = owner
        self.tail = b""
        self.last = 0
        self.welcomed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(f"GET /sse?topic=bench HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        lines = (self.tail + data).split(b"\n")
        self.tail = lines.pop()
        owner = self.owner
        for line in lines:
            if not line.startswith(b"data: "):
                continue
            if line == b"data: welcome":
                self.welcomed = True
                owner.welcomed += 1
                if owner.welcomed == owner.expected:
                    owner.all_welcomed.set()
                continue
            stamp = int(line[6:].split(b" ", 1)[0])
            if stamp <= self.last:
                owner.problems.add("out of order or twice")
            self.last = stamp
            owner.latencies.append(now - stamp)
            owner.stamps.append(stamp)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.problems.add("a stream ended")


class _Clients:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.all_welcomed = asyncio.Event()
        self.welcomed = 0
        self.latencies: list[int] = []
        self.stamps: list[int] = []
        self.problems: set[str] = set()


async def clients_main(port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    owner = _Clients(count)
    transports = []
    for _ in range(count):
        transport, _proto = await loop.create_connection(lambda: _Stream(owner), HOST, port)
        transports.append(transport)
    await owner.all_welcomed.wait()
    print(json.dumps({"event": "ready"}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        command = (await reader.readline()).decode().strip()
        if command == "go":
            owner.latencies = []
            owner.stamps = []
            owner.problems = set()
        elif command.startswith("report"):
            expected, since, until = map(int, command.split()[1:])
            await asyncio.sleep(0.3)  # the last events in flight
            values = sorted(owner.latencies)
            window = sorted(
                lat
                for lat, stamp in zip(owner.latencies, owner.stamps, strict=True)
                if since <= stamp <= until
            )
            problems = set(owner.problems)
            if len(values) != expected:
                problems.add(f"{len(values)} deliveries, expected {expected}")
            print(
                json.dumps(
                    {
                        "event": "report",
                        "n": len(values),
                        "p50_us": _quantile(values, 0.5) / 1e3,
                        "p99_us": _quantile(values, 0.99) / 1e3,
                        "max_us": (values[-1] if values else 0) / 1e3,
                        "window_n": len(window),
                        "window_p99_us": _quantile(window, 0.99) / 1e3,
                        "problems": sorted(problems),
                    }
                ),
                flush=True,
            )
        else:
            break
    for transport in transports:
        transport.close()


def _quantile(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# -- the replaying client (in the harness) ---------------------------------------------


def _read_events(sock: socket.socket, wanted: int, timeout: float) -> tuple[int, str, int]:
    """Read until ``wanted`` events with an id came; (count, last id, bytes)."""
    sock.settimeout(timeout)
    count = 0
    last = ""
    tail = b""
    total = 0
    while count < wanted:
        data = sock.recv(1 << 20)
        if not data:
            break
        total += len(data)
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        for line in lines:
            if line.startswith(b"id:"):
                count += 1
                last = line[3:].decode().lstrip(" ")
    return count, last, total


def _open(port: int, last_id: str | None) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    head = f"GET /sse?topic=missed HTTP/1.1\r\nHost: {HOST}\r\n"
    if last_id is not None:
        head += f"Last-Event-ID: {last_id}\r\n"
    sock.sendall((head + "\r\n").encode())
    return sock


def replay_once(port: int, missed: int, size: int) -> dict[str, Any]:
    """A client that saw one event, then missed ``missed``, reconnects."""
    sock = _open(port, None)
    try:
        http_get(port, f"/fill?n=1&size={size}")
        count, last_id, _ = _read_events(sock, 1, 10)
    finally:
        sock.close()
    http_get(port, f"/fill?n={missed}&size={size}", timeout=60)
    start = time.monotonic()
    sock = _open(port, last_id)
    try:
        count, _, total = _read_events(sock, missed, 60)
    finally:
        sock.close()
    return {"seconds": time.monotonic() - start, "events": count, "bytes": total}


# -- the harness -----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    raise_nofile(args.clients + 100)
    server_cpu, client_cpus = pinning(not args.no_pin)
    port = free_port()
    here = os.path.abspath(__file__)
    history = max(args.missed + 1, 1000)
    server = subprocess.Popen(
        pinned(server_cpu, [sys.executable, here, "--serve", str(port), "--history", str(history)]),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    clients: subprocess.Popen[str] | None = None
    invalid: list[str] = []
    rows: list[list[str]] = []
    windows: list[int] = []  # ns from the replay's start to its last event
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                http_get(port, "/peers", 1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
        clients = subprocess.Popen(
            pinned(
                client_cpus[0],
                [sys.executable, here, "--load", str(port), "--clients", str(args.clients)],
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert clients.stdin is not None and clients.stdout is not None

        def command(text: str) -> dict[str, Any]:
            assert clients is not None and clients.stdin is not None
            assert clients.stdout is not None
            clients.stdin.write(text + "\n")
            clients.stdin.flush()
            if text == "go":
                return {}
            return dict(json.loads(clients.stdout.readline()))

        ready = json.loads(clients.stdout.readline())
        if ready.get("event") != "ready":
            print("the load clients did not get ready", file=sys.stderr)
            return 1
        per_client = args.rate / args.clients
        n = max(1, int(per_client * args.seconds))
        for round_ in range(1, args.rounds + 1):
            for with_replay in (False, True):
                command("go")
                time.sleep(0.2)
                publisher = threading.Thread(
                    target=http_get,
                    args=(port, f"/publish?rate={per_client}&n={n}&size={args.size}"),
                    kwargs={"timeout": args.seconds + 60},
                )
                publisher.start()
                replay: dict[str, Any] = {}
                time.sleep(min(1.0, args.seconds / 4))
                since = time.monotonic_ns()
                if with_replay:
                    replay = replay_once(port, args.missed, args.missed_size)
                    if replay["events"] != args.missed:
                        invalid.append(f"round {round_}: replay got {replay['events']} events")
                    windows.append(time.monotonic_ns() - since)
                # "without" runs: the same window as the last replay's (or 100 ms)
                until = since + (windows[-1] if windows else 100_000_000) + 50_000_000
                publisher.join()
                report = command(f"report {n * args.clients} {since} {until}")
                if report["problems"]:
                    invalid.append(f"round {round_}: " + "; ".join(report["problems"]))
                rows.append(
                    [
                        str(round_),
                        "with" if with_replay else "without",
                        f"{report['p50_us'] / 1e3:.2f}",
                        f"{report['p99_us'] / 1e3:.2f}",
                        f"{report['max_us'] / 1e3:.2f}",
                        f"{report['window_p99_us'] / 1e3:.2f} ({report['window_n']})",
                        f"{replay['seconds'] * 1e3:.0f}" if replay else "-",
                        f"{replay['bytes'] / 1e6:.1f}" if replay else "-",
                    ]
                )
    finally:
        if clients is not None:
            if clients.stdin is not None:
                try:
                    clients.stdin.write("close\n")
                    clients.stdin.flush()
                except OSError:
                    pass
            stop_pid(clients)
        stop_pid(server)
    print(
        f"# {args.clients} clients, {args.rate:.0f} deliveries/s ({args.size} B), "
        f"{args.seconds:.0f} s per run; replay of {args.missed} x {args.missed_size} B; "
        f"{len(cpus())} CPUs, Python {platform.python_version()}"
    )
    head = [
        "round",
        "replay",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 ms in the replay window (deliveries)",
        "replay ms",
        "replay MB",
    ]
    print(table(head, rows))
    if invalid:
        print("INVALID: " + "; ".join(invalid))
        return 1
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20000, help="deliveries/s to the load clients")
    ap.add_argument("--size", type=int, default=64, help="bytes of padding per live event")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    ap.add_argument("--missed", type=int, default=10000, help="events the replaying client missed")
    ap.add_argument("--missed-size", type=int, default=256, help="bytes of each missed event")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--history", type=int, default=20000, help=argparse.SUPPRESS)
    ap.add_argument("--load", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.history)
        return
    if args.load:
        asyncio.run(clients_main(args.load, args.clients))
        return
    exit_on_sigterm()
    sys.exit(run(args))


if __name__ == "__main__":
    main()
