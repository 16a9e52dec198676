"""Stalled client: does one client that never reads hurt everyone else?

One server (servers/ours.py, aiohttp_crossws_sse with its default
slow-consumer policy: max_buffer 1 MiB, "close"), H healthy clients (default
50) and, in the "with" runs, one more raw socket that requests /sse and then
never reads a byte. The server publishes M events of S bytes (default
2,000 x 16 KiB) at R events per second (default 500; --rate 0: back to back).

Reported for runs without and with the stalled client (a fresh server each):
the healthy clients' delivery rate, whether every healthy client got every
event intact, how far the last delivery lagged behind the publish schedule,
the server's RSS growth (VmRSS after - before the burst, and the VmHWM peak),
and whether - and how soon after the trigger - the stalled peer was closed
(``/stats``: ``slow_consumers``; ``/peers`` back to H).

Back to back (--rate 0) the burst per client (32 MiB by default) is far more
than max_buffer plus the kernel's socket buffers, and a synchronous publish
loop gives no client the chance to read in between: the policy then closes
healthy clients too. That is the documented policy at work; the paced default
shows what the policy is for.

Examples:
  python benchmarks/stalled.py
  python benchmarks/stalled.py --healthy 20 --messages 500 --rounds 3
  python benchmarks/stalled.py --rate 0          # one synchronous burst
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from _harness import (
    HOST,
    LoadClient,
    Server,
    cpus,
    exit_on_sigterm,
    http_get,
    median,
    pinning,
    raise_nofile,
    status_kib,
    table,
)


@dataclass
class Result:
    stalled: bool
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    rate: float = 0.0
    seconds: float = 0.0
    lag: float = 0.0  # last delivery - end of the publish schedule
    delivered: int = 0
    complete: int = 0
    closed_healthy: int = 0
    rss_growth_mib: float = 0.0
    peak_growth_mib: float = 0.0
    slow_consumers: int = 0
    stalled_closed_after: float | None = None  # seconds after the trigger


class Watch(threading.Thread):
    """Polls /peers during the run; notes when it first drops to ``target``."""

    def __init__(self, port: int, target: int, since: float) -> None:
        super().__init__(daemon=True)
        self.port, self.target, self.since = port, target, since
        self.seen: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if int(http_get(self.port, "/peers", 5)[1]) <= self.target:
                    self.seen = time.monotonic() - self.since
                    return
            except (OSError, ValueError):
                pass
            self.stop.wait(0.02)


def stats(port: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(http_get(port, "/stats", 10)[1])
    return result


def stalled_socket(port: int, rcvbuf: int) -> socket.socket:
    """Connect, request the stream, and never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((HOST, port))
    sock.sendall(f"GET /sse HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    return sock


def measure(with_stalled: bool, args: argparse.Namespace) -> Result:
    res = Result(with_stalled)
    server_cpu, client_cpus = pinning(not args.no_pin)
    srv = Server("ours", server_cpu)
    client: LoadClient | None = None
    sock: socket.socket | None = None
    watch: Watch | None = None
    try:
        time.sleep(0.2)
        client = LoadClient(
            srv.port,
            client_cpus[0],
            connections=args.healthy,
            messages=args.messages,
            size=args.size,
            idle_timeout=args.idle_timeout,
            timeout=args.timeout,
        )
        ready = client.expect("ready", args.timeout + 10)
        if ready is None or ready["failed"]:
            res.problems.append(f"healthy clients did not all open: {ready or client.output()}")
            return res
        if with_stalled:
            sock = stalled_socket(srv.port, args.stalled_rcvbuf)
        total = args.healthy + (1 if with_stalled else 0)
        if srv.wait_peers(total, 10) != total:
            res.problems.append(f"/peers never reached {total}")
            return res
        stats0 = stats(srv.port)
        rss0 = status_kib(srv.pid)
        hwm0 = status_kib(srv.pid, "VmHWM")
        client.send("go")
        t0 = time.monotonic()
        if with_stalled:
            watch = Watch(srv.port, args.healthy, t0)
            watch.start()
        query = f"/publish?n={args.messages}&size={args.size}"
        if args.rate > 0:
            query += f"&rate={args.rate:g}"
        status, _ = http_get(srv.port, query, args.timeout)
        done = client.expect("done", args.timeout + args.idle_timeout + 10)
        if watch is not None:
            watch.join(2)
            watch.stop.set()
            res.stalled_closed_after = watch.seen
        if not srv.alive():
            res.problems.append(f"server died: {srv.output()}")
            return res
        res.rss_growth_mib = (status_kib(srv.pid) - rss0) / 1024
        res.peak_growth_mib = (status_kib(srv.pid, "VmHWM") - hwm0) / 1024
        stats1 = stats(srv.port)
        res.slow_consumers = stats1["slow_consumers"] - stats0["slow_consumers"]
        if status != 200:
            res.problems.append(f"/publish answered {status}")
        if done is None:
            res.problems.append(f"the load client did not report: {client.output()}")
            return res
        res.delivered, res.complete = done["delivered"], done["complete"]
        res.closed_healthy = done["closed_early"]
        expected = args.healthy * args.messages
        if res.delivered != expected or res.complete != args.healthy:
            res.problems.append(
                f"healthy clients got {res.delivered:,} of {expected:,} events; "
                f"{res.complete} of {args.healthy} got all"
            )
        if res.closed_healthy:
            res.problems.append(f"the server closed {res.closed_healthy} healthy clients")
        if done["bad"] or done["extra"]:
            res.problems.append(f"{done['bad']} wrong-size and {done['extra']} surplus events")
        if done["last_ts"]:
            res.seconds = done["last_ts"] - t0
            res.rate = res.delivered / res.seconds
            schedule = (args.messages - 1) / args.rate if args.rate > 0 else 0.0
            res.lag = res.seconds - schedule
        res.ok = not res.problems
        return res
    finally:
        if watch is not None:
            watch.stop.set()
        if sock is not None:
            sock.close()
        if client is not None:
            client.stop()
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--healthy", type=int, default=50, help="clients that read (default 50)")
    ap.add_argument("--messages", type=int, default=2000, help="events published (default 2000)")
    ap.add_argument("--size", type=int, default=16384, help="bytes of data per event (16384)")
    ap.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="events published per second (default 500); 0: all at once, back to back",
    )
    ap.add_argument(
        "--runs",
        default="without,with",
        help="which runs, in order: without, with (the stalled client), or both (the default)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="repeat the runs, interleaved (1)")
    ap.add_argument(
        "--stalled-rcvbuf",
        type=int,
        default=0,
        help="SO_RCVBUF of the stalled socket (default: the system's)",
    )
    ap.add_argument("--idle-timeout", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    args = ap.parse_args()
    exit_on_sigterm()
    kinds = [k for k in args.runs.split(",") if k]
    if not kinds or any(k not in ("without", "with") for k in kinds):
        ap.error("--runs takes without, with, or both (comma-separated)")
    if min(args.healthy, args.messages, args.size, args.rounds) < 1 or args.rate < 0:
        ap.error("--healthy, --messages, --size and --rounds must be positive; --rate >= 0")
    raise_nofile(args.healthy + 200)

    pace = f"at {args.rate:g} events/s" if args.rate > 0 else "back to back"
    print(f"# SSE stalled-client benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"{platform.node()}: {len(cpus())} CPUs; aiohttp_crossws_sse (defaults: max_buffer "
        f"1 MiB, slow_consumer 'close'); {args.healthy} healthy clients; "
        f"{args.messages:,} events x {args.size:,} B published {pace}\n",
        flush=True,
    )
    results: dict[str, list[Result]] = {k: [] for k in kinds}
    for rnd in range(1, args.rounds + 1):
        for kind in kinds:
            res = measure(kind == "with", args)
            results[kind].append(res)
            if res.ok:
                note = f"{res.rate:,.0f} deliveries/s, lag {res.lag:.2f} s"
            else:
                note = "INVALID: " + "; ".join(res.problems)
            print(f"[round {rnd}] {kind} stalled client: {note}", file=sys.stderr, flush=True)

    head = [
        "stalled client",
        "healthy deliveries/s",
        "lag behind schedule s",
        "every healthy client got every event",
        "server RSS growth MiB (peak)",
        "stalled peer closed",
    ]
    rows = []
    for kind in kinds:
        rs = results[kind]
        good = all(r.ok for r in rs)
        closed = "-"
        if kind == "with":
            times = [r.stalled_closed_after for r in rs]
            if all(t is not None for t in times):
                closed = (
                    f"yes, {median([t for t in times if t is not None]):.2f} s after the "
                    f"trigger (slow_consumers +{median([float(r.slow_consumers) for r in rs]):.0f})"
                )
            else:
                closed = f"NO in {sum(t is None for t in times)} of {len(rs)} runs"
        rows.append(
            [
                kind,
                f"{median([r.rate for r in rs]):,.0f}" if good else "-",
                f"{median([r.lag for r in rs]):.2f}" if good else "-",
                "yes" if good else f"NO ({sum(not r.ok for r in rs)} of {len(rs)} runs)",
                f"{median([r.rss_growth_mib for r in rs]):.1f} "
                f"({median([r.peak_growth_mib for r in rs]):.1f})",
                closed,
            ]
        )
    print(table(head, rows))
    print(
        "\nhealthy deliveries/s: healthy clients x events / (last event received - /publish "
        "sent); with a paced publish it cannot exceed healthy clients x rate.\n"
        "lag: how long after the last scheduled publish the last event arrived.\n"
        "RSS growth: the server's VmRSS after the run - before it; peak: growth of VmHWM.\n"
        "stalled peer closed: when /peers first showed only the healthy clients."
    )
    invalid = [(k, r) for k in kinds for r in results[k] if not r.ok]
    stalled_open = [r for r in results.get("with", []) if r.stalled_closed_after is None]
    if invalid or stalled_open:
        print("\nInvalid runs:")
        for kind, r in invalid:
            print(f"  {kind} stalled client: " + "; ".join(r.problems))
        for _ in stalled_open:
            print("  with stalled client: the stalled peer was never closed")
        sys.exit(1)


if __name__ == "__main__":
    main()
